"""The real window on a qasync loop, for GUI tests: a loop watch, screenshots and leak checks.

`gui_session` builds `MainWindow` over a real inventory exactly as `fleetdesk-gui` does. Tests drive it
with `session.run(coroutine)`; every run is watched, and the test fails if the loop stalled for more
than 100 ms, or if a widget, an active timer or an asyncio task outlives the window.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
STALL_LIMIT = 0.100  # seconds the loop may be kept from running (the quality bar)


class GuiSession:
    """One window, its bridge and its loop; see the module docstring."""

    def __init__(self, window: Any, loop: asyncio.AbstractEventLoop, screens: Path) -> None:
        from fleetdesk.gui.loopwatch import LoopWatch

        self.window = window
        self.bridge = window.bridge
        self.loop = loop
        self.screens = screens
        self.watch = LoopWatch(where=True)  # a stall is reported with the code the loop was running
        self.stall_notes: list[str] = []

    def run(self, awaitable: Awaitable[T], timeout: float = 60.0, *, watch: bool = True) -> T:
        async def watched() -> T:
            if not watch:
                return await asyncio.wait_for(awaitable, timeout)
            self.watch.start()
            before, sampled = len(self.watch.stalls), len(self.watch.where)
            try:
                return await asyncio.wait_for(awaitable, timeout)
            finally:
                self.watch.stop()
                # The process kept from running (the machine busy or paused) is not the loop's stall: said, not
                # failed on (see fleetdesk/gui/loopwatch.py for how the two are told apart).
                for late in self.watch.process_pauses(before):
                    if late > STALL_LIMIT:
                        print(f"the process did not run for {late * 1000:.0f} ms (the machine, not the loop)")
                worst = self.watch.worst_blamed(before)
                if worst > STALL_LIMIT:
                    # Named by the test that saw it: a module-wide session reports at its very end.
                    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].rpartition("::")[2]
                    where = max(self.watch.where[sampled:], default=(0.0, ""))[1]
                    self.stall_notes.append(f"{worst * 1000:.0f} ms" + (f" in {test}" if test else "")
                                            + (f", the loop was at:\n{where}" if where else ""))

        # Not run_until_complete: qasync's processes Qt events once more after the loop stopped, with no
        # running loop set, so a task stepping then fails in get_running_loop(). Production runs one
        # coroutine for the whole session and never meets this; a test runs the loop many times.
        future = asyncio.ensure_future(watched(), loop=self.loop)
        future.add_done_callback(lambda _f: self.loop.stop())
        self.loop.run_forever()
        if not future.done():
            raise RuntimeError("the loop stopped before the test's step finished")
        return future.result()

    async def until(self, predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
        """Let the window run until `predicate()` is true; fail naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")
            await asyncio.sleep(0.02)

    def wait(self, predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
        self.run(self.until(predicate, what, timeout), timeout + 5)

    def settle(self, seconds: float = 0.1) -> None:
        self.run(asyncio.sleep(seconds))

    def call(self, fn: Callable[[], T]) -> T:
        """Do `fn` inside the running loop (a click whose handler starts work)."""
        async def inside() -> T:
            return fn()

        return self.run(inside())

    def screenshot(self, widget: Any, name: str) -> Path:
        """Save a picture of `widget`. Grabbed inside a loop step, as the app would, but not watched for stalls
        (grabbing is test work, not the app's): Qt may dispatch the loop's socket callbacks while it renders,
        and outside a step they would run with no asyncio loop marked running (zeroconf's packet handler, for
        one, then failed and the grab came back empty)."""
        path = self.screens / f"{name}.png"

        async def grab() -> Any:
            return widget.grab()

        picture = self.run(grab(), watch=False)
        assert picture.save(str(path)), f"could not save {path}"
        shared = os.environ.get("FLEETDESK_SCREENSHOTS")
        if shared:  # a developer's folder to look at the pictures from one place
            Path(shared).mkdir(parents=True, exist_ok=True)
            picture.save(str(Path(shared) / f"{name}.png"))
        return path


def private_qsettings(folder: Path) -> None:
    """The window remembers its layout, theme and thresholds in QSettings: point them at `folder`, never at the
    user's ~/.config, where one test run's layout (a collapsed pane) would meet the next run's window."""
    from PySide6.QtCore import QSettings

    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(folder))


def live_timers() -> list[Any]:
    from PySide6.QtCore import QTimer

    found = []
    for obj in gc.get_objects():
        if isinstance(obj, QTimer):
            try:
                if obj.isActive():
                    found.append(obj)
            except RuntimeError:  # the C++ side is already gone
                continue
    return found


@contextmanager
def gui_session(db_url: str, screens: Path, *, ssh_config: str | None = None,
                interfaces: list[str] | None = None) -> Iterator[GuiSession]:
    """The window over a fresh Fleet on `db_url`; on exit the quit path runs and leaks are checked."""
    import qasync
    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QApplication

    from fleetdesk.config import Settings
    from fleetdesk.fleet import Fleet
    from fleetdesk.gui.app import build_window, create_app, freeze_startup_heap
    from fleetdesk.inventory import open_inventory
    from fleetdesk.profiles import load_profiles

    if interfaces is not None:
        os.environ["FLEETDESK_MDNS_INTERFACES"] = ",".join(interfaces)
    app = create_app([])
    app.setQuitOnLastWindowClosed(False)  # as run_window does: shutdown ends the session, not Qt
    before = set(QApplication.topLevelWidgets())
    timers_before = set(map(id, live_timers()))
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    fleet = Fleet(open_inventory(db_url), load_profiles(Settings.load().user_profiles_dir), ssh_config=ssh_config)
    window = build_window(fleet, Settings.load(db_url), browse_on_start=False)
    session = GuiSession(window, loop, screens)
    # As the app's main() does. Without it a full collection walks the whole test process (torch, onnx and
    # every earlier test's objects) inside a watched run: CI met a 206 ms stall that was only that.
    freeze_startup_heap()
    try:
        window.show()
        app.processEvents()  # the first paint (fonts, style polish) happens once, before the watch
        session.run(window.start())
        session.settle(0.05)  # what start() queued for the next pass (the status bar counts) has run
        yield session
        session.run(window.shutdown())
        assert not window.isVisible(), "the window did not close after shutdown"
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        assert not pending, f"tasks outlived the window: {pending}"
    finally:
        if not loop.is_closed():
            for task in asyncio.all_tasks(loop):
                task.cancel()
        window.deleteLater()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        app.processEvents()
        loop.close()
        asyncio.set_event_loop(None)
        os.environ.pop("FLEETDESK_MDNS_INTERFACES", None)
        # qasync's loop and the window's QObjects must die here, in the GUI thread: left to a later
        # garbage collection they may be destroyed in a worker thread ("Timers cannot be stopped ...").
        del window, loop
        session.window = session.bridge = session.loop = None  # type: ignore[assignment]
        gc.unfreeze()  # what this test froze goes back to the collector, to be freed with the window
        gc.collect()
    leaked = [w for w in QApplication.topLevelWidgets() if w not in before and not w.objectName().startswith("qt_")]
    assert not leaked, f"widgets outlived the window: {leaked}"
    timers = [t for t in live_timers() if id(t) not in timers_before]
    assert not timers, f"active timers outlived the window: {timers}"
    if session.stall_notes:
        pytest.fail(f"the event loop stalled longer than {STALL_LIMIT * 1000:.0f} ms:\n"
                    + "\n".join(session.stall_notes), pytrace=False)


def shown_text(text: str) -> str:
    """What Qt draws for a tooltip's (or an auto-format label's) `text`: Qt takes it for HTML when
    `Qt.mightBeRichText` says so, and then draws the document's text, not the markup."""
    from PySide6.QtGui import Qt, QTextDocument

    if not Qt.mightBeRichText(text):
        return text
    document = QTextDocument()
    document.setHtml(text)
    return document.toPlainText()


def distinct_colours(image: Any) -> int:
    """How many different colours a QImage has: a blank picture has one, a drawn window hundreds."""
    from PySide6.QtGui import QImage

    image = image.convertToFormat(QImage.Format.Format_RGB32)
    seen: set[int] = set()
    for row in range(image.height()):
        seen.update(memoryview(bytes(image.constScanLine(row))[:image.width() * 4]).cast("I"))
    return len(seen)
