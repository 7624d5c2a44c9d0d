"""The fleet table's side of the main window: bridge updates into the table, the selection, the detail pane.

Also the counts in the status bar, the group filter and the table's context menu.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QModelIndex, QPoint, Qt, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel, QMenu, QTabWidget

from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.records import Group, HostKey
from fleetdesk.telemetry.alerts import AlertEvent
from fleetdesk.transport.sshconfig import SSHConfigEntry

from .bridge_views import DeviceView
from .dashboard import Dashboard
from .device_detail import DeviceDetail
from .fleet_model import DEVICE_ID_ROLE
from .models_view import ModelsView
from .rollout_view import RolloutsView
from .side_panel import GroupTree
from .window_part import WindowPart


class FleetPane(WindowPart):
    """Mixed into MainWindow, which builds the widgets and actions declared here."""

    dashboard: Dashboard
    detail: DeviceDetail
    devices_label: QLabel
    group_tree: GroupTree
    empty_hint: QLabel
    tabs: QTabWidget
    models_view: ModelsView
    rollouts_view: RolloutsView
    device_actions: tuple[QAction, ...]
    trust_action: QAction
    ssh_action: QAction
    ungroup_action: QAction
    _counting: bool
    _detail_due: bool
    _detail_id: int | None
    _detail_keys: list[HostKey]
    # The device's names when its ssh config was read, and what the config said (or why it could not be read).
    _detail_ssh: tuple[object, SSHConfigEntry | FleetDeskError | None]

    def _devices_reset(self, views: list[DeviceView]) -> None:
        self.fleet_model.reset(views)
        ordered = sorted(views, key=lambda v: v.device.name.casefold())
        self.dashboard.set_devices([(v.id, v.device.name, v.status) for v in ordered])
        self._counts_changed()

    def _device_changed(self, view: DeviceView) -> None:
        self.fleet_model.upsert(view)
        self.dashboard.upsert(view.id, view.device.name, view.status)
        if view.id == self._detail_id and not self._detail_due:
            # A job's end sends the device and then its busy state: the pane is rebuilt once, on the next pass.
            self._detail_due = True
            QTimer.singleShot(0, self._refresh_detail)

    def _refresh_detail(self) -> None:
        if self._detail_due:  # not already shown by a selection change in between
            self._show_detail(fresh=False)

    def _device_removed(self, device_id: int) -> None:
        self.fleet_model.remove(device_id)
        self.dashboard.remove(device_id)

    def _counts_changed(self, *_args: object) -> None:
        # Live updates arrive a batch at a time: count once per pass of the loop, not once per device.
        if not self._counting:
            self._counting = True
            QTimer.singleShot(0, self._count)

    def _count(self) -> None:
        self._counting = False
        online, total = self.fleet_model.counts()
        self.devices_label.setText(f"Devices online: {online} / {total}")
        self.group_tree.set_total(total)
        self.empty_hint.setVisible(total == 0)

    def _groups_changed(self, groups: list[Group]) -> None:
        self.group_tree.set_groups(groups, self.fleet_model.rowCount())

    def _group_chosen(self, group: str | None) -> None:
        self.fleet_filter.set_group(group)
        self.ungroup_action.setEnabled(group is not None and bool(self.selected_ids()))

    def select_devices(self, device_ids: Sequence[int]) -> None:
        """Select exactly these devices in the table (what a click or Ctrl+click does)."""
        selection = self.fleet_table.selectionModel()
        selection.clearSelection()
        wanted = set(device_ids)
        flags = (selection.SelectionFlag.Select | selection.SelectionFlag.Rows)
        for row in range(self.fleet_filter.rowCount()):
            index = self.fleet_filter.index(row, 0)
            if self.fleet_filter.data(index, DEVICE_ID_ROLE) in wanted:
                selection.select(index, flags)

    def _selection_changed(self, *_args: object) -> None:
        self._update_actions()
        self._show_detail(fresh=True)

    def _update_actions(self) -> None:
        count = len(self.selected_ids())
        for action in self.device_actions:
            action.setEnabled(count > 0)
        self.trust_action.setEnabled(count == 1)
        self.ssh_action.setEnabled(count == 1)
        self.ungroup_action.setEnabled(count > 0 and self.fleet_filter.group is not None)

    def _show_detail(self, *, fresh: bool) -> None:
        """Show the one selected device; its pinned keys are read when it is chosen (or after a trust),
        not on every live update of its status."""
        self._detail_due = False
        views = self.selected_views()
        if len(views) != 1:
            self._detail_id = None
            self.detail.show_device(None, match=None, host_keys=(), status="")
            return
        view = views[0]
        if fresh or view.id != self._detail_id or view.trusted != (self._detail_keys != []):
            self._detail_keys = self.bridge.devices.host_keys(view.id)
        self._detail_id = view.id
        names = (view.id, view.device.name, view.device.address, view.device.mdns_names)
        if fresh or self._detail_ssh[0] != names:  # what applies follows the names the device goes by
            self._detail_ssh = (names, self.bridge.devices.ssh_config(view.device))
        self.detail.show_device(view.device, match=self.bridge.devices.profile_match(view.device),
                                host_keys=self._detail_keys, status=view.status, ssh_config=self._detail_ssh[1])

    def _tab_changed(self, _index: int) -> None:
        # The device pane says nothing about models: the Models view gets its width.
        self.detail.setHidden(self.tabs.currentWidget() in (self.models_view, self.rollouts_view))

    def _context_menu(self, position: QPoint) -> None:
        if not self.fleet_table.indexAt(position).isValid():
            return
        menu = QMenu(self)
        for action in self.device_actions:
            menu.addAction(action)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.popup(self.fleet_table.viewport().mapToGlobal(position))

    def _alert_changed(self, event: AlertEvent) -> None:
        active = self.bridge.telemetry.alerts.active(event.device_id)
        self.fleet_model.set_alerts(event.device_id, [e.message for e in active.values()])

    def index_of(self, device_id: int) -> QModelIndex:
        for row in range(self.fleet_filter.rowCount()):
            index = self.fleet_filter.index(row, 0)
            if self.fleet_filter.data(index, DEVICE_ID_ROLE) == device_id:
                return index
        return QModelIndex()
