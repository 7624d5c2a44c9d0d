"""`fleetdesk telemetry`, `fleetdesk history` and `fleetdesk events`: live samples of devices, the stored
per-minute history of one, and the event log (alerts, stream incidents)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetdesk.cli.options import choose_devices, with_json
from fleetdesk.cli.output import emit, safe, table
from fleetdesk.cli.session import open_fleet, with_fleet
from fleetdesk.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """"90s", "30m", "2h", "7d", "1w" (a bare number is seconds) as a timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a duration", fix="write e.g. 90s, 30m, 2h or 7d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _sample_line(name: str, sample: Any, mode: str) -> str:
    when = datetime.fromtimestamp(sample.t).strftime("%H:%M:%S")
    parts = [when, safe(name).ljust(16), f"cpu {_fmt(sample.cpu_pct, '%'):>5}", f"mem {_fmt(sample.mem_pct, '%'):>5}",
             f"temp {_fmt(sample.temp_c, '°C', 1):>7}", f"gpu {_fmt(sample.gpu_pct, '%'):>5}",
             f"p95 {_fmt(sample.latency_p95_ms, 'ms', 1):>8}", mode]
    if sample.throttled:
        parts.append("throttled: " + ",".join(safe(f) for f in sample.throttled))
    if sample.refused:
        parts.append("PROBLEM: " + safe(sample.refused))
    return "  ".join(parts)


def _sample_json(device: Any, sample: Any, mode: str) -> dict[str, Any]:
    data = dataclasses.asdict(sample)
    data["temps"], data["sources"] = dict(sample.temps), dict(sample.sources)
    return {"device": device.name, "device_id": device.id, "mode": mode, "sample": data}


def cmd_telemetry(args: argparse.Namespace) -> int:
    from fleetdesk.telemetry.buffers import TelemetryStore
    from fleetdesk.telemetry.hub import TelemetryHub

    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError(f"--seconds {args.seconds:g} is not positive", fix="give a number of seconds, e.g. 30")
    if not 0.05 <= args.interval <= 3600:
        raise ConfigError(f"--interval {args.interval:g} is out of range", fix="give 0.05 to 3600 seconds")

    async def work(fleet: Any) -> int:
        devices = fleet.select(args.devices, group=args.group, all_devices=args.all)
        by_id = {d.id: d for d in devices}
        store = TelemetryStore(capacity=16)
        hub = TelemetryHub(fleet, store, interval=args.interval)

        def shown(arrival: Any) -> None:
            device = by_id[arrival.device_id]
            mode = hub.state(device.id).mode
            if args.json:
                print(json.dumps(_sample_json(device, arrival.sample, mode), default=str), flush=True)
            else:
                print(_sample_line(device.name, arrival.sample, mode), flush=True)

        def state_changed(state: Any) -> None:
            # Stream states go to stderr, so stdout stays one line (or one JSON object) per sample.
            if state.mode == "reconnecting" and state.last_error is not None:
                print(f"{safe(by_id[state.device_id].name)}: {state.mode} in {state.retry_in:.1f} s: "
                      f"{safe(state.last_error)}", file=sys.stderr, flush=True)
            elif state.mode in ("agent", "agentless"):
                print(f"{safe(by_id[state.device_id].name)}: streaming ({state.mode})", file=sys.stderr, flush=True)

        store.subscribe(shown)
        hub.on_state = state_changed
        hub.start(devices)
        try:
            if args.seconds is None:
                await asyncio.Event().wait()  # until Ctrl-C
            else:
                await asyncio.sleep(args.seconds)
        finally:
            await hub.close()
        silent = [d.name for d in devices if hub.state(d.id).samples == 0]
        for name in silent:
            print(f"{safe(name)}: no samples", file=sys.stderr)
        return 1 if silent else 0

    return with_fleet(args, work)


def _open_history(args: argparse.Namespace) -> tuple[Any, Any]:
    from fleetdesk.telemetry.history import TelemetryHistory

    fleet = open_fleet(args)
    return fleet, TelemetryHistory.open(fleet.inventory)


def _close(fleet: Any) -> None:
    asyncio.run(fleet.close())


def cmd_history(args: argparse.Namespace) -> int:
    from fleetdesk.inventory.telemetry_repo import HISTORY_METRICS

    since = datetime.now(UTC) - parse_duration(args.since)
    fleet, history = _open_history(args)
    try:
        device = fleet.inventory.device(args.device)
        minutes = history.history(device.id, since=since)
    finally:
        _close(fleet)
    data = {"device": device.name, "device_id": device.id, "since": since.isoformat(),
            "minutes": [{"minute": m.minute.isoformat(), "samples": m.samples,
                         **{f"{k}_avg": m.avg.get(k) for k in HISTORY_METRICS},
                         **{f"{k}_max": m.max.get(k) for k in HISTORY_METRICS}} for m in minutes]}
    rows = [("MINUTE", "SAMPLES", "CPU% AVG/MAX", "MEM% AVG/MAX", "TEMP°C AVG/MAX", "GPU% AVG/MAX",
             "P95 MS AVG/MAX", "INFER/S", "ERRORS")]
    for m in minutes:
        def pair(metric: str, digits: int = 0, m: Any = m) -> str:
            return f"{_fmt(m.avg.get(metric), digits=digits)}/{_fmt(m.max.get(metric), digits=digits)}"
        rows.append((m.minute.astimezone().strftime("%Y-%m-%d %H:%M"), str(m.samples), pair("cpu_pct"),
                     pair("mem_pct"), pair("temp_c", 1), pair("gpu_pct"), pair("latency_p95_ms", 1),
                     _fmt(m.avg.get("infer_rate"), digits=1), _fmt(m.max.get("infer_errors"))))
    text = table(rows) if minutes else f"{safe(device.name)}: no history since {since.astimezone():%Y-%m-%d %H:%M}"
    emit(args, data, text)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    since = datetime.now(UTC) - parse_duration(args.since) if args.since else None
    fleet, history = _open_history(args)
    try:
        device = fleet.inventory.device(args.device) if args.device else None
        events = history.events(device.id if device else None, since=since, limit=args.limit)
        names = {d.id: d.name for d in fleet.inventory.devices()}
    finally:
        _close(fleet)
    data = [{**dataclasses.asdict(e), "at": e.at.isoformat(), "device": names.get(e.device_id)} for e in events]
    rows = [("WHEN", "DEVICE", "KIND", "MESSAGE")]
    for e in events:
        detail = e.message
        if e.metric is not None:
            detail += f" ({e.metric} {_fmt(e.value, digits=1)}, bound {_fmt(e.bound, digits=1)})"
        rows.append((e.at.astimezone().strftime("%Y-%m-%d %H:%M:%S"), names.get(e.device_id, "-") if e.device_id
                     else "(fleet)", e.kind, detail))
    emit(args, data, table(rows) if events else "no events" + (f" for {safe(device.name)}" if device else ""))
    return 0


def add_telemetry(sub: Any) -> None:
    p = with_json(sub.add_parser("telemetry", help="watch live telemetry: fleetdesk telemetry DEVICE...|--group G"))
    choose_devices(p)
    p.add_argument("--seconds", type=float, metavar="N", help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between samples (default 1)")
    p.set_defaults(func=cmd_telemetry)


def add_history(sub: Any) -> None:
    p = with_json(sub.add_parser("history", help="a device's stored telemetry, one line per minute"))
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--since", default="2h", metavar="AGE", help="how far back, e.g. 30m, 2h, 7d (default 2h)")
    p.set_defaults(func=cmd_history)


def add_events(sub: Any) -> None:
    p = with_json(sub.add_parser("events", help="the event log: alerts and telemetry stream incidents"))
    p.add_argument("device", nargs="?", metavar="DEVICE", help="only this device's events")
    p.add_argument("--since", metavar="AGE", help="only events of the last AGE, e.g. 1h, 7d")
    p.add_argument("--limit", type=int, default=200, metavar="N", help="at most N events, newest first (default 200)")
    p.set_defaults(func=cmd_events)
