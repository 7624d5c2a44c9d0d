"""`fleetdesk-gui` on a real X display (Xvfb, Qt's xcb platform): it starts, draws its window, and quits cleanly.

Every other GUI test runs Qt offscreen, which needs none of the xcb libraries: a machine missing
libxcb-cursor0 passed them all while `make run` aborted. This test starts the installed entry point as the
operator does and looks at the screen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.gui.x_display import (
    XWindow,
    app_window,
    ask_to_close,
    grab_screen,
    missing_tools,
    top_level_windows,
    window_protocols,
    xvfb,
)
from tests.gui_harness import distinct_colours

STARTUP_LIMIT = 120.0  # seconds: the first start imports Qt, onnx and onnxruntime on a busy 2-core CI machine
QUIT_LIMIT = 60.0


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    missing = missing_tools()
    if missing:
        skip_or_fail(f"no real X display here: {', '.join(missing)} missing "
                     "(Debian: scripts/system-deps.sh test installs xvfb, x11-utils, x11-apps)")
    with xvfb(tmp_path / "xvfb.log") as name:
        yield name


def app_environment(home: Path, display: str) -> dict[str, str]:
    """The operator's desktop session, in a private home: xcb on `display`, data and settings under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "FLEETDESK_", "XDG_"))}
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, parents=True)  # as logind makes it; Qt warns about any other mode
    env.update(
        DISPLAY=display, QT_QPA_PLATFORM="xcb", HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
        FLEETDESK_DATA_DIR=str(home / "data"), FLEETDESK_CONFIG_DIR=str(home / "config"),
        # Discovery starts with the window: its multicast stays on loopback (the tests' network rule).
        FLEETDESK_MDNS_INTERFACES="127.0.0.1",
    )
    return env


def wait_for_window(display: str, app: subprocess.Popen[bytes], stderr: Path) -> XWindow:
    """The app's main window once it is mapped and viewable; fails at once if the app exits instead."""
    deadline = time.monotonic() + STARTUP_LIMIT
    while True:
        if app.poll() is not None:
            pytest.fail(f"fleetdesk-gui exited with status {app.returncode} before showing its window:\n"
                        f"{stderr.read_text()}")
        mine = app_window(display, app.pid)
        if mine is not None:
            return mine
        if time.monotonic() > deadline:
            pytest.fail(f"no viewable FleetDesk window within {STARTUP_LIMIT:.0f} s; windows: "
                        f"{top_level_windows(display)}\nstderr:\n{stderr.read_text()}")
        time.sleep(0.2)


def quadrants(image: object) -> list[object]:
    from PySide6.QtGui import QImage

    assert isinstance(image, QImage)
    w, h = image.width() // 2, image.height() // 2
    return [image.copy(x, y, w, h) for x in (0, w) for y in (0, h)]


def wait_until_drawn(display: str, window: XWindow, timeout: float = 60.0) -> object:
    """The window's part of the screen once every quarter of it shows something (text, borders, icons):
    one colour where a window should be is a blank or half-drawn one."""
    deadline = time.monotonic() + timeout
    while True:
        shot = grab_screen(display).copy(window.x, window.y, window.width, window.height)
        if distinct_colours(shot) >= 16 and all(distinct_colours(q) >= 2 for q in quadrants(shot)):
            return shot
        if time.monotonic() > deadline:
            return shot  # the caller's assertions say what is wrong with it
        time.sleep(0.2)


def test_the_installed_app_shows_its_window_on_x_and_quits_when_closed(tmp_path: Path, display: str) -> None:
    gui = Path(sys.executable).with_name("fleetdesk-gui")
    assert gui.exists(), f"{gui} is missing: install the project (pip install -e .) to get its entry point"
    home = tmp_path / "home"
    stderr = tmp_path / "fleetdesk-gui.stderr"
    with stderr.open("wb") as err:
        app = subprocess.Popen([str(gui)], env=app_environment(home, display), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=err)
    try:
        window = wait_for_window(display, app, stderr)
        assert window.title == "FleetDesk"
        assert window.width >= 640 and window.height >= 480, f"a window too small to use: {window}"

        shot = wait_until_drawn(display, window)
        screens = tmp_path / "screens"
        screens.mkdir()
        assert shot.save(str(screens / "real-display.png"))  # type: ignore[attr-defined]
        shared = os.environ.get("FLEETDESK_SCREENSHOTS")
        if shared:
            Path(shared).mkdir(parents=True, exist_ok=True)
            shot.save(str(Path(shared) / "real-display.png"))  # type: ignore[attr-defined]
        colours = distinct_colours(shot)
        assert colours >= 16, f"the window's area is blank ({colours} colour(s)); see {screens / 'real-display.png'}"
        blank = [n for n, q in enumerate(quadrants(shot)) if distinct_colours(q) < 2]
        assert not blank, f"quarter(s) {blank} of the window are one colour; see {screens / 'real-display.png'}"
        # The app opened its own inventory in the private home, not the operator's.
        assert (home / "data" / "fleetdesk.db").exists()

        # The close button: the window manager asks (WM_DELETE_WINDOW); the app shuts down and exits.
        assert "WM_DELETE_WINDOW" in window_protocols(display, window)
        ask_to_close(display, window)
        try:
            status = app.wait(timeout=QUIT_LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fleetdesk-gui did not exit within {QUIT_LIMIT:.0f} s of its window being closed")
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    errors = stderr.read_text()
    assert status == 0, f"fleetdesk-gui exited with status {status}:\n{errors}"
    # A clean start and quit says nothing: no Qt warning, no traceback, no task destroyed while pending.
    assert errors == "", f"fleetdesk-gui wrote to stderr:\n{errors}"
