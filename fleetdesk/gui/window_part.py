"""What the main window's parts share: the Qt class they are typed against, the selection, the kept dialogs.

Each part (window_fleet, window_devices, window_models, window_drops) is a mixin of MainWindow (main_window.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDialog, QMainWindow, QTableView

from .bridge import FleetBridge
from .bridge_views import DeviceView
from .fleet_model import FleetFilter, FleetTableModel

# The parts are plain classes at run time (MainWindow has one Qt base); mypy checks them as the window they join.
if TYPE_CHECKING:
    _Window = QMainWindow
else:
    _Window = object


class WindowPart(_Window):
    """The base of every part; MainWindow builds `bridge`, the fleet table and its models, and `_dialogs`."""

    bridge: FleetBridge
    fleet_model: FleetTableModel
    fleet_filter: FleetFilter
    fleet_table: QTableView
    _dialogs: list[QDialog]

    @staticmethod
    def _qsettings() -> QSettings:
        return QSettings("FleetDesk", "FleetDesk")

    def _keep(self, dialog: QDialog) -> QDialog:
        # Dialogs are opened with open() (never exec() in a coroutine) and kept until they finish.
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._dialogs.append(dialog)
        dialog.finished.connect(lambda _r, d=dialog: self._dialogs.remove(d) if d in self._dialogs else None)
        dialog.open()
        return dialog

    def selected_ids(self) -> list[int]:
        rows = self.fleet_table.selectionModel().selectedRows(0)
        return self.fleet_filter.device_ids(rows)

    def selected_views(self) -> list[DeviceView]:
        return [v for v in (self.fleet_model.view_of(i) for i in self.selected_ids()) if v is not None]
