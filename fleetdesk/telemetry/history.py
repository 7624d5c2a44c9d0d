"""The downsampled telemetry history: samples folded into one summary per device per minute, written to the
inventory in batches from a thread of its own, with retention; and the event log alerts and streams write to.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory import Inventory
from fleetdesk.inventory.telemetry_repo import HISTORY_METRICS, Event, MinuteSummary, TelemetryRepo
from fleetdesk.telemetry.sample import METRICS, Sample

__all__ = ["HISTORY_METRICS", "Event", "MinuteAccumulator", "MinuteSummary", "TelemetryHistory"]

log = logging.getLogger(__name__)

assert set(HISTORY_METRICS) <= set(METRICS), "the history keeps metrics that samples have"

DEFAULT_RETENTION = timedelta(days=30)
FLUSH_EVERY = 10.0  # seconds between writes of finished minutes
# A minute is written once this long after its end (samples still on their way) or once the device has sent a
# sample of a later minute, whichever comes first.
GRACE = 5.0
PRUNE_EVERY = 3600.0


class MinuteAccumulator:
    """Running count, sum and maximum of each history metric over one device's minute."""

    __slots__ = ("_count", "_max", "_sum", "device_id", "minute", "samples")

    def __init__(self, device_id: int, minute: int) -> None:
        self.device_id = device_id
        self.minute = minute  # Unix seconds of the minute's start
        self.samples = 0
        self._count = dict.fromkeys(HISTORY_METRICS, 0)
        self._sum = dict.fromkeys(HISTORY_METRICS, 0.0)
        self._max: dict[str, float | None] = dict.fromkeys(HISTORY_METRICS)

    def add(self, sample: Sample) -> None:
        self.samples += 1
        for m in HISTORY_METRICS:
            value = sample.value(m)
            if value is None or not math.isfinite(value):
                continue
            self._count[m] += 1
            self._sum[m] += value
            high = self._max[m]
            self._max[m] = value if high is None or value > high else high

    def absorb(self, other: MinuteAccumulator) -> None:
        """Take in the samples another accumulator of the same device and minute holds."""
        self.samples += other.samples
        for m in HISTORY_METRICS:
            self._count[m] += other._count[m]
            self._sum[m] += other._sum[m]
            a, b = self._max[m], other._max[m]
            self._max[m] = a if b is None else b if a is None else max(a, b)

    def summary(self) -> MinuteSummary:
        return MinuteSummary(
            self.device_id, datetime.fromtimestamp(self.minute, UTC), self.samples,
            {m: (self._sum[m] / self._count[m] if self._count[m] else None) for m in HISTORY_METRICS},
            dict(self._max))


def minute_of(t: float) -> int:
    return int(t // 60) * 60


class TelemetryHistory:
    """Call `add` on the loop for every sample (cheap: a few additions); finished minutes are written in one
    transaction per flush on the history's own thread, so the loop never waits on the database.

    `close()` writes what is left, unfinished minutes included: a minute that a later run continues is merged
    with the stored row, not duplicated.
    """

    def __init__(self, repo: TelemetryRepo, *, retention: timedelta = DEFAULT_RETENTION,
                 flush_every: float = FLUSH_EVERY, grace: float = GRACE,
                 clock: Callable[[], float] = time.time) -> None:
        if retention <= timedelta(0):
            raise ValueError("the history's retention must be positive")
        self.repo = repo
        self.retention = retention
        self.flush_every = flush_every
        self.grace = grace
        self._clock = clock
        self._open: dict[tuple[int, int], MinuteAccumulator] = {}
        self._latest_minute: dict[int, int] = {}  # device -> the newest minute it sent a sample of
        self._events: list[tuple[int | None, str, str, str | None, float | None, float | None, datetime | None]] = []
        # One writer thread: batches go in order and never race each other for the database's write lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetdesk-history")
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._last_prune = -math.inf
        self._closed = False
        self.minutes_written = 0
        self.write_errors = 0

    @classmethod
    def open(cls, inventory: Inventory, **options: Any) -> TelemetryHistory:
        """The history kept in this inventory's database."""
        return cls(TelemetryRepo.of(inventory), **options)

    # -- on the loop ---------------------------------------------------------------------------------

    def add(self, device_id: int, sample: Sample) -> None:
        """Fold one sample into its device's minute; starts the periodic writer on first use."""
        minute = minute_of(sample.t)
        key = (device_id, minute)
        acc = self._open.get(key)
        if acc is None:
            acc = self._open[key] = MinuteAccumulator(device_id, minute)
        acc.add(sample)
        if minute > self._latest_minute.get(device_id, -1):
            self._latest_minute[device_id] = minute
        self._ensure_running()

    def post_event(self, device_id: int | None, kind: str, message: str, *, metric: str | None = None,
                   value: float | None = None, bound: float | None = None, at: datetime | None = None) -> None:
        """log_event without waiting: written with the next batch (within `flush_every` s)."""
        self._events.append((device_id, kind, message, metric, value, bound, at or datetime.now(UTC)))
        self._ensure_running()

    def pending(self) -> int:
        """Minutes not yet written."""
        return len(self._open)

    def _ensure_running(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="telemetry history writer")

    async def _run(self) -> None:
        while True:
            if self._clock() - self._last_prune >= PRUNE_EVERY:
                await self._guarded(self.prune())
            await self._guarded(self.flush())
            await asyncio.sleep(self.flush_every)

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except FleetDeskError as exc:
            # The database went away for a moment: the minutes stay in memory and go with the next flush.
            self.write_errors += 1
            log.warning("telemetry history: %s", exc)

    async def flush(self, *, partial: bool = False) -> int:
        """Write every finished minute (every minute, with `partial`) and the events posted; returns minutes
        written. Minutes that fail to write stay for the next flush."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = self._clock()
            done = [acc for key, acc in self._open.items()
                    if partial or acc.minute + 60 + self.grace <= now or acc.minute < self._latest_minute[key[0]]]
            events, self._events = self._events, []
            if not done and not events:
                return 0
            # Taken out before the write: a sample of the same minute that comes meanwhile opens a fresh
            # accumulator, written later and merged with this row in the database.
            for acc in done:
                del self._open[(acc.device_id, acc.minute)]
            loop = asyncio.get_running_loop()
            # Shielded: a cancelled flush (close() stopping the writer) still lets the thread finish the batch,
            # and nothing is put back that the thread may yet write (that would count it twice).
            try:
                await asyncio.shield(loop.run_in_executor(self._executor, self.repo.log_events, events))
            except Exception:
                self._events[:0] = events
                self._put_back(done)
                raise
            try:
                written = await asyncio.shield(loop.run_in_executor(
                    self._executor, self.repo.write_minutes, [a.summary() for a in done]))
            except Exception:
                self._put_back(done)
                raise
            self.minutes_written += written
            return written

    def _put_back(self, done: list[MinuteAccumulator]) -> None:
        for acc in done:
            later = self._open.get((acc.device_id, acc.minute))
            if later is not None:
                acc.absorb(later)
            self._open[(acc.device_id, acc.minute)] = acc

    async def prune(self) -> tuple[int, int]:
        """Delete minutes and events older than the retention: (minutes, events) deleted."""
        self._last_prune = self._clock()
        before = datetime.fromtimestamp(self._clock(), UTC) - self.retention
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.repo.prune, before)

    async def close(self) -> None:
        """Write everything still held, then stop the writer."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush(partial=True)
        finally:
            self._executor.shutdown(wait=True)

    # -- reads and direct writes (blocking: from a thread, the CLI, or a report) ----------------------

    def history(self, device_id: int, since: datetime | None = None, until: datetime | None = None,
                ) -> list[MinuteSummary]:
        return self.repo.minutes(device_id, since, until)

    def log_event(self, device_id: int | None, kind: str, message: str, *, metric: str | None = None,
                  value: float | None = None, bound: float | None = None, at: datetime | None = None) -> int:
        return self.repo.log_event(device_id, kind, message, metric=metric, value=value, bound=bound, at=at)

    def events(self, device_id: int | None = None, since: datetime | None = None, limit: int = 200) -> list[Event]:
        return self.repo.events(device_id, since, limit)
