"""The lab's state: one JSON file that `status`, `fault` and `down` read from any process.

Written atomically, and before each step of `up`, so that `down` can clean up after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetdesk.errors import LabError

STATE_VERSION = 1
BRIDGE = "fdlab0"
BRIDGE_ADDRESS = "198.18.0.1"
PREFIX_LEN = 16
NETNS_PREFIX = "fdlab-"
VETH_PREFIX = "fdv"


@dataclass
class LabDevice:
    """One virtual device as the lab built it."""

    name: str
    profile: str
    arch: str
    address: str
    index: int
    netns: str
    veth: str
    root: str
    # Faults in effect, e.g. {"cut": True, "delay_ms": 200, "ssh": "stopped", "disk": "full"}.
    faults: dict[str, Any] = field(default_factory=dict)
    host_key_fingerprint: str = ""
    boot_time: float = 0.0

    @property
    def device_dir(self) -> Path:
        return Path(self.root).parent


@dataclass
class LabState:
    """The whole lab: where its files are and every device."""

    lab_dir: str
    spec: str
    phase: str = "building"  # building -> up; a crash leaves "building" for `down` to clean
    created: float = field(default_factory=time.time)
    bridge: str = BRIDGE
    bridge_address: str = BRIDGE_ADDRESS
    prefix_len: int = PREFIX_LEN
    ssh_key: str = ""
    known_hosts: str = ""
    devices: list[LabDevice] = field(default_factory=list)
    version: int = STATE_VERSION

    def device(self, name: str) -> LabDevice:
        for dev in self.devices:
            if dev.name == name or dev.address == name:
                return dev
        names = ", ".join(d.name for d in self.devices) or "none"
        raise LabError(f"no lab device named {name!r}", fix=f"use one of: {names}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        if data.get("version") != STATE_VERSION:
            raise LabError(
                f"the lab state file has version {data.get('version')!r}, this FleetDesk reads {STATE_VERSION}",
                fix="tear the lab down with the FleetDesk that built it",
            )
        devices = [LabDevice(**d) for d in data.get("devices", [])]
        rest = {k: v for k, v in data.items() if k != "devices"}
        return cls(devices=devices, **rest)


def state_path(lab_dir: Path) -> Path:
    return lab_dir / "state.json"


def load_state(lab_dir: Path) -> LabState | None:
    """The saved state, or None when no lab is up."""
    path = state_path(lab_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return LabState.from_json(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise LabError(
            f"the lab state file {path} is damaged ({exc})",
            fix="run `fleetdesk lab down`; it also cleans up without a readable state",
        ) from None


def save_state(state: LabState) -> None:
    path = state_path(Path(state.lab_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state.to_json(), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_state(lab_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(lab_dir).unlink()


@contextlib.contextmanager
def lab_lock(lab_dir: Path, timeout: float = 600.0) -> Iterator[None]:
    """One lab command changes the lab at a time, across processes."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    with open(lab_dir / "lock", "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        "another lab command is still running", fix="wait for it to finish, then try again"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
