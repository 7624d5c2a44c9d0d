"""The fleet status report: a summary (devices by status, profile, architecture, runtime and active model; alerts;
rollouts in the period) with charts, then every chosen device with what it is, runs and is trusted as."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fleetdesk.artifacts.records import Artifact
from fleetdesk.inventory import Device, Inventory
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.inventory.telemetry_repo import ALERT_CLEARED, ALERT_RAISED, Event, TelemetryRepo
from fleetdesk.reports.document import Cell, Chart, Column, Fact, Report, Series, Table, stamp
from fleetdesk.reports.selection import Filters, chosen_devices, period, scope_text
from fleetdesk.reports.selection import active_models as find_active_models

EVENT_LIMIT = 100_000  # alerts read for one report: far above what a week of a large fleet raises


@dataclass(frozen=True)
class DeviceLine:
    """One device of the inventory table."""

    name: str
    status: str  # "online" | "offline" | "untrusted"
    address: str
    profile: str
    arch: str
    os: str
    runtime: str
    agent: str
    model: str
    model_version: str
    artifact: str  # the first 12 hex digits
    last_seen: str
    host_key: str
    groups: str

    def cells(self) -> tuple[Cell, ...]:
        return (self.name, self.status, self.address, self.profile, self.arch, self.os, self.runtime, self.agent,
                self.model, self.model_version, self.artifact, self.last_seen, self.host_key, self.groups)


DEVICE_COLUMNS = (Column("name", "Name"), Column("status", "Status"), Column("address", "Address"),
                  Column("profile", "Profile"), Column("arch", "Arch"), Column("os", "OS"),
                  Column("runtime", "Runtime"), Column("agent", "Agent"), Column("model", "Model"),
                  Column("model_version", "Version"), Column("artifact", "Artifact"),
                  Column("last_seen", "Last seen"), Column("host_key", "Host key"), Column("groups", "Groups"))
ROLLOUT_COLUMNS = (Column("id", "Rollout", 0.6), Column("model", "Model", 1.2), Column("status", "Status", 1.0),
                   Column("devices", "Devices", 0.6), Column("created", "Started", 1.3),
                   Column("updated", "Last change", 1.3), Column("by", "By", 1.0))
ALERT_COLUMNS = (Column("at", "At", 1.2), Column("device", "Device", 1.4), Column("metric", "Metric", 0.8),
                 Column("value", "Value", 0.6), Column("bound", "Bound", 0.6), Column("message", "Message", 3.0))


OPEN_NOTE = ("An alert is open when it was raised in the period and not cleared after it before the period ends. "
             "Alerts are watched by the window while it streams telemetry: a window closed while an alert is raised "
             "logs no clear, so that alert stays open here.")


def open_alerts(ends: Sequence[Event]) -> list[Event]:
    """The raised alerts among `ends` (raised and cleared alerts of one period) with no clear of the same device
    and metric after them."""
    last_clear: dict[tuple[int | None, str | None], tuple[datetime, int]] = {}
    for e in ends:
        if e.kind == ALERT_CLEARED:
            key = (e.device_id, e.metric)
            last_clear[key] = max(last_clear.get(key, (e.at, e.id)), (e.at, e.id))
    return [e for e in ends if e.kind == ALERT_RAISED
            and last_clear.get((e.device_id, e.metric), (e.at, -1)) < (e.at, e.id)]


def status_of(device: Device, trusted: bool) -> str:
    if not device.online:
        return "offline"
    return "online" if trusted else "untrusted"


def fleet_report(inventory: Inventory, artifacts: Sequence[Artifact], filters: Filters) -> Report:
    devices = chosen_devices(inventory, filters)
    rollouts = RolloutRepo(inventory)
    all_rollouts = rollouts.list()
    telemetry = TelemetryRepo.of(inventory)
    newest_event = telemetry.events(limit=1)
    since, until = period(filters, [d.last_seen for d in devices] + [r.updated_at for r in all_rollouts]
                          + [e.at for e in newest_event])
    chosen = {d.id for d in devices}
    trusted = inventory.trusted_device_ids()
    runtimes = {r.device_id: r for r in DeviceRuntimes(inventory).all()}
    running = find_active_models(rollouts, artifacts, all_rollouts)

    lines = []
    for d in devices:
        runtime, active = runtimes.get(d.id), running.get(d.id)
        keys = inventory.host_keys(d.id)
        lines.append(DeviceLine(
            d.name, status_of(d, d.id in trusted), d.address, d.profile or "", d.facts.arch, d.facts.os_name,
            f"onnxruntime {runtime.onnxruntime}" if runtime and runtime.onnxruntime else "",
            runtime.agent_version if runtime else "", active.name if active else "",
            active.version if active else "", active.artifact[:12] if active else "",
            stamp(d.last_seen), " ".join(k.fingerprint for k in keys), ", ".join(d.groups)))

    in_period = [r for r in all_rollouts if r.created_at < until and r.updated_at >= since
                 and ((not filters.group and not filters.device) or _touches(rollouts, r.id, chosen))]
    ends = [e for e in telemetry.events(since=since, limit=EVENT_LIMIT)
            if e.kind in (ALERT_RAISED, ALERT_CLEARED) and e.at < until and e.device_id in chosen]
    alerts = [e for e in ends if e.kind == ALERT_RAISED]
    still_open = open_alerts(ends)
    names = {d.id: d.name for d in devices}

    def counted(title: str, name: str, values: Sequence[str]) -> Chart:
        counts = sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))
        return Chart(name, title, "bar", tuple(k for k, _ in counts), (Series("devices", tuple(
            float(v) for _, v in counts)),), unit="devices")

    statuses = Counter(line.status for line in lines)
    charts = (
        counted("Devices by status", "by_status", [line.status for line in lines]),
        counted("Devices by profile", "by_profile", [line.profile or "not probed" for line in lines]),
        counted("Devices by architecture", "by_arch", [line.arch or "unknown" for line in lines]),
        counted("Devices by runtime", "by_runtime", [line.runtime or "none" for line in lines]),
        counted("Devices by active model", "by_model", [
            f"{line.model}@{line.model_version}" if line.model else (f"artifact {line.artifact}" if line.artifact
                                                                     else "none") for line in lines]),
    )
    facts = (Fact("Devices", len(lines)), Fact("Online", statuses["online"]), Fact("Offline", statuses["offline"]),
             Fact("Online, host key not trusted", statuses["untrusted"]),
             Fact("Alerts raised in the period", len(alerts)),
             Fact("Devices with alerts in the period", len({e.device_id for e in alerts})),
             Fact("Alerts open at the end of the period", len(still_open)),
             Fact("Rollouts in the period", len(in_period)))
    tables = (
        Table("devices", "Inventory", DEVICE_COLUMNS, tuple(line.cells() for line in lines),
              empty="the inventory holds no device" + ("" if not (filters.group or filters.device)
                                                       else " matching the filters")),
        Table("rollouts", "Rollouts in the period", ROLLOUT_COLUMNS, tuple(
            (r.id, r.model_ref, r.status, len(r.resolved.get("devices", ())), stamp(r.created_at),
             stamp(r.updated_at), r.actor) for r in in_period), empty="no rollout ran in this period"),
        Table("alerts", "Alerts raised in the period", ALERT_COLUMNS, tuple(
            (stamp(e.at), names.get(e.device_id or -1, ""), e.metric, e.value, e.bound, e.message)
            for e in sorted(alerts, key=lambda e: (e.at, e.id))), empty="no alert in this period"),
    )
    notes = (OPEN_NOTE,) if lines else ("There is nothing to report: no device is in the inventory"
                                        + (" for these filters." if filters.group or filters.device else "."),)
    return Report("fleet", "Fleet status", scope_text(filters), since, until, facts, charts, tables, notes,
                  filters.to_dict())


def _touches(rollouts: RolloutRepo, rollout_id: int, chosen: set[int]) -> bool:
    return any(row.device_id in chosen for row in rollouts.devices(rollout_id))
