"""The health report over a period (default: the 7 days up to the newest minute kept): per device and per group
CPU, GPU, memory, temperature and inference latency (p50 / p95 / max) from the per-minute history, availability
(the share of the period with telemetry) and the longest outage; the input drift of the devices that scored it;
hourly fleet charts; alerts and stream incidents.

Percentiles are over the minutes' averages (nearest rank); "max" is the highest value any sample of the period
reached. A device's period starts no earlier than the moment it entered the inventory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from fleetdesk.inventory import Device, Inventory
from fleetdesk.inventory.telemetry_repo import ALERT_CLEARED, ALERT_RAISED, DeviceHistory, TelemetryRepo
from fleetdesk.reports.document import Cell, Chart, Column, Fact, Report, Series, Table, stamp
from fleetdesk.reports.selection import Filters, chosen_devices, period, scope_text

MINUTE = timedelta(minutes=1)
# (history metric, the words a column uses): what the report summarises, in this order.
METRICS = (("cpu_pct", "CPU %"), ("gpu_pct", "GPU %"), ("mem_pct", "Memory %"), ("temp_c", "Temp °C"),
           ("latency_p95_ms", "Latency ms"))
# Input drift (the worst input's PSI and mean shift), in a table of its own: only devices whose model carries
# reference statistics and served requests have it.
DRIFT = (("drift_psi", "Drift PSI"), ("drift_shift_sd", "Mean shift (ref. std)"))
EVENT_LIMIT = 100_000


@dataclass(frozen=True)
class Figures:
    p50: float | None
    p95: float | None
    max: float | None


@dataclass(frozen=True)
class DeviceHealth:
    name: str
    groups: tuple[str, ...]
    minutes: int  # minutes with telemetry in the device's part of the period
    availability: float | None  # percent of that part with telemetry
    longest_outage_min: int
    figures: dict[str, Figures]
    alerts: int
    incidents: int


def device_health(device: Device, history: DeviceHistory, since: datetime, until: datetime,
                  hours: np.ndarray[Any, Any], hour_zero: datetime) -> DeviceHealth:
    """One device's figures from its history over the period; adds its minutes to the fleet's hourly sums and
    counts (`hours[metric index, 0 | 1, hour]`)."""
    start = max(since, device.first_seen.replace(second=0, microsecond=0))
    expected = max(0, math.ceil((until - start) / MINUTE))
    minutes = history.minutes
    longest = 0
    if expected:
        edges = np.concatenate(([start.timestamp() - 60], minutes, [until.timestamp()]))
        longest = int(np.diff(edges).max() // 60) - 1
    hour = ((minutes - hour_zero.timestamp()) // 3600).astype(int)
    figures = {}
    for n, (metric, _) in enumerate(METRICS):
        averages = history.averages.get(metric)
        p50 = p95 = None
        if averages is not None:  # measured at least once: weeks of minutes are summed and ranked in numpy
            measured = ~np.isnan(averages)
            hours[n, 0] += np.bincount(hour[measured], weights=averages[measured], minlength=hours.shape[2])
            hours[n, 1] += np.bincount(hour[measured], minlength=hours.shape[2])
            p50, p95 = percentiles(averages[measured], (0.5, 0.95))
        figures[metric] = Figures(p50, p95, history.maxima.get(metric))
    for metric, _ in DRIFT:
        averages = history.averages.get(metric)
        p50, p95 = percentiles(averages[~np.isnan(averages)], (0.5, 0.95)) if averages is not None else (None, None)
        figures[metric] = Figures(p50, p95, history.maxima.get(metric))
    return DeviceHealth(device.name, device.groups, len(minutes),
                        round(100.0 * len(minutes) / expected, 2) if expected else None, max(0, longest), figures,
                        0, 0)


def percentiles(values: np.ndarray[Any, Any], shares: Sequence[float]) -> list[float | None]:
    """Nearest-rank percentiles of unsorted values (None for none)."""
    if not values.size:
        return [None] * len(shares)
    ranks = [max(0, math.ceil(share * values.size) - 1) for share in shares]
    ordered = np.partition(values, ranks)
    return [float(ordered[rank]) for rank in ranks]


def health_report(inventory: Inventory, filters: Filters) -> Report:
    devices = chosen_devices(inventory, filters)
    repo = TelemetryRepo.of(inventory)
    since, until = period(filters, [d.last_seen for d in devices])
    hour_zero = since.replace(minute=0, second=0, microsecond=0)
    hour_count = max(1, math.ceil((until - hour_zero) / timedelta(hours=1)))
    hours = np.zeros((len(METRICS), 2, hour_count))
    metrics = [m for m, _ in METRICS]
    events = [e for e in repo.events(since=since, limit=EVENT_LIMIT) if e.at < until]
    per_device_events: dict[int, list[str]] = defaultdict(list)
    for e in events:
        if e.device_id is not None:
            per_device_events[e.device_id].append(e.kind)
    found: list[DeviceHealth] = []
    read = [*metrics, *(m for m, _ in DRIFT)]  # a metric a device never measured costs one MAX in its aggregate
    for device, history in zip(devices, repo.histories([d.id for d in devices], read, since, until), strict=True):
        health = device_health(device, history, since, until, hours, hour_zero)
        kinds = per_device_events.get(device.id, [])
        found.append(DeviceHealth(**{**health.__dict__, "alerts": kinds.count(ALERT_RAISED),
                                     "incidents": sum(1 for k in kinds if k not in (ALERT_RAISED, ALERT_CLEARED))}))

    columns = [Column("device", "Device", 1.8), Column("groups", "Groups", 1.0), Column("minutes", "Minutes", 0.6),
               Column("availability_pct", "Avail. %", 0.6), Column("longest_outage_min", "Longest outage min", 0.8)]
    for metric, words in METRICS:
        columns += [Column(f"{metric}_p50", f"{words} p50", 0.6), Column(f"{metric}_p95", f"{words} p95", 0.6),
                    Column(f"{metric}_max", f"{words} max", 0.6)]
    columns += [Column("alerts", "Alerts", 0.5), Column("incidents", "Stream incidents", 0.6)]
    rows: list[tuple[Cell, ...]] = []
    for h in found:
        cells: list[Cell] = [h.name, ", ".join(h.groups), h.minutes, h.availability, h.longest_outage_min]
        for metric, _ in METRICS:
            f = h.figures[metric]
            cells += [_round(f.p50), _round(f.p95), _round(f.max)]
        rows.append((*cells, h.alerts, h.incidents))

    group_rows = _groups(found)
    names = {d.id: d.name for d in devices}
    chosen = set(names)
    shown_events = [e for e in sorted(events, key=lambda e: (e.at, e.id)) if e.device_id in chosen]
    labels = tuple((hour_zero + timedelta(hours=i)).strftime("%m-%d %H:00") for i in range(hour_count))

    def hourly(metric: str) -> tuple[float | None, ...]:
        sums, counts = hours[metrics.index(metric)]
        return tuple(round(float(total / count), 2) if count else None
                     for total, count in zip(sums, counts, strict=True))

    charts = (
        Chart("load", "Fleet average per hour", "line", labels, (
            Series("CPU %", hourly("cpu_pct")), Series("GPU %", hourly("gpu_pct")),
            Series("Memory %", hourly("mem_pct"))), unit="%"),
        Chart("temperature", "Fleet temperature per hour", "line", labels, (Series("°C", hourly("temp_c")),),
              unit="°C"),
        Chart("latency", "Fleet inference latency p95 per hour", "line", labels,
              (Series("ms", hourly("latency_p95_ms")),), unit="ms"),
        Chart("outage", "Time without telemetry, by device", "bar", tuple(h.name for h in found),
              (Series("availability %", tuple(100.0 - (h.availability or 0.0) for h in found)),),
              unit="% of the period without telemetry"),
    )
    measured = [h for h in found if h.minutes]
    facts = (Fact("Devices", len(found)), Fact("Devices with telemetry in the period", len(measured)),
             Fact("Minutes of telemetry", sum(h.minutes for h in found)),
             Fact("Average availability %", _round(sum(h.availability or 0.0 for h in found) / len(found))
                  if found else None),
             Fact("Alerts raised", sum(h.alerts for h in found)),
             Fact("Stream incidents", sum(h.incidents for h in found)))
    notes = []
    if not found:
        notes.append("There is nothing to report: no device is in the inventory"
                     + (" for these filters." if filters.group or filters.device else "."))
    elif not measured:
        notes.append("No telemetry was kept for these devices in this period.")
    tables = (
        Table("devices", "Health by device", tuple(columns), tuple(rows), empty="no device"),
        Table("groups", "Health by group", GROUP_COLUMNS, tuple(group_rows), empty="no device is in a group"),
        Table("drift", "Input drift by device", DRIFT_COLUMNS, tuple(
            (h.name, *(_round(getattr(h.figures[m], part), 3) for m, _ in DRIFT for part in ("p50", "p95", "max")))
            for h in found if any(h.figures[m].max is not None for m, _ in DRIFT)),
            empty="no device scored input drift in this period (its model carries no reference statistics from "
                  "sample inputs, or it served no requests)"),
        Table("events", "Alerts and stream incidents", EVENT_COLUMNS, tuple(
            (stamp(e.at), names.get(e.device_id or -1, ""), e.kind, e.metric, _round(e.value), _round(e.bound),
             e.message) for e in shown_events), empty="no alert or stream incident in this period"),
    )
    return Report("health", "Fleet health", scope_text(filters), since, until, facts, charts, tables, tuple(notes),
                  filters.to_dict())


GROUP_COLUMNS = (Column("group", "Group", 1.5), Column("devices", "Devices", 0.5),
                 Column("availability_pct", "Avail. % (mean)", 0.7), Column("worst_availability_pct",
                                                                            "Avail. % (worst device)", 0.8),
                 Column("cpu_pct_p95", "CPU % p95 (worst device)", 0.8), Column("temp_c_max", "Temp °C max", 0.7),
                 Column("latency_p95_ms_p95", "Latency ms p95 (worst device)", 0.9),
                 Column("latency_p95_ms_max", "Latency ms max", 0.7), Column("alerts", "Alerts", 0.5))
DRIFT_COLUMNS = (Column("device", "Device", 1.8), *(Column(f"{metric}_{part}", f"{words} {part}", 0.8)
                                                     for metric, words in DRIFT for part in ("p50", "p95", "max")))
EVENT_COLUMNS = (Column("at", "At", 1.2), Column("device", "Device", 1.5), Column("kind", "Kind", 0.5),
                 Column("metric", "Metric", 0.8), Column("value", "Value", 0.5), Column("bound", "Bound", 0.5),
                 Column("message", "Message", 3.5))


def _groups(found: Sequence[DeviceHealth]) -> list[tuple[Cell, ...]]:
    members: dict[str, list[DeviceHealth]] = defaultdict(list)
    for h in found:
        for g in h.groups:
            members[g].append(h)
    rows: list[tuple[Cell, ...]] = []
    for group in sorted(members, key=lambda g: (g.casefold(), g)):
        hs = members[group]
        avail = [h.availability for h in hs if h.availability is not None]

        rows.append((group, len(hs), _round(sum(avail) / len(avail)) if avail else None,
                     _round(min(avail)) if avail else None, _worst(hs, "cpu_pct", "p95"), _worst(hs, "temp_c", "max"),
                     _worst(hs, "latency_p95_ms", "p95"), _worst(hs, "latency_p95_ms", "max"),
                     sum(h.alerts for h in hs)))
    return rows


def _worst(found: Sequence[DeviceHealth], metric: str, part: str) -> float | None:
    values = [getattr(h.figures[metric], part) for h in found if getattr(h.figures[metric], part) is not None]
    return _round(max(values)) if values else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
