"""A real X display for tests: an Xvfb server, its top-level windows, a screen grab, and a window manager's close.

The rest of tests/gui runs Qt offscreen; this is what proves the app also starts where an operator runs it, on
Qt's xcb platform. It drives the X server only with the standard X tools (xwininfo, xprop, xwd from x11-utils
and x11-apps) and, for the close button, with libX11 itself: no window manager runs on Xvfb.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOLS = ("Xvfb", "xwininfo", "xprop", "xwd")  # Debian: xvfb, x11-utils, x11-apps (scripts/system-deps.sh test)
SCREEN = (1280, 900)
WINDOW_CLASS = ("fleetdesk-gui", "FleetDesk")  # WM_CLASS of FleetDesk's main window


@dataclass(frozen=True)
class XWindow:
    """A top-level window as the X server sees it."""

    id: int
    title: str
    wm_class: tuple[str, ...]
    x: int
    y: int
    width: int
    height: int
    viewable: bool


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@contextmanager
def xvfb(log: Path, timeout: float = 30.0) -> Iterator[str]:
    """An Xvfb server on a display number it picks itself (-displayfd: never one another test or user holds);
    yields its DISPLAY (":N"). Only its Unix socket listens: nothing goes over the network."""
    read_end, write_end = os.pipe()
    with log.open("wb") as err:
        server = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL, stderr=err, pass_fds=(write_end,))
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + timeout
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or server.poll() is not None:
                raise AssertionError(f"Xvfb did not report a display within {timeout:.0f} s:\n{log.read_text()}")
            ready, _, _ = select.select([read_end], [], [], left)
            if ready:
                chunk = os.read(read_end, 16)
                if not chunk:
                    raise AssertionError(f"Xvfb closed its display pipe:\n{log.read_text()}")
                number += chunk
        yield f":{int(number)}"
    finally:
        os.close(read_end)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _x(display: str, *argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=True,
                          env=dict(os.environ, DISPLAY=display)).stdout


# `xwininfo -root -children` lines: `     0x200007 "FleetDesk": ("fleetdesk-gui" "FleetDesk")  1280x800+0+0  +0+0`
_CHILD = re.compile(r'^\s*(0x[0-9a-f]+) (?:"(.*)"|\(has no name\)): \((.*)\)\s+(\d+)x(\d+)\+(-?\d+)\+(-?\d+)')


def top_level_windows(display: str) -> list[XWindow]:
    """The root window's children, with their map state (only a viewable one is on screen)."""
    found = []
    for line in _x(display, "xwininfo", "-root", "-children").splitlines():
        match = _CHILD.match(line)
        if match is None:
            continue
        wid, title, classes, width, height, x, y = match.groups()
        state = _x(display, "xwininfo", "-id", wid)
        found.append(XWindow(int(wid, 16), title or "", tuple(re.findall(r'"([^"]*)"', classes)), int(x), int(y),
                             int(width), int(height), "Map State: IsViewable" in state))
    return found


def window_pid(display: str, window: XWindow) -> int | None:
    """The process that owns `window`, as its toolkit announced it (_NET_WM_PID)."""
    match = re.search(r"= (\d+)", _x(display, "xprop", "-id", hex(window.id), "_NET_WM_PID"))
    return int(match.group(1)) if match else None


def app_window(display: str, pid: int) -> XWindow | None:
    """FleetDesk's main window of the process `pid` once it is viewable; None before. xwininfo fails now and then
    while the app creates and destroys windows (BadWindow between listing the children and asking about one):
    None then too, so the caller asks again."""
    try:
        return next((w for w in top_level_windows(display)
                     if w.wm_class == WINDOW_CLASS and w.viewable and window_pid(display, w) == pid), None)
    except subprocess.CalledProcessError:
        return None


def window_protocols(display: str, window: XWindow) -> list[str]:
    """The ICCCM protocols `window` takes part in (WM_DELETE_WINDOW: it wants to be asked, not destroyed)."""
    line = _x(display, "xprop", "-id", hex(window.id), "WM_PROTOCOLS")
    return [p.strip() for p in line.partition("protocols")[2].split(",") if p.strip()]


def grab_screen(display: str) -> Any:
    """The whole screen as a QImage (RGB32), read with `xwd -root` and decoded from its ZPixmap dump."""
    from PySide6.QtGui import QImage

    dump = subprocess.run(["xwd", "-root", "-silent"], capture_output=True, timeout=30, check=True,
                          env=dict(os.environ, DISPLAY=display)).stdout
    (header_size, _version, pixmap_format, _depth, width, height, _xoffset, byte_order, _unit, _bit_order, _pad,
     bits_per_pixel, bytes_per_line, _visual, red, green, blue, _bits_per_rgb, _entries, colours,
     *_window) = struct.unpack(">25I", dump[:100])
    # The dump's pixels follow the header, the window name and one 12-byte XWDColor per colormap entry.
    start = header_size + colours * 12
    layouts = {(24, 0): QImage.Format.Format_BGR888, (32, 0): QImage.Format.Format_RGB32}  # LSBFirst, 0xRRGGBB
    layout = layouts.get((bits_per_pixel, byte_order))
    if pixmap_format != 2 or layout is None or (red, green, blue) != (0xFF0000, 0xFF00, 0xFF):
        raise AssertionError(f"xwd wrote a layout this decoder does not read: format {pixmap_format}, "
                             f"{bits_per_pixel} bits per pixel, byte order {byte_order}, "
                             f"masks {red:x}/{green:x}/{blue:x}")
    pixels = dump[start:start + height * bytes_per_line]
    # copy(): the QImage must own its pixels, not borrow the bytes object.
    return QImage(pixels, width, height, bytes_per_line, layout).convertToFormat(QImage.Format.Format_RGB32).copy()


class _ClientMessage(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]


class _Event(ctypes.Union):
    _fields_ = [("xclient", _ClientMessage), ("pad", ctypes.c_long * 24)]  # XEvent is 24 longs


def ask_to_close(display: str, window: XWindow) -> None:
    """What a window manager does when the operator clicks the window's close button: a WM_PROTOCOLS client
    message carrying WM_DELETE_WINDOW (ICCCM 4.2.8.1). The app decides what closing means; nothing is destroyed."""
    path = ctypes.util.find_library("X11")
    if path is None:
        raise AssertionError("libX11 is not installed (Debian: libx11-6)")
    xlib = ctypes.CDLL(path)
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XInternAtom.restype = ctypes.c_ulong
    xlib.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    xlib.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    xlib.XFlush.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    connection = xlib.XOpenDisplay(display.encode())
    if not connection:
        raise AssertionError(f"could not open X display {display}")
    try:
        event = _Event()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window.id
        event.xclient.message_type = xlib.XInternAtom(connection, b"WM_PROTOCOLS", 0)
        event.xclient.format = 32
        event.xclient.data[0] = xlib.XInternAtom(connection, b"WM_DELETE_WINDOW", 0)
        event.xclient.data[1] = 0  # CurrentTime
        if not xlib.XSendEvent(connection, window.id, 0, 0, ctypes.byref(event)):  # NoEventMask: to the client
            raise AssertionError(f"XSendEvent refused the close request for window {window.id:#x}")
        xlib.XFlush(connection)
    finally:
        xlib.XCloseDisplay(connection)
