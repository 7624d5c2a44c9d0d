"""The telemetry hub: one stream per watched device, its samples into the ring buffers (and the history),
its state for the GUI. Everything here runs on the loop and stays cheap; database writes go to the history's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fleetdesk.inventory.records import Device
from fleetdesk.reach import DeviceReach
from fleetdesk.telemetry.buffers import TelemetryStore
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.sample import Sample
from fleetdesk.telemetry.stream import Backoff, DeviceStream, StreamState

if TYPE_CHECKING:
    from fleetdesk.fleet import Fleet

__all__ = ["StreamState", "TelemetryHub"]

log = logging.getLogger(__name__)


class TelemetryHub:
    """`hub.start(devices)` on the loop; samples appear in `store` (subscribe to it), states through `on_state`.

    `stop(ids)` ends some streams (the command is killed on the device); `close()` ends all and writes what the
    history still holds (the history itself stays open: its owner closes it).
    """

    def __init__(self, fleet: Fleet, store: TelemetryStore, history: TelemetryHistory | None = None, *,
                 interval: float = 1.0, stall_timeout: float | None = None,
                 backoff: Callable[[], Backoff] = Backoff) -> None:
        if not 0.05 <= interval <= 3600:
            raise ValueError(f"a telemetry interval of {interval!r} s is out of range (0.05 to 3600)")
        self.fleet = fleet
        self.store = store
        self.history = history
        self.interval = interval
        self.stall_timeout = stall_timeout
        self.on_state: Callable[[StreamState], None] | None = None
        self._backoff = backoff
        self._streams: dict[int, tuple[DeviceStream, asyncio.Task[None]]] = {}
        self._states: dict[int, StreamState] = {}
        self._ending: set[asyncio.Task[None]] = set()

    def start(self, devices: Sequence[Device]) -> None:
        """Start streaming from each device not streaming yet (call on the loop)."""
        loop = asyncio.get_running_loop()
        for device in devices:
            if device.id in self._streams:
                continue
            profile = self.fleet.profiles.profiles.get(device.profile) if device.profile else None
            stream = DeviceStream(
                self.fleet.pool, device.id, device.name, self._reach_of(device),
                on_sample=self._sample_handler(device.id), on_state=self._state_changed,
                sources=profile.telemetry_sources if profile else (),
                interval=self.interval, stall_timeout=self.stall_timeout, backoff=self._backoff())
            self._states[device.id] = stream.state
            task = loop.create_task(stream.run(), name=f"telemetry {device.name}")
            self._streams[device.id] = (stream, task)

    def stop(self, device_ids: Iterable[int]) -> None:
        """Stop these devices' streams; their buffers stay in the store (forget them there if wanted)."""
        for device_id in list(device_ids):
            held = self._streams.pop(device_id, None)
            if held is None:
                continue
            task = held[1]
            task.cancel()
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def close(self) -> None:
        self.stop(list(self._streams))
        await asyncio.gather(*self._ending, return_exceptions=True)
        if self.history is not None:
            await self.history.flush(partial=True)

    def state(self, device_id: int) -> StreamState:
        held = self._streams.get(device_id)
        if held is not None:
            return held[0].state
        return self._states.get(device_id, StreamState(device_id, mode="stopped"))

    def streaming(self) -> list[int]:
        """Ids of the devices with a running stream."""
        return list(self._streams)

    def _reach_of(self, device: Device) -> Callable[[], Awaitable[DeviceReach]]:
        async def reach() -> DeviceReach:
            # Asked at every (re)connect, off the loop: the inventory's pinned keys and ~/.ssh/config may change.
            return await self.fleet.areach(device)
        return reach

    def _sample_handler(self, device_id: int) -> Callable[[dict[str, Any]], None]:
        def on_sample(obj: dict[str, Any]) -> None:
            sample = Sample.from_json(obj)  # SampleError (a ValueError) counts as a bad line in the stream
            try:
                self.store.add(device_id, sample)
                if self.history is not None:
                    self.history.add(device_id, sample)
            except Exception:  # a listener's bug (the GUI's) is logged; the device's stream goes on
                log.exception("telemetry: a listener failed on a sample of device %s", device_id)
        return on_sample

    def _state_changed(self, state: StreamState) -> None:
        before = self._states.get(state.device_id)
        self._states[state.device_id] = state
        if self.history is not None and before is not None:
            self._log_incident(before, state)
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("telemetry: the on_state listener failed for device %s", state.device_id)

    def _log_incident(self, before: StreamState, state: StreamState) -> None:
        """Write a stream that dropped, and one that came back, into the event log (not every retry)."""
        assert self.history is not None
        streaming = ("agent", "agentless")
        if before.mode in streaming and state.mode == "reconnecting":
            why = state.last_error.message if state.last_error is not None else "the telemetry command ended"
            self.history.post_event(state.device_id, "stream", f"telemetry stream lost: {why}")
        elif before.mode == "connecting" and state.mode in streaming and before.last_error is not None:
            self.history.post_event(state.device_id, "stream", f"telemetry stream back ({state.mode})")
