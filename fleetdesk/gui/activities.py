"""Every background operation the window starts: registered, observable, cancellable, cancelled on quit.

An `Activity` is one asyncio task with a title, the devices it touches, progress and an outcome;
`Activities` owns them all and is what the activity view and the status bar subscribe to.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from PySide6.QtCore import QObject, Signal

from fleetdesk.errors import FleetDeskError

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - the loop always returns


def human_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Activity(QObject):
    """One background operation. `changed` fires on every progress, detail or state change."""

    changed = Signal()

    def __init__(self, activity_id: int, title: str, devices: Sequence[int] = ()) -> None:
        super().__init__()
        self.id = activity_id
        self.title = title
        self.devices = tuple(devices)
        self.state = RUNNING
        self.progress: float | None = None  # 0..1; None while the total is unknown
        self.detail = ""
        self.summary = ""  # one line once finished: what it did
        self.error: FleetDeskError | None = None
        self.problem: FleetDeskError | None = None  # what holds a running activity back while it tries again
        self.result: object = None  # what the job returned, once it succeeded
        self.started = time.monotonic()
        self.finished: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._bytes_started: float | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def report(self, progress: float | None = None, detail: str | None = None) -> None:
        if not self.running:
            return
        if progress is not None:
            self.progress = min(1.0, max(0.0, progress))
        if detail is not None:
            self.detail = detail
        self.changed.emit()

    def report_problem(self, error: FleetDeskError | None, detail: str | None = None) -> None:
        """Trouble the running activity works around (shown with its fix); None once it is past it."""
        if not self.running:
            return
        self.problem = error
        if detail is not None:
            self.detail = detail
        self.changed.emit()

    def report_bytes(self, done: int, total: int, what: str = "") -> None:
        """Progress of a transfer: bytes, rate and time left, as an operator reads them."""
        now = time.monotonic()
        if self._bytes_started is None:
            self._bytes_started = now
        spent = now - self._bytes_started
        rate = done / spent if spent > 0.2 else 0.0
        parts = [f"{human_bytes(done)} of {human_bytes(total)}"]
        if rate > 0:
            parts.append(f"{human_bytes(rate)}/s")
            if total > done:
                parts.append(f"about {human_duration((total - done) / rate)} left")
        prefix = f"{what}: " if what else ""
        self.report(done / total if total else 1.0, prefix + ", ".join(parts))

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _finish(self, state: str, summary: str = "", error: FleetDeskError | None = None) -> None:
        self.state = state
        self.summary = summary
        self.error = error
        self.problem = None  # the outcome says how it ended
        self.finished = time.monotonic()
        if state == SUCCEEDED:
            self.progress = 1.0
        self.changed.emit()


R = TypeVar("R")


def window_loop() -> asyncio.AbstractEventLoop:
    # The window's qasync loop. A click handled while it is between runs (tests drive the window that
    # way) still gets its task, which starts as soon as the loop runs again.
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


class Activities(QObject):
    """The registry of background work. Widgets watch it; the bridge starts work through it."""

    added = Signal(object)  # Activity
    finished = Signal(object)  # Activity, once it has an outcome
    busy_changed = Signal()  # the set of devices with running work changed

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)
        self._all: list[Activity] = []
        self._closing = False

    def start(self, title: str, job: Callable[[Activity], Awaitable[R]], *, devices: Sequence[int] = (),
              summarize: Callable[[R], str] | None = None) -> Activity:
        """Run `job(activity)` as a registered task; its return value is summarized into the outcome."""
        if self._closing:
            raise RuntimeError("the window is closing; no new work starts")
        activity = Activity(next(self._ids), title, devices)
        self._all.append(activity)
        run = self._run(activity, job, summarize)  # built apart, so R comes from the job, not from _task's type
        activity._task = window_loop().create_task(run, name=title)
        self.added.emit(activity)
        if activity.devices:
            self.busy_changed.emit()
        return activity

    async def _run(self, activity: Activity, job: Callable[[Activity], Awaitable[R]],
                   summarize: Callable[[R], str] | None) -> R | None:
        result: R | None = None
        try:
            value = await job(activity)
        except asyncio.CancelledError:
            activity._finish(CANCELLED, "cancelled")
        except FleetDeskError as exc:
            activity._finish(FAILED, exc.message, exc)
        except Exception as exc:  # an unexpected bug still ends as a readable outcome, with its traceback logged
            log.exception("activity %r failed", activity.title)
            activity._finish(FAILED, f"{type(exc).__name__}: {exc}",
                             FleetDeskError(f"unexpected error: {type(exc).__name__}: {exc}", cause=exc,
                                            fix="see the log for details and report it"))
        else:
            activity.result = result = value
            activity._finish(SUCCEEDED, summarize(value) if summarize else "done")
        self.finished.emit(activity)
        if activity.devices:
            self.busy_changed.emit()
        return result

    def all(self) -> list[Activity]:
        return list(self._all)

    def running(self) -> list[Activity]:
        return [a for a in self._all if a.running]

    def busy_devices(self) -> set[int]:
        return {d for a in self._all if a.running for d in a.devices}

    def clear_finished(self) -> None:
        self._all = [a for a in self._all if a.running]

    async def cancel_all(self, timeout: float = 10.0) -> None:
        """Cancel running work newest first (it may depend on older work), waiting for each to end."""
        self._closing = True
        for activity in reversed(self.running()):
            task = activity._task
            if task is None or task.done():
                continue
            task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:  # its outcome was already recorded by _run
                log.debug("activity %r ended with an error while cancelling", activity.title, exc_info=True)
