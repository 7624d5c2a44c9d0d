"""Faults on demand for lab devices: cut the link, delay or lose packets, stop sshd, reboot,
fill the disk, replace the host key. `restore` undoes every fault still in effect.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from fleetdesk.errors import LabError
from fleetdesk.lab import device, netns
from fleetdesk.lab.fleet import LabPaths, write_known_hosts
from fleetdesk.lab.state import LabDevice, LabState, lab_lock, load_state, save_state
from fleetdesk.lab.system import require_root
from fleetdesk.profiles import ProfileSet, load_profiles

FAULTS = ("cut", "restore", "delay", "loss", "stop-ssh", "start-ssh", "reboot", "fill-disk", "free-disk", "rekey")
USAGE = "cut|restore|delay MS|loss PCT|stop-ssh|start-ssh|reboot [SECONDS]|fill-disk|free-disk|rekey"


@dataclass(frozen=True)
class FaultResult:
    """What a fault did, for the CLI's line and --json."""

    device: str
    fault: str
    detail: str


def _number(fault: str, args: Sequence[str], low: float, high: float, unit: str, default: float | None = None) -> float:
    if not args:
        if default is not None:
            return default
        raise LabError(f"`{fault}` needs a number of {unit}", fix=f"write e.g. `{fault} {int(high // 10) or 1}`")
    try:
        value = float(args[0])
    except ValueError:
        raise LabError(f"`{fault}` needs a number of {unit}, not {args[0]!r}", fix=f"write e.g. `{fault} 10`") from None
    if not low <= value <= high:
        raise LabError(f"`{fault} {args[0]}` is out of range", fix=f"use {low:g} to {high:g} {unit}")
    return value


def _shaping(dev: LabDevice) -> str | None:
    parts = []
    if dev.faults.get("delay_ms"):
        parts.append(f"delay {dev.faults['delay_ms']:g}ms")
    if dev.faults.get("loss_pct"):
        parts.append(f"loss {dev.faults['loss_pct']:g}%")
    return " ".join(parts) or None


def _apply_shaping(dev: LabDevice) -> None:
    netns.set_shaping(dev.device_dir, dev.index, dev.address,
                      float(dev.faults.get("delay_ms", 0)), float(dev.faults.get("loss_pct", 0)))


def apply_fault(name: str, fault: str, args: Sequence[str] = (), paths: LabPaths | None = None,
                profiles: ProfileSet | None = None) -> FaultResult:
    """Apply one fault to one device of the running lab and record it in the state file."""
    if fault not in FAULTS:
        raise LabError(f"unknown fault {fault!r}", fix=f"use one of: {USAGE}")
    paths = paths or LabPaths.default()
    require_root()
    with lab_lock(paths.lab_dir):
        state = load_state(paths.lab_dir)
        if state is None or state.phase != "up":
            raise LabError("no lab is up", fix="start one with `fleetdesk lab up --devices ...`")
        dev = state.device(name)
        detail = _apply(state, dev, fault, args, profiles)
        save_state(state)
    return FaultResult(dev.name, fault, detail)


def _disk_gb(dev: LabDevice, profiles: ProfileSet | None) -> int:
    profiles = profiles or load_profiles()
    hw = profiles.get(dev.profile).lab
    assert hw is not None
    return hw.disk_gb


def _apply(state: LabState, dev: LabDevice, fault: str, args: Sequence[str], profiles: ProfileSet | None) -> str:
    if fault == "cut":
        netns.set_link(dev.veth, up=False)
        dev.faults["cut"] = True
        return "link down: the device is unreachable"
    if fault in ("delay", "loss"):
        if fault == "delay":
            dev.faults["delay_ms"] = _number(fault, args, 0, 60_000, "milliseconds")
        else:
            dev.faults["loss_pct"] = _number(fault, args, 0, 100, "percent")
        _apply_shaping(dev)
        return f"traffic to the device: {_shaping(dev) or 'unshaped'}"
    if fault == "stop-ssh":
        device.stop_sshd(dev)
        dev.faults["ssh"] = "stopped"
        return "sshd stopped; open sessions stay up"
    if fault == "start-ssh":
        device.start_sshd(dev)
        dev.faults.pop("ssh", None)
        return _answering(dev, "sshd started")
    if fault == "reboot":
        downtime = _number(fault, args, 0, 600, "seconds", default=2.0)
        device.shutdown(dev)
        time.sleep(downtime)
        device.boot(dev)
        dev.faults.pop("ssh", None)
        return _answering(dev, f"rebooted after {downtime:g} s down")
    if fault == "fill-disk":
        device.set_disk_full(dev, True, _disk_gb(dev, profiles))
        dev.faults["disk"] = "full"
        return "disk full: writes fail with 'No space left on device'"
    if fault == "free-disk":
        device.set_disk_full(dev, False, _disk_gb(dev, profiles))
        dev.faults.pop("disk", None)
        return "disk space back"
    if fault == "rekey":
        device.stop_sshd(dev)
        dev.host_key_fingerprint = device.generate_host_keys(dev)
        device.start_sshd(dev)
        write_known_hosts(state)
        return _answering(dev, f"new host key {dev.host_key_fingerprint}")
    return _restore(dev, profiles)


def _answering(dev: LabDevice, detail: str) -> str:
    """Wait for sshd's banner unless a network fault in effect keeps it from reaching us."""
    if dev.faults.get("cut") or dev.faults.get("loss_pct") == 100:
        return f"{detail} (not checked: the link is down)"
    device.wait_for_ssh(dev.address, device=dev.name)
    return detail


def _restore(dev: LabDevice, profiles: ProfileSet | None) -> str:
    undone = []
    if dev.faults.pop("cut", None):
        netns.set_link(dev.veth, up=True)
        undone.append("link up")
    if _shaping(dev):
        undone.append("traffic unshaped")
    netns.clear_shaping(dev.device_dir, dev.index, dev.address)
    if dev.faults.pop("ssh", None):
        device.start_sshd(dev)
        undone.append("sshd started")
    if dev.faults.pop("disk", None):
        device.set_disk_full(dev, False, _disk_gb(dev, profiles))
        undone.append("disk freed")
    dev.faults.clear()
    device.wait_for_ssh(dev.address, device=dev.name)
    return ", ".join(undone) or "nothing was in effect; the device answers"
