"""The window's look: Fusion style, a light or dark palette, and the matching QSS from ui/themes/.

One call, `apply_theme(app, name)`, sets all three together so a widget never sees a dark
style sheet over a light palette; `current_theme()` tells icons which variant to load.
"""

from __future__ import annotations

from PySide6.QtCore import QDir
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from fleetdesk.resources import data_dir, data_file

THEMES = ("light", "dark")

# The style sheets name their images as `url(fdicons:qss/...)`: a Qt search path, so the same QSS
# works from a checkout, a wheel and a frozen bundle without writing a path into it.
ICON_SEARCH_PREFIX = "fdicons"

_current = "light"

_Role = QPalette.ColorRole
_Group = QPalette.ColorGroup

# Colours shared with ui/themes/*.qss: keep both in step when one changes.
_LIGHT = {
    _Role.Window: "#f4f6f8",
    _Role.WindowText: "#1f2933",
    _Role.Base: "#ffffff",
    _Role.AlternateBase: "#f3f5f8",
    _Role.ToolTipBase: "#ffffff",
    _Role.ToolTipText: "#1f2933",
    _Role.PlaceholderText: "#7b8591",
    _Role.Text: "#1f2933",
    _Role.Button: "#f4f6f8",
    _Role.ButtonText: "#1f2933",
    _Role.BrightText: "#c8372d",
    _Role.Light: "#ffffff",
    _Role.Midlight: "#e9edf1",
    _Role.Mid: "#c9d0d8",
    _Role.Dark: "#a9b2bc",
    _Role.Shadow: "#6b7480",
    _Role.Highlight: "#2f6fde",
    _Role.HighlightedText: "#ffffff",
    _Role.Link: "#1f5fc7",
    _Role.LinkVisited: "#6b4bb8",
    _Role.Accent: "#2f6fde",
}
_LIGHT_DISABLED = {
    _Role.WindowText: "#9aa3ad",
    _Role.Text: "#9aa3ad",
    _Role.ButtonText: "#9aa3ad",
    _Role.Highlight: "#b8c4d4",
}

_DARK = {
    _Role.Window: "#1f2328",
    _Role.WindowText: "#e6e9ed",
    _Role.Base: "#181b1f",
    _Role.AlternateBase: "#1f2328",
    _Role.ToolTipBase: "#2b3137",
    _Role.ToolTipText: "#e6e9ed",
    _Role.PlaceholderText: "#7d8590",
    _Role.Text: "#e6e9ed",
    _Role.Button: "#2b3137",
    _Role.ButtonText: "#e6e9ed",
    _Role.BrightText: "#ff7b72",
    _Role.Light: "#3a414a",
    _Role.Midlight: "#30363d",
    _Role.Mid: "#262b31",
    _Role.Dark: "#15181b",
    _Role.Shadow: "#0b0d0f",
    _Role.Highlight: "#3b7ddd",
    _Role.HighlightedText: "#ffffff",
    _Role.Link: "#6ea8fe",
    _Role.LinkVisited: "#b392f0",
    _Role.Accent: "#3b7ddd",
}
_DARK_DISABLED = {
    _Role.WindowText: "#6e7781",
    _Role.Text: "#6e7781",
    _Role.ButtonText: "#6e7781",
    _Role.Highlight: "#30363d",
    _Role.HighlightedText: "#9aa4af",
}


def palette_for(name: str) -> QPalette:
    """The palette of theme `name`, spelled out in full for light too.

    Since Qt 6.5 Fusion's own palette follows the OS colour scheme, so a "light" theme that
    relied on it would turn dark on a laptop set to dark mode, under a light style sheet.
    """
    _check(name)
    colours, disabled = (_DARK, _DARK_DISABLED) if name == "dark" else (_LIGHT, _LIGHT_DISABLED)
    palette = QPalette()
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role, colour in disabled.items():
        palette.setColor(_Group.Disabled, role, QColor(colour))
    return palette


def apply_theme(app: QApplication, name: str) -> None:
    """Fusion style, the palette and the style sheet of theme `name` ("light" or "dark")."""
    global _current
    _check(name)
    style_sheet = data_file("ui", f"themes/{name}.qss").read_text(encoding="utf-8")
    QDir.setSearchPaths(ICON_SEARCH_PREFIX, [str(data_dir("resources") / "icons")])
    # The style first: setting a style resets the application palette to the style's own.
    app.setStyle("Fusion")
    app.setPalette(palette_for(name))
    app.setStyleSheet(style_sheet)
    _current = name


def current_theme() -> str:
    """The theme last applied ("light" until `apply_theme` says otherwise)."""
    return _current


def _check(name: str) -> None:
    if name not in THEMES:
        raise ValueError(f"unknown theme {name!r}; the known themes are {', '.join(THEMES)}")
