"""Figures for issue 21 "Offline fleet reports": the fleet and health reports as PDF for a fleet of 500 devices
with 7 days of per-minute history and 20 rollouts (targets: each ≤ 10 s, peak memory ≤ 500 MB), and the event
loop's stall while a report renders in a worker thread, as the window renders it (target: p99 ≤ 50 ms).

Reference, measured in the same run: writing the same rows (the report's tables, already gathered) to CSV with
the standard library's csv module, the floor any report format has to pay.

Each figure is taken in a fresh child process (fork), so its peak RSS (resource.getrusage) is that report's own;
several rounds, median. The inventory is SQLite in a temp folder, the fleet key's passphrase in a real private
gnome-keyring (tests/keyring_daemon.py).

Run: .venv/bin/python benchmarks/reports.py [--devices 500] [--days 7] [--rollouts 20] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from fleetdesk.inventory import ProbeFacts, Sighting, open_inventory
from fleetdesk.inventory import models as orm
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.database import for_writing
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.inventory.telemetry_hours import hour_of, repack
from fleetdesk.inventory.telemetry_repo import TelemetryRepo
from fleetdesk.rollout.plan import PlannedDevice, ResolvedPlan, RolloutPlan
from tests.keyring_daemon import private_keyring, use_keyring_daemon

END = datetime(2026, 12, 1, tzinfo=UTC)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43
CHUNK = 20_000


def build(url: str, devices: int, days: int, rollouts: int) -> float:
    began = time.perf_counter()
    start = END - timedelta(days=days)
    with open_inventory(url) as inventory:
        found = inventory.record_sightings([Sighting("mdns", (f"198.18.{n // 250 + 1}.{n % 250 + 1}",),
                                                     instance_name=f"line-{n % 5}-cam-{n:03d}", seen_at=start)
                                            for n in range(devices)])
        runtimes = DeviceRuntimes(inventory)
        for n, device in enumerate(found):
            inventory.save_probe(device.id, ProbeFacts(arch="aarch64" if n % 3 else "x86_64",
                                                       os_name="Debian GNU/Linux 12 (bookworm)"),
                                 profile="rpi4" if n % 3 else "ipc-x86")
            inventory.pin_host_key(device.id, HOST_KEY[:-6] + f"{n:06d}")
            runtimes.record(device.id, runtime_id="c" * 64, agent_version="0.1.0", device_root="/opt/fleetdesk",
                            onnxruntime="1.20.1", providers=["CPUExecutionProvider"], python="3.11.2", at=start)
        for g in range(5):
            inventory.add_to_group(f"line {g}", [d.id for n, d in enumerate(found) if n % 5 == g])
        table = orm.TelemetryMinuteRow.__table__
        minutes = days * 24 * 60
        with for_writing(inventory.engine).begin() as conn:
            rows: list[dict[str, Any]] = []
            for i in range(minutes):  # as the live writer adds them: every device's minute together
                for device in found:
                    if device.id % 17 == 0 and 600 <= i < 720:
                        continue  # an outage of two hours on some devices
                    load = 20.0 + (i % 120) / 4 + device.id % 10
                    rows.append({"device_id": device.id, "minute": start + timedelta(minutes=i), "samples": 60,
                                 "cpu_pct_avg": load, "cpu_pct_max": load + 5, "mem_pct_avg": 45.0,
                                 "mem_pct_max": 47.0, "temp_c_avg": 55.0 + load / 10, "temp_c_max": 60.0 + load / 10,
                                 "latency_p95_ms_avg": 8.0 + (i % 30) / 10, "latency_p95_ms_max": 12.0})
                    if len(rows) >= CHUNK:
                        conn.execute(insert(table), rows)
                        rows = []
            if rows:
                conn.execute(insert(table), rows)
            # The packed hours, which the live writer builds with each batch of minutes (TelemetryRepo)
            repack(conn, [d.id for d in found], hour_of(start.timestamp()), hour_of(END.timestamp() - 60))
        TelemetryRepo.of(inventory).log_events([(d.id, "alert", "temperature over 85 °C", "temp_c", 86.0, 85.0,
                                                 start + timedelta(minutes=n * 7)) for n, d in enumerate(found)])
        repo = RolloutRepo(inventory)
        per = max(1, devices // rollouts)
        for r in range(rollouts):
            chosen = found[r * per:(r + 1) * per]
            planned = tuple(PlannedDevice(d.id, d.name, d.profile or "", f"{r:02d}" * 32, "graph",
                                          0 if i == 0 else 1, 1000) for i, d in enumerate(chosen))
            plan = RolloutPlan(f"cnn@{r + 1}", devices=tuple(d.id for d in chosen))
            rollout = repo.create(ResolvedPlan(plan, f"cnn@{r + 1}", planned, (
                (chosen[0].id,), tuple(d.id for d in chosen[1:]))), "bench")
            for d in chosen:
                for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED, st.CONFIRMED):
                    repo.record(rollout.id, d.id, event, bytes_sent=1000)
            repo.set_status(rollout.id, "done")
    return time.perf_counter() - began


def _child(kind: str, what: str, url: str, out: Path, since: datetime, until: datetime, queue: Any) -> None:
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.reports.gather import make_report
    from fleetdesk.reports.output import write_report
    from fleetdesk.reports.selection import Filters

    with open_inventory(url) as inventory:
        filters = Filters(since=since, until=until)
        began = time.perf_counter()
        if what == "csv-floor":
            report = make_report(kind, inventory, filters)
            began = time.perf_counter()
            for table in report.tables:
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerow([c.key for c in table.columns])
                writer.writerows(table.rows)
                (out / f"floor-{table.name}.csv").write_text(buffer.getvalue(), encoding="utf-8")
            result = {"seconds": time.perf_counter() - began}
        elif what == "stall":
            result = asyncio.run(_stall(kind, inventory, filters, out))
        else:
            report = make_report(kind, inventory, filters)
            gathered = time.perf_counter() - began
            written = write_report(report, "pdf", out / f"{kind}.pdf", FleetSigningKey.default())
            result = {"seconds": time.perf_counter() - began, "gather_s": gathered, "bytes": written.bytes}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


async def _stall(kind: str, inventory: Any, filters: Any, out: Path) -> dict[str, Any]:
    """The loop's lateness (a 10 ms ticker) while the report is gathered and rendered in a worker thread, in a
    process set up as the window's is: its interpreter-lock switch interval, and the heap alive at start frozen out
    of the cyclic collector (without the freeze, each full collection the report's objects trigger walks the whole
    heap built before it, 40-90 ms here, with the lock held)."""
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.gui.app import SWITCH_INTERVAL, freeze_startup_heap
    from fleetdesk.reports.gather import make_report
    from fleetdesk.reports.output import write_report

    sys.setswitchinterval(SWITCH_INTERVAL)
    freeze_startup_heap()

    lateness: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.010)
            lateness.append(time.perf_counter() - before - 0.010)

    task = asyncio.create_task(ticker())
    await asyncio.to_thread(lambda: write_report(make_report(kind, inventory, filters), "pdf",
                                                 out / f"stall-{kind}.pdf", FleetSigningKey.default()))
    done = True
    await task
    lateness.sort()
    return {"stall_p99_ms": lateness[int(0.99 * (len(lateness) - 1))] * 1e3, "stall_max_ms": lateness[-1] * 1e3,
            "ticks": len(lateness)}


def measure(kind: str, what: str, url: str, out: Path, since: datetime, until: datetime) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(kind, what, url, out, since, until, queue))
    child.start()
    result: dict[str, Any] = queue.get(timeout=1800)
    child.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {"devices": args.devices, "days": args.days, "rollouts": args.rollouts,
                               "rounds": args.rounds, "target_s": 10.0, "target_peak_mb": 500.0,
                               "target_stall_p99_ms": 50.0}
    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-reports-") as tmp:
        work = Path(tmp)
        os.environ["FLEETDESK_DATA_DIR"] = str(work / "data")
        url = f"sqlite:///{work / 'fleet.db'}"
        since, until = END - timedelta(days=args.days), END
        with private_keyring(work / "keyring") as daemon, use_keyring_daemon(daemon):
            figures["build_s"] = build(url, args.devices, args.days, args.rollouts)
            for kind in ("fleet", "health"):
                runs = [measure(kind, "pdf", url, work, since, until) for _ in range(args.rounds)]
                floors = [measure(kind, "csv-floor", url, work, since, until) for _ in range(args.rounds)]
                stall = measure(kind, "stall", url, work, since, until)
                pdf_s = statistics.median(r["seconds"] for r in runs)
                floor_s = statistics.median(r["seconds"] for r in floors)
                figures[kind] = {"pdf_median_s": pdf_s,
                                 "gather_median_s": statistics.median(r["gather_s"] for r in runs),
                                 "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "pdf_bytes": runs[0]["bytes"],
                                 "csv_floor_median_s": floor_s, "ratio": pdf_s / floor_s if floor_s else None,
                                 **{k: v for k, v in stall.items() if k != "peak_rss_mb"}}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"reports: {args.devices} devices, {args.days} days of per-minute history, {args.rollouts} rollouts "
          f"(built in {figures['build_s']:.0f} s); median of {args.rounds} rounds, each in a fresh process")
    for kind in ("fleet", "health"):
        f = figures[kind]
        print(f"{kind} PDF: {f['pdf_median_s']:.2f} s (gathering {f['gather_median_s']:.2f} s; target ≤ 10 s), "
              f"peak RSS {f['peak_rss_mb']:.0f} MB (target ≤ 500 MB), {f['pdf_bytes'] / 1e6:.1f} MB; the same rows "
              f"written as CSV {f['csv_floor_median_s'] * 1e3:.0f} ms; ratio {f['ratio']:.0f}; loop stall while it "
              f"renders in a thread p99 {f['stall_p99_ms']:.1f} ms, max {f['stall_max_ms']:.1f} ms (target p99 ≤ "
              f"50 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
