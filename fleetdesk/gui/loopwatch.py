"""How long the event loop (and with it the window) was unable to run: a heartbeat and its lateness.

The tests fail on any stall over 100 ms; `benchmarks/gui_fleet.py` reports the p99 of the same figure.
With `where=True` a sampling thread also records what the loop's thread was doing while a beat was overdue,
so that a stall is reported with the code that caused it, not only its length.

A beat can also be late because the whole process was not running: the machine (a busy two-core CI runner, a
virtual machine whose host paused it) gave its CPUs to others. `blamed` holds, per beat, the part of its lateness
that was the loop's doing. The sampling thread wakes every `overdue / 3` s; when it wakes much later than that,
nothing in the process ran meanwhile, and that time is the machine's. It is taken off a late beat only when the
process spent less than half the lateness on a CPU: had any of its threads been computing (in Python, or in C with
the GIL held, which also keeps the sampler from waking), its CPU time would show it, and had the loop's thread been
blocked in a call, the GIL would have been free and the sampler on time. A process stopped with SIGSTOP is
excused; a callback sleeping, computing in Python, or computing in C with the GIL held is not, nor is a worker
thread holding the GIL. Only a watch that samples (`where=True`) excuses anything.
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
        self.blamed: list[float] = []  # the same, 0.0 where the process, not the loop, was kept from running
        self.where: list[tuple[float, str]] = []  # (lateness, the loop thread's stack while overdue), with where=True
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.paused = False
        self._sample_where = where
        self._overdue = overdue
        self._sampled: list[str] = []  # the stacks seen while the current beat was overdue
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._cpu_at = 0.0  # the process's CPU time at the last beat
        self._sampler_seen = 0.0  # when the sampler last woke
        self._starved = 0.0  # how long, in this beat, the sampler was kept from waking (nothing in the process ran)

    def start(self) -> None:
        self._cpu_at = time.process_time()
        self._due = time.perf_counter() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._beat)
        if self._sample_where and self._sampler is None:
            self._stop.clear()
            loop_thread = threading.get_ident()
            self._sampler_seen, self._starved = time.perf_counter(), 0.0
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
        now, cpu = time.perf_counter(), time.process_time()
        starved = self._starved + self._missed(now)  # the sampler's gap so far, should it not have woken yet
        self._sampler_seen, self._starved = now, 0.0
        if not self.paused:
            late = max(0.0, now - self._due)
            self.stalls.append(late)
            idle = self._sample_where and cpu - self._cpu_at < late / 2
            self.blamed.append(max(0.0, late - starved) if idle else late)
            if self._sampled:
                self.where.append((late, "\n".join(dict.fromkeys(self._sampled))))  # each distinct stack once
        self._cpu_at = cpu
        self._sampled = []
        self._due = now + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._beat)

    def _missed(self, now: float) -> float:
        """How much later than due the sampler is at `now`, beyond a wake-up's ordinary slack."""
        gap = now - self._sampler_seen - self._overdue / 3
        return gap if gap > self._overdue / 3 else 0.0

    def _sample(self, loop_thread: int) -> None:
        # Samples from `overdue` seconds into a late beat on, a few per stall: the frames running then are the
        # ones holding the loop (a stack ending in the Qt event loop's exec() means Qt's own C++ work, such
        # as laying out or painting). A thread holding the GIL in C code delays a sample, not its truth.
        while not self._stop.wait(self._overdue / 3):
            now = time.perf_counter()
            self._starved += self._missed(now)
            self._sampler_seen = now
            due = self._due
            if len(self._sampled) < 5 and now - due > self._overdue:
                frame = sys._current_frames().get(loop_thread)
                if frame is not None and self._due == due:
                    self._sampled.append("".join(traceback.format_stack(frame, limit=12)))

    def worst_where(self) -> str:
        """The stack sampled during the longest recorded stall, or '' when none was sampled."""
        return max(self.where, default=(0.0, ""))[1]

    def worst_blamed(self, first: int = 0) -> float:
        """The longest stall the loop is to blame for, from beat `first` on (see the module docstring)."""
        return max(self.blamed[first:], default=0.0)

    def process_pauses(self, first: int = 0) -> list[float]:
        """Late beats, from beat `first` on, that came from the process not running rather than the loop."""
        return [late for late, blamed in zip(self.stalls[first:], self.blamed[first:], strict=True)
                if blamed < late]

    @property
    def worst(self) -> float:
        return max(self.stalls, default=0.0)

    def percentile(self, p: float) -> float:
        if not self.stalls:
            return 0.0
        ordered = sorted(self.stalls)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
