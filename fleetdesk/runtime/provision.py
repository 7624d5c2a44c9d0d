"""Provisioning: put a runtime bundle, the agent and the fleet key on devices, install the runtime offline,
keep the model server running, and prove it with the agent's selftest. Idempotent and resumable.

Per device, in order: check (trusted, probed, the fleet key it holds, python3, disk), push what the device lacks,
seal keys/ where the login is root, build the venv unless installed.json says it is done, switch the `current`
links, register the server, selftest, record.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import posixpath
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetdesk.agent_client import AgentClient
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.errors import DiskFullError, FleetDeskError, ProvisionError, RemoteCommandError, UnreachableError
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.profiles.schema import Profile
from fleetdesk.reach import DeviceLayout, DeviceReach
from fleetdesk.runtime.agentfiles import (
    UNIT_NAME,
    UNIT_PATH,
    AgentTree,
    agent_tree,
    boot_hook_line,
    boot_hook_mark,
    boot_script,
    launcher_script,
    supervisor_script,
    systemd_unit,
)
from fleetdesk.runtime.fleetkey import check_fleet_key, device_fleet_pub
from fleetdesk.runtime.provision_scripts import (
    BOOT_HOOK_PY,
    INSTALLED_PY,
    LINKS_PY,
    PRUNE_PY,
    STATE_PY,
    STATE_SH,
    SUPERVISE_SH,
    UNPACK_PY,
)
from fleetdesk.runtime.sealing import seal_command, sealed_folders
from fleetdesk.runtime.store import Runtime, RuntimeStore
from fleetdesk.transport.shell import python_command, python_or_sh, shell_join, shell_quote
from fleetdesk.transport.target import SSHTarget

DEFAULT_CONCURRENCY = 8
STATE_TIMEOUT = 300.0  # hashing the wheels on an emulated Pi takes a while
INSTALL_TIMEOUT = 1800.0  # pip installing onnxruntime and numpy under qemu takes minutes
SELFTEST_TIMEOUT = 600.0
COMMAND_TIMEOUT = 120.0
# A venv holding the runtime takes about three times its wheels once unpacked (onnxruntime 1.31: 24 MB wheel,
# 68 MB installed; numpy 2.4: 17 MB, 58 MB), plus pip and setuptools that `python3 -m venv` puts there.
VENV_FACTOR = 3
VENV_BASE_BYTES = 32 * 1024 * 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class ProvisionProgress:
    """One step of one device: what is happening, and bytes pushed so far of this step's total."""

    device: str
    step: str
    message: str
    done: int = 0
    total: int = 0


ProgressFn = Callable[[ProvisionProgress], None]


@dataclass(frozen=True)
class ProvisionOutcome:
    """What provisioning did on one device, or the error that stopped it (the next run resumes from there)."""

    device: str
    runtime_id: str | None = None
    agent_version: str | None = None
    bytes_sent: int = 0
    seconds: float = 0.0
    changed: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    onnxruntime: str | None = None
    python: str | None = None
    boot_hook: str | None = None  # what starts the model server at boot: "systemd", "/etc/rc.local", "crontab"
    error: FleetDeskError | None = None

    @property
    def status(self) -> str:
        """"succeeded", "failed" or "unreachable" (a device that could not be reached has not failed)."""
        if self.error is None:
            return "succeeded"
        return "unreachable" if isinstance(self.error, UnreachableError) else "failed"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "status": self.status, "runtime": self.runtime_id,
                "agent_version": self.agent_version, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 3), "changed": list(self.changed), "providers": list(self.providers),
                "onnxruntime": self.onnxruntime, "python": self.python, "boot_hook": self.boot_hook,
                "error": self.error.to_dict() if self.error else None}


def choose_runtime(store: RuntimeStore, profile: Profile, ref: str | None, *, device: str | None = None) -> Runtime:
    """The runtime for a device of `profile`: the one named, else the newest built for its arch and Python."""
    if ref is not None:
        runtime = store.get(ref)
        if (runtime.arch, runtime.python) != (profile.arch, profile.python):
            raise ProvisionError(
                f"runtime {runtime.id} is for {runtime.arch}, {runtime.python}, but {profile.name} devices are "
                f"{profile.arch}, {profile.python}: its wheels would not install", device=device,
                step="choose runtime",
                fix=f"leave --runtime out, or build one: `fleetdesk runtime build --profile {profile.name}`")
        return runtime
    newest = store.newest_for(profile.arch, profile.python, profile.name)
    if newest is None:
        raise ProvisionError(f"no runtime for {profile.name} ({profile.arch}, {profile.python})", device=device,
                             step="choose runtime",
                             fix=f"`fleetdesk runtime build --profile {profile.name}` while this laptop reaches a "
                                 "package index, or `fleetdesk runtime import-wheel FILE --profile "
                                 f"{profile.name}`")
    return newest


def _python_tag(version: str) -> str:
    parts = version.split(".")
    return f"cp{parts[0]}{parts[1]}" if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() else ""


def pip_install_failure(output: str, runtime: Runtime, *, device: str, machine: str, python: str) -> FleetDeskError:
    """pip's refusal on the device, told in the operator's terms (pip's wording: pip/_internal/exceptions.py and
    resolution/resolvelib/factory.py)."""
    here = f"{machine or 'unknown'} with Python {python or 'unknown'}"
    fix = (f"build or import a runtime for this device ({here}) and provision with --runtime ID; "
           f"`fleetdesk runtime list` shows what is stored")
    bad = re.search(r"(\S+\.whl) is not a supported wheel on this platform", output)
    if bad:
        return RemoteCommandError(f"{posixpath.basename(bad.group(1))} of runtime {runtime.id} does not fit this "
                                  f"device ({here}): pip says it is not a supported wheel on this platform",
                                  device=device, step="install runtime", stderr=output[-4000:], fix=fix)
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        return RemoteCommandError(f"runtime {runtime.id} ({runtime.arch}, {runtime.python}) holds no wheel of "
                                  f"{missing.group(1)} that this device ({here}) can install", device=device,
                                  step="install runtime", stderr=output[-4000:], fix=fix)
    if "No space left on device" in output:
        return DiskFullError("the device ran out of space while installing the runtime", device=device,
                             step="install runtime", fix="free space on the device, then provision again")
    last = [line for line in output.strip().splitlines() if line.strip()][-2:]
    return RemoteCommandError(f"installing runtime {runtime.id} failed: {' / '.join(last)[:300]}", device=device,
                              step="install runtime", stderr=output[-4000:],
                              fix="read the pip output (--json shows it); provision again once it is fixed")


@dataclass
class _Item:
    """One file to put on the device."""

    local: Path
    remote: str
    size: int
    sha256: str
    mode: int = 0o644
    what: str = "file"


@dataclass
class _Device:
    """One device's provisioning run: its target, choices and running totals."""

    device: Device
    target: SSHTarget
    profile: Profile
    runtime: Runtime
    layout: DeviceLayout
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    changed: list[str] = field(default_factory=list)
    supervisor_sha: str = ""
    boot_hook: str | None = None  # where the supervisor is started at boot without systemd (None: nowhere)


class Provisioner:
    """One `provision` call over many devices: the fleet, the runtime store, the agent tree and the fleet key.

    `replace_fleet_key`: a device that trusts another fleet key gets this laptop's (else it is refused, untouched).
    """

    def __init__(self, fleet: Any, *, store: RuntimeStore | None = None, signing_key: FleetSigningKey | None = None,
                 agent: AgentTree | None = None, progress: ProgressFn | None = None,
                 concurrency: int = DEFAULT_CONCURRENCY, replace_fleet_key: bool = False) -> None:
        self.fleet = fleet
        self.replace_fleet_key = replace_fleet_key
        self.store = store or RuntimeStore.default()
        self.signing_key = signing_key or FleetSigningKey.default()
        self.agent = agent or agent_tree()
        self.progress = progress
        self.concurrency = max(1, concurrency)
        self._local = Path()
        self._snapshot = Path()
        self._pub: Path | None = None

    def _say(self, name: str, step: str, message: str, done: int = 0, total: int = 0) -> None:
        if self.progress is not None:
            self.progress(ProvisionProgress(name, step, message, done, total))

    async def run(self, devices: Sequence[Device], runtime_ref: str | None = None) -> list[ProvisionOutcome]:
        # The fleet key is made (or opened) once, before any device: without a keyring nothing can be signed.
        pem = await asyncio.to_thread(self.signing_key.public_pem)
        semaphore = asyncio.Semaphore(self.concurrency)
        with tempfile.TemporaryDirectory(prefix="fleetdesk-provision-") as folder:
            # The launcher, supervisor and unit are made per device root, then pushed like any file.
            self._local = Path(folder)
            self._pub = self._local / "fleet.pub"
            self._pub.write_bytes(pem)
            # The agent's bytes as hashed into its version are what every device gets, even if the source
            # tree is edited (or upgraded) while the push runs.
            self._snapshot = self._local / "agent"
            for f in self.agent.files:
                (self._snapshot / f.relpath).parent.mkdir(parents=True, exist_ok=True)
                (self._snapshot / f.relpath).write_bytes(f.data)

            async def one(device: Device) -> ProvisionOutcome:
                async with semaphore:
                    return await self._one(device, runtime_ref)

            return list(await asyncio.gather(*(one(d) for d in devices)))

    async def _one(self, device: Device, runtime_ref: str | None) -> ProvisionOutcome:
        started = time.monotonic()
        run: _Device | None = None
        try:
            run = self._prepare(await self.fleet.areach(device), runtime_ref)
            return await self._provision(run)
        except Exception as exc:  # one device's failure, whatever it is, never stops the others
            if not isinstance(exc, FleetDeskError):
                exc = FleetDeskError(f"unexpected error: {exc!r}", device=device.name, step="provision", cause=exc)
            if exc.device is None:
                exc.device = device.name
            self._say(device.name, "failed", exc.message)
            return ProvisionOutcome(device.name, runtime_id=run.runtime.id if run else None,
                                    agent_version=self.agent.version, bytes_sent=run.sent if run else 0,
                                    seconds=time.monotonic() - started,
                                    changed=tuple(run.changed) if run else (), error=exc)

    def _prepare(self, reach: DeviceReach, runtime_ref: str | None) -> _Device:
        """The device's run, from its handle: its root is the one rule's (reach.device_root), so a device
        provisioned before keeps the root it was given even if its profile's device_root changed since."""
        device, name = reach.device, reach.device.name
        if not reach.target.pinned_host_keys:
            raise ProvisionError("is not trusted yet, so FleetDesk does not log in to it", device=name,
                                 step="check device", fix=f"`fleetdesk trust {shell_quote(name)}` after checking "
                                                          "its fingerprint")
        if not device.profile:
            raise ProvisionError("has no profile yet (it was never probed, or no profile matched)", device=name,
                                 step="check device", fix=f"`fleetdesk probe {shell_quote(name)}`")
        profile = reach.profile
        if profile is None:
            raise ProvisionError(f"its profile {device.profile!r} is not among the device profiles", device=name,
                                 step="check device", fix="restore the profile file, or probe the device again")
        runtime = choose_runtime(self.store, profile, runtime_ref, device=name)
        return _Device(device, reach.target, profile, runtime, reach.layout)

    # -- the steps -------------------------------------------------------------------------------------

    async def _provision(self, d: _Device) -> ProvisionOutcome:
        name, runtime, layout = d.device.name, d.runtime, d.layout
        self._say(name, "check", f"runtime {runtime.id}, agent {self.agent.version}")
        items = self._items(d)
        wheels = [_Item(runtime.wheel_path(w), posixpath.join(layout.runtime_dir(runtime.id), "wheels", w.file),
                        w.size, w.sha256, what="wheel") for w in runtime.wheels]
        state = await self._state(d, items, wheels)
        # Before anything is sent: a device of another fleet stays untouched unless the operator said to replace.
        assert self._pub is not None
        replaced = check_fleet_key(device_fleet_pub(state.get("fleet_pub")), self._pub.read_bytes(),
                                   replace=self.replace_fleet_key, device=name)
        # Where systemd runs it keeps the server; elsewhere the supervisor script does, started at boot by a hook.
        unwanted = ("fleetdesk-supervise", "fleetdesk-boot") if state.get("systemd") else (UNIT_NAME,)
        items = [i for i in items if i.what not in unwanted]
        self._check(d, state, items, wheels)
        installed = bool(state["installed"])
        have = state["files"]
        to_push = [i for i in (items if installed else [*wheels, *items]) if have.get(i.remote) != i.sha256]
        await self._push(d, [i for i in to_push if i.what == "wheel"], small=False)
        await self._push(d, [i for i in to_push if i.what != "wheel"], small=True)
        if replaced:
            d.changed.append(replaced)
        if state.get("root") and (not state.get("keys_sealed") or any(i.what == "key" for i in to_push)):
            await self._seal_keys(d)
        if not installed:
            await self._install(d, state)
            d.changed.append(f"installed runtime {runtime.id}")
        for link in await self._switch_links(d):
            d.changed.append(f"switched {link}")
        # Proved before the server is (re)started on it: a runtime that fails its selftest is not served.
        proof = await self._selftest(d)
        await self._register(d, state, unit_pushed=any(i.remote == UNIT_PATH for i in to_push))
        if any(c.startswith("switched") for c in d.changed):
            # Only after the server runs on the new versions: older ones than `previous` are not needed.
            pruned = await self.fleet.pool.run(d.target, python_command(PRUNE_PY, layout.root, "runtimes", "agent"),
                                               timeout=COMMAND_TIMEOUT, check=True)
            d.changed.extend(f"removed {line}" for line in pruned.stdout.split() if line)
        providers = tuple(str(p) for p in proof.get("providers", ()))
        python = str(proof.get("python") or state.get("python") or "")
        await asyncio.to_thread(
            DeviceRuntimes(self.fleet.inventory).record,
            d.device.id, runtime_id=runtime.id, agent_version=self.agent.version, device_root=layout.root,
            onnxruntime=str(proof.get("onnxruntime", "")), providers=providers, python=python)
        self._say(name, "done", "nothing changed" if not d.changed else "; ".join(d.changed))
        return ProvisionOutcome(name, runtime_id=runtime.id, agent_version=self.agent.version, bytes_sent=d.sent,
                                seconds=time.monotonic() - d.started, changed=tuple(d.changed), providers=providers,
                                onnxruntime=str(proof.get("onnxruntime", "")) or None, python=python or None,
                                boot_hook=d.boot_hook)

    def _items(self, d: _Device) -> list[_Item]:
        """The agent tree, the launcher, the supervisor (or unit) and fleet.pub, for this device's root."""
        layout = d.layout
        items = [_Item(self._snapshot / f.relpath, layout.agent_file(self.agent.version, f.relpath), f.size,
                       f.sha256, what="agent") for f in self.agent.files]
        folder = self._local / hashlib.sha256(layout.root.encode()).hexdigest()[:12]
        folder.mkdir(exist_ok=True)
        generated = [("fleetdesk-agent", launcher_script(layout.root), layout.launcher, 0o755),
                     ("fleetdesk-supervise", supervisor_script(layout.root), layout.supervisor, 0o755),
                     ("fleetdesk-boot", boot_script(layout.root), layout.boot, 0o755),
                     (UNIT_NAME, systemd_unit(layout.root), UNIT_PATH, 0o644)]
        for local_name, text, remote, mode in generated:
            path = folder / local_name
            if not path.exists():
                path.write_text(text, encoding="utf-8")
            data = path.read_bytes()
            items.append(_Item(path, remote, len(data), hashlib.sha256(data).hexdigest(), mode, what=local_name))
            if local_name == "fleetdesk-supervise":
                d.supervisor_sha = items[-1].sha256
        assert self._pub is not None
        pub = self._pub.read_bytes()
        items.append(_Item(self._pub, layout.fleet_pub, len(pub), hashlib.sha256(pub).hexdigest(), what="key"))
        return items

    async def _state(self, d: _Device, items: list[_Item], wheels: list[_Item]) -> dict[str, Any]:
        files = json.dumps({i.remote: i.size for i in items})
        wheel_sizes = json.dumps({i.remote: i.size for i in wheels})
        result = await self.fleet.pool.run(d.target, python_or_sh(STATE_PY, STATE_SH, d.layout.root, d.runtime.id,
                                                                   files, wheel_sizes), timeout=STATE_TIMEOUT)
        if result.exit_status != 0:
            raise RemoteCommandError(f"could not inspect {d.layout.root}: {result.stderr.strip()[-300:]}",
                                     exit_status=result.exit_status, stderr=result.stderr, device=d.device.name,
                                     step="check device", fix="check that the user may read and write there")
        try:
            return dict(json.loads(result.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            raise RemoteCommandError(f"unexpected answer while inspecting the device: {result.stdout[:200]!r}",
                                     device=d.device.name, step="check device") from None

    def _check(self, d: _Device, state: dict[str, Any], items: list[_Item], wheels: list[_Item]) -> None:
        name, runtime = d.device.name, d.runtime
        if not state.get("python3"):
            raise ProvisionError("has no python3, which the agent and the runtime need", device=name,
                                 step="check python3",
                                 fix="install Python 3.8 or newer with venv from the OS image (Debian/Ubuntu: "
                                     "python3 and python3-venv), then provision again")
        if not state.get("venv") and not state.get("installed"):
            raise ProvisionError("its python3 has no venv/ensurepip module, so no runtime venv can be made",
                                 device=name, step="check python3",
                                 fix="install the OS package python3-venv (from the OS image or a local mirror), "
                                     "then provision again")
        python, machine = str(state.get("python", "")), str(state.get("machine", ""))
        if machine and machine != runtime.arch:
            raise ProvisionError(f"is {machine}, but runtime {runtime.id} is for {runtime.arch}", device=name,
                                 step="check device",
                                 fix=f"probe it again (`fleetdesk probe {shell_quote(name)}`) so its profile fits")
        if _python_tag(python) != runtime.python:
            raise ProvisionError(f"runs Python {python}, but runtime {runtime.id} is built for {runtime.python}",
                                 device=name, step="check python3",
                                 fix=f"build a runtime for {_python_tag(python) or 'its Python'} (a profile with "
                                     f"python = \"{_python_tag(python)}\") and provision with --runtime ID")
        have = state["files"]
        missing = sum(i.size for i in ([*items] if state.get("installed") else [*wheels, *items])
                      if have.get(i.remote) != i.sha256)
        needed = missing + (0 if state.get("installed") else VENV_FACTOR * runtime.size + VENV_BASE_BYTES)
        free = int(state.get("free", 0))
        if free < needed:
            raise DiskFullError(
                f"needs about {needed / MB:.0f} MB under {d.layout.root} for runtime {runtime.id}, but only "
                f"{free / MB:.0f} MB are free; nothing was sent", device=name, step="check disk",
                fix=f"free space on {name} (or give its profile a device_root on a larger filesystem), then "
                    "provision again")

    async def _push(self, d: _Device, items: list[_Item], *, small: bool) -> None:
        if not items:
            return
        name = d.device.name
        total = sum(i.size for i in items)
        if small and len(items) > 1:
            await self._push_bundle(d, items)
        else:
            done_before = 0
            for item in items:
                def progress(done: int, _size: int, item: _Item = item, offset: int = done_before) -> None:
                    self._say(name, "push", item.local.name, offset + done, total)

                result = await self.fleet.pool.push(d.target, item.local, item.remote, mode=item.mode,
                                                    progress=progress)
                d.sent += result.bytes_sent
                done_before += item.size
        kinds = sorted({i.what for i in items})
        d.changed.append(f"pushed {len(items)} file(s): {', '.join(kinds)}")

    async def _push_bundle(self, d: _Device, items: list[_Item]) -> None:
        """Many small files as one tar: one verified, resumable push and one unpack, instead of a few round
        trips per file (each a Python start on the device: seconds on a slow one)."""
        self._say(d.device.name, "push", f"{len(items)} agent and key files in one bundle")
        listing = "".join(f"{i.remote}\0{i.sha256}\0{i.mode:o}\n" for i in items)
        bundle_id = hashlib.sha256(listing.encode()).hexdigest()[:16]
        local = self._local / f"bundle-{bundle_id}.tar"
        if not local.exists():
            _write_bundle(local, items)
        remote = d.layout.join(".upload", f"{bundle_id}.tar")
        result = await self.fleet.pool.push(d.target, local, remote, mode=0o600)
        d.sent += result.bytes_sent
        manifest = json.dumps([[str(n), i.remote, i.mode, i.sha256] for n, i in enumerate(items)])
        unpacked = await self.fleet.pool.run(d.target, python_command(UNPACK_PY, remote, manifest),
                                             timeout=COMMAND_TIMEOUT)
        if unpacked.exit_status != 0:
            if "No space left" in unpacked.stderr:
                raise DiskFullError(f"no space left under {d.layout.root} for the agent files", device=d.device.name,
                                    step="push", fix="free space on the device, then provision again")
            raise RemoteCommandError(f"could not unpack the agent files: {unpacked.stderr.strip()[-300:]}",
                                     exit_status=unpacked.exit_status, stderr=unpacked.stderr, device=d.device.name,
                                     step="push", fix="check that the user may write under the device root")

    async def _seal_keys(self, d: _Device) -> None:
        """keys/ and fleet.pub root-owned and read-only (the login is root): no other user swaps the fleet key."""
        result = await self.fleet.pool.run(d.target, seal_command(d.layout.join("keys")), timeout=COMMAND_TIMEOUT,
                                           check=True)
        if sealed_folders(result.stdout):
            d.changed.append("made keys/ root-owned and read-only")

    async def _install(self, d: _Device, state: dict[str, Any]) -> None:
        name, runtime = d.device.name, d.runtime
        folder = d.layout.runtime_dir(runtime.id)
        venv = posixpath.join(folder, "venv")
        self._say(name, "install", f"creating the venv and installing {', '.join(runtime.requirements)} offline")
        # A venv left by an interrupted run is rebuilt from nothing: pip's half-installed state is not trusted.
        command = " && ".join([
            shell_join(["rm", "-rf", "--", venv]),
            shell_join(["python3", "-m", "venv", venv]),
            shell_join([posixpath.join(venv, "bin", "python"), "-m", "pip", "install", "--no-index",
                        "--find-links", posixpath.join(folder, "wheels"), "--disable-pip-version-check",
                        "--no-cache-dir", "--no-input", "--", *runtime.requirements]),
            python_command(INSTALLED_PY, folder, runtime.id, json.dumps(list(runtime.requirements))),
        ])
        result = await self.fleet.pool.run(d.target, command, timeout=INSTALL_TIMEOUT)
        if result.exit_status != 0:
            raise pip_install_failure(result.stdout + "\n" + result.stderr, runtime, device=name,
                                      machine=str(state.get("machine", "")), python=str(state.get("python", "")))

    async def _switch_links(self, d: _Device) -> list[str]:
        pairs = ["runtimes/current", d.runtime.id, "agent/current", self.agent.version]
        result = await self.fleet.pool.run(d.target, python_command(LINKS_PY, d.layout.root, *pairs),
                                           timeout=COMMAND_TIMEOUT, check=True)
        return [line for line in result.stdout.split() if line]

    async def _register(self, d: _Device, state: dict[str, Any], *, unit_pushed: bool) -> None:
        """Keep `fleetdesk-agent serve` running: systemd where it runs, else the supervisor; restarted only when
        the agent, the runtime or the way it is run changed."""
        name = d.device.name
        pool = self.fleet.pool
        restart = any(c.startswith(("installed", "switched")) for c in d.changed)
        if state.get("systemd"):
            active = await pool.run(d.target, shell_join(["systemctl", "is-active", "--quiet", UNIT_NAME]),
                                    timeout=COMMAND_TIMEOUT)
            if unit_pushed or active.exit_status != 0 or restart:
                self._say(name, "register", f"systemd unit {UNIT_NAME}")
                await pool.run(d.target, " && ".join([
                    shell_join(["systemctl", "daemon-reload"]),
                    shell_join(["systemctl", "enable", UNIT_NAME]),
                    shell_join(["systemctl", "restart", UNIT_NAME])]), timeout=COMMAND_TIMEOUT, check=True)
                d.changed.append(f"restarted {UNIT_NAME}" if active.exit_status == 0 else f"started {UNIT_NAME}")
            d.boot_hook = "systemd"
            return
        # The supervisor runs the agent version, runtime and script it started with: a change to any restarts it.
        version = f"{self.agent.version} {d.runtime.id} {d.supervisor_sha[:12]}"
        running = state.get("supervisor")
        if not (running and running.get("version") == version):
            self._say(name, "register", "starting the supervised model server (no systemd)")
            await pool.run(d.target, shell_join(["sh", "-c", SUPERVISE_SH, "sh", d.layout.root,
                                                 version]), timeout=COMMAND_TIMEOUT, check=True)
            d.changed.append("restarted the model server" if running else "started the model server")
        await self._boot_hook(d)

    async def _boot_hook(self, d: _Device) -> None:
        """Without systemd, a hook starts the supervisor after a reboot (see BOOT_HOOK_PY). Where none can be
        put, provisioning still succeeds and says so: the server then comes back with the next provisioning."""
        root = d.layout.root
        result = await self.fleet.pool.run(d.target, python_command(BOOT_HOOK_PY, boot_hook_line(root),
                                                                    boot_hook_mark(root)),
                                           timeout=COMMAND_TIMEOUT, check=True)
        try:
            answer = dict(json.loads(result.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            answer = {"hook": None, "changed": False, "why": f"no answer ({result.stdout.strip()[-200:]!r})"}
        d.boot_hook = answer.get("hook")
        if answer.get("changed"):
            d.changed.append(f"installed the boot hook in {d.boot_hook}")
        elif d.boot_hook is None:
            self._say(d.device.name, "register", f"warning: no boot hook ({answer.get('why')}): after a reboot the "
                      "model server stays stopped until the next `fleetdesk provision`; log in as root, or "
                      "install cron, for it to start at boot")

    async def _selftest(self, d: _Device) -> dict[str, Any]:
        name = d.device.name
        self._say(name, "selftest", "importing onnxruntime and running a tiny model on the device")
        agent = AgentClient.pooled(self.fleet.pool, d.target, d.layout.root, device=name)
        return await agent.selftest(timeout=SELFTEST_TIMEOUT)


async def provision(fleet: Any, devices: Sequence[Device], runtime_id: str | None = None, *,
                    progress: ProgressFn | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                    store: RuntimeStore | None = None, signing_key: FleetSigningKey | None = None,
                    agent: AgentTree | None = None, replace_fleet_key: bool = False) -> list[ProvisionOutcome]:
    """Provision every device at once (at most `concurrency` together); one outcome per device, in order.

    One device's failure never stops the others; running it again resumes where it stopped and sends only
    what is missing. `agent` defaults to the agent tree as this FleetDesk holds it now. A device that trusts
    another fleet key fails with FleetKeyMismatchError, untouched, unless `replace_fleet_key`. The operator needs
    the deploy permission over every device; the provisioning is audited with each device's outcome.
    """
    targets = tuple(f"device:{d.id}" for d in devices)
    await asyncio.to_thread(fleet.access.require, "deploy", "device.provision", devices=devices, targets=targets)
    provisioner = Provisioner(fleet, store=store, signing_key=signing_key, agent=agent, progress=progress,
                              concurrency=concurrency, replace_fleet_key=replace_fleet_key)
    outcomes = await provisioner.run(devices, runtime_id)
    failed = [o for o in outcomes if o.error is not None]
    await asyncio.to_thread(
        fleet.access.record, "device.provision", outcome="failed" if failed else "ok", targets=targets,
        after={"runtime": runtime_id, "replace_fleet_key": replace_fleet_key,
               "devices": {o.device: {"status": o.status, "runtime": o.runtime_id, "changed": list(o.changed)}
                           for o in outcomes}})
    return outcomes


def _write_bundle(path: Path, items: Sequence[_Item]) -> None:
    """A tar of the items' bytes, members named by position; fixed metadata, so the same files give the same bytes."""
    temp = path.with_name(path.name + ".tmp")
    with tarfile.open(temp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, item in enumerate(items):
            data = item.local.read_bytes()
            info = tarfile.TarInfo(str(n))
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    temp.replace(path)
