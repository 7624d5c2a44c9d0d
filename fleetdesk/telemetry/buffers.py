"""Bounded in-memory telemetry: one ring buffer of METRICS per device, and the store that holds them.

Memory is fixed when a buffer is made (capacity x (1 + len(METRICS)) float64): a device that streams
for a week uses what it used after `capacity` samples. Missing values are NaN, which plots leave as gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fleetdesk.telemetry.sample import METRICS, Sample

DEFAULT_CAPACITY = 3600  # one hour at 1 Hz
_COLUMN = {name: i + 1 for i, name in enumerate(METRICS)}  # column 0 is the time


class RingBuffer:
    """The last `capacity` samples of one device, oldest first when read."""

    __slots__ = ("_count", "_data", "_head", "_latest", "capacity")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError("a ring buffer keeps at least 2 samples")
        self.capacity = capacity
        self._data = np.full((capacity, 1 + len(METRICS)), np.nan)
        self._head = 0  # where the next sample goes
        self._count = 0
        self._latest: Sample | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def latest(self) -> Sample | None:
        return self._latest

    def append(self, sample: Sample) -> None:
        row = self._data[self._head]
        row[0] = sample.t
        for name, col in _COLUMN.items():
            value = getattr(sample, name)
            row[col] = np.nan if value is None else value
        self._head = (self._head + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)
        self._latest = sample

    def _ordered(self, column: int, last: int | None) -> np.ndarray:
        n = self._count if last is None else min(last, self._count)
        if n == 0:
            return np.empty(0)
        start = (self._head - n) % self.capacity
        if start + n <= self.capacity:
            return self._data[start:start + n, column].copy()
        return np.concatenate((self._data[start:, column], self._data[:self._head, column]))

    def times(self, last: int | None = None) -> np.ndarray:
        """Sample times (Unix seconds), oldest first; the last `last` only if given."""
        return self._ordered(0, last)

    def values(self, metric: str, last: int | None = None) -> np.ndarray:
        """One metric, aligned with times(); NaN where the device did not report it."""
        return self._ordered(_COLUMN[metric], last)

    def series(self, metric: str, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(times, values) of one metric, from `since` (Unix seconds) on if given."""
        t, v = self.times(), self.values(metric)
        if since is not None and len(t):
            first = int(np.searchsorted(t, since, side="left"))
            t, v = t[first:], v[first:]
        return t, v

    def nbytes(self) -> int:
        return int(self._data.nbytes)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What listeners hear: one sample of one device has been stored."""

    device_id: int
    sample: Sample


Listener = Callable[[Arrival], None]


class TelemetryStore:
    """Ring buffers by device id, and the listeners that hear every stored sample (on the loop's thread)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._buffers: dict[int, RingBuffer] = {}
        self._listeners: list[Listener] = []

    def add(self, device_id: int, sample: Sample) -> None:
        buffer = self._buffers.get(device_id)
        if buffer is None:
            buffer = self._buffers[device_id] = RingBuffer(self.capacity)
        buffer.append(sample)
        arrival = Arrival(device_id, sample)
        for listener in tuple(self._listeners):
            listener(arrival)

    def buffer(self, device_id: int) -> RingBuffer | None:
        return self._buffers.get(device_id)

    def devices(self) -> list[int]:
        return list(self._buffers)

    def forget(self, device_ids: Iterable[int]) -> None:
        for device_id in device_ids:
            self._buffers.pop(device_id, None)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every stored sample; returns the function that stops it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def nbytes(self) -> int:
        return sum(b.nbytes() for b in self._buffers.values())
