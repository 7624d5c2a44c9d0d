"""Draw the application icon's PNG sizes from its SVG with Qt (QtSvg): no image tool needed beside the venv.

Usage: QT_QPA_PLATFORM=offscreen python packaging/render_icon.py SVG HICOLOR_DIR NAME SIZE...
writes HICOLOR_DIR/<SIZE>x<SIZE>/apps/NAME.png for each SIZE.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer


def render(svg: Path, size: int, out: Path) -> None:
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not an SVG Qt can draw")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}")


def main(argv: list[str]) -> int:
    svg, hicolor, name, *sizes = argv
    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 - QPainter on QImage needs one
    for size in map(int, sizes):
        render(Path(svg), size, Path(hicolor) / f"{size}x{size}" / "apps" / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
