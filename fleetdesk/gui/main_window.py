"""The operator's main window: groups and discovery on the left, the live fleet table, the device detail.

It wires widgets to the `FleetBridge`: every action becomes a bridge call (an Activity), every
bridge signal becomes a repaint. Layout (size, splitters, columns, tab, theme) is remembered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from PySide6.QtCore import QByteArray, QEvent, QModelIndex, QObject, QPoint, QSettings, Qt, QTimer
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDragMoveEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.discovery.mdns import NetworkInterface
from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.records import Group, HostKey
from fleetdesk.inventory.rollouts import RolloutRow
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.telemetry.alerts import AlertEvent, Threshold, thresholds_from_json, thresholds_to_json

from .activities import Activity
from .activity_view import ActivityView
from .alerts_dialog import ThresholdsDialog
from .bridge import STATUSES, DeviceView, FleetBridge, Login, TrustRequest
from .dashboard import Dashboard
from .device_detail import DeviceDetail
from .dialogs import AddDeviceDialog, Credentials, CredentialsDialog, NewDevice, SweepDialog, TrustDialog
from .dropping import DeployDialog, DropOverlay, DropPlan, plan_drop
from .fleet_model import DEVICE_ID_ROLE, STATUS_TEXT, FleetFilter, FleetTableModel, plain
from .icons import app_icon, icon
from .model_import import ImportDialog, ImportRequest
from .models_view import ModelsView
from .rollout_view import RolloutsView
from .rollout_wizard import RolloutWizard
from .side_panel import GROUP_ROLE, DiscoveryPanel, GroupTree
from .theme import apply_theme, current_theme


def dropped_paths(event: QDropEvent | QDragEnterEvent | QDragMoveEvent) -> list[str]:
    data = event.mimeData()
    if not data.hasUrls():
        return []
    return [url.toLocalFile() for url in data.urls()]


class MainWindow(QMainWindow):
    """See the module docstring. `shutdown()` is the one way out: it cancels work in order, then closes."""

    def __init__(self, bridge: FleetBridge, database: str, *, interfaces: Sequence[NetworkInterface] = (),
                 chosen_interfaces: Sequence[str] | None = None, browse_on_start: bool = False) -> None:
        super().__init__()
        self.bridge = bridge
        self.setObjectName("MainWindow")
        self.setWindowTitle("FleetDesk")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._dialogs: list[QDialog] = []
        self._icons: list[tuple[QAction, str]] = []  # re-drawn when the theme changes
        self._counting = False
        self._detail_id: int | None = None  # the device the detail pane shows
        self._detail_keys: list[HostKey] = []  # its pinned keys, read when it was chosen
        self._closing = False
        self._closed = False
        self._browse_on_start = browse_on_start
        self._pending_imports: list[tuple[str, list[DeviceView]]] = []  # dropped models waiting for their dialog
        self._import_dialog: ImportDialog | None = None
        stored = self._qsettings()
        if chosen_interfaces is None:
            remembered = stored.value("discovery/interfaces", [])
            chosen_interfaces = [str(a) for a in remembered] if isinstance(remembered, list) else []

        # -- the fleet table ---------------------------------------------------------------------------
        self.fleet_model = FleetTableModel(self)
        self.fleet_filter = FleetFilter(self)
        self.fleet_filter.setSourceModel(self.fleet_model)
        self.fleet_table = QTableView(self)
        self.fleet_table.setObjectName("FleetTable")
        self.fleet_table.setModel(self.fleet_filter)
        self.fleet_table.setSortingEnabled(True)
        self.fleet_table.sortByColumn(1, Qt.SortOrder.AscendingOrder)
        self.fleet_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.fleet_table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.fleet_table.setAlternatingRowColors(True)
        self.fleet_table.setDragEnabled(True)
        self.fleet_table.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.fleet_table.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.fleet_table.verticalHeader().setVisible(False)
        self.fleet_table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.fleet_table.customContextMenuRequested.connect(self._context_menu)
        header = self.fleet_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setDefaultSectionSize(104)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setStretchLastSection(True)
        header.setSectionsMovable(True)
        # Files dragged from a file manager onto rows go to those devices (the view itself only drags rows out).
        self.fleet_table.viewport().setAcceptDrops(True)
        self.fleet_table.viewport().installEventFilter(self)

        self.search = QLineEdit(self)
        self.search.setObjectName("FleetSearch")
        self.search.setPlaceholderText("Filter by name, address, profile, OS… (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.fleet_filter.set_text)
        self.status_filter = QComboBox(self)
        self.status_filter.setObjectName("StatusFilter")
        self.status_filter.addItem("Any status", None)
        for status in STATUSES:
            self.status_filter.addItem(STATUS_TEXT[status], status)
        self.status_filter.currentIndexChanged.connect(
            lambda _n: self.fleet_filter.set_status(self.status_filter.currentData()))
        self.empty_hint = QLabel(
            "No devices yet. Start discovery to find devices announcing themselves on this network, "
            "add one by hostname (Ctrl+N) or sweep an address range (Ctrl+Shift+S).", self)
        self.empty_hint.setObjectName("EmptyHint")
        self.empty_hint.setWordWrap(True)

        fleet_page = QWidget(self)
        fleet_layout = QVBoxLayout(fleet_page)
        fleet_layout.setContentsMargins(0, 0, 0, 0)
        filters = QHBoxLayout()
        filters.addWidget(self.search, 1)
        filters.addWidget(self.status_filter)
        fleet_layout.addLayout(filters)
        fleet_layout.addWidget(self.fleet_table, 1)
        fleet_layout.addWidget(self.empty_hint)

        self.models_view = ModelsView(self)
        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("MainTabs")
        self.tabs.addTab(fleet_page, icon("probe"), "Fleet")
        self.tabs.addTab(self.models_view, icon("model"), "Models")
        self.dashboard = Dashboard(bridge.telemetry, bridge.alerts, self)
        self.tabs.addTab(self.dashboard, "Telemetry")
        self.rollouts_view = RolloutsView(self)
        self.tabs.addTab(self.rollouts_view, "Rollouts")
        self._wizard: RolloutWizard | None = None
        self.recovery_box: QMessageBox | None = None

        # -- side panels ---------------------------------------------------------------------------------
        self.group_tree = GroupTree(self)
        self.group_tree.viewport().installEventFilter(self)  # files dropped on a group: deploy to its members
        self.discovery_panel = DiscoveryPanel(interfaces, chosen_interfaces, self)
        left = QSplitter(Qt.Orientation.Vertical, self)
        left.setObjectName("LeftSplitter")
        left.addWidget(self.group_tree)
        left.addWidget(self.discovery_panel)
        self.detail = DeviceDetail(self)
        self.activity_view = ActivityView(bridge.activities, self)

        self.h_splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.h_splitter.setObjectName("MainSplitter")
        self.h_splitter.addWidget(left)
        self.h_splitter.addWidget(self.tabs)
        self.h_splitter.addWidget(self.detail)
        self.h_splitter.setStretchFactor(1, 1)
        self.h_splitter.setSizes([210, 790, 280])
        self.v_splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.v_splitter.setObjectName("ActivitySplitter")
        self.v_splitter.addWidget(self.h_splitter)
        self.v_splitter.addWidget(self.activity_view)
        self.v_splitter.setStretchFactor(0, 1)
        self.v_splitter.setSizes([520, 180])
        self.left_splitter = left
        self.setCentralWidget(self.v_splitter)
        self.drop_overlay = DropOverlay(self.v_splitter)

        self._build_actions()
        self._build_status_bar(database)

        # -- wiring ----------------------------------------------------------------------------------------
        bridge.devices_reset.connect(self._devices_reset)
        bridge.device_changed.connect(self._device_changed)
        bridge.device_removed.connect(self._device_removed)
        bridge.groups_changed.connect(self._groups_changed)
        bridge.browsing_changed.connect(self._browsing_changed)
        bridge.trust_requested.connect(self.open_trust_dialog)
        bridge.model_imported.connect(self.models_view.add_record)
        bridge.models_changed.connect(self.models_view.set_records)
        bridge.model_removed.connect(self.models_view.remove_record)
        self.models_view.import_requested.connect(lambda: self.open_import_dialog())
        self.models_view.verify_requested.connect(self.verify_model)
        self.models_view.export_requested.connect(self.open_export_dialog)
        self.models_view.remove_requested.connect(self.confirm_remove_model)
        self.models_view.export_key_requested.connect(self.open_export_key_dialog)
        # "Roll out…" beside the Models view's own buttons (after Remove): the selected model's rollout wizard.
        self.models_rollout_button = QPushButton("Roll out…", self.models_view)
        self.models_rollout_button.setObjectName("ModelsRollOut")
        self.models_rollout_button.setToolTip("Roll the selected model out to devices in waves, with health gates")
        self.models_rollout_button.setStyleSheet("min-width: 0px; padding-left: 10px; padding-right: 10px;")
        self.models_rollout_button.clicked.connect(
            lambda: self.open_rollout_wizard(self.models_view.selected_ref()))
        for row in self.models_view.findChildren(QHBoxLayout):
            if row.indexOf(self.models_view.remove_button) >= 0:
                row.insertWidget(row.indexOf(self.models_view.remove_button) + 1, self.models_rollout_button)
                break
        bridge.rollouts_changed.connect(self.rollouts_view.set_rollouts)
        bridge.rollout_detail.connect(self._rollout_detail)
        bridge.rollout_event.connect(self.rollouts_view.add_event)
        bridge.rollout_started.connect(self._rollout_started)
        self.rollouts_view.rollout_chosen.connect(self.bridge.watch_rollout)
        self.rollouts_view.action_requested.connect(self.rollout_action)
        self.rollouts_view.wizard_requested.connect(lambda: self.open_rollout_wizard())
        bridge.notice.connect(lambda text: self.statusBar().showMessage(text, 10000))
        bridge.activities.added.connect(self._activity_added)
        bridge.activities.finished.connect(self._activity_finished)
        self.group_tree.group_chosen.connect(self._group_chosen)
        self.group_tree.devices_dropped.connect(self._devices_dropped_on_group)
        self.discovery_panel.browse_toggled.connect(self.set_browsing)
        self.discovery_panel.interfaces_changed.connect(self._interfaces_changed)
        self.discovery_panel.add_requested.connect(self.open_add_dialog)
        self.discovery_panel.sweep_requested.connect(self.open_sweep_dialog)
        self.detail.probe_requested.connect(lambda device_id: self.bridge.probe([device_id]))
        self.detail.trust_requested.connect(self.bridge.request_trust)
        bridge.alert_event.connect(self.dashboard.add_alert)
        bridge.alert_event.connect(self._alert_changed)
        bridge.stream_changed.connect(lambda v: self.dashboard.set_stream_state(v.device_id, v.text, v.live, v.detail))
        self.dashboard.stream_requested.connect(self.set_streaming)
        self.dashboard.thresholds_requested.connect(self.open_thresholds_dialog)
        self._restore_thresholds()
        self.fleet_table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.tabs.currentChanged.connect(self._tab_changed)
        for signal in (self.fleet_model.rowsInserted, self.fleet_model.rowsRemoved, self.fleet_model.modelReset,
                       self.fleet_model.dataChanged):
            signal.connect(self._counts_changed)
        self.resize(1280, 800)
        self._restore_layout()

    # -- building ------------------------------------------------------------------------------------------

    def _action(self, text: str, slot: object,
                shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None, icon_name: str = "",
                tip: str = "") -> QAction:
        action = QAction(text, self)
        if icon_name:
            action.setIcon(icon(icon_name))
            self._icons.append((action, icon_name))
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            action.setToolTip(f"{tip} ({action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)})"
                              if shortcut else tip)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.browse_action = self._action("Discovery", lambda on: self.set_browsing(bool(on)), "Ctrl+B", "discover",
                                          "Start or stop listening for devices by mDNS")
        self.browse_action.setCheckable(True)
        self.add_action = self._action("Add device…", self.open_add_dialog, "Ctrl+N", "add-device",
                                       "Add a device by hostname or address")
        self.sweep_action = self._action("Sweep network…", self.open_sweep_dialog, "Ctrl+Shift+S", "sweep",
                                         "Look for SSH servers across an address range")
        self.probe_action = self._action("Probe", self.probe_selected, "Ctrl+R", "probe",
                                         "Identify the selected devices and match their profiles")
        self.trust_action = self._action("Trust…", self.trust_selected, "Ctrl+T", "trust",
                                         "Check and trust the selected device's host key")
        self.login_action = self._action("Credentials…", self.open_credentials_dialog, "Ctrl+L", "credentials",
                                         "Set the user, key file or password for the selected devices")
        self.provision_action = self._action("Provision runtime", self.provision_selected, "Ctrl+Shift+P", "",
                                             "Install the inference runtime and the agent on the selected devices "
                                             "(only what is missing is sent)")
        self.group_action = self._action("Add to group…", self.open_group_dialog, "Ctrl+G", "group",
                                         "Put the selected devices in a group")
        self.ungroup_action = self._action("Remove from this group", self.remove_from_current_group, None, "",
                                           "Take the selected devices out of the group shown")
        self.ssh_action = self._action("Copy SSH command", self.copy_ssh_command, "Ctrl+Shift+C", "terminal",
                                       "Copy the ssh command line that opens a terminal on the device")
        self.remove_action = self._action("Remove from inventory", self.remove_selected,
                                          QKeySequence.StandardKey.Delete, "remove", "Forget the selected devices")
        self.import_action = self._action("Import model…", lambda: self.open_import_dialog(), "Ctrl+O", "model",
                                          "Import an .onnx model and optimize it for the fleet's profiles")
        self.stream_action = self._action("Stream telemetry", lambda: self.set_streaming(self.selected_ids(), True),
                                          "Ctrl+Shift+T", "", "Stream live telemetry from the selected devices")
        self.unstream_action = self._action("Stop telemetry", lambda: self.set_streaming(self.selected_ids(), False),
                                            None, "", "Stop the selected devices' telemetry streams")
        self.thresholds_action = self._action("Alert thresholds…", self.open_thresholds_dialog, None, "",
                                              "Set the bounds that raise telemetry alerts")
        self.rollout_wizard_action = self._action("Roll out…", lambda: self.open_rollout_wizard(), "Ctrl+Shift+R", "",
                                            "Roll a model out to devices in waves, with health gates")
        self.recover_action = self._action("Recover rollouts left running", lambda: self.bridge.recover_rollouts(),
                                           None, "", "Ask the devices of rollouts a crash left running where they "
                                           "are, then continue them")
        self.find_action = self._action("Filter devices", lambda: self.search.setFocus(), "Ctrl+F")
        self.quit_action = self._action("Quit", self.close, QKeySequence.StandardKey.Quit)
        self.dark_action = self._action("Dark theme", lambda on: self.set_theme("dark" if on else "light"),
                                        "Ctrl+Shift+D")
        self.dark_action.setCheckable(True)
        self.dark_action.setChecked(current_theme() == "dark")
        self.device_actions = (self.probe_action, self.trust_action, self.login_action, self.provision_action,
                               self.group_action,
                               self.ungroup_action, self.ssh_action, self.stream_action, self.unstream_action,
                               self.remove_action)

        menus = self.menuBar()
        file_menu = menus.addMenu("&File")
        file_menu.addAction(self.import_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        fleet_menu = menus.addMenu("F&leet")
        for action in (self.browse_action, self.add_action, self.sweep_action):
            fleet_menu.addAction(action)
        device_menu = menus.addMenu("&Device")
        for action in self.device_actions:
            device_menu.addAction(action)
        rollout_menu = menus.addMenu("&Rollouts")
        rollout_menu.addAction(self.rollout_wizard_action)
        rollout_menu.addAction(self.recover_action)
        view_menu = menus.addMenu("&View")
        view_menu.addAction(self.find_action)
        view_menu.addAction(self.dark_action)
        view_menu.addAction(self.thresholds_action)

        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("MainToolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        toolbar.setMovable(False)
        for action in (self.browse_action, self.add_action, self.sweep_action):
            toolbar.addAction(action)
        toolbar.addSeparator()
        for action in (self.probe_action, self.trust_action, self.login_action, self.group_action):
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addAction(self.import_action)
        self._update_actions()

    def _build_status_bar(self, database: str) -> None:
        self.database_label = QLabel(f"Database: {database}", self)
        self.database_label.setObjectName("DatabaseLabel")
        self.devices_label = QLabel("Devices online: 0 / 0", self)
        self.devices_label.setObjectName("DevicesLabel")
        self.activity_label = QLabel("Idle", self)
        self.activity_label.setObjectName("ActivityLabel")
        self.statusBar().addWidget(self.database_label, 1)
        self.statusBar().addPermanentWidget(self.activity_label)
        self.statusBar().addPermanentWidget(self.devices_label)

    # -- starting up ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the inventory, then begin browsing if asked to: the window is on screen meanwhile."""
        await self.bridge.load()
        self.bridge.load_models()
        self.bridge.load_rollouts(then=self.offer_recovery)
        if self._browse_on_start:
            self.set_browsing(True)

    # -- the fleet table -----------------------------------------------------------------------------------

    def _devices_reset(self, views: list[DeviceView]) -> None:
        self.fleet_model.reset(views)
        ordered = sorted(views, key=lambda v: v.device.name.casefold())
        self.dashboard.set_devices([(v.id, v.device.name, v.status) for v in ordered])
        self._counts_changed()

    def _device_changed(self, view: DeviceView) -> None:
        self.fleet_model.upsert(view)
        self.dashboard.upsert(view.id, view.device.name, view.status)
        if view.id == self._detail_id:
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

    def selected_ids(self) -> list[int]:
        rows = self.fleet_table.selectionModel().selectedRows(0)
        return self.fleet_filter.device_ids(rows)

    def selected_views(self) -> list[DeviceView]:
        return [v for v in (self.fleet_model.view_of(i) for i in self.selected_ids()) if v is not None]

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
        views = self.selected_views()
        if len(views) != 1:
            self._detail_id = None
            self.detail.show_device(None, match=None, host_keys=(), status="")
            return
        view = views[0]
        if fresh or view.id != self._detail_id or view.trusted != (self._detail_keys != []):
            self._detail_keys = self.bridge.host_keys(view.id)
        self._detail_id = view.id
        self.detail.show_device(view.device, match=self.bridge.profile_match(view.device),
                                host_keys=self._detail_keys, status=view.status)

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

    # -- operator actions ------------------------------------------------------------------------------------

    def set_browsing(self, on: bool) -> None:
        if on and not self.bridge.browsing:
            self.bridge.start_browsing(self.discovery_panel.chosen_interfaces())
        elif not on:
            self.bridge.stop_browsing()
        self.browse_action.setChecked(on)

    def _browsing_changed(self, on: bool) -> None:
        self.discovery_panel.set_browsing(on)
        self.browse_action.setChecked(on)

    def _interfaces_changed(self, addresses: list[str]) -> None:
        self._qsettings().setValue("discovery/interfaces", addresses)

    def probe_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.bridge.probe(ids)

    def provision_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.bridge.provision(ids)

    def trust_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1:
            self.bridge.request_trust(ids[0])

    def _alert_changed(self, event: AlertEvent) -> None:
        active = self.bridge.alerts.active(event.device_id)
        self.fleet_model.set_alerts(event.device_id, [e.message for e in active.values()])

    def set_streaming(self, device_ids: Sequence[int], on: bool) -> None:
        """Start (or stop) telemetry for these devices, every trusted one if none; shows the dashboard."""
        try:
            if on:
                self.bridge.start_streaming(device_ids)
                self.tabs.setCurrentWidget(self.dashboard)
            else:
                self.bridge.stop_streaming(device_ids)
        except FleetDeskError as exc:
            self.statusBar().showMessage(str(exc), 15000)

    def open_thresholds_dialog(self) -> ThresholdsDialog:
        dialog = ThresholdsDialog(self.bridge.alerts.thresholds, self)
        dialog.submitted.connect(self.set_thresholds)
        self._keep(dialog)
        return dialog

    def set_thresholds(self, thresholds: list[Threshold]) -> None:
        """Use and remember (QSettings) the operator's alert thresholds."""
        self.bridge.set_thresholds(thresholds)
        self._qsettings().setValue("telemetry/thresholds", thresholds_to_json(thresholds))
        self.dashboard.thresholds_changed()

    def _restore_thresholds(self) -> None:
        stored = self._qsettings().value("telemetry/thresholds")
        if not isinstance(stored, str) or not stored:
            self.dashboard.thresholds_changed()
            return
        try:
            thresholds = thresholds_from_json(stored)
        except FleetDeskError as exc:
            self.statusBar().showMessage(f"Alert thresholds: {exc}; using the defaults", 15000)
            self.dashboard.thresholds_changed()
            return
        self.bridge.set_thresholds(thresholds)
        self.dashboard.thresholds_changed()

    def _keep(self, dialog: QDialog) -> QDialog:
        # Dialogs are opened with open() (never exec() in a coroutine) and kept until they finish.
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._dialogs.append(dialog)
        dialog.finished.connect(lambda _r, d=dialog: self._dialogs.remove(d) if d in self._dialogs else None)
        dialog.open()
        return dialog

    def open_trust_dialog(self, request: TrustRequest) -> TrustDialog:
        device = request.device
        dialog = TrustDialog(device.name, request.presented, request.pinned, device.address, self)
        dialog.trusted.connect(lambda fingerprint: self.bridge.trust(device.id, fingerprint))
        self._keep(dialog)
        return dialog

    def open_credentials_dialog(self) -> None:
        views = self.selected_views()
        if not views:
            return
        self._credentials_task = asyncio.ensure_future(self._open_credentials(views))

    async def _open_credentials(self, views: list[DeviceView]) -> CredentialsDialog:
        status = await self.bridge.keyring_status()  # may wait on D-Bus: off the loop
        first = views[0].device
        dialog = CredentialsDialog([v.device.name for v in views], first.username, status,
                                   first.identity_file or "", self)
        ids = [v.id for v in views]

        def submitted(credentials: Credentials) -> None:
            self.bridge.set_login(ids, Login(credentials.username, credentials.key_file, credentials.password))

        dialog.submitted.connect(submitted)
        self._keep(dialog)
        return dialog

    def open_add_dialog(self) -> AddDeviceDialog:
        dialog = AddDeviceDialog(self)

        def submitted(new: NewDevice) -> None:
            self.bridge.add_device(new.host, port=new.port, username=new.username, name=new.name,
                                   interfaces=self.discovery_panel.chosen_interfaces() or None)

        dialog.submitted.connect(submitted)
        self._keep(dialog)
        return dialog

    def open_sweep_dialog(self) -> SweepDialog:
        dialog = SweepDialog(parent=self)
        dialog.confirmed.connect(lambda cidr, port: self.bridge.sweep(cidr, port))
        self._keep(dialog)
        return dialog

    def open_group_dialog(self) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Add to group")
        dialog.setLabelText(f"Put {len(ids)} device(s) in the group:")
        dialog.setComboBoxEditable(True)
        dialog.setComboBoxItems([g.name for g in self.bridge.groups()] or ["line A"])
        dialog.textValueSelected.connect(lambda name: self.bridge.change_group(ids, name))
        self._keep(dialog)

    def remove_from_current_group(self) -> None:
        ids, group = self.selected_ids(), self.fleet_filter.group
        if ids and group is not None:
            self.bridge.change_group(ids, group, remove=True)

    def _devices_dropped_on_group(self, ids: list[int], group: str, move: bool) -> None:
        source = self.fleet_filter.group
        self.bridge.change_group(ids, group)
        if move and source is not None and source != group:
            self.bridge.change_group(ids, source, remove=True)

    def copy_ssh_command(self) -> str:
        ids = self.selected_ids()
        if len(ids) != 1:
            return ""
        command = self.bridge.ssh_command(ids[0])
        QGuiApplication.clipboard().setText(command)
        self.statusBar().showMessage(f"Copied: {command}", 8000)
        return command

    def remove_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.bridge.remove_devices(ids)

    def open_import_dialog(self, path: str = "", targets: Sequence[DeviceView] = ()) -> ImportDialog:
        """The import dialog for `path` (empty: the operator browses); with `targets`, the deployment to them
        opens once the import succeeded. Dropped models beyond the first wait for this dialog to finish."""
        target_list = list(targets)
        ids = [v.id for v in target_list]
        fleet_profiles = self.bridge.fleet_profiles(ids) or (self.bridge.fleet_profiles() if not ids else [])
        dialog = ImportDialog(path, profiles=self.bridge.profile_names(), fleet_profiles=fleet_profiles,
                              can_time_on_devices=bool(self.bridge.bench_devices(self.bridge.profile_names())),
                              parent=self)
        if target_list:
            names = ", ".join(plain(v.device.name) for v in target_list[:4]) + (" …" if len(target_list) > 4 else "")
            dialog.setWindowTitle(f"Import model, then deploy to {names}")

        def submitted(request: ImportRequest) -> None:
            self.import_model(request, target_list)

        dialog.submitted.connect(submitted)
        dialog.finished.connect(self._next_import)
        self._import_dialog = dialog
        self._keep(dialog)
        return dialog

    def _next_import(self, *_args: object) -> None:
        self._import_dialog = None
        if self._pending_imports:
            path, targets = self._pending_imports.pop(0)
            # After this dialog has gone (finished fires inside its close).
            QTimer.singleShot(0, lambda: self.open_import_dialog(path, targets))

    def import_model(self, request: ImportRequest, targets: Sequence[DeviceView] = ()) -> Activity:
        """Run the import as an activity; on success the Models view selects the new record (and, for a drop on
        devices, the deployment opens); on failure the operator reads the problem and the fix."""
        target_list = list(targets)

        def imported(record: ModelRecord) -> None:
            # The view already shows and selects it (bridge.model_imported); a drop on devices goes on to deploy.
            if target_list:
                self.open_rollout_wizard(record.ref, [v.id for v in target_list])
            else:
                self.tabs.setCurrentWidget(self.models_view)

        activity = self.bridge.import_model(request.path, name=request.name, version=request.version,
                                            samples=request.samples, profiles=request.profiles,
                                            time_on_devices=request.time_on_devices, then=imported)
        activity.changed.connect(lambda: self._import_changed(activity))
        return activity

    def _import_changed(self, activity: Activity) -> None:
        if activity.state == "failed" and activity.error is not None and not getattr(activity, "_told", False):
            activity._told = True  # type: ignore[attr-defined]
            error = activity.error
            box = QMessageBox(QMessageBox.Icon.Warning, activity.title, f"The model was not imported: {error.message}",
                              QMessageBox.StandardButton.Ok, self)
            box.setObjectName("ImportFailed")
            box.setTextFormat(Qt.TextFormat.PlainText)
            if error.fix:
                box.setInformativeText(f"Fix: {error.fix}")
            self._keep(box)

    def verify_model(self, ref: str) -> Activity:
        return self.bridge.verify_models(ref, then=self.models_view.show_verify)

    def open_export_dialog(self, ref: str) -> QFileDialog | None:
        if not ref:
            return None
        dialog = QFileDialog(self, f"Export {ref}")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setNameFilter("Tar archives (*.tar)")
        dialog.setDefaultSuffix("tar")
        dialog.selectFile(ref.replace("@", "-") + ".tar")
        dialog.fileSelected.connect(lambda dest: self.bridge.export_model(ref, dest))
        self._keep(dialog)
        return dialog

    def open_export_key_dialog(self) -> QFileDialog:
        dialog = QFileDialog(self, "Export the fleet's public signing key")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setNameFilter("PEM public keys (*.pub *.pem)")
        dialog.selectFile("fleet.pub")
        dialog.fileSelected.connect(self.bridge.export_public_key)
        self._keep(dialog)
        return dialog

    def confirm_remove_model(self, ref: str) -> QMessageBox | None:
        if not ref:
            return None
        box = QMessageBox(QMessageBox.Icon.Question, f"Remove {ref}",
                          f"Remove {ref} and its artifacts from the store on this computer?",
                          QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("ConfirmRemoveModel")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setInformativeText("Devices that already have it keep their copy. This cannot be undone; export it "
                               "first to keep a copy.")
        remove = box.addButton("Remove", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.buttonClicked.connect(lambda button: self.bridge.remove_model(ref) if button is remove else None)
        self._keep(box)
        return box

    def set_theme(self, name: str) -> None:
        app = QApplication.instance()
        assert isinstance(app, QApplication)
        apply_theme(app, name)
        self._qsettings().setValue("main/theme", name)
        self.dark_action.setChecked(name == "dark")
        for action, icon_name in self._icons:  # icons have a light and a dark drawing
            action.setIcon(icon(icon_name))
        self.tabs.setTabIcon(0, icon("probe"))
        self.tabs.setTabIcon(1, icon("model"))
        self.models_view.refresh_theme()
        self.discovery_panel.refresh_icons()
        self.dashboard.refresh_theme()
        self.rollouts_view.refresh_theme()

    # -- drag and drop ----------------------------------------------------------------------------------------

    def _targets_at(self, watched: QObject, position: QPoint) -> list[DeviceView] | None:
        """The devices a drop at `position` goes to: the row's selection, a group's members, or None."""
        if watched is self.fleet_table.viewport():
            index = self.fleet_table.indexAt(position)
            if not index.isValid():
                return None
            device_id = self.fleet_filter.data(index.siblingAtColumn(0), DEVICE_ID_ROLE)
            selected = self.selected_ids()
            ids = selected if device_id in selected else [device_id]
            return [v for v in (self.fleet_model.view_of(i) for i in ids) if v is not None]
        if watched is self.group_tree.viewport():
            item = self.group_tree.itemAt(position)
            group = item.data(0, GROUP_ROLE) if item is not None else None
            if not group:
                return None
            return [v for v in self.fleet_model.views() if group in v.device.groups]
        return None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop) and isinstance(
                event, (QDragEnterEvent, QDragMoveEvent, QDropEvent)) and event.mimeData().hasUrls():
            plan = plan_drop(dropped_paths(event), self._targets_at(watched, event.position().toPoint()))
            if kind == QEvent.Type.Drop:
                self.drop_overlay.hide()
                event.acceptProposedAction()
                self.handle_drop(plan)
            else:
                self.drop_overlay.show_plan(plan)
                # Accept even a refused plan, so the drop arrives and the operator is told why not.
                event.acceptProposedAction()
            return True
        if kind == QEvent.Type.DragLeave:
            self.drop_overlay.hide()
        return super().eventFilter(watched, event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            self.drop_overlay.show_plan(plan_drop(dropped_paths(event)))
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls():
            self.drop_overlay.show_plan(plan_drop(dropped_paths(event)))
            event.acceptProposedAction()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self.drop_overlay.hide()

    def dropEvent(self, event: QDropEvent) -> None:
        self.drop_overlay.hide()
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
            self.handle_drop(plan_drop(dropped_paths(event)))

    def handle_drop(self, plan: DropPlan) -> ImportDialog | None:
        """Open the import dialog for each dropped model in turn; dropped on devices, each successful import
        then opens the deployment for exactly those devices."""
        if not plan.accepted:
            self.statusBar().showMessage(plan.message, 15000)
            self.last_refusal = plan.message
            return None
        if plan.refused:
            self.statusBar().showMessage("Skipped: " + "; ".join(plan.refused), 15000)
        targets = [v for v in (self.fleet_model.view_of(i) for i in plan.targets) if v is not None]
        self._pending_imports.extend((path, targets) for path in plan.models)
        if self._import_dialog is not None:
            return self._import_dialog  # the others open when this one is done
        path, first_targets = self._pending_imports.pop(0)
        return self.open_import_dialog(path, first_targets)

    def open_deploy_dialog(self, records: list[ModelRecord], targets: list[DeviceView]) -> DeployDialog:
        dialog = DeployDialog(records, targets, self)

        def confirmed(chosen: list[ModelRecord], ids: list[int]) -> None:
            for record in chosen:
                self.bridge.push_artifacts(record, ids, title=f"Deploy {record.ref}")

        dialog.confirmed.connect(confirmed)
        self._keep(dialog)
        return dialog

    # -- rollouts -------------------------------------------------------------------------------------------------

    def open_rollout_wizard(self, model: str = "", device_ids: Sequence[int] = (), group: str = ""
                            ) -> RolloutWizard | None:
        """The rollout wizard (non-modal) for `model` (default: the newest) and the chosen targets (default: the
        selected devices, else the group shown)."""
        records = self.models_view.records()
        if not records:
            self.statusBar().showMessage("No model to roll out yet: import one first (Ctrl+O).", 10000)
            return None
        if not device_ids and not group:
            device_ids = self.selected_ids()
            if not device_ids and self.fleet_filter.group is not None:
                group = self.fleet_filter.group
        devices = [v.device for v in self.fleet_model.views()]
        wizard = RolloutWizard(records, devices, self.bridge.groups(), self.bridge.artifact_store(), model=model,
                               device_ids=device_ids, group=group, parent=self)
        wizard.start_requested.connect(
            lambda plan, run: self.start_rollout(plan, run, [d.device_id for d in wizard.resolved.devices]
                                                 if wizard.resolved is not None else []))
        wizard.push_requested.connect(
            lambda record, ids: self.bridge.push_artifacts(record, ids, title=f"Deploy {record.ref}"))
        wizard.finished.connect(lambda _r: setattr(self, "_wizard", None))
        self._wizard = wizard
        # Shown on the next pass of the loop: building it and laying it out in one pass would hold the loop.
        QTimer.singleShot(0, lambda: self._keep(wizard) if not self._closing else wizard.deleteLater())
        return wizard

    def start_rollout(self, plan: RolloutPlan, run: bool = True, device_ids: Sequence[int] = ()) -> Activity:
        self.tabs.setCurrentWidget(self.rollouts_view)
        return self.bridge.start_rollout(plan, device_ids, run=run)

    def rollout_action(self, action: str, rollout_id: int, options: object = None) -> Activity:
        return self.bridge.rollout_action(action, rollout_id, options if isinstance(options, dict) else None)

    def _rollout_started(self, rollout_id: int) -> None:
        self.rollouts_view.select(rollout_id)

    def _rollout_detail(self, detail: object) -> None:
        self.rollouts_view.show_detail(detail)  # type: ignore[arg-type]

    def offer_recovery(self, rows: list[RolloutRow]) -> QMessageBox | None:
        """Rollouts a crash left running (no process drives them): offer to recover and continue them."""
        left = [r for r in rows if r.status == "running" and not self.bridge.rollout_running_here(r.id)]
        if not left:
            return None
        names = ", ".join(f"{r.id} ({r.model_ref})" for r in left[:5]) + (" …" if len(left) > 5 else "")
        box = QMessageBox(QMessageBox.Icon.Question, "Rollouts left running",
                          f"{'Rollout' if len(left) == 1 else 'Rollouts'} {names} {'was' if len(left) == 1 else 'were'}"
                          " still running when FleetDesk stopped.", QMessageBox.StandardButton.NoButton, self)
        box.setObjectName("RecoverRollouts")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setInformativeText("Recover asks each device that may have switched which model it really runs, "
                               "writes that to the journal and continues without re-sending what a device already "
                               "has. Later leaves them as they are (Rollouts ▸ Recover rollouts left running).")
        recover = box.addButton("Recover and continue", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Later", QMessageBox.ButtonRole.RejectRole)
        box.buttonClicked.connect(lambda button: self.bridge.recover_rollouts() if button is recover else None)
        self.recovery_box = box
        self._keep(box)
        return box

    # -- activities in the status bar ----------------------------------------------------------------------

    def _activity_added(self, _activity: Activity) -> None:
        self._show_running()

    def _activity_finished(self, activity: Activity) -> None:
        self._show_running()
        if activity.error is not None:
            self.statusBar().showMessage(f"{activity.title}: {activity.error}", 15000)

    def _show_running(self) -> None:
        running = self.bridge.activities.running()
        if not running:
            self.activity_label.setText("Idle")
        elif len(running) == 1:
            self.activity_label.setText(f"Working: {plain(running[0].title)}")
        else:
            self.activity_label.setText(f"{len(running)} operations running")

    # -- layout and quitting -----------------------------------------------------------------------------------

    @staticmethod
    def _qsettings() -> QSettings:
        return QSettings("FleetDesk", "FleetDesk")

    def _restore_layout(self) -> None:
        stored = self._qsettings()
        for key, restore in (("main/geometry", self.restoreGeometry),
                             ("main/fleet_header", self.fleet_table.horizontalHeader().restoreState),
                             ("main/splitter", self.h_splitter.restoreState),
                             ("main/activity_splitter", self.v_splitter.restoreState),
                             ("main/left_splitter", self.left_splitter.restoreState),
                             ("main/dashboard_splitter", self.dashboard.splitter.restoreState)):
            value = stored.value(key)
            if isinstance(value, QByteArray):
                restore(value)
        self.models_view.restore_layout(stored)
        tab = stored.value("main/tab")
        if tab is not None:
            self.tabs.setCurrentIndex(int(tab))
        self._tab_changed(self.tabs.currentIndex())

    def save_layout(self) -> None:
        stored = self._qsettings()
        stored.setValue("main/geometry", self.saveGeometry())
        stored.setValue("main/fleet_header", self.fleet_table.horizontalHeader().saveState())
        hidden = self.detail.isHidden()
        self.detail.setHidden(False)  # saved as the Fleet tab shows it, not collapsed by the Models tab
        stored.setValue("main/splitter", self.h_splitter.saveState())
        self.detail.setHidden(hidden)
        stored.setValue("main/activity_splitter", self.v_splitter.saveState())
        stored.setValue("main/left_splitter", self.left_splitter.saveState())
        stored.setValue("main/dashboard_splitter", self.dashboard.splitter.saveState())
        self.models_view.save_layout(stored)
        stored.setValue("main/tab", self.tabs.currentIndex())
        stored.sync()

    async def shutdown(self) -> None:
        """Save the layout, cancel every activity newest first, close SSH and the inventory, then close."""
        if self._closing:
            return
        self._closing = True
        self.save_layout()
        for dialog in list(self._dialogs):
            dialog.reject()
        self.dashboard.shutdown()
        await self.bridge.close()
        self._closed = True
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closed:
            event.accept()
            return
        # Closing first ends the background work, in order; the window closes when that is done.
        event.ignore()
        if not self._closing:
            self._shutdown_task = asyncio.ensure_future(self.shutdown())

    def index_of(self, device_id: int) -> QModelIndex:
        for row in range(self.fleet_filter.rowCount()):
            index = self.fleet_filter.index(row, 0)
            if self.fleet_filter.data(index, DEVICE_ID_ROLE) == device_id:
                return index
        return QModelIndex()
