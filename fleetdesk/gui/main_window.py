"""The operator's main window: groups and discovery on the left, the live fleet table, the device detail.

It wires widgets to the `FleetBridge`: every action becomes a bridge call (an Activity), every
bridge signal becomes a repaint. Layout (size, splitters, columns, tab, theme) is remembered. What the window
does lives in its parts, child objects it makes over the widgets it builds: `fleet_pane` (window_fleet),
`device_actions` (window_devices), `model_actions` (window_models) and `drops` (window_drops).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDragMoveEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.access.roles import PERMISSIONS, allows, granting_roles
from fleetdesk.discovery.mdns import NetworkInterface

from .activities import Activity
from .activity_view import ActivityView
from .audit_dialog import AuditDialog, entry_cells
from .bridge import FleetBridge
from .bridge_views import STATUSES
from .dashboard import Dashboard
from .device_detail import DeviceDetail
from .dropping import DropOverlay
from .fleet_model import STATUS_TEXT, FleetFilter, FleetTableModel, plain
from .icons import app_icon, icon
from .models_view import ModelsView
from .reports_dialog import ReportsDialog
from .rollout_view import RolloutsView
from .side_panel import DiscoveryPanel, GroupTree
from .text import tooltip_text
from .theme import apply_theme, current_theme
from .window_devices import DeviceActions
from .window_drops import DropTargets
from .window_fleet import FleetPane
from .window_models import ModelActions
from .window_part import qsettings, store_settings


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
        self.denied: dict[QAction, str] = {}  # actions the operator's roles do not allow, and why
        self._icons: list[tuple[QAction, str]] = []  # re-drawn when the theme changes
        self._closing = False
        self._closed = False
        self._browse_on_start = browse_on_start
        stored = qsettings()
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
        header = self.fleet_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setDefaultSectionSize(104)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setStretchLastSection(True)
        header.setSectionsMovable(True)
        for column in range(header.count()):  # no header cut short, the sort arrow included
            header.resizeSection(column, max(header.defaultSectionSize(), header.sectionSizeHint(column)))
        # Files dragged from a file manager onto rows go to those devices (the view itself only drags rows out;
        # the drops part filters the viewport's drag events).
        self.fleet_table.viewport().setAcceptDrops(True)

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
        self.dashboard = Dashboard(bridge.telemetry.store, bridge.telemetry.alerts, self)
        self.tabs.addTab(self.dashboard, "Telemetry")
        self.rollouts_view = RolloutsView(self)
        self.tabs.addTab(self.rollouts_view, "Rollouts")

        # -- side panels ---------------------------------------------------------------------------------
        self.group_tree = GroupTree(self)
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
        self.drop_overlay = DropOverlay(self, anchor=self.v_splitter)

        # -- the parts: what the window does, over the widgets above ------------------------------------------
        self.fleet_pane = FleetPane(self)
        self.device_actions = DeviceActions(self, self.fleet_pane)
        self.model_actions = ModelActions(self, self.fleet_pane)
        self.drops = DropTargets(self, self.fleet_pane, self.model_actions)

        self._build_actions()
        self._build_status_bar(database)

        # -- wiring ----------------------------------------------------------------------------------------
        fleet_pane, devices, models = self.fleet_pane, self.device_actions, self.model_actions
        self.fleet_table.customContextMenuRequested.connect(fleet_pane.on_context_menu)
        bridge.devices.devices_reset.connect(fleet_pane.on_devices_reset)
        bridge.devices.device_changed.connect(fleet_pane.on_device_changed)
        bridge.devices.device_removed.connect(fleet_pane.on_device_removed)
        bridge.devices.groups_changed.connect(fleet_pane.on_groups_changed)
        bridge.devices.browsing_changed.connect(devices.on_browsing_changed)
        bridge.devices.discovery_state.connect(devices.on_discovery_state)
        bridge.devices.trust_requested.connect(devices.open_trust_dialog)
        bridge.devices.fleet_key_differs.connect(devices.open_fleet_key_dialog)
        bridge.models.model_imported.connect(self.models_view.add_record)
        bridge.models.models_changed.connect(self.models_view.set_records)
        bridge.models.model_removed.connect(self.models_view.remove_record)
        self.models_view.import_requested.connect(lambda: models.open_import_dialog())
        self.models_view.verify_requested.connect(models.verify_model)
        self.models_view.export_requested.connect(models.open_export_dialog)
        self.models_view.remove_requested.connect(models.confirm_remove_model)
        self.models_view.export_key_requested.connect(models.open_export_key_dialog)
        # "Roll out…" beside the Models view's own buttons (after Remove): the selected model's rollout wizard.
        self.models_rollout_button = QPushButton("Roll out…", self.models_view)
        self.models_rollout_button.setObjectName("ModelsRollOut")
        self.models_rollout_button.setToolTip(tooltip_text(
            "Roll the selected model out to devices in waves, with health gates"))
        self.models_rollout_button.setStyleSheet("min-width: 0px; padding-left: 10px; padding-right: 10px;")
        self.models_rollout_button.clicked.connect(
            lambda: models.open_rollout_wizard(self.models_view.selected_ref()))
        for row in self.models_view.findChildren(QHBoxLayout):
            if row.indexOf(self.models_view.remove_button) >= 0:
                row.insertWidget(row.indexOf(self.models_view.remove_button) + 1, self.models_rollout_button)
                break
        bridge.rollouts.rollouts_changed.connect(self.rollouts_view.set_rollouts)
        bridge.rollouts.rollout_detail.connect(models.on_rollout_detail)
        bridge.rollouts.rollout_event.connect(self.rollouts_view.add_event)
        bridge.rollouts.rollout_started.connect(models.on_rollout_started)
        self.rollouts_view.rollout_chosen.connect(self.bridge.rollouts.watch_rollout)
        self.rollouts_view.action_requested.connect(models.rollout_action)
        self.rollouts_view.wizard_requested.connect(lambda: models.open_rollout_wizard())
        bridge.telemetry.notice.connect(lambda text: self.statusBar().showMessage(text, 10000))
        bridge.access.operator_changed.connect(self.on_operator_changed)
        bridge.shared.connection_changed.connect(self.on_shared_connection)
        bridge.activities.added.connect(self._activity_added)
        bridge.activities.finished.connect(self._activity_finished)
        self.group_tree.group_chosen.connect(fleet_pane.on_group_chosen)
        self.group_tree.devices_dropped.connect(devices.on_devices_dropped_on_group)
        self.group_tree.rename_requested.connect(devices.open_group_rename_dialog)
        self.group_tree.delete_requested.connect(devices.confirm_group_delete)
        self.discovery_panel.browse_toggled.connect(devices.set_browsing)
        self.discovery_panel.interfaces_changed.connect(devices.on_interfaces_changed)
        self.discovery_panel.add_requested.connect(devices.open_add_dialog)
        self.discovery_panel.sweep_requested.connect(devices.open_sweep_dialog)
        self.detail.probe_requested.connect(lambda device_id: self.bridge.devices.probe([device_id]))
        self.detail.trust_requested.connect(self.bridge.devices.request_trust)
        bridge.telemetry.alert_event.connect(self.dashboard.add_alert)
        bridge.telemetry.alert_event.connect(fleet_pane.on_alert_changed)
        bridge.telemetry.stream_changed.connect(
            lambda v: self.dashboard.set_stream_state(v.device_id, v.text, v.live, v.detail))
        self.dashboard.stream_requested.connect(devices.set_streaming)
        self.dashboard.thresholds_requested.connect(devices.open_thresholds_dialog)
        devices.restore_thresholds()
        self.fleet_table.selectionModel().selectionChanged.connect(fleet_pane.on_selection_changed)
        self.tabs.currentChanged.connect(fleet_pane.on_tab_changed)
        for signal in (self.fleet_model.rowsInserted, self.fleet_model.rowsRemoved, self.fleet_model.modelReset,
                       self.fleet_model.dataChanged):
            signal.connect(fleet_pane.on_counts_changed)
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
            text = f"{tip} ({action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)})" if shortcut else tip
            action.setToolTip(tooltip_text(text))
            action.setProperty("plainTip", text)  # given back when a role no longer denies it
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        devices, models, selected = self.device_actions, self.model_actions, self.fleet_pane.selected_ids
        self.browse_action = self._action("Discovery", lambda on: devices.set_browsing(bool(on)), "Ctrl+B",
                                          "discover", "Start or stop listening for devices by mDNS")
        self.browse_action.setCheckable(True)
        self.add_action = self._action("Add device…", devices.open_add_dialog, "Ctrl+N", "add-device",
                                       "Add a device by hostname or address")
        self.sweep_action = self._action("Sweep network…", devices.open_sweep_dialog, "Ctrl+Shift+S", "sweep",
                                         "Look for SSH servers across an address range")
        self.probe_action = self._action("Probe", devices.probe_selected, "Ctrl+R", "probe",
                                         "Identify the selected devices and match their profiles")
        self.trust_action = self._action("Trust…", devices.trust_selected, "Ctrl+T", "trust",
                                         "Check and trust the selected device's host key")
        self.login_action = self._action("Credentials…", devices.open_credentials_dialog, "Ctrl+L", "credentials",
                                         "Set the user, key file or password for the selected devices")
        self.provision_action = self._action("Provision runtime", devices.provision_selected, "Ctrl+Shift+P", "",
                                             "Install the inference runtime and the agent on the selected devices "
                                             "(only what is missing is sent)")
        self.rename_action = self._action("Rename…", devices.open_rename_dialog, "F2", "",
                                          "Call the selected device something else")
        self.group_action = self._action("Add to group…", devices.open_group_dialog, "Ctrl+G", "group",
                                         "Put the selected devices in a group")
        self.ungroup_action = self._action("Remove from this group", devices.remove_from_current_group, None, "",
                                           "Take the selected devices out of the group shown")
        self.ssh_action = self._action("Copy SSH command", devices.copy_ssh_command, "Ctrl+Shift+C", "terminal",
                                       "Copy the ssh command line that opens a terminal on the device")
        self.remove_action = self._action("Remove from inventory", devices.remove_selected,
                                          QKeySequence.StandardKey.Delete, "remove", "Forget the selected devices")
        self.import_action = self._action("Import model…", lambda: models.open_import_dialog(), "Ctrl+O", "model",
                                          "Import an .onnx model and optimize it for the fleet's profiles")
        self.stream_action = self._action("Stream telemetry", lambda: devices.set_streaming(selected(), True),
                                          "Ctrl+Shift+T", "", "Stream live telemetry from the selected devices")
        self.unstream_action = self._action("Stop telemetry", lambda: devices.set_streaming(selected(), False),
                                            None, "", "Stop the selected devices' telemetry streams")
        self.thresholds_action = self._action("Alert thresholds…", devices.open_thresholds_dialog, None, "",
                                              "Set the bounds that raise telemetry alerts")
        self.rollout_wizard_action = self._action("Roll out…", lambda: models.open_rollout_wizard(), "Ctrl+Shift+R",
                                                  "", "Roll a model out to devices in waves, with health gates")
        self.recover_action = self._action("Recover rollouts left running",
                                           lambda: self.bridge.rollouts.recover_rollouts(), None, "",
                                           "Ask the devices of rollouts a crash left running where they are, then "
                                           "continue them")
        self.switch_operator_action = self._action("Switch operator…", self.open_switch_operator_dialog,
                                                   "Ctrl+Shift+O", "", "Act as another operator of this fleet")
        self.audit_action = self._action("Audit trail…", self.open_audit_dialog, "Ctrl+Shift+A", "",
                                         "Who changed what, with filters; verify the trail")
        self.reports_action = self._action("Reports…", self.open_reports_dialog, "Ctrl+P", "",
                                           "Write a signed fleet, rollout, health, models or audit report "
                                           "(PDF, HTML, CSV, JSON)")
        self.find_action = self._action("Filter devices", lambda: self.search.setFocus(), "Ctrl+F")
        self.quit_action = self._action("Quit", self.close, QKeySequence.StandardKey.Quit)
        self.dark_action = self._action("Dark theme", lambda on: self.set_theme("dark" if on else "light"),
                                        "Ctrl+Shift+D")
        self.dark_action.setCheckable(True)
        self.dark_action.setChecked(current_theme() == "dark")
        self.device_menu_actions = (self.probe_action, self.trust_action, self.login_action, self.provision_action,
                                    self.rename_action, self.group_action, self.ungroup_action, self.ssh_action,
                                    self.stream_action, self.unstream_action, self.remove_action)

        menus = self.menuBar()
        file_menu = menus.addMenu("&File")
        file_menu.addAction(self.import_action)
        file_menu.addSeparator()
        file_menu.addAction(self.switch_operator_action)
        file_menu.addAction(self.audit_action)
        file_menu.addAction(self.reports_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        fleet_menu = menus.addMenu("F&leet")
        for action in (self.browse_action, self.add_action, self.sweep_action):
            fleet_menu.addAction(action)
        device_menu = menus.addMenu("&Device")
        for action in self.device_menu_actions:
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
        self.fleet_pane.update_actions()

    def _build_status_bar(self, database: str) -> None:
        self._database = database
        self.database_label = QLabel(f"Database: {database}", self)
        self.database_label.setObjectName("DatabaseLabel")
        self.devices_label = QLabel("Devices online: 0 / 0", self)
        self.devices_label.setObjectName("DevicesLabel")
        self.activity_label = QLabel("Idle", self)
        self.activity_label.setObjectName("ActivityLabel")
        self.activity_label.setTextFormat(Qt.TextFormat.PlainText)  # "Working: Probe <a device's name>"
        self.database_label.setTextFormat(Qt.TextFormat.PlainText)  # a path or URL is never markup
        self.operator_label = QLabel("Operator: …", self)
        self.operator_label.setObjectName("OperatorLabel")
        self.operator_label.setTextFormat(Qt.TextFormat.PlainText)
        self.statusBar().addWidget(self.database_label, 1)
        self.statusBar().addPermanentWidget(self.operator_label)
        self.statusBar().addPermanentWidget(self.activity_label)
        self.statusBar().addPermanentWidget(self.devices_label)

    # -- what the parts share -----------------------------------------------------------------------------

    def keep(self, dialog: QDialog) -> QDialog:
        """Open `dialog` and keep it until it finishes (quitting rejects what is still open)."""
        # Dialogs are opened with open() (never exec() in a coroutine) and kept until they finish.
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._dialogs.append(dialog)
        dialog.finished.connect(lambda _r, d=dialog: self._dialogs.remove(d) if d in self._dialogs else None)
        dialog.open()
        return dialog

    @property
    def closing(self) -> bool:
        """Shutdown has begun: nothing new opens."""
        return self._closing

    # -- starting up ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the inventory, then begin browsing if asked to: the window is on screen meanwhile."""
        self.bridge.access.load()
        await self.bridge.devices.load()
        self.bridge.models.load_models()
        self.bridge.rollouts.load_rollouts(then=self.model_actions.offer_recovery)
        self.bridge.shared.start()
        if self._browse_on_start:
            self.device_actions.set_browsing(True)

    def on_shared_connection(self, live: bool, reason: str) -> None:
        """A shared inventory: live, or unreachable (what the window shows may be out of date until it is back)."""
        if live:
            self.database_label.setText(f"Database: {self._database} (shared, live)")
            self.database_label.setToolTip(tooltip_text("Changes other laptops make appear here as they are made."))
            self.database_label.setProperty("stale", False)
        else:
            since = time.strftime("%H:%M:%S")
            self.database_label.setText(f"Database unreachable since {since}: what is shown may be out of date "
                                        "(reconnecting)")
            self.database_label.setToolTip(tooltip_text(f"{self._database}: {reason}"))
            self.database_label.setProperty("stale", True)
        self.database_label.style().unpolish(self.database_label)
        self.database_label.style().polish(self.database_label)

    # -- who acts ------------------------------------------------------------------------------------------

    def role_actions(self) -> dict[QAction, str]:
        """Each action that changes something, and the permission it needs (the core checks it again)."""
        return {self.browse_action: "operate", self.add_action: "operate", self.sweep_action: "operate",
                self.probe_action: "operate", self.rename_action: "operate", self.stream_action: "operate",
                self.unstream_action: "operate",
                self.trust_action: "administer", self.login_action: "administer", self.group_action: "administer",
                self.ungroup_action: "administer", self.remove_action: "administer",
                self.provision_action: "deploy", self.rollout_wizard_action: "deploy",
                self.recover_action: "deploy", self.import_action: "release", self.audit_action: "audit",
                self.reports_action: "view"}

    def on_operator_changed(self, me: dict[str, Any]) -> None:
        """Say who acts, and disable what their roles cannot do, saying why in the tooltip."""
        roles = [str(r) for r in me.get("roles", [])]
        groups = [str(g) for g in me.get("groups", [])]
        scope = f" on {', '.join(groups)}" if groups else ""
        self.operator_label.setText(f"Operator: {me.get('operator')} ({', '.join(roles)}{scope})")
        self.denied = {}
        for action, permission in self.role_actions().items():
            if not allows(roles, permission):
                self.denied[action] = (f"{me.get('operator')} ({', '.join(roles)}) may not "
                                       f"{PERMISSIONS[permission].doing}: that needs the role "
                                       f"{' or '.join(granting_roles(permission))}")
        for action in self.role_actions():
            wanted = action.property("wanted")
            self.gate(action, True if wanted is None else bool(wanted))
        panel = self.discovery_panel  # its buttons do what the Fleet menu's actions do
        for button, action in ((panel.browse_button, self.browse_action), (panel.add_button, self.add_action),
                               (panel.sweep_button, self.sweep_action)):
            button.setEnabled(action not in self.denied)  # the reason is on the action, in the menu and toolbar
        self.fleet_pane.update_actions()  # the device actions again, by the selection

    def gate(self, action: QAction, wanted: bool) -> None:
        """Enable `action` when the selection wants it and the operator's roles allow it."""
        reason = self.denied.get(action)
        action.setProperty("wanted", wanted)  # what the selection asks, whatever the roles say
        action.setEnabled(wanted and reason is None)
        if reason is not None:
            action.setToolTip(tooltip_text(reason))
        elif action.property("plainTip") is not None:
            action.setToolTip(tooltip_text(str(action.property("plainTip"))))

    def open_switch_operator_dialog(self) -> None:
        """Choose another operator of this fleet from the list (read off the loop first)."""
        def chosen(names: list[str]) -> None:
            if self._closing:
                return
            dialog = QInputDialog(self)
            dialog.setObjectName("SwitchOperatorDialog")
            dialog.setWindowTitle("Switch operator")
            dialog.setLabelText("Act as:" if names else "No operators yet: the first change makes you the admin.")
            dialog.setComboBoxItems(names or [str(self.bridge.access.current.get("operator", ""))])
            dialog.setComboBoxEditable(False)
            dialog.textValueSelected.connect(lambda name: self.bridge.access.switch(name))
            self.keep(dialog)
        self.bridge.access.operator_names(chosen)

    def open_audit_dialog(self) -> AuditDialog:
        dialog = AuditDialog(self)
        dialog.refresh_requested.connect(
            lambda query: self._audit_activity(dialog, self.bridge.access.audit_entries(query, entry_cells,
                                                                                         dialog.show_entries)))
        dialog.verify_requested.connect(
            lambda: self._audit_activity(dialog, self.bridge.access.verify(dialog.show_verification)))
        self.keep(dialog)
        dialog.refresh_requested.emit(dialog.query())
        return dialog

    def open_reports_dialog(self) -> ReportsDialog:
        dialog = ReportsDialog([g.name for g in self.bridge.devices.groups()], self)
        running: list[Activity] = []

        def watch(activity: Activity) -> None:
            running[:] = [activity]

            def ended(finished: Activity) -> None:
                if finished is activity and finished.state != "succeeded":
                    dialog.show_problem(finished.summary)
            self.bridge.activities.finished.connect(ended)
            activity.changed.connect(lambda: dialog.show_progress(activity.detail) if activity.running else None)

        dialog.preview_requested.connect(lambda request: watch(self.bridge.reports.preview(request,
                                                                                          dialog.show_preview)))
        dialog.write_requested.connect(lambda request: watch(self.bridge.reports.write(request, dialog.show_written)))
        def cancel() -> None:
            for activity in running:
                activity.cancel()
        dialog.cancel_requested.connect(cancel)
        self.keep(dialog)
        return dialog

    def _audit_activity(self, dialog: AuditDialog, activity: Activity) -> None:
        def ended(finished: Activity) -> None:
            if finished is activity and finished.state != "succeeded":
                dialog.show_problem(finished.summary)
        self.bridge.activities.finished.connect(ended)

    def set_theme(self, name: str) -> None:
        app = QApplication.instance()
        assert isinstance(app, QApplication)
        apply_theme(app, name)
        qsettings().setValue("main/theme", name)
        self.dark_action.setChecked(name == "dark")
        for action, icon_name in self._icons:  # icons have a light and a dark drawing
            action.setIcon(icon(icon_name))
        self.tabs.setTabIcon(0, icon("probe"))
        self.tabs.setTabIcon(1, icon("model"))
        self.models_view.refresh_theme()
        self.discovery_panel.refresh_icons()
        self.dashboard.refresh_theme()
        self.rollouts_view.refresh_theme()

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

    def _restore_layout(self) -> None:
        stored = qsettings()
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
        self.fleet_pane.on_tab_changed(self.tabs.currentIndex())

    def remembered_layout(self) -> dict[str, object]:
        """What the window remembers of its layout, read from its widgets (in the loop's thread; nothing is written)."""
        hidden = self.detail.isHidden()
        self.detail.setHidden(False)  # saved as the Fleet tab shows it, not collapsed by the Models tab
        splitter = self.h_splitter.saveState()
        self.detail.setHidden(hidden)
        return {"main/geometry": self.saveGeometry(),
                "main/fleet_header": self.fleet_table.horizontalHeader().saveState(),
                "main/splitter": splitter,
                "main/activity_splitter": self.v_splitter.saveState(),
                "main/left_splitter": self.left_splitter.saveState(),
                "main/dashboard_splitter": self.dashboard.splitter.saveState(),
                "main/tab": self.tabs.currentIndex(),
                **self.models_view.remembered_layout()}

    async def shutdown(self) -> None:
        """Save the layout, cancel every activity newest first, close SSH and the inventory, then close."""
        if self._closing:
            return
        self._closing = True
        # Stored off the loop: a QSettings writes and fsyncs its file when it syncs or is destroyed with changes
        # pending, 100-250 ms on a busy disk (CI met a 108 ms stall that was only that), a frozen window.
        await asyncio.to_thread(store_settings, self.remembered_layout())
        for dialog in list(self._dialogs):
            dialog.reject()
        self.dashboard.shutdown()
        await self.bridge.close()
        self._closed = True
        self.close()

    # -- Qt's handlers, which must be the window's ----------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self.drops.drag_enter(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        self.drops.drag_move(event)

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self.drops.drag_leave(event)

    def dropEvent(self, event: QDropEvent) -> None:
        self.drops.drop(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closed:
            event.accept()
            return
        # Closing first ends the background work, in order; the window closes when that is done.
        event.ignore()
        if not self._closing:
            self._shutdown_task = asyncio.ensure_future(self.shutdown())
