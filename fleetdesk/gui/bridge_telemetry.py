"""The bridge's side of live telemetry: start and stop device streams, judge samples, raise and log alerts.

`TelemetryMixin` is mixed into `FleetBridge` (fleetdesk.gui.bridge), which owns the buffers and the alert monitor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from PySide6.QtCore import SignalInstance

from fleetdesk.fleet import Fleet
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.telemetry_repo import TelemetryRepo
from fleetdesk.telemetry.alerts import AlertEvent, AlertMonitor, Threshold
from fleetdesk.telemetry.buffers import Arrival, TelemetryStore
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.hub import StreamState, TelemetryHub

from .activities import window_loop
from .bridge_views import DeviceView, stream_view

log = logging.getLogger(__name__)


class TelemetryMixin:
    """Streams and alerts; `FleetBridge` provides the fleet, the buffers, the alert monitor and the signals."""

    fleet: Fleet
    telemetry: TelemetryStore
    alerts: AlertMonitor
    notice: SignalInstance
    alert_event: SignalInstance
    stream_changed: SignalInstance
    _devices: dict[int, Device]
    _trusted: set[int]
    _db_thread: ThreadPoolExecutor
    _closed: bool
    _hub: TelemetryHub | None
    _history: TelemetryHistory | None
    _alert_writes: set[asyncio.Future[None]]
    _events: TelemetryRepo | None
    _problems: dict[int, str]
    _refusals: dict[int, str]
    device_changed: SignalInstance

    if TYPE_CHECKING:  # FleetBridge's own methods (fleetdesk.gui.bridge)
        def _chosen(self, device_ids: Sequence[int]) -> list[Device]: ...
        def view(self, device: Device) -> DeviceView: ...

    def _sample_stored(self, arrival: Arrival) -> None:
        for event in self.alerts.check(arrival.device_id, arrival.sample):
            self._alert(event)
        self._refusal(arrival.device_id, arrival.sample.refused)

    def _refusal(self, device_id: int, refused: str | None) -> None:
        """The device's model server refusing an artifact (a file that does not verify) is a device problem, with
        its fix, for as long as its samples say so; it clears when they stop, unless another problem came since."""
        shown = self._refusals.get(device_id)
        if refused == shown:
            return
        if refused is None:
            del self._refusals[device_id]
            if self._problems.get(device_id) == shown:
                del self._problems[device_id]
        else:
            self._refusals[device_id] = self._problems[device_id] = refused
        device = self._devices.get(device_id)
        if device is not None:
            self.device_changed.emit(self.view(device))

    def set_thresholds(self, thresholds: Sequence[Threshold]) -> None:
        """Judge samples against these thresholds from now on; alerts whose rule went away are cleared."""
        for event in self.alerts.set_thresholds(thresholds, at=time.time()):
            self._alert(event)

    def _alert(self, event: AlertEvent) -> None:
        self.alert_event.emit(event)
        if self._closed:
            return
        # Logged in the inventory's thread, in order; quitting waits for the writes (close()).
        if self._events is None:
            self._events = TelemetryRepo.of(self.fleet.inventory)
        future = window_loop().run_in_executor(self._db_thread, functools.partial(record_alert, self._events, event))
        self._alert_writes.add(future)
        future.add_done_callback(self._alert_written)

    def _alert_written(self, future: asyncio.Future[None]) -> None:
        self._alert_writes.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("could not log an alert in the inventory: %s", future.exception())

    def _telemetry_hub(self) -> TelemetryHub:
        if self._hub is None:
            self._history = TelemetryHistory.open(self.fleet.inventory)
            self._hub = TelemetryHub(self.fleet, self.telemetry, self._history, interval=1.0)
            self._hub.on_state = self._stream_state
        return self._hub

    def _stream_state(self, state: StreamState) -> None:
        self.stream_changed.emit(stream_view(state))

    def start_streaming(self, device_ids: Sequence[int]) -> list[Device]:
        """Stream telemetry from these devices (every trusted one if none): one SSH channel each, reconnecting
        by itself, until stopped or quit. Untrusted devices are left out (SSH would refuse their key); returns
        the devices that stream."""
        chosen = self._chosen(device_ids) if device_ids else list(self._devices.values())
        devices = [d for d in chosen if d.id in self._trusted]
        skipped = len(chosen) - len(devices)
        if not devices:
            self.notice.emit("No trusted device to stream from: check and trust its host key first (Trust…).")
            return []
        hub = self._telemetry_hub()
        hub.start(devices)
        for device in devices:
            self._stream_state(hub.state(device.id))
        text = f"Streaming telemetry from {len(devices)} device(s)"
        if skipped and device_ids:
            text += f"; {skipped} not trusted yet, left out (Trust… first)"
        self.notice.emit(text)
        return devices

    def stop_streaming(self, device_ids: Sequence[int]) -> None:
        """Stop these devices' streams (every stream if none); what they sent stays on screen."""
        if self._hub is None:
            return
        ids = [i for i in (device_ids or self._hub.streaming()) if i in self._hub.streaming()]
        self._hub.stop(ids)
        for device_id in ids:
            self._stream_state(StreamState(device_id, mode="stopped"))


def record_alert(events: TelemetryRepo, event: AlertEvent) -> None:
    """Write one alert, raised or cleared, to the inventory's event log (runs in the inventory's thread)."""
    events.log_event(event.device_id, "alert", event.message, metric=event.metric, value=event.value,
                     bound=event.bound, at=datetime.fromtimestamp(event.at, UTC))
