"""How long the event loop (and with it the window) was unable to run: a heartbeat and its lateness.

The tests fail on any stall over 100 ms; `benchmarks/gui_fleet.py` reports the p99 of the same figure.
"""

from __future__ import annotations

import asyncio
import time


class LoopWatch:
    """Schedules a callback every `interval` seconds and records how late each one ran."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.stalls: list[float] = []  # lateness of each beat, seconds
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.paused = False

    def start(self) -> None:
        self._due = time.perf_counter() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._beat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        now = time.perf_counter()
        if not self.paused:
            self.stalls.append(max(0.0, now - self._due))
        self._due = now + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._beat)

    @property
    def worst(self) -> float:
        return max(self.stalls, default=0.0)

    def percentile(self, p: float) -> float:
        if not self.stalls:
            return 0.0
        ordered = sorted(self.stalls)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
