"""Provisioning: put a runtime bundle, the agent and the fleet key on devices, install the runtime offline,
keep the model server running, and prove it with the agent's selftest. Idempotent and resumable.

Per device, in order: check (trusted, probed, python3, disk), push what the device lacks, build the venv unless
installed.json says it is done, switch the `current` links, register the server, selftest, record.
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

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.errors import DiskFullError, FleetDeskError, ProvisionError, RemoteCommandError, UnreachableError
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.profiles.schema import Profile
from fleetdesk.runtime.agentfiles import (
    UNIT_NAME,
    UNIT_PATH,
    AgentTree,
    DeviceLayout,
    agent_tree,
    boot_hook_line,
    boot_hook_mark,
    boot_script,
    launcher_script,
    supervisor_script,
    systemd_unit,
)
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

# Device side, Python 3.5 syntax (a device's python3 may be old). argv: root runtime_id files_json wheels_json.
# Says what the device has, so that nothing it already holds is sent or rebuilt.
_STATE_PY = r"""
import hashlib, json, os, platform, sys
root, rid, files, wheels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
def free(path):
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def link(path):
    try:
        return os.readlink(path)
    except OSError:
        return None
def sha(path, size):
    try:
        if os.path.getsize(path) != size:
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        return h.hexdigest()
    except OSError:
        return None
def supervisor():
    try:
        with open(os.path.join(root, "run", "supervise.pid")) as f:
            pid = int(f.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            alive = b"fleetdesk-supervise" in f.read()
    except (OSError, ValueError):
        return None
    try:
        with open(os.path.join(root, "run", "supervise.version")) as f:
            version = f.read().strip()
    except OSError:
        version = ""
    return {"pid": pid, "version": version} if alive else None
try:
    import ensurepip, venv
    has_venv = True
except ImportError:
    has_venv = False
installed = load(os.path.join(root, "runtimes", rid, "installed.json"))
done = isinstance(installed, dict) and installed.get("runtime") == rid
hashes = dict((p, sha(p, n)) for p, n in files.items())
if not done:
    hashes.update((p, sha(p, n)) for p, n in wheels.items())
print(json.dumps({"python3": sys.executable, "python": "%d.%d.%d" % sys.version_info[:3],
                  "machine": platform.machine(), "venv": has_venv, "free": free(root),
                  "systemd": os.path.isdir("/run/systemd/system"), "installed": done,
                  "links": {"runtime": link(os.path.join(root, "runtimes", "current")),
                            "agent": link(os.path.join(root, "agent", "current"))},
                  "files": hashes, "supervisor": supervisor()}))
"""
_STATE_SH = 'echo \'{"python3": null}\''

# argv: runtime_dir runtime_id requirements_json. Writes installed.json last, atomically: its presence means done.
_INSTALLED_PY = r"""
import json, os, sys, time
folder, rid, reqs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = {"runtime": rid, "requirements": reqs, "python": "%d.%d.%d" % sys.version_info[:3],
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
tmp = os.path.join(folder, ".installed.json.tmp")
with open(tmp, "w") as f:
    json.dump(data, f)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, os.path.join(folder, "installed.json"))
"""

# argv: bundle manifest_json ([member, path, mode, sha256]...). Each file is checked, written beside its place and
# renamed over it; the bundle is removed once every file is in place.
_UNPACK_PY = r"""
import hashlib, json, os, sys, tarfile
bundle, manifest = sys.argv[1], json.loads(sys.argv[2])
with tarfile.open(bundle) as tar:
    for member, path, mode, want in manifest:
        data = tar.extractfile(member).read()
        if hashlib.sha256(data).hexdigest() != want:
            sys.stderr.write("%s does not hash to %s in the bundle\n" % (path, want))
            sys.exit(1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".fleetdesk-new"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
os.unlink(bundle)
"""

# argv: root (link target)... pairs. Switches each link by renaming a new one over it; prints what changed.
_LINKS_PY = r"""
import os, sys
root, pairs = sys.argv[1], sys.argv[2:]
for d in ("run", "log"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
for i in range(0, len(pairs), 2):
    path, target = os.path.join(root, pairs[i]), pairs[i + 1]
    try:
        now = os.readlink(path)
    except OSError:
        now = None
    if now == target:
        continue
    if now is not None and pairs[i].endswith("/current"):
        # What was current stays as the one to go back to ("previous"); anything older is pruned later.
        keep = path[:-len("current")] + "previous"
        tmp = keep + ".fleetdesk-new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(now, tmp)
        os.replace(tmp, keep)
    tmp = path + ".fleetdesk-new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    print(pairs[i])
"""

# argv: root folder... Removes every version folder in ROOT/<folder> that neither `current` nor `previous`
# points at (runtimes hold ~40 MB of wheels and a venv each); prints what it removed.
_PRUNE_PY = r"""
import os, shutil, sys
root = sys.argv[1]
for folder in sys.argv[2:]:
    base = os.path.join(root, folder)
    keep = set()
    for name in ("current", "previous"):
        try:
            keep.add(os.readlink(os.path.join(base, name)))
        except OSError:
            pass
    if not keep:
        continue
    for entry in sorted(os.listdir(base)):
        path = os.path.join(base, entry)
        if entry in keep or entry in ("current", "previous") or os.path.islink(path) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(folder + "/" + entry)
"""

# argv: line mark. Puts the boot hook `line` (ending in `mark`) where this device runs things at boot when no
# systemd does: /etc/rc.local for root (run at the end of boot by sysvinit's rc.local script, and by systemd's
# rc-local generator where it exists), else the user's crontab as `@reboot`. An older line with the same mark is
# replaced; the rest of the file is kept, and a final `exit 0` stays last. Prints {"hook", "changed", "why"}.
_BOOT_HOOK_PY = r"""
import json, os, shutil, subprocess, sys
line, mark = sys.argv[1], sys.argv[2]
def edit(text, new, keep_exit):
    lines = [l for l in text.splitlines() if not l.rstrip().endswith(mark)]
    at = len(lines)
    if keep_exit:
        while at and not lines[at - 1].strip():
            at -= 1
        if at and lines[at - 1].strip() == "exit 0":
            at -= 1
    lines.insert(at, new)
    return "\n".join(lines) + "\n"
def say(hook, changed, why=""):
    print(json.dumps({"hook": hook, "changed": changed, "why": why}))
if os.geteuid() == 0:
    path = "/etc/rc.local"
    try:
        with open(path) as f:
            old = f.read()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        old, mode = None, 0o755
    text = edit(old if old is not None else "#!/bin/sh\n# Run at the end of boot.\nexit 0\n", line, True)
    if text == old and mode & 0o100:
        say(path, False)
    else:
        tmp = path + ".fleetdesk-tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode | 0o755)
        os.replace(tmp, path)
        say(path, True)
elif "%" in line:
    say(None, False, "the FleetDesk root holds a %, which a crontab line cannot carry")
elif shutil.which("crontab"):
    listed = subprocess.run(["crontab", "-l"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    old = listed.stdout if listed.returncode == 0 else ""
    text = edit(old, "@reboot " + line, False)
    if text == old:
        say("crontab", False)
    else:
        put = subprocess.run(["crontab", "-"], input=text, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
        if put.returncode != 0:
            say(None, False, "crontab refused the @reboot line: " + put.stderr.strip()[-200:])
        else:
            say("crontab", True)
else:
    say(None, False, "not root (so not /etc/rc.local) and no crontab command")
"""

# argv: root version. Stops a supervisor of another version, then starts ours with the boot script (the one way
# it is started: here and at boot), and waits for its pid.
_SUPERVISE_SH = r"""
root=$1; version=$2
pidfile="$root/run/supervise.pid"
mkdir -p "$root/run" "$root/log"
if [ -f "$pidfile" ]; then
  old=$(cat "$pidfile")
  if [ -n "$old" ] && grep -q fleetdesk-supervise "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old" 2>/dev/null
    i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  fi
  rm -f "$pidfile"
fi
printf '%s\n' "$version" > "$root/run/supervise.version"
"$root/bin/fleetdesk-boot"
i=0; while [ ! -s "$pidfile" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$pidfile" ] || { echo "the supervisor did not start" >&2; exit 1; }
"""


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
    """One `provision` call over many devices: the fleet, the runtime store, the agent tree and the fleet key."""

    def __init__(self, fleet: Any, *, store: RuntimeStore | None = None, signing_key: FleetSigningKey | None = None,
                 agent: AgentTree | None = None, progress: ProgressFn | None = None,
                 concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.fleet = fleet
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
            run = self._prepare(device, runtime_ref)
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

    def _prepare(self, device: Device, runtime_ref: str | None) -> _Device:
        name = device.name
        if not self.fleet.inventory.host_keys(device.id):
            raise ProvisionError("is not trusted yet, so FleetDesk does not log in to it", device=name,
                                 step="check device", fix=f"`fleetdesk trust {shell_quote(name)}` after checking "
                                                          "its fingerprint")
        if not device.profile:
            raise ProvisionError("has no profile yet (it was never probed, or no profile matched)", device=name,
                                 step="check device", fix=f"`fleetdesk probe {shell_quote(name)}`")
        profile = self.fleet.profiles.profiles.get(device.profile)
        if profile is None:
            raise ProvisionError(f"its profile {device.profile!r} is not among the device profiles", device=name,
                                 step="check device", fix="restore the profile file, or probe the device again")
        runtime = choose_runtime(self.store, profile, runtime_ref, device=name)
        return _Device(device, self.fleet.target(device), profile, runtime, DeviceLayout(profile.device_root))

    # -- the steps -------------------------------------------------------------------------------------

    async def _provision(self, d: _Device) -> ProvisionOutcome:
        name, runtime, layout = d.device.name, d.runtime, d.layout
        self._say(name, "check", f"runtime {runtime.id}, agent {self.agent.version}")
        items = self._items(d)
        wheels = [_Item(runtime.wheel_path(w), posixpath.join(layout.runtime_dir(runtime.id), "wheels", w.file),
                        w.size, w.sha256, what="wheel") for w in runtime.wheels]
        state = await self._state(d, items, wheels)
        # Where systemd runs it keeps the server; elsewhere the supervisor script does, started at boot by a hook.
        unwanted = ("fleetdesk-supervise", "fleetdesk-boot") if state.get("systemd") else (UNIT_NAME,)
        items = [i for i in items if i.what not in unwanted]
        self._check(d, state, items, wheels)
        installed = bool(state["installed"])
        have = state["files"]
        to_push = [i for i in (items if installed else [*wheels, *items]) if have.get(i.remote) != i.sha256]
        await self._push(d, [i for i in to_push if i.what == "wheel"], small=False)
        await self._push(d, [i for i in to_push if i.what != "wheel"], small=True)
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
            pruned = await self.fleet.pool.run(d.target, python_command(_PRUNE_PY, layout.root, "runtimes", "agent"),
                                               timeout=COMMAND_TIMEOUT, check=True)
            d.changed.extend(f"removed {line}" for line in pruned.stdout.split() if line)
        providers = tuple(str(p) for p in proof.get("providers", ()))
        python = str(proof.get("python") or state.get("python") or "")
        DeviceRuntimes(self.fleet.inventory).record(
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
        result = await self.fleet.pool.run(d.target, python_or_sh(_STATE_PY, _STATE_SH, d.layout.root, d.runtime.id,
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
        unpacked = await self.fleet.pool.run(d.target, python_command(_UNPACK_PY, remote, manifest),
                                             timeout=COMMAND_TIMEOUT)
        if unpacked.exit_status != 0:
            if "No space left" in unpacked.stderr:
                raise DiskFullError(f"no space left under {d.layout.root} for the agent files", device=d.device.name,
                                    step="push", fix="free space on the device, then provision again")
            raise RemoteCommandError(f"could not unpack the agent files: {unpacked.stderr.strip()[-300:]}",
                                     exit_status=unpacked.exit_status, stderr=unpacked.stderr, device=d.device.name,
                                     step="push", fix="check that the user may write under the device root")

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
            python_command(_INSTALLED_PY, folder, runtime.id, json.dumps(list(runtime.requirements))),
        ])
        result = await self.fleet.pool.run(d.target, command, timeout=INSTALL_TIMEOUT)
        if result.exit_status != 0:
            raise pip_install_failure(result.stdout + "\n" + result.stderr, runtime, device=name,
                                      machine=str(state.get("machine", "")), python=str(state.get("python", "")))

    async def _switch_links(self, d: _Device) -> list[str]:
        pairs = ["runtimes/current", d.runtime.id, "agent/current", self.agent.version]
        result = await self.fleet.pool.run(d.target, python_command(_LINKS_PY, d.layout.root, *pairs),
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
            await pool.run(d.target, shell_join(["sh", "-c", _SUPERVISE_SH, "sh", d.layout.root,
                                                 version]), timeout=COMMAND_TIMEOUT, check=True)
            d.changed.append("restarted the model server" if running else "started the model server")
        await self._boot_hook(d)

    async def _boot_hook(self, d: _Device) -> None:
        """Without systemd, a hook starts the supervisor after a reboot (see _BOOT_HOOK_PY). Where none can be
        put, provisioning still succeeds and says so: the server then comes back with the next provisioning."""
        root = d.layout.root
        result = await self.fleet.pool.run(d.target, python_command(_BOOT_HOOK_PY, boot_hook_line(root),
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
        result = await self.fleet.pool.run(d.target, shell_join([d.layout.launcher, "selftest"]),
                                           timeout=SELFTEST_TIMEOUT)
        lines = []
        for line in result.stdout.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
        error = next((v for v in lines if v.get("type") == "error"), None)
        if error is not None:
            raise RemoteCommandError(f"the selftest failed: {error.get('message', '')}", device=name, step="selftest",
                                     exit_status=result.exit_status, stderr=result.stderr,
                                     fix=str(error.get("fix") or "provision again"))
        proof = next((v for v in lines if v.get("type") == "result" and v.get("command") == "selftest"), None)
        if proof is None or result.exit_status != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RemoteCommandError(f"the agent's selftest gave no result (exit {result.exit_status}): {last[:300]}",
                                     device=name, step="selftest", exit_status=result.exit_status,
                                     stderr=result.stderr, fix="provision again; if it persists, run "
                                     f"`{d.layout.launcher} selftest` on the device and read its error")
        if not proof.get("inference_ok"):
            raise RemoteCommandError("the selftest's inference gave a wrong answer", device=name, step="selftest",
                                     fix="import a wheel built for this device and provision again")
        return proof


async def provision(fleet: Any, devices: Sequence[Device], runtime_id: str | None = None, *,
                    progress: ProgressFn | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                    store: RuntimeStore | None = None, signing_key: FleetSigningKey | None = None,
                    agent: AgentTree | None = None) -> list[ProvisionOutcome]:
    """Provision every device at once (at most `concurrency` together); one outcome per device, in order.

    One device's failure never stops the others; running it again resumes where it stopped and sends only
    what is missing. `agent` defaults to the agent tree as this FleetDesk holds it now.
    """
    provisioner = Provisioner(fleet, store=store, signing_key=signing_key, agent=agent, progress=progress,
                              concurrency=concurrency)
    return await provisioner.run(devices, runtime_id)


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
