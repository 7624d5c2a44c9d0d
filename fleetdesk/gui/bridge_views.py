"""The values the bridge's signals carry to the widgets: a device, a trust request, a login, a stream, a rollout.

Plain frozen dataclasses and the pure functions that make them; the parts of `FleetBridge` (fleetdesk.gui.bridge) emit
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetdesk.inventory.records import Device, HostKey
from fleetdesk.inventory.rollouts import DeviceRow, JournalEntry, RolloutRepo, RolloutRow
from fleetdesk.inventory.runtimes import DeviceRuntime
from fleetdesk.telemetry.hub import StreamState
from fleetdesk.transport.hostkey import PublicKey

STATUSES = ("online", "offline", "untrusted", "unreachable", "busy")


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
class FleetKeyRequest:
    """Devices that provisioning left untouched because they trust another fleet key than this laptop's: the
    operator decides whether they get this laptop's key. `devices` holds (device id, name, the key it trusts)."""

    laptop_key: str
    devices: tuple[tuple[int, str, str], ...]

    @property
    def device_ids(self) -> list[int]:
        return [device_id for device_id, _name, _key in self.devices]


@dataclass(frozen=True)
class Login:
    """How to log in to devices, as the credentials dialog gives it; the password only passes through."""

    username: str
    key_file: str | None = None
    password: str | None = field(default=None, repr=False)  # a repr reaches logs and tracebacks


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
    driven_here: bool = False  # this window drives it (or is taking it over): nothing for it to take over


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
