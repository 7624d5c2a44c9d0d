"""The one object between the widgets and the core: it runs fleet work on the qasync loop and reports in signals.

Widgets never touch the inventory, SSH or the network; they call a method here (which starts a
registered Activity) and render what the signals carry: `DeviceView` values, groups, trust requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

from fleetdesk.artifacts.records import MANIFEST_NAME, SIGNATURE_NAME, ModelRecord, VerifyResult
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.config import Settings
from fleetdesk.discovery.mdns import MdnsBrowser
from fleetdesk.errors import (
    ConfigError,
    FleetDeskError,
    HostKeyChangedError,
    HostKeyUnknownError,
    UnreachableError,
)
from fleetdesk.fleet import Fleet, ProbeOutcome
from fleetdesk.inventory.records import Device, Group, HostKey
from fleetdesk.inventory.rollouts import DeviceRow, JournalEntry, RolloutRepo, RolloutRow
from fleetdesk.inventory.runtimes import DeviceRuntime, DeviceRuntimes
from fleetdesk.inventory.telemetry_repo import TelemetryRepo
from fleetdesk.models import service as model_service
from fleetdesk.models.report import Progress
from fleetdesk.profiles.matcher import ProfileMatch, match_profile
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.runtime.provision import ProvisionOutcome, ProvisionProgress
from fleetdesk.runtime.provision import provision as provision_devices
from fleetdesk.telemetry.alerts import AlertEvent, AlertMonitor, Threshold
from fleetdesk.telemetry.buffers import Arrival, TelemetryStore
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.hub import StreamState, TelemetryHub
from fleetdesk.transport import credentials
from fleetdesk.transport.credentials import KeyringStatus
from fleetdesk.transport.hostkey import PublicKey
from fleetdesk.transport.shell import shell_join

from .activities import Activities, Activity, human_bytes, human_duration, window_loop

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUSES = ("online", "offline", "untrusted", "unreachable", "busy")
DEVICE_ROOT = "/opt/fleetdesk"  # DESIGN.md, "The device side"; a profile's device_root replaces it
ARTIFACT_ROOT = f"{DEVICE_ROOT}/artifacts"
OFFLINE_AFTER_START = 4.0  # seconds of browsing after which a device that did not answer is shown offline
ROLLOUT_REFRESH_S = 0.25  # engine events are gathered this long before the rollout view reads the inventory
CLOSE_PAUSE_WAIT_S = 30.0  # how long quitting waits for a paused rollout's current step to end


def device_status(device: Device, *, trusted: bool, busy: bool, unreachable: bool) -> str:
    """What the fleet table says about a device, most urgent first."""
    if busy:
        return "busy"
    if unreachable:
        return "unreachable"
    if not device.online:
        return "offline"
    if not trusted:
        return "untrusted"
    return "online"


@dataclass(frozen=True)
class DeviceView:
    """A device as the window shows it: the inventory row plus what this session learnt."""

    device: Device
    status: str
    trusted: bool
    problem: str = ""  # the last error met with this device, in operator words
    runtime: DeviceRuntime | None = None  # what its last provisioning proved, if it was provisioned

    @property
    def id(self) -> int:
        return self.device.id


@dataclass(frozen=True)
class TrustRequest:
    """The operator must decide about this key: new (nothing pinned) or changed (pinned differs)."""

    device: Device
    presented: PublicKey
    pinned: tuple[HostKey, ...]

    @property
    def changed(self) -> bool:
        return bool(self.pinned)


@dataclass(frozen=True)
class Login:
    """How to log in to devices, as the credentials dialog gives it; the password only passes through."""

    username: str
    key_file: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class StreamView:
    """A device's telemetry stream as the dashboard shows it."""

    device_id: int
    text: str  # "streaming", "streaming (agentless)", "connecting", "reconnecting in 8 s", "stopped"
    live: bool  # samples are expected now
    detail: str = ""  # why it is not streaming, in operator words


@dataclass(frozen=True)
class RolloutDetail:
    """One rollout as the Rollouts view shows it: its row, its devices, their names and profiles, and the last
    journal entry of each device."""

    row: RolloutRow
    devices: tuple[DeviceRow, ...]
    names: Mapping[int, str] = field(default_factory=dict)
    profiles: Mapping[int, str] = field(default_factory=dict)
    last: Mapping[int, JournalEntry] = field(default_factory=dict)


def read_rollout(repo: RolloutRepo, rollout_id: int, devices: Mapping[int, Device]) -> RolloutDetail:
    """Everything the view shows of one rollout (runs in the inventory's thread)."""
    row = repo.get(rollout_id)
    rows = tuple(repo.devices(rollout_id))
    last: dict[int, JournalEntry] = {}
    for entry in repo.journal(rollout_id):
        if entry.device_id is not None:
            last[entry.device_id] = entry
    planned = {int(d["device_id"]): d for d in row.resolved.get("devices", [])}
    names = {r.device_id: devices[r.device_id].name if r.device_id in devices else
             str(planned.get(r.device_id, {}).get("name", f"device {r.device_id}")) for r in rows}
    profiles = {r.device_id: str(planned.get(r.device_id, {}).get("profile", "")) for r in rows}
    return RolloutDetail(row, rows, names, profiles, last)


def stream_view(state: StreamState) -> StreamView:
    detail = str(state.last_error) if state.last_error is not None else ""
    if state.mode == "agent":
        return StreamView(state.device_id, "streaming", True)
    if state.mode == "agentless":
        return StreamView(state.device_id, "streaming (agentless)", True,
                          "No FleetDesk agent on the device: read from /proc and /sys over SSH (provision it for "
                          "GPU and inference figures)")
    if state.mode == "reconnecting":
        wait = f" in {state.retry_in:.0f} s" if state.retry_in is not None else ""
        return StreamView(state.device_id, f"reconnecting{wait}", False, detail)
    return StreamView(state.device_id, state.mode, False, detail)


class FleetBridge(QObject):
    """Owns the `Fleet` for the window; every method that does I/O runs as a registered Activity."""

    devices_reset = Signal(list)  # list[DeviceView]
    device_changed = Signal(object)  # DeviceView
    device_removed = Signal(int)
    groups_changed = Signal(list)  # list[Group]
    browsing_changed = Signal(bool)
    trust_requested = Signal(object)  # TrustRequest
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

    def ssh_command(self, device_id: int) -> str:
        """The command line that opens a terminal on the device, for the operator to copy."""
        device = self._devices[device_id]
        target = self.fleet.target(device)
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

            def on_device(device: Device) -> None:
                if device.online:
                    seen.add(device.id)
                self._update(device)
                activity.report(None, f"on {where}: {len(seen)} device(s) answered")

            recorder = self.fleet.recorder(on_device)
            try:
                async with MdnsBrowser(chosen, on_event=recorder.push):
                    self.browsing_changed.emit(True)
                    activity.report(None, f"on {where}: listening")
                    await asyncio.sleep(OFFLINE_AFTER_START)
                    await self._mark_silent_offline(seen)
                    await asyncio.Event().wait()  # until cancelled by stop_browsing or quit
            finally:
                # What was seen is stored before the activity ends, even if quitting cancels it twice.
                closing = asyncio.ensure_future(recorder.close())
                while not closing.done():
                    try:
                        await asyncio.shield(closing)
                    except asyncio.CancelledError:
                        continue
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

        def summarize(device: object) -> str:
            assert isinstance(device, Device)
            return f"added as {device.name}"

        return self.activities.start(f"Add {host}", job, summarize=summarize)

    def sweep(self, cidr: str, port: int = 22) -> Activity:
        async def job(activity: Activity) -> list[Device]:
            activity.report(None, f"connecting to TCP port {port} across {cidr}")
            devices = await self.fleet.sweep(cidr, port=port)
            for device in devices:
                self._update(device)
            return devices

        def summarize(devices: object) -> str:
            assert isinstance(devices, list)
            return f"{len(devices)} SSH server(s) answered"

        return self.activities.start(f"Sweep {cidr}", job, summarize=summarize)

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

        def summarize(outcomes: object) -> str:
            assert isinstance(outcomes, list)
            ok = sum(o.error is None for o in outcomes)
            failed = [o for o in outcomes if o.error is not None]
            text = f"{ok} of {len(outcomes)} identified"
            if failed:
                text += "; " + "; ".join(str(o.error) for o in failed[:3])
            return text

        title = f"Probe {devices[0].name}" if len(devices) == 1 else f"Probe {len(devices)} devices"
        return self.activities.start(title, job, devices=[d.id for d in devices], summarize=summarize)

    def provision(self, device_ids: Sequence[int]) -> Activity:
        """Install (or bring up to date) the runtime and the agent on each device, as `fleetdesk provision` does:
        only what is missing is sent, one failing device does not stop the others."""
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

            outcomes = await provision_devices(self.fleet, devices, progress=progress)
            records = await self._db(DeviceRuntimes(self.fleet.inventory).all)
            self._runtimes = {r.device_id: r for r in records}
            for device, outcome in zip(devices, outcomes, strict=True):
                self._problem(device.id, outcome.error)
                self._update(self._devices.get(device.id, device))
            return outcomes

        def summarize(outcomes: object) -> str:
            assert isinstance(outcomes, list)
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

        def summarize(request: object) -> str:
            if request is None:
                return "its key is already trusted"
            assert isinstance(request, TrustRequest)
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

    # -- models ----------------------------------------------------------------------------------------

    def artifact_store(self) -> ArtifactStore:
        """The signed artifact store under the user data directory (FLEETDESK_DATA_DIR), opened on first use."""
        if self._store is None:
            self._store = ArtifactStore.default(Settings.load())
        return self._store

    def profile_names(self) -> list[str]:
        """Every device profile FleetDesk knows (shipped and the operator's)."""
        return sorted(self.fleet.profiles.profiles)

    def fleet_profiles(self, device_ids: Sequence[int] = ()) -> list[str]:
        """The profiles of these devices (of every device in the inventory if none), each once."""
        devices = [self._devices[i] for i in device_ids if i in self._devices] if device_ids \
            else list(self._devices.values())
        return sorted({d.profile for d in devices if d.profile})

    def bench_devices(self, profiles: Sequence[str]) -> list[Device]:
        """Devices that can time variants now: trusted, online, not busy, of one of these profiles."""
        return [d for d in self._devices.values()
                if d.profile in profiles and self.view(d).status == "online"]

    async def _models(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # Store work reads, hashes and signs files (and may wait on the keyring): never on the loop.
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def load_models(self) -> Activity:
        """Read the store's model records and announce them (`models_changed`)."""
        async def job(activity: Activity) -> list[ModelRecord]:
            activity.report(None, "reading the artifact store")
            records = await self._models(lambda: self.artifact_store().models())
            self.models_changed.emit(list(records))
            return records

        def summarize(records: object) -> str:
            assert isinstance(records, list)
            return f"{len(records)} model(s)"

        return self.activities.start("Read the model store", job, summarize=summarize)

    def import_model(self, path: str, *, name: str | None = None, version: str | None = None,
                     samples: str | None = None, profiles: Sequence[str] = (), time_on_devices: bool = False,
                     then: Callable[[ModelRecord], None] | None = None) -> Activity:
        """Import, optimize for each profile and sign one model (`fleetdesk model import`), in a worker thread.

        Progress (stage, step n of m, elapsed, time left) goes to the activity; cancelling the activity sets
        the import's cancel event and waits for the worker to stop: a cancelled import writes nothing.
        """
        chosen = tuple(profiles)
        loop = window_loop()
        cancel = threading.Event()
        benches: list[model_service.DeviceBench] = []

        async def job(activity: Activity) -> ModelRecord:
            started = time.monotonic()
            bench = None
            if time_on_devices:  # online devices of the chosen profiles with a provisioned runtime
                ready = await self._db(model_service.bench_devices, self.fleet, chosen)
                if ready:
                    bench = model_service.DeviceBench(self.fleet, ready, loop)
                    benches.append(bench)

            def on_progress(progress: Progress) -> None:
                if not cancel.is_set():
                    activity.report(progress.done / progress.total if progress.total else None,
                                    progress_text(progress, time.monotonic() - started))

            def progress(step: Progress) -> None:  # called in the worker thread
                loop.call_soon_threadsafe(on_progress, step)

            store = await self._models(self.artifact_store)
            activity.report(None, f"checking {os.path.basename(path)}")
            work = loop.run_in_executor(None, functools.partial(
                model_service.import_model, path, name=name, version=version, samples=samples, profiles=chosen or None,
                store=store, catalog=self.fleet.profiles, progress=progress, cancel=cancel, device_bench=bench))
            try:
                record = await asyncio.shield(work)
            except asyncio.CancelledError:
                cancel.set()
                activity.detail = "cancelling: waiting for the current step to stop"
                activity.changed.emit()
                with contextlib.suppress(Exception):
                    await asyncio.shield(work)  # the worker stops at its next step and writes nothing
                raise
            self.model_imported.emit(record)
            if then is not None:
                then(record)
            return record

        def summarize(record: object) -> str:
            assert isinstance(record, ModelRecord)
            report = record.report
            if report is None:
                return f"imported as {record.ref}"
            chosen_text = ", ".join(f"{p.profile}: {p.chosen}" for p in report.profiles)
            failures = [f"{d}: {why}" for b in benches for d, why in b.failures.items()]
            return f"imported as {record.ref} ({chosen_text})" + (
                "; accuracy checked on synthetic samples only" if report.synthetic else "") + (
                "; not timed on " + "; ".join(failures[:2]) if failures else "")

        return self.activities.start(f"Import {os.path.basename(path)}", job, summarize=summarize)

    def verify_models(self, ref: str = "", then: Callable[[list[VerifyResult]], None] | None = None) -> Activity:
        """Check every byte and the signature of a model's artifacts (every model's with no ref)."""
        async def job(activity: Activity) -> list[VerifyResult]:
            activity.report(None, "hashing files and checking signatures")
            results = await self._models(lambda: self.artifact_store().verify(ref or None))
            if then is not None:
                then(list(results))
            return list(results)

        def summarize(results: object) -> str:
            assert isinstance(results, list)
            bad = [r for r in results if not r.ok]
            return (f"{len(results)} artifact(s) intact and signed" if not bad else
                    f"{len(bad)} of {len(results)} artifact(s) FAILED: {bad[0].ref}: {'; '.join(bad[0].problems[:2])}")

        return self.activities.start(f"Verify {ref or 'every model'}", job, summarize=summarize)

    def export_model(self, ref: str, dest: str, profile: str | None = None) -> Activity:
        """Write a model's artifacts (or one profile's) to a .tar file the operator chose."""
        async def job(activity: Activity) -> str:
            activity.report(None, f"writing {os.path.basename(dest)}")
            return str(await self._models(lambda: self.artifact_store().export(ref, Path(dest), profile=profile)))

        return self.activities.start(f"Export {ref}", job, summarize=lambda p: f"written to {p}")

    def remove_model(self, ref: str) -> Activity:
        """Delete a model version and the artifacts no other version uses; the view forgets it."""
        async def job(activity: Activity) -> list[str]:
            removed = await self._models(lambda: self.artifact_store().remove(ref))
            self.model_removed.emit(ref)
            return list(removed)

        def summarize(ids: object) -> str:
            assert isinstance(ids, list)
            return f"{len(ids)} artifact(s) deleted"

        return self.activities.start(f"Remove {ref}", job, summarize=summarize)

    def export_public_key(self, dest: str) -> Activity:
        """Save the fleet's public signing key (PEM) where the operator chose (made on first use)."""
        async def job(activity: Activity) -> str:
            pem = await self._models(lambda: self.artifact_store().public_key_pem())
            await self._models(Path(dest).write_bytes, pem)
            return dest

        return self.activities.start("Export the public signing key", job, summarize=lambda p: f"saved to {p}")

    # -- pushing a model -------------------------------------------------------------------------------

    def push_artifacts(self, record: ModelRecord, device_ids: Sequence[int], title: str = "") -> Activity:
        """Push to each device the artifact chosen for its profile (the FP32 baseline when its profile has none):
        the signed folder as the store keeps it (manifest, signature, model files), into ROOT/artifacts/<id>/,
        resumable and SHA-256 checked on the device."""
        devices = self._chosen(device_ids)

        async def job(activity: Activity) -> dict[str, str]:
            store = self.artifact_store()
            plans: dict[int, tuple[str, list[tuple[str, str]]]] = {}  # device -> (artifact id, [(local, remote)])
            for device in devices:
                artifact_id = record.artifacts.get(device.profile or "", record.baseline)
                artifact = await self._models(store.artifact, artifact_id)
                root = self._device_root(device)
                names = [MANIFEST_NAME, SIGNATURE_NAME, *(f.path for f in artifact.files)]
                plans[device.id] = (artifact.id, [(os.path.join(artifact.folder, *n.split("/")),
                                                   f"{root}/artifacts/{artifact.id}/{n}") for n in names])
            sizes = {local: os.path.getsize(local) for _id, files in plans.values() for local, _r in files}
            total = sum(sizes[local] for _id, files in plans.values() for local, _r in files)
            done: dict[tuple[int, str], int] = {}
            outcomes: dict[str, str] = {}

            def progress_of(device: Device, local: str) -> Callable[[int, int], None]:
                def progress(sent: int, _total: int) -> None:
                    done[(device.id, local)] = sent
                    activity.report_bytes(sum(done.values()), total, f"{len(devices)} device(s)")
                return progress

            async def one(device: Device) -> None:
                try:
                    for local, remote in plans[device.id][1]:
                        await self.fleet.pool.push(self.fleet.target(device), local, remote,
                                                   progress=progress_of(device, local))
                except FleetDeskError as exc:
                    self._problem(device.id, exc)
                    self._update(device)
                    outcomes[device.name] = str(exc)
                else:
                    outcomes[device.name] = "ok"

            await asyncio.gather(*(one(d) for d in devices))
            failed = {k: v for k, v in outcomes.items() if v != "ok"}
            if failed and len(failed) == len(devices):
                first = next(iter(failed.values()))
                raise FleetDeskError(f"the model reached no device: {first}",
                                     fix="fix the first device's problem, then deploy the model again")
            return outcomes

        def summarize(outcomes: object) -> str:
            assert isinstance(outcomes, dict)
            ok = [k for k, v in outcomes.items() if v == "ok"]
            failed = [f"{k}: {v}" for k, v in outcomes.items() if v != "ok"]
            return f"verified on {len(ok)} of {len(outcomes)} device(s)" + ("; " + "; ".join(failed[:3]) if failed
                                                                           else "")

        return self.activities.start(title or f"Deploy {record.ref}", job, devices=[d.id for d in devices],
                                     summarize=summarize)

    def _device_root(self, device: Device) -> str:
        profile = self.fleet.profiles.profiles.get(device.profile) if device.profile else None
        return (profile.device_root if profile is not None else DEVICE_ROOT).rstrip("/") or DEVICE_ROOT

    # -- rollouts ----------------------------------------------------------------------------------------------

    def rollout_engine(self) -> RolloutEngine:
        """The engine over this window's fleet and store; its events become `rollout_event` signals."""
        if self._engine is None:
            # Its journal writes go to this window's inventory thread, in order with the window's own reads.
            self._engine = RolloutEngine(self.fleet, self.artifact_store(), on_event=self._rollout_event,
                                         executor=self._db_thread)
        return self._engine

    def _rollout_repo(self) -> RolloutRepo:
        return RolloutRepo(self.fleet.inventory)

    def _rollout_event(self, event: RolloutEvent) -> None:
        self.rollout_event.emit(event)
        run = self._runs.get(event.rollout_id)
        if run is not None and run.running:
            if event.kind == "progress" and event.bytes_total:
                run.report(event.bytes_done / event.bytes_total, event.message)
            else:
                run.report(None, event.message)
        if event.kind != "progress":
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        """Read the rollouts again soon: events come in bursts, the view reads once per burst."""
        if self._closed or (self._refreshing is not None and not self._refreshing.done()):
            return

        async def later() -> None:
            await asyncio.sleep(ROLLOUT_REFRESH_S)
            await self.refresh_rollouts()

        self._refreshing = window_loop().create_task(later(), name="rollout view refresh")

    async def refresh_rollouts(self) -> list[RolloutRow]:
        """Announce every rollout, and the watched one's detail (read in the inventory's thread)."""
        repo = self._rollout_repo()
        rows = await self._db(repo.list)
        self.rollouts_changed.emit(rows)
        if self._watched is not None and any(r.id == self._watched for r in rows):
            self.rollout_detail.emit(await self._db(read_rollout, repo, self._watched, dict(self._devices)))
        return rows

    def load_rollouts(self, then: Callable[[list[RolloutRow]], object] | None = None) -> Activity:
        async def job(activity: Activity) -> list[RolloutRow]:
            rows = await self.refresh_rollouts()
            if then is not None:
                then(rows)
            return rows

        def summarize(rows: object) -> str:
            assert isinstance(rows, list)
            return f"{len(rows)} rollout(s)"

        return self.activities.start("Read the rollouts", job, summarize=summarize)

    def watch_rollout(self, rollout_id: int) -> Activity:
        """Show this rollout's detail (and follow it as its events arrive)."""
        self._watched = rollout_id

        async def job(activity: Activity) -> RolloutDetail:
            detail = await self._db(read_rollout, self._rollout_repo(), rollout_id, dict(self._devices))
            self.rollout_detail.emit(detail)
            return detail

        def summarize(detail: object) -> str:
            assert isinstance(detail, RolloutDetail)
            return detail.row.status

        return self.activities.start(f"Read rollout {rollout_id}", job, summarize=summarize)

    def rollout_running_here(self, rollout_id: int) -> bool:
        run = self._runs.get(rollout_id)
        return run is not None and run.running

    def start_rollout(self, plan: RolloutPlan, device_ids: Sequence[int] = (), *, run: bool = True) -> Activity:
        """Journal the plan as a rollout (engine.start) and, with run, drive it (engine.run) in the same activity.
        Nothing is sent to a device before start has written the plan."""
        async def job(activity: Activity) -> RolloutRow:
            engine = self.rollout_engine()
            rid = await engine.start(plan)
            self._watched = rid
            await self.refresh_rollouts()
            self.rollout_started.emit(rid)  # after the refresh: the view selects the new row, so it must be listed
            if not run:
                return await self._db(self._rollout_repo().get, rid)
            self._runs[rid] = activity
            activity.title = f"Rollout {rid}: {plan.model}"
            activity.changed.emit()
            row = await engine.run(rid)
            await self.refresh_rollouts()
            return row

        return self.activities.start(f"{'Roll out' if run else 'Plan a rollout of'} {plan.model}", job,
                                     devices=device_ids, summarize=_rollout_summary)

    def drive_rollout(self, rollout_id: int, first: Callable[[], Awaitable[object]] | None = None,
                      title: str = "") -> Activity:
        """Drive a rollout (engine.run) as an activity, after `first` (resume, approve, recover) when given;
        waits for this window's previous drive of it to stop first, so one process never drives it twice."""
        prior = self._runs.get(rollout_id)
        ids = [d.device_id for d in self._rollout_repo().devices(rollout_id)] if prior is None else prior.devices

        async def job(activity: Activity) -> RolloutRow:
            if prior is not None and prior.running and prior._task is not None:
                activity.report(None, "waiting for the current step to end")
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(prior._task)
            if first is not None:
                await first()
            self._runs[rollout_id] = activity
            await self.refresh_rollouts()
            row = await self.rollout_engine().run(rollout_id)
            await self.refresh_rollouts()
            return row

        return self.activities.start(title or f"Rollout {rollout_id}", job, devices=ids, summarize=_rollout_summary)

    def rollout_action(self, action: str, rollout_id: int, options: Mapping[str, Any] | None = None) -> Activity:
        """An operator's button: pause, resume, approve, abort or rollback (options: device_id or wave), always
        through the engine, so each is journaled and written to the audit log. Resume and approve drive the
        rollout on; abort and rollback of a rollout this window drives pause it first and wait for its step."""
        engine = self.rollout_engine()
        opts = dict(options or {})
        if action == "resume":
            return self.drive_rollout(rollout_id, lambda: engine.resume(rollout_id), f"Resume rollout {rollout_id}")
        if action == "approve":
            return self.drive_rollout(rollout_id, lambda: engine.approve(rollout_id),
                                      f"Approve rollout {rollout_id}")
        if action not in ("pause", "abort", "rollback"):
            raise ValueError(f"{action!r} is not a rollout action")

        async def job(activity: Activity) -> RolloutRow:
            if action == "pause":
                row = await engine.pause(rollout_id, "paused by the operator")
            else:
                await self._stop_driving(rollout_id, f"{action} by the operator")
                row = await (engine.abort(rollout_id) if action == "abort" else
                             engine.rollback(rollout_id, device_id=opts.get("device_id"), wave=opts.get("wave")))
            await self.refresh_rollouts()
            return row

        what = {"device_id": f"device {opts.get('device_id')} of ",
                "wave": f"wave {int(opts.get('wave') or 0) + 1} of "}
        scope = next((text for key, text in what.items() if key in opts), "")
        return self.activities.start(f"{action.capitalize()} {scope}rollout {rollout_id}", job,
                                     summarize=_rollout_summary)

    async def _stop_driving(self, rollout_id: int, reason: str, wait: float | None = None) -> None:
        """Pause a rollout this window drives and wait for its run to stop at the next step boundary."""
        run = self._runs.get(rollout_id)
        if run is None or not run.running or run._task is None:
            return
        with contextlib.suppress(FleetDeskError):
            await self.rollout_engine().pause(rollout_id, reason)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(run._task), wait)

    def recover_rollouts(self) -> Activity:
        """After a crash: ask each switched device of every rollout left running where it is (engine.recover),
        then drive each on."""
        async def job(activity: Activity) -> list[int]:
            activity.report(None, "asking the devices of rollouts left running where they are")
            found = await self.rollout_engine().recover()
            for rid in found:
                self.drive_rollout(rid, title=f"Continue rollout {rid}")
            return found

        def summarize(ids: object) -> str:
            assert isinstance(ids, list)
            return f"{len(ids)} rollout(s) recovered and continued"

        return self.activities.start("Recover rollouts", job, summarize=summarize)

    # -- live telemetry and alerts ---------------------------------------------------------------------

    def _sample_stored(self, arrival: Arrival) -> None:
        for event in self.alerts.check(arrival.device_id, arrival.sample):
            self._alert(event)

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
            await self._stop_driving(rid, "the window was closed", CLOSE_PAUSE_WAIT_S)
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


def _rollout_summary(row: object) -> str:
    assert isinstance(row, RolloutRow)
    return f"rollout {row.id} {row.status}" + (f": {row.paused_reason}" if row.paused_reason else "")


def record_alert(events: TelemetryRepo, event: AlertEvent) -> None:
    """Write one alert, raised or cleared, to the inventory's event log (runs in the inventory's thread)."""
    events.log_event(event.device_id, "alert", event.message, metric=event.metric, value=event.value,
                     bound=event.bound, at=datetime.fromtimestamp(event.at, UTC))


def progress_text(progress: Progress, elapsed: float) -> str:
    """An import's progress as the activity view shows it: the step, how far, time spent and time left."""
    parts = [progress.message]
    if progress.total:
        parts.append(f"step {progress.done} of {progress.total}")
    parts.append(f"{human_duration(elapsed)} elapsed")
    if 0 < progress.done < progress.total:
        parts.append(f"about {human_duration(elapsed / progress.done * (progress.total - progress.done))} left")
    return ", ".join(parts)
