"""The bridge's side of live telemetry: start and stop device streams, judge samples, raise and log alerts.

`TelemetryPart` is one part of `FleetBridge` (fleetdesk.gui.bridge): it owns the sample buffers, the alert monitor
and the hub that streams, and follows the devices part (whom it may stream from, which devices are removed).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from PySide6.QtCore import QObject, Signal

from fleetdesk.inventory.records import Device
from fleetdesk.inventory.telemetry_repo import ALERT_CLEARED, ALERT_RAISED, TelemetryRepo
from fleetdesk.telemetry.alerts import AlertEvent, AlertMonitor, Threshold
from fleetdesk.telemetry.buffers import Arrival, TelemetryStore
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.hub import StreamState, TelemetryHub

from .activities import window_loop
from .bridge_context import BridgeContext
from .bridge_devices import DevicesPart
from .bridge_views import stream_view

log = logging.getLogger(__name__)


class TelemetryPart(QObject):
    """Streams and alerts: `store` keeps each device's samples in bounded buffers, `alerts` judges them."""

    notice = Signal(str)  # a short operator message for the status bar
    alert_event = Signal(object)  # AlertEvent, raised or cleared
    stream_changed = Signal(object)  # StreamView: a device's telemetry stream in words

    def __init__(self, context: BridgeContext, devices: DevicesPart) -> None:
        super().__init__()
        self._context = context
        self.fleet = context.fleet
        self._devices = devices
        # Live telemetry: bounded buffers in memory, judged against the alert thresholds as each sample lands
        # (subscribed first, so a row is marked in the same pass that paints its sample).
        self.store = TelemetryStore()
        self.alerts = AlertMonitor()
        self.store.subscribe(self._sample_stored)
        self._hub: TelemetryHub | None = None  # made when the first stream starts
        self._history: TelemetryHistory | None = None  # the per-minute history the hub writes (for reports)
        self._alert_writes: set[asyncio.Future[None]] = set()
        self._events: TelemetryRepo | None = None  # the inventory's event log, where alerts are written
        # A removed device's stream, samples and alerts go with it.
        devices.device_removed.connect(self._forget)

    def _sample_stored(self, arrival: Arrival) -> None:
        for event in self.alerts.check(arrival.device_id, arrival.sample):
            self._alert(event)
        self._devices.show_refusal(arrival.device_id, arrival.sample.refused)

    def _forget(self, device_id: int) -> None:
        if self._hub is not None:
            self._hub.stop([device_id])
        self.store.forget([device_id])
        self.alerts.forget(device_id)

    def set_thresholds(self, thresholds: Sequence[Threshold]) -> None:
        """Judge samples against these thresholds from now on; alerts whose rule went away are cleared."""
        for event in self.alerts.set_thresholds(thresholds, at=time.time()):
            self._alert(event)

    def _alert(self, event: AlertEvent) -> None:
        self.alert_event.emit(event)
        if self._context.closed:
            return
        # Logged in the inventory's thread, in order; quitting waits for the writes (alerts_written).
        if self._events is None:
            self._events = TelemetryRepo.of(self.fleet.inventory)
        future = window_loop().run_in_executor(self._context.db_thread,
                                               functools.partial(record_alert, self._events, event))
        self._alert_writes.add(future)
        future.add_done_callback(self._alert_written)

    def _alert_written(self, future: asyncio.Future[None]) -> None:
        self._alert_writes.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("could not log an alert in the inventory: %s", future.exception())

    def _telemetry_hub(self) -> TelemetryHub:
        if self._hub is None:
            self._history = TelemetryHistory.open(self.fleet.inventory)
            self._hub = TelemetryHub(self.fleet, self.store, self._history, interval=1.0)
            self._hub.on_state = self._stream_state
        return self._hub

    def _stream_state(self, state: StreamState) -> None:
        self.stream_changed.emit(stream_view(state))

    def start_streaming(self, device_ids: Sequence[int]) -> list[Device]:
        """Stream telemetry from these devices (every trusted one if none): one SSH channel each, reconnecting
        by itself, until stopped or quit. Untrusted devices are left out (SSH would refuse their key); returns
        the devices that stream."""
        chosen = self._devices.chosen(device_ids) if device_ids else list(self._devices.known().values())
        devices = [d for d in chosen if self._devices.is_trusted(d.id)]
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

    async def close_streams(self) -> None:
        """End every stream, then the history they write (first when the window closes: they use SSH)."""
        if self._hub is not None:
            self._hub.on_state = None  # the window is going: streams that end now have no one to tell
            await self._hub.close()
        if self._history is not None:
            await self._history.close()

    async def alerts_written(self) -> None:
        """Wait for the alerts still being logged in the inventory (before it closes)."""
        if self._alert_writes:
            await asyncio.gather(*self._alert_writes, return_exceptions=True)


def record_alert(events: TelemetryRepo, event: AlertEvent) -> None:
    """Write one alert, raised or cleared, to the inventory's event log (runs in the inventory's thread)."""
    kind = ALERT_RAISED if event.kind == "raised" else ALERT_CLEARED
    events.log_event(event.device_id, kind, event.message, metric=event.metric, value=event.value,
                     bound=event.bound, at=datetime.fromtimestamp(event.at, UTC))
