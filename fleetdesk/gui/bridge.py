"""The one object between the widgets and the core: it runs fleet work on the qasync loop and reports in signals.

Widgets never touch the inventory, SSH or the network; they call a method here (which starts a
registered Activity) and render what the signals carry: `DeviceView` values, groups, trust requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.discovery.mdns import MdnsBrowser
from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.errors import (
    ConfigError,
    FleetDeskError,
    FleetKeyMismatchError,
    HostKeyChangedError,
    HostKeyUnknownError,
    InventoryUnavailableError,
    UnreachableError,
)
from fleetdesk.fleet import Fleet, ProbeOutcome
from fleetdesk.inventory.records import Device, Group, HostKey
from fleetdesk.inventory.runtimes import DeviceRuntime, DeviceRuntimes
from fleetdesk.inventory.telemetry_repo import TelemetryRepo
from fleetdesk.profiles.matcher import ProfileMatch, match_profile
from fleetdesk.rollout.engine import RolloutEngine
from fleetdesk.runtime.provision import ProvisionOutcome, ProvisionProgress
from fleetdesk.runtime.provision import provision as provision_devices
from fleetdesk.telemetry.alerts import AlertMonitor
from fleetdesk.telemetry.buffers import TelemetryStore
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.hub import TelemetryHub
from fleetdesk.transport import credentials
from fleetdesk.transport.credentials import KeyringStatus
from fleetdesk.transport.shell import shell_join
from fleetdesk.transport.sshconfig import SSHConfigEntry

from .activities import Activities, Activity, human_bytes
from .bridge_models import ModelsMixin, progress_text
from .bridge_rollouts import ROLLOUT_REFRESH_S, WINDOW_CLOSED, RolloutsMixin
from .bridge_telemetry import TelemetryMixin, record_alert
from .bridge_views import (
    STATUSES,
    DeviceView,
    FleetKeyRequest,
    Login,
    RolloutDetail,
    StreamView,
    TrustRequest,
    device_status,
    read_rollout,
    stream_view,
)

# What the window and the tests import from here; the values and the mixins live in the bridge_* modules.
__all__ = [
    "CLOSE_PAUSE_WAIT_S",
    "OFFLINE_AFTER_START",
    "ROLLOUT_REFRESH_S",
    "STATUSES",
    "DeviceView",
    "FleetBridge",
    "FleetKeyRequest",
    "Login",
    "RolloutDetail",
    "StreamView",
    "TrustRequest",
    "device_status",
    "progress_text",
    "read_rollout",
    "record_alert",
    "stream_view",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

OFFLINE_AFTER_START = 4.0  # seconds of browsing after which a device that did not answer is shown offline
CLOSE_PAUSE_WAIT_S = 30.0  # how long quitting waits for a paused rollout's current step to end


class FleetBridge(ModelsMixin, RolloutsMixin, TelemetryMixin, QObject):
    """Owns the `Fleet` for the window; every method that does I/O runs as a registered Activity.

    Devices, discovery and trust are here; models, rollouts and telemetry come from the mixins in
    bridge_models, bridge_rollouts and bridge_telemetry. Every signal is declared here, where Qt needs it."""

    devices_reset = Signal(list)  # list[DeviceView]
    device_changed = Signal(object)  # DeviceView
    device_removed = Signal(int)
    groups_changed = Signal(list)  # list[Group]
    browsing_changed = Signal(bool)
    discovery_state = Signal(object)  # RecordingState: the inventory refused discovery's writes, or records again
    trust_requested = Signal(object)  # TrustRequest
    fleet_key_differs = Signal(object)  # FleetKeyRequest: provisioning refused devices of another fleet key
    notice = Signal(str)  # a short operator message for the status bar
    model_imported = Signal(object)  # ModelRecord, just imported and signed
    models_changed = Signal(list)  # list[ModelRecord]: everything in the store
    model_removed = Signal(str)  # the ref of a model version deleted from the store
    alert_event = Signal(object)  # AlertEvent, raised or cleared
    stream_changed = Signal(object)  # StreamView: a device's telemetry stream in words
    rollouts_changed = Signal(list)  # list[RolloutRow]: every rollout in the inventory
    rollout_detail = Signal(object)  # RolloutDetail of the rollout the view watches
    rollout_event = Signal(object)  # RolloutEvent, as the engine emits it
    rollout_started = Signal(int)  # a rollout was created (before it is driven)

    def __init__(self, fleet: Fleet, activities: Activities) -> None:
        super().__init__()
        self.fleet = fleet
        self.activities = activities
        self._devices: dict[int, Device] = {}
        self._trusted: set[int] = set()
        self._unreachable: set[int] = set()
        self._problems: dict[int, str] = {}
        self._refusals: dict[int, str] = {}  # device id -> its model server's refusal, as its samples last said
        self._groups: list[Group] = []
        self._browse: Activity | None = None
        # One thread for the inventory: reads and writes stay in order and the loop never waits on SQL.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetdesk-inventory")
        self._closed = False
        activities.busy_changed.connect(self._refresh_busy)
        self._busy: set[int] = set()
        # Live telemetry: bounded buffers in memory, judged against the alert thresholds as each sample lands
        # (subscribed first, so a row is marked in the same pass that paints its sample).
        self.telemetry = TelemetryStore()
        self.alerts = AlertMonitor()
        self.telemetry.subscribe(self._sample_stored)
        self._hub: TelemetryHub | None = None  # made when the first stream starts
        self._history: TelemetryHistory | None = None  # the per-minute history the hub writes (for reports)
        self._alert_writes: set[asyncio.Future[None]] = set()
        self._events: TelemetryRepo | None = None  # the inventory's event log, where alerts are written
        self._store: ArtifactStore | None = None  # the signed artifact store, opened on first use
        self._runtimes: dict[int, DeviceRuntime] = {}  # device id -> its provisioned runtime
        self._engine: RolloutEngine | None = None  # the rollout engine, made on first use
        self._runs: dict[int, Activity] = {}  # rollout id -> the activity that drives it (engine.run)
        self._watched: int | None = None  # the rollout the view shows
        self._refreshing: asyncio.Task[None] | None = None  # a pending read for the rollout view

    # -- reading -----------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(fn, *args, **kwargs))

    async def load(self) -> list[DeviceView]:
        """Read the whole inventory (off the loop) and announce it."""
        inventory = self.fleet.inventory
        devices = await self._db(inventory.devices)
        self._trusted = await self._db(inventory.trusted_device_ids)
        self._groups = await self._db(inventory.groups)
        self._runtimes = {r.device_id: r for r in await self._db(DeviceRuntimes(inventory).all)}
        self._devices = {d.id: d for d in devices}
        views = [self.view(d) for d in devices]
        self.devices_reset.emit(views)
        self.groups_changed.emit(list(self._groups))
        return views

    def view(self, device: Device) -> DeviceView:
        return DeviceView(device, device_status(device, trusted=device.id in self._trusted,
                                                busy=device.id in self._busy,
                                                unreachable=device.id in self._unreachable),
                          device.id in self._trusted, self._problems.get(device.id, ""), self._runtimes.get(device.id))

    def device(self, device_id: int) -> Device | None:
        return self._devices.get(device_id)

    def views(self) -> list[DeviceView]:
        return [self.view(d) for d in self._devices.values()]

    def groups(self) -> list[Group]:
        return list(self._groups)

    def host_keys(self, device_id: int) -> list[HostKey]:
        return self.fleet.inventory.host_keys(device_id)

    def profile_match(self, device: Device) -> ProfileMatch | None:
        """Why the device has its profile: the matcher re-run on the stored facts (pure, no I/O)."""
        return match_profile(device.facts, self.fleet.profiles) if device.probed_at else None

    def ssh_config(self, device: Device) -> SSHConfigEntry | FleetDeskError:
        """What the operator's ssh config says for the device and which of its lines say it, or why it cannot
        be read (a small local file, read when the device is chosen, as ssh_command reads it)."""
        try:
            return self.fleet.ssh_config_for(device)
        except FleetDeskError as exc:
            return exc

    def ssh_command(self, device_id: int) -> str:
        """The command line that opens a terminal on the device, for the operator to copy."""
        device = self._devices[device_id]
        # Synchronous, for the menu action that copies it at once: the device's handle is read here on a miss
        # (a SQLite read and the ssh config the detail pane has just read); it is kept until something changes.
        target = self.fleet.reach(device).target
        argv = ["ssh"]
        if target.port != 22:
            argv += ["-p", str(target.port)]
        for key in target.identity_files[:1]:
            argv += ["-i", key]
        argv.append(f"{target.username}@{target.host}")
        return shell_join(argv)

    async def keyring_status(self) -> KeyringStatus:
        return await asyncio.to_thread(credentials.keyring_status)

    # -- live updates ------------------------------------------------------------------------------

    def _update(self, device: Device) -> None:
        before = self._devices.get(device.id)
        if before is not None and not before.online and device.online:
            self._unreachable.discard(device.id)  # it is back on the network: try again before saying so
        self._devices[device.id] = device
        self.device_changed.emit(self.view(device))

    def _forget(self, device_id: int) -> None:
        if self._hub is not None:
            self._hub.stop([device_id])
        self.telemetry.forget([device_id])
        self.alerts.forget(device_id)
        self._devices.pop(device_id, None)
        self._trusted.discard(device_id)
        self._unreachable.discard(device_id)
        self._problems.pop(device_id, None)
        self.device_removed.emit(device_id)

    def _refresh_busy(self) -> None:
        busy = self.activities.busy_devices()
        changed, self._busy = busy ^ self._busy, busy
        for device_id in changed:
            device = self._devices.get(device_id)
            if device is not None:
                self.device_changed.emit(self.view(device))

    def _problem(self, device_id: int, error: FleetDeskError | None) -> None:
        if error is None:
            self._problems.pop(device_id, None)
            self._unreachable.discard(device_id)
            return
        self._problems[device_id] = str(error)
        if isinstance(error, UnreachableError):
            self._unreachable.add(device_id)
        if isinstance(error, (HostKeyChangedError, HostKeyUnknownError)):
            # Shown as untrusted until the operator reviews the key; the inventory keeps what was pinned.
            self._trusted.discard(device_id)

    # -- discovery ---------------------------------------------------------------------------------

    @property
    def browsing(self) -> bool:
        return self._browse is not None and self._browse.running

    def start_browsing(self, interfaces: Sequence[str] | None) -> Activity:
        """Watch the network by mDNS until stopped: devices appear and go offline in the table as they do."""
        if self._browse is not None and self._browse.running:
            return self._browse
        chosen = list(interfaces) if interfaces else None
        where = ", ".join(chosen) if chosen else "all network cards"

        async def job(activity: Activity) -> int:
            seen: set[int] = set()
            recovered = ""  # said after the count once the inventory records again, until discovery stops

            def answered() -> str:
                return f"on {where}: {len(seen)} device(s) answered" + (f"; {recovered}" if recovered else "")

            def on_device(device: Device) -> None:
                if device.online:
                    seen.add(device.id)
                self._update(device)
                if activity.problem is None:  # the problem's line stays until the inventory records again
                    activity.report(None, answered())

            def on_state(state: RecordingState) -> None:
                # Discovery goes on while the inventory refuses writes: the operator sees why and the fix, and
                # then that it records again, instead of "listening" over sightings that are not stored.
                nonlocal recovered
                if state.recording:
                    recovered = f"{state.text} since {time.strftime('%H:%M:%S')}"
                    activity.report_problem(None, answered())
                else:
                    activity.report_problem(state.error, f"on {where}: {state.text}")
                self.discovery_state.emit(state)

            recorder = self.fleet.recorder(on_device, on_state)
            try:
                async with MdnsBrowser(chosen, on_event=recorder.push):
                    self.browsing_changed.emit(True)
                    activity.report(None, f"on {where}: listening")
                    await asyncio.sleep(OFFLINE_AFTER_START)
                    try:
                        await self._mark_silent_offline(seen)
                    except InventoryUnavailableError as exc:  # discovery itself goes on: its recorder retries
                        activity.report_problem(exc, f"on {where}: devices that did not answer are not marked "
                                                     f"offline: {exc.message}")
                    await asyncio.Event().wait()  # until cancelled by stop_browsing or quit
            finally:
                # What was seen is stored before the activity ends, even if quitting cancels it twice.
                closing = asyncio.ensure_future(recorder.close())
                try:
                    while not closing.done():
                        try:
                            await asyncio.shield(closing)
                        except asyncio.CancelledError:
                            continue
                finally:
                    # Also when the last write was refused: the activity then fails saying what was not stored.
                    self.browsing_changed.emit(False)
            return len(seen)

        self._browse = self.activities.start(f"Discovery (mDNS on {where})", job,
                                             summarize=lambda n: f"stopped; {n} device(s) answered")
        return self._browse

    async def _mark_silent_offline(self, seen: set[int]) -> None:
        """Devices known by mDNS that did not announce themselves since browsing began are offline now."""
        for device in list(self._devices.values()):
            if device.online and device.services and device.id not in seen:
                self._update(await self._db(self.fleet.inventory.set_online, device.id, False))

    def stop_browsing(self) -> None:
        if self._browse is not None:
            self._browse.cancel()

    def add_device(self, host: str, *, port: int = 22, username: str = "root", name: str | None = None,
                   interfaces: Sequence[str] | None = None) -> Activity:
        async def job(activity: Activity) -> Device:
            activity.report(None, f"resolving {host}")
            device = await self.fleet.add(host, port=port, username=username, name=name, interfaces=interfaces)
            self._update(device)
            return device

        return self.activities.start(f"Add {host}", job, summarize=lambda device: f"added as {device.name}")

    def sweep(self, cidr: str, port: int = 22) -> Activity:
        async def job(activity: Activity) -> list[Device]:
            activity.report(None, f"connecting to TCP port {port} across {cidr}")
            devices = await self.fleet.sweep(cidr, port=port)
            for device in devices:
                self._update(device)
            return devices

        return self.activities.start(f"Sweep {cidr}", job,
                                     summarize=lambda devices: f"{len(devices)} SSH server(s) answered")

    # -- probing, trust, credentials -----------------------------------------------------------------

    def _chosen(self, device_ids: Sequence[int]) -> list[Device]:
        missing = [i for i in device_ids if i not in self._devices]
        if missing:
            raise ConfigError("a chosen device is no longer in the inventory", fix="refresh and choose again")
        return [self._devices[i] for i in device_ids]

    def probe(self, device_ids: Sequence[int]) -> Activity:
        devices = self._chosen(device_ids)
        done: list[ProbeOutcome] = []

        async def job(activity: Activity) -> list[ProbeOutcome]:
            def on_outcome(outcome: ProbeOutcome) -> None:
                done.append(outcome)
                self._problem(outcome.device.id, outcome.error)
                self._update(outcome.device)
                activity.report(len(done) / len(devices), f"{len(done)} of {len(devices)} answered")

            return await self.fleet.probe(devices, on_outcome=on_outcome)

        def summarize(outcomes: list[ProbeOutcome]) -> str:
            ok = sum(o.error is None for o in outcomes)
            failed = [o for o in outcomes if o.error is not None]
            text = f"{ok} of {len(outcomes)} identified"
            if failed:
                text += "; " + "; ".join(str(o.error) for o in failed[:3])
            return text

        title = f"Probe {devices[0].name}" if len(devices) == 1 else f"Probe {len(devices)} devices"
        return self.activities.start(title, job, devices=[d.id for d in devices], summarize=summarize)

    def provision(self, device_ids: Sequence[int], *, replace_fleet_key: bool = False) -> Activity:
        """Install (or bring up to date) the runtime and the agent on each device, as `fleetdesk provision` does:
        only what is missing is sent, one failing device does not stop the others. Devices that trust another
        fleet key are left untouched and the operator is asked (`fleet_key_differs`), unless `replace_fleet_key`."""
        devices = self._chosen(device_ids)
        bytes_done: dict[str, tuple[int, int]] = {}

        async def job(activity: Activity) -> list[ProvisionOutcome]:
            def progress(step: ProvisionProgress) -> None:
                if step.total:
                    bytes_done[step.device] = (step.done, step.total)
                    done, total = (sum(v[i] for v in bytes_done.values()) for i in (0, 1))
                    activity.report_bytes(done, total, f"{step.device}: {step.message}")
                else:
                    activity.report(None, f"{step.device}: {step.message}")

            outcomes = await provision_devices(self.fleet, devices, progress=progress,
                                               replace_fleet_key=replace_fleet_key)
            records = await self._db(DeviceRuntimes(self.fleet.inventory).all)
            self._runtimes = {r.device_id: r for r in records}
            for device, outcome in zip(devices, outcomes, strict=True):
                self._problem(device.id, outcome.error)
                self._update(self._devices.get(device.id, device))
            refused = [(d, o.error) for d, o in zip(devices, outcomes, strict=True)
                       if isinstance(o.error, FleetKeyMismatchError)]
            if refused:
                self.fleet_key_differs.emit(FleetKeyRequest(refused[0][1].laptop_key, tuple(
                    (d.id, d.name, e.device_key) for d, e in refused)))
            return outcomes

        def summarize(outcomes: list[ProvisionOutcome]) -> str:
            ok = [o for o in outcomes if o.error is None]
            sent = sum(o.bytes_sent for o in ok)
            text = f"{len(ok)} of {len(outcomes)} provisioned ({human_bytes(sent)} sent)"
            failed = [f"{o.device}: {o.error}" for o in outcomes if o.error is not None]
            return text + ("; " + "; ".join(failed[:3]) if failed else "")

        title = f"Provision {devices[0].name}" if len(devices) == 1 else f"Provision {len(devices)} devices"
        return self.activities.start(title, job, devices=[d.id for d in devices], summarize=summarize)

    def request_trust(self, device_id: int) -> Activity:
        """Fetch the key the device presents now and ask the operator (`trust_requested`); trusts nothing."""
        device = self._chosen([device_id])[0]

        async def job(activity: Activity) -> TrustRequest | None:
            activity.report(None, f"asking {device.address or device.name} for its host key")
            presented = await self.fleet.presented_key(device)
            pinned = tuple(await self._db(self.fleet.inventory.host_keys, device.id))
            if any(k.fingerprint == presented.fingerprint for k in pinned):
                self._trusted.add(device.id)
                self._update(device)
                return None
            request = TrustRequest(device, presented, pinned)
            self.trust_requested.emit(request)
            return request

        def summarize(request: TrustRequest | None) -> str:
            if request is None:
                return "its key is already trusted"
            return "its host key CHANGED: review it" if request.changed else "new key: waiting for the operator"

        return self.activities.start(f"Check the host key of {device.name}", job, devices=[device.id],
                                     summarize=summarize)

    def trust(self, device_id: int, fingerprint: str) -> Activity:
        """Pin the key the operator confirmed; the device must still present exactly that key."""
        device = self._chosen([device_id])[0]

        async def job(activity: Activity) -> str:
            outcome = await self.fleet.trust(device, fingerprint)
            self._trusted.add(device.id)
            self._problem(device.id, None)
            self._update(outcome.device)
            return "replaced the old key" if outcome.replaced else "trusted"

        return self.activities.start(f"Trust {device.name}", job, devices=[device.id], summarize=str)

    def set_login(self, device_ids: Sequence[int], login: Login) -> Activity:
        devices = self._chosen(device_ids)

        async def job(activity: Activity) -> int:
            for n, device in enumerate(devices, 1):
                updated = await self.fleet.set_login(device, username=login.username, password=login.password,
                                                     identity_file=login.key_file if login.key_file else "")
                self._update(updated)
                activity.report(n / len(devices), f"{n} of {len(devices)} saved")
            return len(devices)

        where = "the OS keyring" if login.password else "the inventory"
        return self.activities.start(f"Save the login for {len(devices)} device(s)", job,
                                     summarize=lambda n: f"saved for {n} device(s) in {where}")

    # -- groups and removal --------------------------------------------------------------------------

    def change_group(self, device_ids: Sequence[int], name: str, *, remove: bool = False) -> Activity:
        devices = self._chosen(device_ids)
        name = name.strip()

        async def job(activity: Activity) -> Group:
            if not name:
                raise ConfigError("the group has no name", fix="type a name such as 'line A'")
            inventory = self.fleet.inventory
            ids = [d.id for d in devices]
            group = await self._db(inventory.remove_from_group if remove else inventory.add_to_group, name, ids)
            for device_id in ids:
                self._update(await self._db(inventory.device, device_id))
            self._groups = await self._db(inventory.groups)
            self.groups_changed.emit(list(self._groups))
            return group

        verb = "Take" if remove else "Put"
        where = "out of" if remove else "in"
        return self.activities.start(f"{verb} {len(devices)} device(s) {where} {name!r}", job,
                                     summarize=lambda g: "done")

    def remove_devices(self, device_ids: Sequence[int]) -> Activity:
        devices = self._chosen(device_ids)

        async def job(activity: Activity) -> int:
            for device in devices:
                await self._db(self.fleet.inventory.remove, device.id)
                self._forget(device.id)
            self._groups = await self._db(self.fleet.inventory.groups)
            self.groups_changed.emit(list(self._groups))
            return len(devices)

        return self.activities.start(f"Remove {len(devices)} device(s)", job,
                                     summarize=lambda n: f"{n} removed from the inventory")

    async def close(self) -> None:
        """Cancel every activity newest first, then close SSH and the inventory, in that order."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        if self._hub is not None:
            self._hub.on_state = None  # the window is going: streams that end now have no one to tell
            await self._hub.close()  # the streams first: they use the SSH pool closed below
        if self._history is not None:
            await self._history.close()
        # Rollouts this window drives pause at their next step boundary (the engine never leaves a device
        # half-switched there); only then is the rest cancelled.
        for rid in [r for r, a in self._runs.items() if a.running]:
            await self._stop_driving(rid, WINDOW_CLOSED, CLOSE_PAUSE_WAIT_S)
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refreshing
        await self.activities.cancel_all()
        if self._alert_writes:
            await asyncio.gather(*self._alert_writes, return_exceptions=True)
        await self.fleet.close()
        self._db_thread.shutdown(wait=True)
        log.debug("bridge closed in %.2f s", time.monotonic() - started)
