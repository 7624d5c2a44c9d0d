"""What every pyqtgraph plot in the window shares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyqtgraph as pg
from PySide6.QtWidgets import QApplication, QMenu, QWidget


@contextmanager
def adopting_menus(owner: QWidget) -> Iterator[None]:
    """pyqtgraph makes its (here disabled) context menus without a parent, so they would outlive the window as
    top-level widgets: the menus made inside this block become `owner`'s children, deleted with it."""
    before = set(QApplication.topLevelWidgets())
    yield
    for menu in set(QApplication.topLevelWidgets()) - before:
        if isinstance(menu, QMenu):
            menu.setParent(owner, menu.windowFlags())


class FixedPlot(pg.PlotWidget):
    """A plot to read, not to explore: no context menu, no pan or zoom with the mouse, no auto-range button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        with adopting_menus(self):  # `self` is only used once the block ends, by then a made widget
            super().__init__(parent)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()

    def paint_theme(self, grid: str, axes: Sequence[str] = ("left", "bottom")) -> None:
        """The window's palette on the plot: its base behind it, `grid` (the theme's grid colour) on the axes and
        its text colour on their labels. Each plot's refresh_theme calls this, then draws what it shows again."""
        palette = self.palette()
        self.setBackground(palette.base().color())
        for name in axes:
            axis = self.getAxis(name)
            axis.setPen(pg.mkPen(grid))
            axis.setTextPen(pg.mkPen(palette.text().color()))
