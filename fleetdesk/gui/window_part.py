"""What the main window's parts see of it: the widgets and actions it builds, its kept dialogs, and QSettings.

Each part (window_fleet, window_devices, window_models, window_drops) is a child object of MainWindow
(main_window.py), made in its __init__ over `Window`, which MainWindow satisfies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from PySide6.QtCore import QObject, QSettings
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QDialog, QLabel, QStatusBar, QTableView, QTabWidget, QWidget

from .bridge import FleetBridge
from .dashboard import Dashboard
from .device_detail import DeviceDetail
from .dropping import DropOverlay
from .fleet_model import FleetFilter, FleetTableModel
from .models_view import ModelsView
from .rollout_view import RolloutsView
from .side_panel import DiscoveryPanel, GroupTree


def qsettings() -> QSettings:
    """Where the window remembers its layout, theme, discovery cards and alert thresholds."""
    return QSettings("FleetDesk", "FleetDesk")


def store_settings(values: Mapping[str, object]) -> None:
    """Write `values` to the window's settings file and sync it. Made for a worker thread: the QSettings is
    made, written and destroyed there, so its file write never holds up the loop."""
    stored = qsettings()
    for key, value in values.items():
        stored.setValue(key, value)
    stored.sync()


class Window(Protocol):
    """The main window as its parts use it; MainWindow builds all of it before it makes them."""

    bridge: FleetBridge
    fleet_model: FleetTableModel
    fleet_filter: FleetFilter
    fleet_table: QTableView
    tabs: QTabWidget
    models_view: ModelsView
    rollouts_view: RolloutsView
    dashboard: Dashboard
    detail: DeviceDetail
    group_tree: GroupTree
    discovery_panel: DiscoveryPanel
    drop_overlay: DropOverlay
    devices_label: QLabel
    empty_hint: QLabel
    browse_action: QAction
    trust_action: QAction
    ssh_action: QAction
    rename_action: QAction
    ungroup_action: QAction
    device_menu_actions: tuple[QAction, ...]  # the Device menu's actions, also the table's context menu

    @property
    def closing(self) -> bool: ...  # shutdown has begun: nothing new opens

    def keep(self, dialog: QDialog) -> QDialog: ...

    def gate(self, action: QAction, wanted: bool) -> None: ...  # enabled when wanted and the roles allow it

    def statusBar(self) -> QStatusBar: ...

    def window(self) -> QWidget: ...  # the QMainWindow itself, as a widget


class WindowPart(QObject):
    """The base of every part: the window it belongs to (and is a child of) and the bridge."""

    def __init__(self, window: Window) -> None:
        widget = window.window()
        super().__init__(widget)
        self.widget = widget  # the window as a widget: the parent of the part's dialogs and menus
        self.window = window
        self.bridge = window.bridge
