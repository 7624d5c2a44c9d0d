"""GUI tests run offscreen and keep their window settings away from the operator's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _private_qsettings(tmp_path: Path) -> None:
    from PySide6.QtCore import QSettings

    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    """Where a test writes its screenshots: a folder under the test's temp directory."""
    folder = tmp_path / "screens"
    folder.mkdir(exist_ok=True)
    return folder
