"""GUI tests run offscreen and keep their window settings away from the operator's own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gui_harness import private_qsettings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _private_qsettings(tmp_path: Path) -> None:
    private_qsettings(tmp_path / "qsettings")


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    """Where a test writes its screenshots: a folder under the test's temp directory."""
    folder = tmp_path / "screens"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def _no_leaked_widgets_or_timers() -> Iterator[None]:
    """Every GUI test leaves no top-level widget and no running timer behind (qtbot's own teardown,
    which closes what a test registered, runs before this check)."""
    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QApplication

    from tests.gui_harness import live_timers

    before = set(QApplication.topLevelWidgets())
    timers_before = {id(t) for t in live_timers()}
    yield
    app = QApplication.instance()
    if app is None:
        return
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    leaked = [w for w in QApplication.topLevelWidgets()
              if w not in before and w.isVisible() and not w.objectName().startswith("qt_")]
    timers = [t for t in live_timers() if id(t) not in timers_before]
    for widget in leaked:
        widget.close()
    assert not leaked, f"widgets left open by the test: {leaked}"
    assert not timers, f"timers left running by the test: {timers}"
