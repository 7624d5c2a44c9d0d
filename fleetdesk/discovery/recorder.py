"""Discovery's sightings on their way into the inventory: batched off the loop, held (bounded) and retried while
the inventory refuses writes, and every refusal and recovery told to whoever shows discovery to the operator.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.errors import FleetDeskError, InventoryUnavailableError
from fleetdesk.inventory.records import Device

log = logging.getLogger(__name__)

BATCH = 16  # discovery events per inventory transaction
HELD_LIMIT = 4096  # events held in memory while the inventory refuses writes: many times a large floor's worth
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0  # the wait before trying a refused write again, doubling up to the bound

# Writes a run of events to the inventory (Fleet.apply_discovery_events): the device each one left, if any.
StoreEvents = Callable[[Sequence[DiscoveryEvent]], list[Device | None]]


@dataclass(frozen=True)
class RecordingState:
    """Whether discovery's sightings reach the inventory: an error being retried, or recording again after one."""

    error: FleetDeskError | None  # why sightings are not stored; None once they are again
    held: int = 0  # sightings kept in memory for the next try
    dropped: int = 0  # sightings let go since the trouble began (superseded ones of the same device first)
    retry_in: float | None = None  # seconds to the next try; None when the inventory refused these outright

    @property
    def recording(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        """One line for the operator: the window's discovery activity and `fleetdesk discover` both show it."""
        dropped = f"; {self.dropped} older sighting(s) were let go to bound memory" if self.dropped else ""
        if self.error is None:
            return f"recording again{dropped}"
        if self.retry_in is None:
            return f"{self.dropped} sighting(s) not recorded: {self.error.message}"
        return (f"not recording: {self.error.message}; {self.held} sighting(s) held, "
                f"trying again in {self.retry_in:g} s{dropped}")


def bound_events(events: Sequence[DiscoveryEvent], limit: int) -> tuple[list[DiscoveryEvent], int]:
    """At most `limit` of `events`, in order, and how many were let go.

    Let go first: an event a later one of the same device and service supersedes (the inventory ends the
    same without it), oldest first; then the oldest events of devices that still have others held; only
    then the oldest of all, so a device heard once is the last to be forgotten.
    """
    excess = len(events) - limit
    if excess <= 0:
        return list(events), 0
    drop: set[int] = set()
    latest = {_key(e): i for i, e in enumerate(events)}
    drop.update([i for i, e in enumerate(events) if latest[_key(e)] != i][:excess])
    if len(drop) < excess:
        left = Counter(_device_key(e) for i, e in enumerate(events) if i not in drop)
        for i, e in enumerate(events):
            if len(drop) == excess:
                break
            if i not in drop and left[_device_key(e)] > 1:
                drop.add(i)
                left[_device_key(e)] -= 1
    for i in range(len(events)):
        if len(drop) == excess:
            break
        drop.add(i)
    return [e for i, e in enumerate(events) if i not in drop], len(drop)


def _device_key(event: DiscoveryEvent) -> str:
    sighting = event.sighting
    return (sighting.host_name or "").casefold() or ",".join(sighting.addresses)


def _key(event: DiscoveryEvent) -> tuple[str, str, str]:
    return (_device_key(event), event.sighting.service_type or "", event.sighting.instance_name or "")


class DiscoveryRecorder:
    """Takes mDNS events on the loop and writes them to the inventory in its own thread, a batch at a time.

    The loop never waits on the database, so resolving the next device goes on while the last is stored;
    `on_device` is called on the loop for every device seen, updated or gone, once it is in the inventory.
    A write the inventory refuses for now (disk full, locked) is held and tried again with a bounded backoff;
    `on_state` hears each refusal and the recovery, so a window never says "listening" while nothing is stored.
    """

    def __init__(self, store: StoreEvents, on_device: Callable[[Device], None] | None = None,
                 on_state: Callable[[RecordingState], None] | None = None, *, limit: int = HELD_LIMIT) -> None:
        self._store = store
        self._on_device = on_device
        self._on_state = on_state
        self._limit = limit
        self._pending: list[DiscoveryEvent] = []
        self._dropped = 0  # let go since the last recovery (or the start)
        self._troubled = False
        self._closing = False
        # Its own thread, so the loop (and the GUI on it) never waits on the database.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetdesk-discovery")
        # Everything on the loop it was made on, named, not asked of asyncio when the task steps: the GUI tests'
        # qasync loop (stopped and started again between test steps) can step a task with no loop running, where
        # an asyncio.Event's wait() fails ("bound to a different event loop") and the recorder would die.
        self._loop = asyncio.get_running_loop()
        self._wake: asyncio.Future[None] = self._loop.create_future()
        self._resume: asyncio.Future[None] | None = None  # the wait before a retry, cut short by close()
        self._task = self._loop.create_task(self._write(), name="discovery recorder")

    def push(self, event: DiscoveryEvent) -> None:
        self._pending.append(event)
        if len(self._pending) > self._limit:
            self._hold([])
        self._signal()

    def _signal(self) -> None:
        if not self._wake.done():
            self._wake.set_result(None)

    def _end_pause(self) -> None:
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)

    async def close(self) -> None:
        """Store what is still pending, then stop.

        A refused write is tried once more at once, not after its backoff; if the inventory still refuses, that
        error is raised, saying how many sightings were not recorded.
        """
        self._closing = True
        self._signal()
        self._end_pause()
        try:
            await self._task
        finally:
            self._executor.shutdown(wait=False)

    def _hold(self, batch: list[DiscoveryEvent]) -> None:
        """Put a refused batch back in front of what came since, within the bound."""
        self._pending, dropped = bound_events(batch + self._pending, self._limit)
        self._dropped += dropped

    def _tell(self, state: RecordingState) -> None:
        self._troubled = state.error is not None
        if self._on_state is not None:
            self._on_state(state)

    async def _write(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._wake
            self._wake = self._loop.create_future()
            while self._pending:
                # Small batches: the first devices of a floor are in the inventory (and on screen) while
                # the rest are still being stored; one transaction per batch keeps the commits few.
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                try:
                    devices = await self._loop.run_in_executor(self._executor, self._store, batch)
                except InventoryUnavailableError as exc:
                    self._hold(batch)
                    if self._closing:
                        raise InventoryUnavailableError(
                            f"{len(self._pending)} sighting(s) were not recorded: {exc.message}", fix=exc.fix,
                            step="record sightings", cause=exc) from None
                    self._tell(RecordingState(exc, len(self._pending), self._dropped, delay))
                    await self._pause(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                except Exception as exc:  # these events themselves were refused: the ones after them still count
                    if not isinstance(exc, FleetDeskError):
                        log.exception("recording %d discovery event(s) failed", len(batch))
                    error = exc if isinstance(exc, FleetDeskError) else FleetDeskError(
                        f"unexpected error: {type(exc).__name__}: {exc}", cause=exc,
                        fix="see the log for details and report it")
                    self._dropped += len(batch)
                    self._tell(RecordingState(error, len(self._pending), self._dropped))
                    continue
                delay = RETRY_FIRST_S
                if self._troubled:
                    self._tell(RecordingState(None, len(self._pending), self._dropped))
                    self._dropped = 0
                for device in devices:
                    # A device whose last service went is reported too: it is offline now.
                    if device is not None and self._on_device is not None:
                        self._on_device(device)
            if self._closing:
                return

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` before the next try, or less if close() asks for the last try now."""
        self._resume = self._loop.create_future()
        timer = self._loop.call_later(seconds, self._end_pause)
        try:
            await self._resume
        finally:
            timer.cancel()
            self._resume = None
