"""The main window opens on the default database, shows the fleet table and remembers its size."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from fleetdesk.config import Settings
from fleetdesk.gui.app import FLEET_COLUMNS, MainWindow, create_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_window_shows_the_fleet_table_and_the_database_in_use(qtbot: QtBot) -> None:
    create_app([])
    settings = Settings.load()
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    headers = [window.fleet_table.horizontalHeaderItem(i).text() for i in range(window.fleet_table.columnCount())]
    assert headers == list(FLEET_COLUMNS)
    assert window.database_label.text() == f"Database: sqlite:///{settings.data_dir / 'fleetdesk.db'}"
    ARTIFACTS.mkdir(exist_ok=True)
    assert window.grab().save(str(ARTIFACTS / "main-window.png"))


def test_window_geometry_is_remembered(qtbot: QtBot) -> None:
    create_app([])
    first = MainWindow(Settings.load())
    qtbot.addWidget(first)
    first.show()
    first.resize(700, 450)  # inside the offscreen screen's 800x600
    first.close()
    second = MainWindow(Settings.load())
    qtbot.addWidget(second)
    assert (second.width(), second.height()) == (700, 450)


def test_the_window_runs_on_one_qasync_loop_and_quits_when_closed(qtbot: QtBot) -> None:
    import asyncio

    import qasync
    from PySide6.QtCore import QTimer

    from fleetdesk.gui.app import run_window

    create_app([])
    window = MainWindow(Settings.load())
    seen: list[bool] = []

    async def check_loop_then_close() -> None:
        seen.append(isinstance(asyncio.get_running_loop(), qasync.QEventLoop))
        window.close()

    QTimer.singleShot(50, lambda: asyncio.ensure_future(check_loop_then_close()))
    qasync.run(asyncio.wait_for(run_window(window), timeout=10))
    assert seen == [True]
