"""The bridge's side of the devices: the inventory's devices and groups, discovery, probing, provisioning, trust,
logins and removal.

`DevicesPart` owns what this window knows of each device (the cached rows, trust, problems, busy state) and the
signals that announce it; the other parts of `FleetBridge` (fleetdesk.gui.bridge) read devices and report device
problems through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from PySide6.QtCore import QObject, Signal

from fleetdesk.discovery.mdns import MdnsBrowser
from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.errors import (
    ConfigError,
    EditConflictError,
    FleetDeskError,
    FleetKeyMismatchError,
    HostKeyChangedError,
    HostKeyUnknownError,
    InventoryUnavailableError,
    UnreachableError,
)
from fleetdesk.fleet import ProbeOutcome
from fleetdesk.inventory.records import Device, Group, HostKey
from fleetdesk.inventory.runtimes import DeviceRuntime, DeviceRuntimes
from fleetdesk.profiles.matcher import ProfileMatch, match_profile
from fleetdesk.runtime.provision import ProvisionOutcome, ProvisionProgress
from fleetdesk.runtime.provision import provision as provision_devices
from fleetdesk.transport import credentials
from fleetdesk.transport.credentials import KeyringStatus
from fleetdesk.transport.shell import shell_join
from fleetdesk.transport.sshconfig import SSHConfigEntry

from .activities import Activity, human_bytes
from .bridge_context import BridgeContext
from .bridge_views import DeviceView, FleetKeyRequest, Login, TrustRequest, device_status

OFFLINE_AFTER_START = 4.0  # seconds of browsing after which a device that did not answer is shown offline


class DevicesPart(QObject):
    """Devices, groups, discovery and trust; every method that does I/O runs as a registered Activity."""

    devices_reset = Signal(list)  # list[DeviceView]
    device_changed = Signal(object)  # DeviceView
    device_removed = Signal(int)
    groups_changed = Signal(list)  # list[Group]
    browsing_changed = Signal(bool)
    discovery_state = Signal(object)  # RecordingState: the inventory refused discovery's writes, or records again
    trust_requested = Signal(object)  # TrustRequest
    fleet_key_differs = Signal(object)  # FleetKeyRequest: provisioning refused devices of another fleet key

    def __init__(self, context: BridgeContext) -> None:
        super().__init__()
        self._context = context
        self.fleet = context.fleet
        self.activities = context.activities
        self._devices: dict[int, Device] = {}
        self._trusted: set[int] = set()
        self._unreachable: set[int] = set()
        self._problems: dict[int, str] = {}
        self._refusals: dict[int, str] = {}  # device id -> its model server's refusal, as its samples last said
        self._groups: list[Group] = []
        self._runtimes: dict[int, DeviceRuntime] = {}  # device id -> its provisioned runtime
        self._browse: Activity | None = None
        self._busy: set[int] = set()
        self.activities.busy_changed.connect(self._refresh_busy)

    # -- reading -----------------------------------------------------------------------------------

    async def load(self) -> list[DeviceView]:
        """Read the whole inventory (off the loop) and announce it."""
        inventory = self.fleet.inventory
        devices = await self._context.db(inventory.devices)
        self._trusted = await self._context.db(inventory.trusted_device_ids)
        self._groups = await self._context.db(inventory.groups)
        self._runtimes = {r.device_id: r for r in await self._context.db(DeviceRuntimes(inventory).all)}
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

    def known(self) -> dict[int, Device]:
        """Every device as last read or announced, by id (a copy: the caller may keep it)."""
        return dict(self._devices)

    def is_trusted(self, device_id: int) -> bool:
        return device_id in self._trusted

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

    def update(self, device: Device) -> None:
        """Keep this fresh row of the device and announce it (`device_changed`)."""
        before = self._devices.get(device.id)
        if before is not None and not before.online and device.online:
            self._unreachable.discard(device.id)  # it is back on the network: try again before saying so
        self._devices[device.id] = device
        self.device_changed.emit(self.view(device))

    async def reload(self, device_ids: Iterable[int], *, trust: bool = False, groups: bool = False,
                     runtimes: bool = False) -> None:
        """Read these devices again (off the loop) and announce each as it is now, or gone; and the trusted set,
        the groups and the runtimes when asked: what another FleetDesk changed in a shared inventory."""
        inventory = self.fleet.inventory
        if trust:
            self._trusted = await self._context.db(inventory.trusted_device_ids)
        if runtimes:
            self._runtimes = {r.device_id: r for r in await self._context.db(DeviceRuntimes(inventory).all)}
        wanted = set(device_ids)
        if wanted:
            found = await self._context.db(inventory.devices, ids=wanted)
            for device in found:
                self.update(device)
            for gone in wanted - {d.id for d in found}:
                if gone in self._devices:
                    self._forget(gone)
        if groups:
            self._groups = await self._context.db(inventory.groups)
            self.groups_changed.emit(list(self._groups))

    def _forget(self, device_id: int) -> None:
        # The telemetry part forgets the device's stream, samples and alerts on `device_removed` (connected first).
        self._devices.pop(device_id, None)
        self._trusted.discard(device_id)
        self._unreachable.discard(device_id)
        self._problems.pop(device_id, None)
        self.device_removed.emit(device_id)

    def show_refusal(self, device_id: int, refused: str | None) -> None:
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

    def _refresh_busy(self) -> None:
        busy = self.activities.busy_devices()
        changed, self._busy = busy ^ self._busy, busy
        for device_id in changed:
            device = self._devices.get(device_id)
            if device is not None:
                self.device_changed.emit(self.view(device))

    def note_problem(self, device_id: int, error: FleetDeskError | None) -> None:
        """The last error met with the device (None: it answered); shown with it from its next announcement."""
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
            await self.fleet.allow_discovery(chosen)  # a refusal ends the activity with its reason, audited
            seen: set[int] = set()
            recovered = ""  # said after the count once the inventory records again, until discovery stops

            def answered() -> str:
                return f"on {where}: {len(seen)} device(s) answered" + (f"; {recovered}" if recovered else "")

            def on_device(device: Device) -> None:
                if device.online:
                    seen.add(device.id)
                self.update(device)
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
                self.update(await self._context.db(self.fleet.inventory.set_online, device.id, False))

    def stop_browsing(self) -> None:
        if self._browse is not None:
            self._browse.cancel()

    def add_device(self, host: str, *, port: int = 22, username: str = "root", name: str | None = None,
                   interfaces: Sequence[str] | None = None) -> Activity:
        async def job(activity: Activity) -> Device:
            activity.report(None, f"resolving {host}")
            device = await self.fleet.add(host, port=port, username=username, name=name, interfaces=interfaces)
            self.update(device)
            return device

        return self.activities.start(f"Add {host}", job, summarize=lambda device: f"added as {device.name}")

    def sweep(self, cidr: str, port: int = 22) -> Activity:
        async def job(activity: Activity) -> list[Device]:
            activity.report(None, f"connecting to TCP port {port} across {cidr}")
            devices = await self.fleet.sweep(cidr, port=port)
            for device in devices:
                self.update(device)
            return devices

        return self.activities.start(f"Sweep {cidr}", job,
                                     summarize=lambda devices: f"{len(devices)} SSH server(s) answered")

    # -- probing, trust, credentials -----------------------------------------------------------------

    def chosen(self, device_ids: Sequence[int]) -> list[Device]:
        """The devices the operator chose, as last read; a device gone from the inventory meanwhile is an error."""
        missing = [i for i in device_ids if i not in self._devices]
        if missing:
            raise ConfigError("a chosen device is no longer in the inventory", fix="refresh and choose again")
        return [self._devices[i] for i in device_ids]

    def probe(self, device_ids: Sequence[int]) -> Activity:
        devices = self.chosen(device_ids)
        done: list[ProbeOutcome] = []

        async def job(activity: Activity) -> list[ProbeOutcome]:
            def on_outcome(outcome: ProbeOutcome) -> None:
                done.append(outcome)
                self.note_problem(outcome.device.id, outcome.error)
                self.update(outcome.device)
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
        devices = self.chosen(device_ids)
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
            records = await self._context.db(DeviceRuntimes(self.fleet.inventory).all)
            self._runtimes = {r.device_id: r for r in records}
            for device, outcome in zip(devices, outcomes, strict=True):
                self.note_problem(device.id, outcome.error)
                self.update(self._devices.get(device.id, device))
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
        device = self.chosen([device_id])[0]

        async def job(activity: Activity) -> TrustRequest | None:
            activity.report(None, f"asking {device.address or device.name} for its host key")
            presented = await self.fleet.presented_key(device)
            pinned = tuple(await self._context.db(self.fleet.inventory.host_keys, device.id))
            if any(k.fingerprint == presented.fingerprint for k in pinned):
                self._trusted.add(device.id)
                self.update(device)
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
        device = self.chosen([device_id])[0]

        async def job(activity: Activity) -> str:
            outcome = await self.fleet.trust(device, fingerprint)
            self._trusted.add(device.id)
            self.note_problem(device.id, None)
            self.update(outcome.device)
            return "replaced the old key" if outcome.replaced else "trusted"

        return self.activities.start(f"Trust {device.name}", job, devices=[device.id], summarize=str)

    def set_login(self, device_ids: Sequence[int], login: Login) -> Activity:
        devices = self.chosen(device_ids)

        async def job(activity: Activity) -> int:
            for n, device in enumerate(devices, 1):
                async with self._showing_edits_of_others([device.id]):
                    updated = await self.fleet.set_login(device, username=login.username, password=login.password,
                                                         identity_file=login.key_file if login.key_file else "")
                self.update(updated)
                activity.report(n / len(devices), f"{n} of {len(devices)} saved")
            return len(devices)

        where = "the OS keyring" if login.password else "the inventory"
        return self.activities.start(f"Save the login for {len(devices)} device(s)", job,
                                     summarize=lambda n: f"saved for {n} device(s) in {where}")

    # -- groups and removal --------------------------------------------------------------------------

    def change_group(self, device_ids: Sequence[int], name: str, *, remove: bool = False) -> Activity:
        """Put devices in a group or take them out, as this window shows the group now: refused if another operator
        changed it since (the window then shows the group as it is)."""
        devices = self.chosen(device_ids)
        name = name.strip()
        seen = self._group(name)  # None: a group this window does not know, made (or read) by the change

        async def job(activity: Activity) -> Group:
            if not name:
                raise ConfigError("the group has no name", fix="type a name such as 'line A'")
            inventory = self.fleet.inventory
            ids = [d.id for d in devices]
            # The fleet's operation: the operator's role is checked and the change audited (off the loop).
            async with self._showing_group_as_it_is(ids):
                group = await self._context.db(functools.partial(self.fleet.group, devices, name, remove=remove,
                                                                 seen=seen))
            for device_id in ids:
                self.update(await self._context.db(inventory.device, device_id))
            self._groups = await self._context.db(inventory.groups)
            self.groups_changed.emit(list(self._groups))
            return group

        verb = "Take" if remove else "Put"
        where = "out of" if remove else "in"
        return self.activities.start(f"{verb} {len(devices)} device(s) {where} {name!r}", job,
                                     summarize=lambda g: "done")

    def rename_group(self, name: str, new_name: str) -> Activity:
        """Call a group something else, as this window shows it now (refused if another operator changed it since;
        the window then shows the group as it is)."""
        seen = self._group(name)

        async def job(activity: Activity) -> str:
            if seen is None:
                raise ConfigError(f"this window knows no group {name!r}", fix="choose a group in the tree")
            async with self._showing_group_as_it_is(seen.device_ids):
                renamed = await self._context.db(self.fleet.rename_group, seen, new_name)  # checked and audited
            await self.reload(renamed.device_ids, groups=True)
            return renamed.name

        return self.activities.start(f"Rename the group {name!r}", job, summarize=lambda new: f"now {new!r}")

    def delete_group(self, name: str) -> Activity:
        """Delete a group (its devices stay), as this window shows it now (refused if another operator changed it
        since; the window then shows the group as it is)."""
        seen = self._group(name)

        async def job(activity: Activity) -> int:
            if seen is None:
                raise ConfigError(f"this window knows no group {name!r}", fix="choose a group in the tree")
            async with self._showing_group_as_it_is(seen.device_ids):
                await self._context.db(self.fleet.delete_group, seen)  # checked and audited
            await self.reload(seen.device_ids, groups=True)
            return len(seen.device_ids)

        return self.activities.start(f"Delete the group {name!r}", job,
                                     summarize=lambda n: f"deleted; its {n} device(s) stay")

    def _group(self, name: str) -> Group | None:
        return next((g for g in self._groups if g.name == name.strip()), None)

    @contextlib.asynccontextmanager
    async def _showing_group_as_it_is(self, device_ids: Sequence[int]) -> AsyncIterator[None]:
        """A group edit refused because someone else changed the group since this window read it: the window shows
        the groups (and these devices' memberships) as they are now, and the activity fails naming who changed it."""
        try:
            yield
        except EditConflictError:
            with contextlib.suppress(FleetDeskError):
                await self.reload(device_ids, groups=True)
            raise

    def rename(self, device_id: int, name: str) -> Activity:
        device = self.chosen([device_id])[0]

        async def job(activity: Activity) -> str:
            async with self._showing_edits_of_others([device.id]):
                renamed = await self._context.db(self.fleet.rename, device, name)  # checked and audited
            self.update(renamed)
            return renamed.name

        return self.activities.start(f"Rename {device.name!r}", job,
                                     summarize=lambda new: f"now {new!r}")

    @contextlib.asynccontextmanager
    async def _showing_edits_of_others(self, device_ids: Sequence[int]) -> AsyncIterator[None]:
        """An edit refused because someone else changed the device since this window read it: the window shows
        the device as it is now (the activity fails with who changed it), so the operator decides on what is."""
        try:
            yield
        except EditConflictError:
            for device_id in device_ids:
                with contextlib.suppress(FleetDeskError):
                    self.update(await self._context.db(self.fleet.inventory.device, device_id))
            raise

    def remove_devices(self, device_ids: Sequence[int]) -> Activity:
        devices = self.chosen(device_ids)

        async def job(activity: Activity) -> int:
            async with self._showing_edits_of_others([d.id for d in devices]):
                await self._context.db(self.fleet.remove_devices, devices)  # checked and audited
            for device in devices:
                self._forget(device.id)
            self._groups = await self._context.db(self.fleet.inventory.groups)
            self.groups_changed.emit(list(self._groups))
            return len(devices)

        return self.activities.start(f"Remove {len(devices)} device(s)", job,
                                     summarize=lambda n: f"{n} removed from the inventory")
