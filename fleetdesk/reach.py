"""A device handle: everything FleetDesk needs to talk to one device, as one frozen value.

`Fleet.reach(device)` builds a DeviceReach (the SSH target with its pinned keys, credentials reference and the
operator's ssh config applied; the device's profile; what provisioning recorded; the device layout) and
`Fleet.areach(device)` does the same off the event loop. Here are the value, the layout of FleetDesk's files on a
device, and the one rule for where that layout lives (`device_root`).
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fleetdesk.agent_client import agent_launcher
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.runtimes import DeviceRuntime
from fleetdesk.profiles.schema import Profile
from fleetdesk.transport.target import SSHTarget

__all__ = ["AGENT_PACKAGE", "DEFAULT_ROOT", "DeviceLayout", "DeviceReach", "Stamp", "device_root", "files_stamp",
           "recently_changed"]

DEFAULT_ROOT = "/opt/fleetdesk"  # DESIGN.md, "The device side": where a device without a profile keeps FleetDesk
AGENT_PACKAGE = "fleetdesk_agent"  # the agent's import name on a device (a file tree, not an installed package)


def device_root(runtime: DeviceRuntime | None, profile: Profile | None) -> str:
    """Where FleetDesk lives on a device, the one rule: what provisioning recorded there wins (a profile whose
    device_root changed since does not move what is installed); else the profile's device_root (so a device
    provisioned for the first time gets its profile's); else DEFAULT_ROOT."""
    if runtime is not None:
        return runtime.device_root
    if profile is not None:
        return profile.device_root
    return DEFAULT_ROOT


@dataclass(frozen=True)
class DeviceLayout:
    """The paths of the device layout under ROOT (common contract: agent/, bin/, runtimes/, keys/, run/, log/,
    artifacts/, tmp/)."""

    root: str

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def agent_dir(self, version: str) -> str:
        return self.join("agent", version)

    def agent_file(self, version: str, relpath: str) -> str:
        return self.join("agent", version, AGENT_PACKAGE, relpath)

    def runtime_dir(self, runtime_id: str) -> str:
        return self.join("runtimes", runtime_id)

    def artifact_dir(self, artifact_id: str) -> str:
        return self.join("artifacts", artifact_id)

    @property
    def artifacts(self) -> str:
        return self.join("artifacts")

    @property
    def tmp(self) -> str:
        return self.join("tmp")

    @property
    def venv(self) -> str:
        """The runtime venv the agent runs in once provisioned (the `current` runtime's)."""
        return self.join("runtimes", "current", "venv")

    @property
    def launcher(self) -> str:
        return agent_launcher(self.root)

    @property
    def supervisor(self) -> str:
        return self.join("bin", "fleetdesk-supervise")

    @property
    def boot(self) -> str:
        return self.join("bin", "fleetdesk-boot")

    @property
    def fleet_pub(self) -> str:
        return self.join("keys", "fleet.pub")

    @property
    def supervise_pid(self) -> str:
        return self.join("run", "supervise.pid")


@dataclass(frozen=True)
class DeviceReach:
    """One device as FleetDesk talks to it, read once: the inventory's record of it, how to reach it over SSH,
    its profile (None before a probe matched one), what provisioning recorded (None before) and its layout."""

    device: Device
    target: SSHTarget
    profile: Profile | None
    runtime: DeviceRuntime | None
    layout: DeviceLayout

    @property
    def root(self) -> str:
        return self.layout.root


Stamp = tuple[tuple[str, int, int], ...]


def files_stamp(paths: Iterable[str]) -> Stamp:
    """(path, mtime_ns, size) of each path, (path, -1, -1) for one that is missing: equal stamps mean unchanged
    files, as far as a stat can tell. A folder's entry changes when a file is added to or removed from it."""
    stamp = []
    for path in dict.fromkeys(paths):
        try:
            st = os.stat(path)
        except OSError:
            stamp.append((path, -1, -1))
        else:
            stamp.append((path, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


STAMP_TICK_NS = 2_000_000_000  # longer than any file system's timestamp granularity FleetDesk meets (FAT: 2 s)


def recently_changed(stamp: Stamp, now_ns: int | None = None) -> bool:
    """Whether a file of the stamp was modified within STAMP_TICK_NS of now: another write in the same tick of
    the file system's clock could leave the same stamp, so a value read from it is not kept on its strength."""
    now = time.time_ns() if now_ns is None else now_ns
    return any(mtime > now - STAMP_TICK_NS for _, mtime, _ in stamp)
