"""How long the event loop (and with it the window) was unable to run: a heartbeat and its lateness.

The tests fail on any stall over 100 ms; `benchmarks/gui_fleet.py` reports the p99 of the same figure.
With `where=True` a sampling thread also records what the loop's thread was doing while a beat was overdue,
so that a stall is reported with the code that caused it, not only its length.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback


class LoopWatch:
    """Schedules a callback every `interval` seconds and records how late each one ran."""

    def __init__(self, interval: float = 0.01, *, where: bool = False, overdue: float = 0.06) -> None:
        self.interval = interval
        self.stalls: list[float] = []  # lateness of each beat, seconds
        self.where: list[tuple[float, str]] = []  # (lateness, the loop thread's stack while overdue), with where=True
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.paused = False
        self._sample_where = where
        self._overdue = overdue
        self._sampled: list[str] = []  # the stacks seen while the current beat was overdue
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._due = time.perf_counter() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._beat)
        if self._sample_where and self._sampler is None:
            self._stop.clear()
            loop_thread = threading.get_ident()
            self._sampler = threading.Thread(target=self._sample, args=(loop_thread,), daemon=True,
                                             name="loop-watch sampler")
            self._sampler.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None

    def _beat(self) -> None:
        now = time.perf_counter()
        if not self.paused:
            late = max(0.0, now - self._due)
            self.stalls.append(late)
            if self._sampled:
                self.where.append((late, "\n".join(dict.fromkeys(self._sampled))))  # each distinct stack once
        self._sampled = []
        self._due = now + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._beat)

    def _sample(self, loop_thread: int) -> None:
        # Samples from `overdue` seconds into a late beat on, a few per stall: the frames running then are the
        # ones holding the loop (a stack ending in the Qt event loop's exec() means Qt's own C++ work, such
        # as laying out or painting). A thread holding the GIL in C code delays a sample, not its truth.
        while not self._stop.wait(self._overdue / 3):
            due = self._due
            if len(self._sampled) < 5 and time.perf_counter() - due > self._overdue:
                frame = sys._current_frames().get(loop_thread)
                if frame is not None and self._due == due:
                    self._sampled.append("".join(traceback.format_stack(frame, limit=12)))

    def worst_where(self) -> str:
        """The stack sampled during the longest recorded stall, or '' when none was sampled."""
        return max(self.where, default=(0.0, ""))[1]

    @property
    def worst(self) -> float:
        return max(self.stalls, default=0.0)

    def percentile(self, p: float) -> float:
        if not self.stalls:
            return 0.0
        ordered = sorted(self.stalls)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
