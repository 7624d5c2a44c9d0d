"""`fleetdesk-gui`: the application object, the qasync loop and the main window's first frame.

The fleet view, discovery and the rest arrive with their issues; this opens the inventory
database in the user data directory and remembers the window's geometry.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import qasync
from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtGui import QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHeaderView,
    QLabel,
    QMainWindow,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from fleetdesk import __version__
from fleetdesk.config import Settings
from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory import open_inventory
from fleetdesk.resources import data_dir, data_file

FLEET_COLUMNS = ("Status", "Hostname", "Address", "Profile", "Architecture", "Runtime", "Active model", "Last seen")


def load_theme(app: QApplication, name: str = "light") -> None:
    app.setStyleSheet(data_file("ui", f"themes/{name}.qss").read_text(encoding="utf-8"))


class MainWindow(QMainWindow):
    """The operator's window: for now the (empty) fleet table and the database in the status bar."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.setObjectName("MainWindow")
        self.setWindowTitle("FleetDesk")
        self.setWindowIcon(QIcon(str(data_dir("resources") / "icons" / "fleetdesk.svg")))
        central = QWidget(self)
        layout = QVBoxLayout(central)
        heading = QLabel("Fleet", central)
        heading.setObjectName("Heading")
        self.fleet_table = QTableWidget(0, len(FLEET_COLUMNS), central)
        self.fleet_table.setObjectName("FleetTable")
        self.fleet_table.setHorizontalHeaderLabels(list(FLEET_COLUMNS))
        self.fleet_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.fleet_table.horizontalHeader().setDefaultSectionSize(124)
        self.fleet_table.horizontalHeader().setStretchLastSection(True)
        self.fleet_table.setSortingEnabled(True)
        self.empty_hint = QLabel(
            "No devices yet. Devices on this network appear here once discovery runs; "
            "`fleetdesk lab up --devices ipc-x86:3` builds a virtual fleet to rehearse with.",
            central,
        )
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setObjectName("EmptyHint")
        layout.addWidget(heading)
        layout.addWidget(self.fleet_table, 1)
        layout.addWidget(self.empty_hint)
        self.setCentralWidget(central)

        file_menu = self.menuBar().addMenu("&File")
        quit_action = file_menu.addAction("&Quit")
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)

        self.database_label = QLabel(f"Database: {settings.db_url}", self)
        self.devices_label = QLabel("Devices online: 0 / 0", self)
        self.statusBar().addWidget(self.database_label, 1)
        self.statusBar().addPermanentWidget(self.devices_label)
        self.resize(1100, 680)
        self._restore_layout()

    def _qsettings(self) -> QSettings:
        return QSettings("FleetDesk", "FleetDesk")

    def _restore_layout(self) -> None:
        stored = self._qsettings()
        geometry = stored.value("main/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        header = stored.value("main/fleet_header")
        if isinstance(header, QByteArray):
            self.fleet_table.horizontalHeader().restoreState(header)

    def closeEvent(self, event: QCloseEvent) -> None:
        stored = self._qsettings()
        stored.setValue("main/geometry", self.saveGeometry())
        stored.setValue("main/fleet_header", self.fleet_table.horizontalHeader().saveState())
        super().closeEvent(event)


def create_app(argv: Sequence[str]) -> QApplication:
    if QApplication.instance() is None:
        # Fractional scale factors (125 %, 150 %) as the OS says, not rounded: sharp on high-DPI screens.
        QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(list(argv))
    assert isinstance(app, QApplication)
    app.setApplicationName("FleetDesk")
    app.setOrganizationName("FleetDesk")
    app.setApplicationVersion(__version__)
    app.setStyle("Fusion")
    load_theme(app)
    return app


async def run_window(window: MainWindow) -> None:
    closed = asyncio.Event()
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    # Qt must not stop the loop by itself when the window closes: the coroutine ends it, after
    # background work has been cancelled in order.
    app.setQuitOnLastWindowClosed(False)
    app.lastWindowClosed.connect(closed.set)
    window.show()
    await closed.wait()


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.load()
    settings.ensure_dirs()
    try:
        # Opening migrates an older inventory and refuses one from a newer FleetDesk, before any window.
        inventory = open_inventory(settings.db_url)
    except FleetDeskError as exc:
        print(f"fleetdesk-gui: {exc}", file=sys.stderr)
        return 2
    app = create_app(sys.argv if argv is None else argv)
    window = MainWindow(settings)
    # One asyncio loop on the Qt thread (DESIGN.md, runtime model); qasync.run also works on Python 3.11,
    # whose asyncio.run has no loop_factory.
    qasync.run(run_window(window))
    inventory.close()
    del app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
