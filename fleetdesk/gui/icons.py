"""The toolbar, menu and status icons, loaded by name from resources/icons/ for the current theme.

Line icons have a light-on-dark twin in icons/dark/; status icons are the same in both themes.
An unknown name is a programming error and raises KeyError naming it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtCore import QSize
from PySide6.QtGui import QIcon

from fleetdesk.gui.theme import current_theme
from fleetdesk.resources import data_dir

ICON_NAMES = (
    "discover",
    "stop",
    "add-device",
    "sweep",
    "probe",
    "trust",
    "credentials",
    "group",
    "terminal",
    "remove",
    "deploy",
    "model",
    "cancel",
    "refresh",
)
STATUSES = ("online", "offline", "untrusted", "unreachable", "busy")


def icon(name: str) -> QIcon:
    """The line icon `name` (one of ICON_NAMES) in the variant for the current theme."""
    if name not in ICON_NAMES:
        raise KeyError(f"no icon named {name!r}; the icons are {', '.join(ICON_NAMES)}")
    return _load(name, current_theme() == "dark")


def status_icon(status: str) -> QIcon:
    """The badge for a device status (one of STATUSES); the same in both themes."""
    if status not in STATUSES:
        raise KeyError(f"no status icon for {status!r}; the statuses are {', '.join(STATUSES)}")
    return _status(status)


def app_icon() -> QIcon:
    """FleetDesk's own icon, for the window and the task bar."""
    return _load("fleetdesk", False)


def icon_path(name: str, dark: bool = False) -> Path:
    """The SVG file behind an icon name; for tests and for places that want a file, not a QIcon."""
    folder = data_dir("resources") / "icons"
    path = folder / "dark" / f"{name}.svg" if dark else folder / f"{name}.svg"
    if not path.is_file():
        raise FileNotFoundError(f"FleetDesk's icon file {path} is missing; reinstall FleetDesk")
    return path


@cache
def _status(status: str) -> QIcon:
    badge = QIcon(str(icon_path(f"status-{status}")))
    # A selected table row would otherwise tint the badge with the selection colour (QIcon's generated
    # Selected mode), turning green "online" teal: the badge keeps its colour whatever the row does.
    badge.addFile(str(icon_path(f"status-{status}")), QSize(), QIcon.Mode.Selected)
    return badge


@cache
def _load(name: str, dark: bool) -> QIcon:
    # QIcon renders an SVG afresh for each size and device pixel ratio it is asked for
    # (Qt's svg icon engine), so one file serves 16 px menus and 2x toolbars alike.
    return QIcon(str(icon_path(name, dark)))
