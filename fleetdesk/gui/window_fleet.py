"""The fleet table's side of the main window: bridge updates into the table, the selection, the detail pane.

Also the counts in the status bar, the group filter and the table's context menu. `FleetPane` is the window's
`fleet_pane`; the other parts ask it for the selection.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QModelIndex, QPoint, Qt, QTimer
from PySide6.QtWidgets import QMenu

from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.records import Group, HostKey
from fleetdesk.telemetry.alerts import AlertEvent
from fleetdesk.transport.sshconfig import SSHConfigEntry

from .bridge_views import DeviceView
from .fleet_model import DEVICE_ID_ROLE
from .window_part import Window, WindowPart


class FleetPane(WindowPart):
    """The fleet table, its selection and the device detail pane, as the bridge's devices change."""

    def __init__(self, window: Window) -> None:
        super().__init__(window)
        self._counting = False
        self._detail_id: int | None = None  # the device the detail pane shows
        self._detail_due = False  # a live update of that device waits for the next loop pass
        self._detail_keys: list[HostKey] = []  # its pinned keys, read when it was chosen
        # The device's names when its ssh config was read, and what the config said (or why it could not be read).
        self._detail_ssh: tuple[object, SSHConfigEntry | FleetDeskError | None] = (None, None)

    def on_devices_reset(self, views: list[DeviceView]) -> None:
        self.window.fleet_model.reset(views)
        ordered = sorted(views, key=lambda v: v.device.name.casefold())
        self.window.dashboard.set_devices([(v.id, v.device.name, v.status) for v in ordered])
        self.on_counts_changed()

    def on_device_changed(self, view: DeviceView) -> None:
        self.window.fleet_model.upsert(view)
        self.window.dashboard.upsert(view.id, view.device.name, view.status)
        if view.id == self._detail_id and not self._detail_due:
            # A job's end sends the device and then its busy state: the pane is rebuilt once, on the next pass.
            self._detail_due = True
            QTimer.singleShot(0, self._refresh_detail)

    def _refresh_detail(self) -> None:
        if self._detail_due:  # not already shown by a selection change in between
            self._show_detail(fresh=False)

    def on_device_removed(self, device_id: int) -> None:
        self.window.fleet_model.remove(device_id)
        self.window.dashboard.remove(device_id)

    def on_counts_changed(self, *_args: object) -> None:
        # Live updates arrive a batch at a time: count once per pass of the loop, not once per device.
        if not self._counting:
            self._counting = True
            QTimer.singleShot(0, self._count)

    def _count(self) -> None:
        self._counting = False
        online, total = self.window.fleet_model.counts()
        self.window.devices_label.setText(f"Devices online: {online} / {total}")
        self.window.group_tree.set_total(total)
        self.window.empty_hint.setVisible(total == 0)

    def on_groups_changed(self, groups: list[Group]) -> None:
        self.window.group_tree.set_groups(groups, self.window.fleet_model.rowCount())

    def on_group_chosen(self, group: str | None) -> None:
        self.window.fleet_filter.set_group(group)
        self.window.ungroup_action.setEnabled(group is not None and bool(self.selected_ids()))

    def selected_ids(self) -> list[int]:
        rows = self.window.fleet_table.selectionModel().selectedRows(0)
        return self.window.fleet_filter.device_ids(rows)

    def selected_views(self) -> list[DeviceView]:
        return [v for v in (self.window.fleet_model.view_of(i) for i in self.selected_ids()) if v is not None]

    def select_devices(self, device_ids: Sequence[int]) -> None:
        """Select exactly these devices in the table (what a click or Ctrl+click does)."""
        fleet_filter = self.window.fleet_filter
        selection = self.window.fleet_table.selectionModel()
        selection.clearSelection()
        wanted = set(device_ids)
        flags = (selection.SelectionFlag.Select | selection.SelectionFlag.Rows)
        for row in range(fleet_filter.rowCount()):
            index = fleet_filter.index(row, 0)
            if fleet_filter.data(index, DEVICE_ID_ROLE) in wanted:
                selection.select(index, flags)

    def on_selection_changed(self, *_args: object) -> None:
        self.update_actions()
        self._show_detail(fresh=True)

    def update_actions(self) -> None:
        """Enable the device actions the selection allows and the operator's roles permit (MainWindow.gate)."""
        window = self.window
        count = len(self.selected_ids())
        for action in window.device_menu_actions:
            window.gate(action, count > 0)
        window.gate(window.trust_action, count == 1)
        window.gate(window.ssh_action, count == 1)
        window.gate(window.rename_action, count == 1)
        window.gate(window.ungroup_action, count > 0 and window.fleet_filter.group is not None)

    def _show_detail(self, *, fresh: bool) -> None:
        """Show the one selected device; its pinned keys are read when it is chosen (or after a trust),
        not on every live update of its status."""
        self._detail_due = False
        views = self.selected_views()
        detail = self.window.detail
        if len(views) != 1:
            self._detail_id = None
            detail.show_device(None, match=None, host_keys=(), status="")
            return
        view = views[0]
        devices = self.bridge.devices
        if fresh or view.id != self._detail_id or view.trusted != (self._detail_keys != []):
            self._detail_keys = devices.host_keys(view.id)
        self._detail_id = view.id
        names = (view.id, view.device.name, view.device.address, view.device.mdns_names)
        if fresh or self._detail_ssh[0] != names:  # what applies follows the names the device goes by
            self._detail_ssh = (names, devices.ssh_config(view.device))
        detail.show_device(view.device, match=devices.profile_match(view.device),
                           host_keys=self._detail_keys, status=view.status, ssh_config=self._detail_ssh[1])

    def on_tab_changed(self, _index: int) -> None:
        # The device pane says nothing about models: the Models view gets its width.
        window = self.window
        window.detail.setHidden(window.tabs.currentWidget() in (window.models_view, window.rollouts_view))

    def on_context_menu(self, position: QPoint) -> None:
        table = self.window.fleet_table
        if not table.indexAt(position).isValid():
            return
        menu = QMenu(self.widget)
        for action in self.window.device_menu_actions:
            menu.addAction(action)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.popup(table.viewport().mapToGlobal(position))

    def on_alert_changed(self, event: AlertEvent) -> None:
        active = self.bridge.telemetry.alerts.active(event.device_id)
        self.window.fleet_model.set_alerts(event.device_id, [e.message for e in active.values()])

    def index_of(self, device_id: int) -> QModelIndex:
        fleet_filter = self.window.fleet_filter
        for row in range(fleet_filter.rowCount()):
            index = fleet_filter.index(row, 0)
            if fleet_filter.data(index, DEVICE_ID_ROLE) == device_id:
                return index
        return QModelIndex()
