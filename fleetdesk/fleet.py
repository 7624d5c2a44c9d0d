"""The operator's fleet: the inventory, the device profiles and one SSH pool, and the operations over them.

The CLI and the GUI both call these: discover, add, sweep, trust, probe, run, group. No Qt here.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from fleetdesk.access import Access
from fleetdesk.config import Settings
from fleetdesk.discovery.manual import resolve_host
from fleetdesk.discovery.mdns import DiscoveryEvent, MdnsBrowser
from fleetdesk.discovery.recorder import DiscoveryRecorder, RecordingState
from fleetdesk.discovery.sweep import sweep
from fleetdesk.errors import (
    ConfigError,
    DatabaseUnreachableError,
    FleetDeskError,
    HostKeyChangedError,
    HostKeyUnknownError,
    KeyringUnavailableError,
    UnreachableError,
)
from fleetdesk.inventory import Inventory, open_inventory
from fleetdesk.inventory.records import Device, Edit, Group, ProbeFacts
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.probe import probe
from fleetdesk.profiles import ProfileSet, load_profiles
from fleetdesk.profiles.matcher import ProfileMatch, match_profile
from fleetdesk.profiles.schema import Profile
from fleetdesk.reach import DeviceLayout, DeviceReach, Stamp, device_root, files_stamp, recently_changed
from fleetdesk.text import visible_text
from fleetdesk.transport import credentials, sshconfig
from fleetdesk.transport.asyncssh_transport import fetch_host_key
from fleetdesk.transport.hostkey import PublicKey
from fleetdesk.transport.knownhosts import import_known_hosts
from fleetdesk.transport.pool import SSHPool
from fleetdesk.transport.results import DeviceOutcome, FanOutResult
from fleetdesk.transport.shell import shell_quote
from fleetdesk.transport.target import SSHTarget

PROBE_TIMEOUT = 60.0
REACH_THREADS = 4  # areach(): reads of the inventory and the ssh config at once, off the loop
DEFAULT_USER = "root"
MAX_NAME = 128  # characters of a device name an operator types (an mDNS label is at most 63 bytes)


@dataclass(frozen=True)
class ProbeOutcome:
    """One device's probe: the facts and the profile it matched, or the error that stopped it."""

    device: Device
    facts: ProbeFacts | None = None
    match: ProfileMatch | None = None
    error: FleetDeskError | None = None

    @property
    def status(self) -> str:
        if self.error is None:
            return "succeeded"
        return "unreachable" if isinstance(self.error, UnreachableError) else "failed"


@dataclass(frozen=True)
class TrustOutcome:
    """A host key the operator trusted for a device, and the keys it replaced (a re-trust)."""

    device: Device
    key: PublicKey
    replaced: tuple[str, ...] = ()  # fingerprints no longer trusted
    already_trusted: bool = False
    source: str = "operator"


class Fleet:
    """`async with Fleet.open() as fleet: await fleet.probe(fleet.select(all_devices=True))`."""

    def __init__(self, inventory: Inventory, profiles: ProfileSet, *, pool: SSHPool | None = None,
                 ssh_config: str | os.PathLike[str] | None = None, operator: str | None = None) -> None:
        self.inventory = inventory
        self.access = Access(inventory, operator)  # who acts: their roles are checked, their changes audited
        self.profiles = profiles
        self.pool = pool or SSHPool()
        self.ssh_config = ssh_config
        self._live_services: dict[int, set[tuple[str, str]]] = {}  # device id -> mDNS services not gone
        self._reaches: dict[int, _Held] = {}  # device id -> its last reach() and what it was read from
        self._reach_threads: ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, db_url: str | None = None, *, ssh_config: str | os.PathLike[str] | None = None,
             operator: str | None = None) -> Fleet:
        settings = Settings.load(db_url)
        profiles = load_profiles(settings.user_profiles_dir)
        return cls(open_inventory(settings.db_url), profiles, ssh_config=ssh_config, operator=operator)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.pool.close()
        if self._reach_threads is not None:
            self._reach_threads.shutdown(wait=False)
            self._reach_threads = None
        self.inventory.close()

    # -- choosing devices ----------------------------------------------------------------------------

    def select(self, refs: Sequence[str] = (), *, group: str | None = None, all_devices: bool = False) -> list[Device]:
        """Devices by name/address/id, the members of a group, or all; each device once, in the order given."""
        if not refs and group is None and not all_devices:
            raise ConfigError("no devices chosen", fix="name devices, or use --group NAME or --all")
        chosen: dict[int, Device] = {}
        if all_devices:
            chosen.update((d.id, d) for d in self.inventory.devices())
        if group is not None:
            chosen.update((d.id, d) for d in self.inventory.devices(group=group))
        for ref in refs:
            device = self.inventory.device(ref)
            chosen.setdefault(device.id, device)
        return list(chosen.values())

    def ssh_config_for(self, device: Device) -> sshconfig.SSHConfigEntry:
        """What the operator's ssh config says for the device, and which of its lines say it.

        Read as `ssh NAME` reads it, except that Host patterns are matched against the device's address and
        mDNS host names too: an operator's `Host 198.18.1.*` block serves `ssh 198.18.1.7`, so it serves
        the device at that address whatever it is called here.
        """
        mdns_hosts = [n[:-1] for n in device.mdns_names if n.endswith(".")]  # host names are fully qualified
        return sshconfig.resolve(device.name, aliases=[device.address, *mdns_hosts], config_path=self.ssh_config)

    def reach(self, device: Device) -> DeviceReach:
        """Everything needed to talk to the device (fleetdesk.reach): its SSH target, profile, what provisioning
        recorded and its layout under the one root rule (reach.device_root).

        Reads the inventory (pinned keys, the runtime record) and the operator's ssh config, then keeps the value
        until the device is given as another record, its profile is another, this fleet's inventory committed a
        write (pin, trust, provisioning, a login change...) or an ssh config file it read changed. It reads
        files and the database: on the event loop, `await fleet.areach(device)`.
        """
        revision = self.inventory.revision  # before any read: a write meanwhile makes the next call read again
        profile = self.profiles.profiles.get(device.profile) if device.profile else None
        home = os.path.expanduser("~")  # ~ in the config's path, its IdentityFile lines and the device's key file
        config = self._ssh_config_path()
        held = self._reaches.get(device.id)
        if (held is not None and held.device == device and held.revision == revision and held.profile is profile
                and (held.home, held.config) == (home, config)
                and files_stamp(p for p, _, _ in held.stamp) == held.stamp):
            return held.reach
        try:
            pinned = tuple(k.public_key for k in self.inventory.host_keys(device.id))
            runtime = DeviceRuntimes(self.inventory).get(device.id)
        except DatabaseUnreachableError:
            # The database went away mid-step: the device is reached as it was last read (its pinned keys, its
            # runtime), so that a step under way can finish; a device never reached before cannot be.
            if (held is not None and held.device == device and held.profile is profile
                    and (held.home, held.config) == (home, config)):
                return held.reach
            raise
        entry = self.ssh_config_for(device)
        target = self._target(device, profile, pinned, entry)
        reach = DeviceReach(device, target, profile, runtime, DeviceLayout(device_root(runtime, profile)))
        read = (config, *entry.files)
        stamp = files_stamp((*read, *(os.path.dirname(p) for p in read)))
        if recently_changed(stamp):
            # Written within a clock tick of now: a second write in the same tick would leave the same stamp.
            self._reaches.pop(device.id, None)
        else:
            self._reaches[device.id] = _Held(device, revision, profile, home, config, stamp, reach)
        return reach

    async def areach(self, device: Device) -> DeviceReach:
        """`reach(device)` in a worker thread: what callers on the event loop use, so that no inventory read or
        ssh config parse runs on it. The fleet's own threads: a handle never waits behind the loop's default
        executor (hashing an artifact, reading a file for a push)."""
        if self._reach_threads is None:
            self._reach_threads = ThreadPoolExecutor(max_workers=REACH_THREADS, thread_name_prefix="fleetdesk-reach")
        return await asyncio.get_running_loop().run_in_executor(self._reach_threads, self.reach, device)

    def _ssh_config_path(self) -> str:
        return os.path.expanduser(os.fspath(self.ssh_config if self.ssh_config is not None
                                            else sshconfig.DEFAULT_CONFIG))

    def _target(self, device: Device, profile: Profile | None, pinned: tuple[str, ...],
                entry: sshconfig.SSHConfigEntry) -> SSHTarget:
        """How to reach the device: the inventory row, its pinned keys and profile, then ~/.ssh/config.

        The operator's ssh config (ssh_config_for) supplies HostName, Port, User and IdentityFile unless the
        inventory holds a non-default user or port, or a key file chosen for the device.
        """
        target = SSHTarget(
            device=device.name,
            host=device.address or device.hostname or device.name,
            port=device.port,
            username=device.username,
            pinned_host_keys=pinned,
            identity_files=(os.path.expanduser(device.identity_file),) if device.identity_file else (),
            password_account=device.password_account,
            ciphers=profile.ssh_ciphers if profile else (),
            transport=device.transport,
            device_id=device.id,
        )
        sshconfig.check_supported(entry, device=device.name)
        explicit = {"host"} if entry.hostname == device.name.lower() else set()
        if device.username != DEFAULT_USER or device.password_account:
            explicit.add("username")
        if device.port != 22:
            explicit.add("port")
        if device.identity_file:
            # The operator chose this key for this device: ssh config's IdentityFile does not override it.
            explicit.add("identity_files")
        return sshconfig.apply_ssh_config(target, entry, explicit=explicit)

    # -- finding devices -----------------------------------------------------------------------------

    def apply_discovery_event(self, event: DiscoveryEvent) -> Device | None:
        """Record what mDNS saw; a device whose last live service said goodbye (or expired) goes offline."""
        return self.apply_discovery_events([event])[0]

    def apply_discovery_events(self, events: Sequence[DiscoveryEvent]) -> list[Device | None]:
        """apply_discovery_event for many, in order; each run of sightings is one inventory transaction."""
        results: list[Device | None] = []
        run: list[DiscoveryEvent] = []

        def flush() -> None:
            added: set[int] = set()
            devices = self.inventory.record_sightings([e.sighting for e in run], added=added)
            for event, device in zip(run, devices, strict=True):
                self._live_services.setdefault(device.id, set()).add(_service_key(event))
            results.extend(devices)
            run.clear()
            if added:  # a device the fleet did not know is a change: who was browsing answers for it
                new = sorted({d.id: d for d in devices if d.id in added}.values(), key=lambda d: d.id)
                self.access.record("device.discover", targets=tuple(f"device:{d.id}" for d in new),
                                   after={"source": "mdns", "devices": [d.name for d in new]})

        for event in events:
            if event.kind in ("seen", "updated"):
                run.append(event)
                continue
            if run:
                flush()
            results.append(self._service_gone(event))
        if run:
            flush()
        return results

    def _service_gone(self, event: DiscoveryEvent) -> Device | None:
        host = event.sighting.host_name or (event.sighting.addresses[0] if event.sighting.addresses else None)
        if host is None:
            return None
        try:
            device = self.inventory.device(host)
        except FleetDeskError:
            return None
        live = self._live_services.get(device.id, set())
        live.discard(_service_key(event))
        return device if live else self.inventory.set_online(device.id, False)

    def recorder(self, on_device: Callable[[Device], None] | None = None,
                 on_state: Callable[[RecordingState], None] | None = None) -> DiscoveryRecorder:
        """Something to hand MdnsBrowser as `on_event`: it writes to the inventory in batches, off the loop,
        and tells `on_state` when the inventory refuses writes (held and retried) and when it records again."""
        return DiscoveryRecorder(self.apply_discovery_events, on_device, on_state)

    async def allow_discovery(self, interfaces: Iterable[str] | None = None) -> None:
        """Whether the acting operator may browse for devices (which records the ones found): AccessDeniedError,
        audited, if not. Every browse asks before it starts, the window's as well as `fleetdesk discover`."""
        await self._allow("operate", "device.discover",
                          targets=tuple(f"interface:{i}" for i in interfaces or ()) or ("interface:all",))

    async def discover(self, interfaces: Iterable[str] | None = None, timeout: float = 3.0, *,
                       on_device: Callable[[Device], None] | None = None,
                       on_state: Callable[[RecordingState], None] | None = None) -> list[Device]:
        """Browse mDNS for `timeout` seconds, recording every device into the inventory as it appears.

        An inventory that still refuses writes when the browse ends raises InventoryUnavailableError."""
        if not 0 < timeout <= 600:
            raise ConfigError(f"a browse time of {timeout} s is out of range", fix="use 1 to 600 seconds")
        await self.allow_discovery(interfaces)
        found: dict[int, Device] = {}

        def seen(device: Device) -> None:
            if device.online:
                found[device.id] = device
            if on_device is not None:
                on_device(device)

        recorder = self.recorder(seen, on_state)
        try:
            async with MdnsBrowser(interfaces, on_event=recorder.push) as browser:
                await asyncio.sleep(timeout)
                await browser.settle(1.0)
        finally:
            await recorder.close()
        return sorted((self.inventory.device(i) for i in found), key=lambda d: d.name)

    async def add(self, host: str, *, port: int = 22, username: str = DEFAULT_USER, name: str | None = None,
                  password: str | None = None, transport: str | None = None,
                  interfaces: Iterable[str] | None = None) -> Device:
        """Add a device by hostname or address (it must resolve; a .local name is asked on `interfaces` by
        mDNS only); a password goes to the keyring only."""
        await self._allow("operate", "device.add", targets=(f"host:{host}",))
        if password is not None or transport is not None:
            await self._allow("administer", "device.login", targets=(f"host:{host}",))
        await resolve_host(host, port, interfaces=interfaces)
        if password is not None:
            # Refuse before the inventory changes: a device added without the password it came with
            # would leave the operator guessing what was stored.
            status = await asyncio.to_thread(credentials.keyring_status)
            if not status.usable:
                raise KeyringUnavailableError(status.message, fix=status.fix, step="store password")
        device = self.inventory.add_device(host, port=port, username=username, name=name)
        await self._audit("device.add", targets=(f"device:{device.id}",),
                          after={"name": device.name, "host": host, "port": port, "username": username})
        if password is None and transport is None:
            return device
        return await self.set_login(device, username=username, password=password, transport=transport)

    async def set_login(self, device: Device, *, username: str | None = None, port: int | None = None,
                        password: str | None = None, transport: str | None = None,
                        identity_file: str | None = None) -> Device:
        """Change how FleetDesk logs in to a device; the password is stored in the OS keyring, never here.

        `identity_file` names a private key file for the device ("" goes back to ssh config and defaults);
        it must exist and be readable now, so a typo is caught here and not at the next connect.
        """
        await self._allow("administer", "device.login", devices=(device,))
        if identity_file:
            path = os.path.expanduser(identity_file)
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise ConfigError(f"the key file {identity_file} does not exist or cannot be read",
                                  device=device.name, step="set login",
                                  fix="choose the private key file (e.g. ~/.ssh/id_ed25519), not the .pub")
            identity_file = os.path.abspath(path)
        account = None
        if password is not None:
            account = credentials.password_account(username or device.username, device.id)
            # Off the loop: D-Bus may wait on the operator to unlock the keyring.
            await asyncio.to_thread(credentials.set_secret, account, password)
        changed = self.inventory.set_connection(device.id, username=username, port=port, transport=transport,
                                                password_account=account, identity_file=identity_file,
                                                edit=self._edit(device))
        # The audit says a password was set, never what it is.
        await self._audit("device.login", targets=(f"device:{device.id}",), before=_login(device),
                          after={**_login(changed), "password": "set" if password is not None else "unchanged"})
        return changed

    async def sweep(self, cidr: str, *, port: int = 22, rate: float | None = None) -> list[Device]:
        """Connect to `port` across an operator-typed CIDR and record every SSH server that answered."""
        await self._allow("operate", "device.sweep", targets=(f"cidr:{cidr}",))
        if rate is not None:
            sightings = await sweep(cidr, port=port, rate=rate)
        else:
            sightings = await sweep(cidr, port=port)
        devices = {d.id: d for d in self.inventory.record_sightings(sightings)} if sightings else {}
        await self._audit("device.sweep", targets=(f"cidr:{cidr}", *(f"device:{i}" for i in sorted(devices))),
                          after={"cidr": cidr, "port": port, "answered": len(devices)})
        return sorted(devices.values(), key=lambda d: d.name)

    # -- trust ---------------------------------------------------------------------------------------

    async def presented_key(self, device: Device) -> PublicKey:
        """The host key the device presents now, fetched without trusting it or logging in."""
        return await fetch_host_key((await self.areach(device)).target)

    async def trust(self, device: Device, fingerprint: str) -> TrustOutcome:
        """Pin the device's current host key, after the operator confirmed its fingerprint.

        The fingerprint must be the one the device presents right now; if another key was pinned before,
        it is replaced (the operator re-trusts a reinstalled device).
        """
        await self._allow("administer", "device.trust", devices=(device,))
        wanted = fingerprint.strip()
        if not wanted.startswith("SHA256:"):
            raise ConfigError(f"{wanted!r} is not a SHA256 fingerprint", device=device.name, step="trust",
                              fix="copy it as `ssh-keygen -lf` prints it: SHA256:followed by 43 characters")
        key = await self.presented_key(device)
        if key.fingerprint != wanted:
            raise HostKeyChangedError(
                f"the device presents {key.fingerprint}, not {wanted}; nothing was trusted",
                pinned=(wanted,), presented=key.fingerprint, public_key=key.line, device=device.name, step="trust",
                fix="compare the fingerprint at the device's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key"
                    ".pub`) and give the one it prints")
        pinned = self.inventory.host_keys(device.id)
        if any(k.fingerprint == key.fingerprint for k in pinned):
            return TrustOutcome(device, key, already_trusted=True)
        replaced = tuple(k.fingerprint for k in pinned)
        if replaced:
            self.inventory.forget_host_keys(device.id)
        self.inventory.pin_host_key(device.id, key.line, source="operator")
        await self._audit("device.trust" if not replaced else "device.retrust", targets=(f"device:{device.id}",),
                          before={"fingerprints": list(replaced)}, after={"fingerprint": key.fingerprint})
        return TrustOutcome(self.inventory.device(device.id), key, replaced=replaced)

    def trust_from_known_hosts(self, device: Device, path: str | os.PathLike[str] | None = None) -> list[PublicKey]:
        """Pin the keys the operator's known_hosts already trusts for the device (by address and by name)."""
        self.access.require("administer", "device.trust", devices=(device,))
        entry = self.ssh_config_for(device)
        files = [os.fspath(path)] if path is not None else list(sshconfig.known_hosts_files(entry))
        keys: dict[str, PublicKey] = {}
        for host in dict.fromkeys([*device.addresses, device.name, device.hostname, entry.hostname]):
            if host:
                for key in import_known_hosts(host, device.port, path=files):
                    keys.setdefault(key.fingerprint, key)
        if not keys:
            raise HostKeyUnknownError(
                f"known_hosts ({', '.join(files)}) has no key for it", fingerprint="", public_key="",
                device=device.name, step="trust",
                fix=f"check the key at the device and run `fleetdesk trust {shell_quote(device.name)}`")
        pinned = {k.fingerprint for k in self.inventory.host_keys(device.id)}
        added = [key for key in keys.values() if key.fingerprint not in pinned]
        for key in added:
            self.inventory.pin_host_key(device.id, key.line, source="known_hosts")
        if added:
            self.access.record("device.trust", targets=(f"device:{device.id}",),
                               before={"fingerprints": sorted(pinned)},
                               after={"fingerprints": [k.fingerprint for k in added], "source": "known_hosts"})
        return list(keys.values())

    # -- probing and running -------------------------------------------------------------------------

    async def probe(self, devices: Sequence[Device], *,
                    on_outcome: Callable[[ProbeOutcome], None] | None = None) -> list[ProbeOutcome]:
        """Identify each device in one SSH round trip, match its profile and store both; all at once.

        A probe that changes a device's profile is audited (what it runs as decides what it is given)."""
        await self._allow("operate", "device.probe", devices=devices)

        async def one(device: Device) -> ProbeOutcome:
            try:
                target = (await self.areach(device)).target

                async def run(command: str) -> tuple[int | None, bytes, bytes]:
                    result = await self.pool.run(target, command, timeout=PROBE_TIMEOUT)
                    return result.exit_status, result.stdout_bytes, result.stderr_bytes

                facts = await probe(run, device=device.name)
            except FleetDeskError as exc:
                outcome = ProbeOutcome(device, error=exc)
                if isinstance(exc, UnreachableError):
                    outcome = ProbeOutcome(self.inventory.set_online(device.id, False), error=exc)
            else:
                match = match_profile(facts, self.profiles)
                stored = self.inventory.save_probe(device.id, facts, profile=match.profile if match else None)
                outcome = ProbeOutcome(stored, facts=facts, match=match)
                if stored.profile != device.profile:
                    await self._audit("device.profile", targets=(f"device:{device.id}",),
                                      before={"profile": device.profile},
                                      after={"profile": stored.profile, "arch": facts.arch, "model": facts.model})
            if on_outcome is not None:
                on_outcome(outcome)
            return outcome

        return list(await asyncio.gather(*(one(d) for d in devices)))

    async def run(self, devices: Sequence[Device], command: str, *, timeout: float | None = 60.0) -> FanOutResult:
        """Run one shell command on every device at once: one outcome each, and who was unreachable.

        The command is audited before it runs: an admin's command on the devices is a change whatever it does."""
        await self._allow("administer", "device.run", devices=devices)
        await self._audit("device.run", targets=tuple(f"device:{d.id}" for d in devices), after={"command": command})
        targets: list[SSHTarget] = []
        refused: list[tuple[str, FleetDeskError]] = []
        reached = await asyncio.gather(*(self.areach(d) for d in devices), return_exceptions=True)
        for device, reach in zip(devices, reached, strict=True):
            if isinstance(reach, FleetDeskError):
                refused.append((device.name, reach))
            elif isinstance(reach, BaseException):
                raise reach
            else:
                targets.append(reach.target)
        result = await self.pool.run_many(targets, command, timeout=timeout)
        by_name = {d.name: d for d in devices}
        for outcome in result.outcomes:
            answered = by_name.get(outcome.device)
            if answered is not None:
                self.inventory.set_online(answered.id, outcome.status != "unreachable")
        if refused:
            result = FanOutResult((*result.outcomes, *(DeviceOutcome(n, error=e) for n, e in refused)))
        return result

    # -- groups --------------------------------------------------------------------------------------

    def group(self, devices: Sequence[Device], name: str, *, remove: bool = False, seen: Group | None = None) -> Group:
        """Put devices in a group (or take them out). An admin's change: a group is what a scope is made of.

        `seen` is the group as the operator saw it when they chose the change: if another operator edited it since
        (members in or out, a rename, a delete), the change is refused with EditConflictError naming them. Without
        it, the group as read now is the one checked (a new name makes a new group)."""
        action = "group.remove" if remove else "group.add"
        self.access.require("administer", action, devices=devices, targets=(f"group:{name}",))
        ids = [d.id for d in devices]
        edit = self._group_edit(name, seen)
        group = (self.inventory.remove_from_group(name, ids, edit=edit) if remove
                 else self.inventory.add_to_group(name, ids, edit=edit))
        self.access.record(action, targets=(f"group:{group.name}", *(f"device:{i}" for i in ids)),
                           after={"devices": len(ids)})
        return group

    def rename_group(self, group: Group, name: str) -> Group:
        """Call a group something else (its devices stay in it); refused if another operator edited it since
        `group` was read, or while an operator's scope names it."""
        self.access.require("administer", "group.rename", targets=(f"group:{group.name}",))
        renamed = self.inventory.rename_group(group.name, name, edit=Edit(by=self.access.name,
                                                                          seen_version=group.version))
        if renamed.name != group.name:
            self.access.record("group.rename", targets=(f"group:{renamed.name}",), before={"name": group.name},
                               after={"name": renamed.name})
        return renamed

    def delete_group(self, group: Group) -> None:
        """Delete a group (its devices stay in the inventory); refused if another operator edited it since `group`
        was read, or while an operator's scope names it."""
        self.access.require("administer", "group.delete", targets=(f"group:{group.name}",))
        gone = self.inventory.delete_group(group.name, edit=Edit(by=self.access.name, seen_version=group.version))
        self.access.record("group.delete", targets=(f"group:{gone.name}", *(f"device:{i}" for i in gone.device_ids)),
                           before={"name": gone.name, "devices": len(gone.device_ids)})

    def _group_edit(self, name: str, seen: Group | None) -> Edit:
        if seen is not None:
            return Edit(by=self.access.name, seen_version=seen.version)
        try:
            return Edit(by=self.access.name, seen_version=self.inventory.group(name).version)
        except FleetDeskError:
            return Edit(by=self.access.name, seen_version=None)  # no such group yet: this makes it

    def rename(self, device: Device, name: str) -> Device:
        """Call a device something else (its id, keys, groups and history stay): what the operator knows it by."""
        wanted = name.strip()
        if not wanted or len(wanted) > MAX_NAME or not wanted.isprintable():
            raise ConfigError(f"{visible_text(wanted)!r} cannot be a device name",
                              device=device.name, step="rename",
                              fix=f"use 1 to {MAX_NAME} printable characters, e.g. line2-pi-07")
        self.access.require("operate", "device.rename", devices=(device,))
        renamed = self.inventory.rename(device.id, wanted, edit=self._edit(device))
        if renamed.name != device.name:
            self.access.record("device.rename", targets=(f"device:{device.id}",), before={"name": device.name},
                               after={"name": renamed.name})
        return renamed

    def remove_devices(self, devices: Sequence[Device]) -> None:
        """Take devices out of the inventory (their rollouts' history and their audit entries stay)."""
        self.access.require("administer", "device.remove", devices=devices)
        for device in devices:
            self.inventory.remove(device.id, edit=self._edit(device))
            self.access.record("device.remove", targets=(f"device:{device.id}",),
                               before={"name": device.name, "address": device.address, "profile": device.profile})

    def _edit(self, device: Device) -> Edit:
        """An edit of `device` as the caller saw it: refused if another laptop or terminal changed it since."""
        return Edit(by=self.access.name, seen_version=device.version)

    # -- the audit trail -----------------------------------------------------------------------------

    async def _allow(self, permission: str, action: str, *, devices: Sequence[Device] = (),
                     targets: Sequence[str] = ()) -> None:
        """Access.require off the loop (it reads the inventory, and a refusal is signed with the keyring's key)."""
        await asyncio.to_thread(self.access.require, permission, action, devices=devices, targets=targets)

    async def _audit(self, action: str, **entry: Any) -> None:
        await asyncio.to_thread(functools.partial(self.access.record, action, **entry))


def _login(device: Device) -> dict[str, object]:
    return {"username": device.username, "port": device.port, "transport": device.transport,
            "identity_file": device.identity_file, "password": bool(device.password_account)}


@dataclass(frozen=True)
class _Held:
    """A reach() kept for a device, with what it was read from: the record given, the inventory's revision, the
    profile, the home folder, the ssh config path and the stamps of the files (and their folders) the parse read."""

    device: Device
    revision: int
    profile: Profile | None
    home: str
    config: str
    stamp: Stamp
    reach: DeviceReach


def _service_key(event: DiscoveryEvent) -> tuple[str, str]:
    return (event.sighting.service_type or "", event.sighting.instance_name or "")
