"""The virtual fleet as a whole: `up`, `status`, `down`.

`up` validates everything before it touches the host, records each step in the state file
before taking it, and tears down what it built if any step fails. `down` cleans up by the
state file and by the lab's naming conventions alike, so a crashed `up` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleetdesk.config import Settings
from fleetdesk.errors import LabError
from fleetdesk.lab import device, netns, rootfs
from fleetdesk.lab.spec import parse_spec
from fleetdesk.lab.state import (
    NETNS_PREFIX,
    VETH_PREFIX,
    LabDevice,
    LabState,
    lab_lock,
    load_state,
    remove_state,
    save_state,
)
from fleetdesk.lab.system import require_root, require_tools, run, unmount_all
from fleetdesk.profiles import ProfileSet, load_profiles

Progress = Callable[[str], None]
HOST_TOOLS = ("ip", "iptables", "mount", "umount", "unshare", "nsenter", "chroot", "ssh-keygen", "tar", "zstd")
BOOT_WORKERS = 4


@dataclass(frozen=True)
class LabPaths:
    """Where the lab keeps its state (run dir) and its cached images."""

    lab_dir: Path
    cache_dir: Path

    @classmethod
    def default(cls, settings: Settings | None = None) -> LabPaths:
        settings = settings or Settings.load()
        lab_dir = os.environ.get("FLEETDESK_LAB_DIR")
        return cls(
            lab_dir=Path(lab_dir) if lab_dir else settings.data_dir / "lab",
            cache_dir=settings.lab_cache_dir,
        )

    @property
    def devices_dir(self) -> Path:
        return self.lab_dir / "devices"

    @property
    def ssh_key(self) -> Path:
        return self.lab_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.lab_dir / "known_hosts"


def plan_devices(spec: str, profiles: ProfileSet, paths: LabPaths) -> list[tuple[LabDevice, str]]:
    """Names, addresses and interfaces for every device of the SPEC; nothing touched yet."""
    planned: list[tuple[LabDevice, str]] = []
    index = 0
    for item in parse_spec(spec, profiles):
        hw = item.profile.lab
        assert hw is not None
        for n in range(1, item.count + 1):
            index += 1
            name = f"{hw.hostname_prefix}-{n:02d}"
            dev = LabDevice(
                name=name,
                profile=item.profile.name,
                arch=item.profile.arch,
                address=netns.device_address(index),
                index=index,
                netns=f"{NETNS_PREFIX}{name}",
                veth=f"{VETH_PREFIX}{index}",
                root=str(paths.devices_dir / name / "root"),
            )
            planned.append((dev, item.profile.name))
    return planned


def up(spec: str, paths: LabPaths | None = None, profiles: ProfileSet | None = None,
       progress: Progress = print) -> LabState:
    """Build the fleet of SPEC. Refuses when a lab is already up; a failure leaves nothing behind."""
    paths = paths or LabPaths.default()
    profiles = profiles or load_profiles(Settings.load().user_profiles_dir)
    planned = plan_devices(spec, profiles, paths)  # bad SPEC: error before anything else
    require_root()
    require_tools(HOST_TOOLS)
    with lab_lock(paths.lab_dir):
        existing = load_state(paths.lab_dir)
        if existing is not None:
            if existing.phase == "up":
                raise LabError(
                    f"a lab of {len(existing.devices)} devices is already up ({existing.spec})",
                    fix="run `fleetdesk lab down` first, or `fleetdesk lab status` to see it",
                )
            _down_locked(paths, progress)
        leftovers = netns.lab_namespaces()
        if leftovers:
            raise LabError(
                f"lab namespaces from an earlier run are still there ({', '.join(leftovers[:3])} ...)",
                fix="run `fleetdesk lab down` to clean them up",
            )
        archs = sorted({dev.arch for dev, _ in planned})
        bases = {arch: rootfs.ensure_base(paths.cache_dir, arch, progress) for arch in archs}
        state = LabState(lab_dir=str(paths.lab_dir), spec=spec, ssh_key=str(paths.ssh_key),
                         known_hosts=str(paths.known_hosts))
        state.devices = [dev for dev, _ in planned]
        save_state(state)  # from here on, `down` knows what to clean
        try:
            _build(state, planned, profiles, bases, paths, progress)
        except BaseException:
            progress("bring-up failed; removing what was built ...")
            with contextlib.suppress(Exception):
                _down_locked(paths, lambda _m: None)
            raise
        state.phase = "up"
        save_state(state)
        return state


def _build(state: LabState, planned: list[tuple[LabDevice, str]], profiles: ProfileSet,
           bases: dict[str, Path], paths: LabPaths, progress: Progress) -> None:
    started = time.monotonic()
    _ensure_lab_key(paths)
    public_key = paths.ssh_key.with_suffix(".pub").read_text()
    netns.ensure_bridge()

    def build_one(dev: LabDevice, profile_name: str) -> None:
        netns.create_device_network(dev.netns, dev.veth, dev.address, dev.name)
        device.prepare(dev, profiles.get(profile_name), bases[dev.arch], public_key)
        device.boot(dev)

    # Device bring-up is mostly waiting on processes: a few at a time keeps both cores busy.
    with ThreadPoolExecutor(max_workers=BOOT_WORKERS) as pool:
        futures = [pool.submit(build_one, dev, profile) for dev, profile in planned]
        for future in futures:
            future.result()
        waits = [pool.submit(device.wait_for_ssh, dev.address, device=dev.name) for dev, _ in planned]
        for future in waits:
            future.result()
    write_known_hosts(state)
    save_state(state)
    progress(f"{len(planned)} devices up in {time.monotonic() - started:.1f} s")


def _ensure_lab_key(paths: LabPaths) -> None:
    if paths.ssh_key.is_file() and paths.ssh_key.with_suffix(".pub").is_file():
        return
    paths.lab_dir.mkdir(parents=True, exist_ok=True)
    paths.ssh_key.unlink(missing_ok=True)
    paths.ssh_key.with_suffix(".pub").unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetdesk-lab", "-f", paths.ssh_key],
        step="make lab key")


def write_known_hosts(state: LabState) -> None:
    """The lab's known_hosts: each device by address and by name, as `ssh -o UserKnownHostsFile` reads it."""
    lines = []
    for dev in state.devices:
        key = device.host_public_key(dev)
        lines.append(f"{dev.address},{dev.name},{dev.name}.local {key}")
    tmp = Path(state.known_hosts + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, state.known_hosts)


def status(paths: LabPaths | None = None) -> LabState | None:
    """The lab as the state file records it, or None when none is up."""
    paths = paths or LabPaths.default()
    return load_state(paths.lab_dir)


def down(paths: LabPaths | None = None, progress: Progress = print) -> int:
    """Tear the lab down; returns how many devices were removed (0: nothing was up)."""
    paths = paths or LabPaths.default()
    require_root()
    with lab_lock(paths.lab_dir):
        return _down_locked(paths, progress)


def _down_locked(paths: LabPaths, progress: Progress) -> int:
    try:
        state = load_state(paths.lab_dir)
    except LabError:
        state = None  # damaged state: the naming conventions below still find everything
    devices = state.devices if state else []
    for dev in devices:
        device.destroy(dev)
    # What a crash may have left without a record: namespaces, veths, mounts, device folders.
    for name in netns.lab_namespaces():
        netns.delete_device_network(name, "")
    for veth in netns.lab_veths():
        run(["ip", "link", "del", veth], check=False)
    netns.remove_shaping_chain()
    unmount_all(paths.devices_dir)
    shutil.rmtree(paths.devices_dir, ignore_errors=True)
    netns.delete_bridge()
    remove_state(paths.lab_dir)
    removed = len(devices)
    if removed:
        progress(f"lab down: {removed} devices removed")
    return removed
