"""Draw the application icon from its SVG with Qt (QtSvg): no image tool needed beside the venv.

Usage: QT_QPA_PLATFORM=offscreen python packaging/render_icon.py SVG HICOLOR_DIR NAME SIZE...
writes HICOLOR_DIR/<SIZE>x<SIZE>/apps/NAME.png for each SIZE (the .deb's hicolor icons);
       QT_QPA_PLATFORM=offscreen python packaging/render_icon.py --ico SVG OUT.ico
writes a Windows icon holding the sizes Explorer and the Start menu ask for (packaging/windows/build.ps1).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)


def draw(svg: Path, size: int) -> QImage:
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not an SVG Qt can draw")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def render(svg: Path, size: int, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not draw(svg, size).save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}")


def png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise SystemExit("could not encode a PNG")
    return bytes(data.data())


def ico_bytes(pngs: dict[int, bytes]) -> bytes:
    """An ICO file whose images are PNG-compressed (Windows Vista and later read them): ICONDIR, one
    ICONDIRENTRY per size (width and height 0 mean 256), then the images. Format: Microsoft's "Icons" article
    (learn.microsoft.com, ICONDIR/ICONDIRENTRY)."""
    header = struct.pack("<HHH", 0, 1, len(pngs))
    offset = len(header) + 16 * len(pngs)
    entries, images = b"", b""
    for size, png in sorted(pngs.items()):
        edge = 0 if size >= 256 else size
        entries += struct.pack("<BBBBHHII", edge, edge, 0, 0, 1, 32, len(png), offset + len(images))
        images += png
    return header + entries + images


def render_ico(svg: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(ico_bytes({size: png_bytes(draw(svg, size)) for size in ICO_SIZES}))


def main(argv: list[str]) -> int:
    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 - QPainter on QImage needs one
    if argv[:1] == ["--ico"]:
        render_ico(Path(argv[1]), Path(argv[2]))
        return 0
    svg, hicolor, name, *sizes = argv
    for size in map(int, sizes):
        render(Path(svg), size, Path(hicolor) / f"{size}x{size}" / "apps" / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
