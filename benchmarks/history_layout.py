"""Why the SQLite telemetry history is kept in (device, minute) order (migration 0015): reading each device's week
of minutes, as the health report does (TelemetryRepo.histories), from the table as releases before 0015 kept it
(ordered by rowid) and as 0015 keeps it (WITHOUT ROWID).

The minutes are written as the live writer writes them: every device's minute together, minute after minute. The
rowid table is read as it was written; the clustered one is what migration 0015 makes of that same file. Same
rows, same code, each read in a fresh connection; several rounds in alternating order, median. The reference is
the rowid table.

Run: .venv/bin/python benchmarks/history_layout.py [--devices 200] [--days 7] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alembic import command

from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.database import for_writing, open_database
from fleetdesk.inventory.migrate import alembic_config, upgrade
from fleetdesk.inventory.telemetry_repo import TelemetryRepo

END = datetime(2026, 12, 1, tzinfo=UTC)
METRICS = ["cpu_pct", "mem_pct", "temp_c", "latency_p95_ms"]
BEFORE = "0014"  # the last revision that kept the history in a rowid table


def build_rowid(path: Path, devices: int, days: int) -> None:
    """An inventory at BEFORE whose history the live writer's way wrote."""
    url = f"sqlite:///{path}"
    with open_inventory(url) as inventory:
        ids = [inventory.add_device(f"198.18.{n // 250 + 1}.{n % 250 + 1}", name=f"cam-{n:03d}").id
               for n in range(devices)]
    engine = open_database(url)
    try:
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), BEFORE)
    finally:
        engine.dispose()
    start = END - timedelta(days=days)

    def rows() -> Iterator[tuple[object, ...]]:
        for i in range(days * 24 * 60):  # every device's minute together, minute after minute
            minute = (start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S.000000")
            for device in ids:
                load = 20.0 + (i % 120) / 4 + device % 10
                yield (device, minute, load, load + 5, 45.0, 47.0, 55.0 + load / 10, 60.0 + load / 10,
                       8.0 + (i % 30) / 10, 12.0)

    db = sqlite3.connect(path)
    try:
        db.executemany("INSERT INTO telemetry_minutes (device_id, minute, samples, cpu_pct_avg, cpu_pct_max, "
                       "mem_pct_avg, mem_pct_max, temp_c_avg, temp_c_max, latency_p95_ms_avg, latency_p95_ms_max) "
                       "VALUES (?, ?, 60, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the whole history in the file, whose size is printed
    finally:
        db.close()


def read_all(path: Path, days: int) -> tuple[float, float, int]:
    """(wall s, CPU s, minutes) of reading every device's history over the period, with the table as it is (the
    engine alone: opening an inventory would migrate it)."""
    engine = open_database(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            ids = [int(i) for i in conn.exec_driver_sql("SELECT id FROM devices ORDER BY id").scalars()]
        repo = TelemetryRepo(engine)
        wall, cpu = time.perf_counter(), time.process_time()
        minutes = sum(len(h.minutes) for h in repo.histories(ids, METRICS, END - timedelta(days=days), END))
        return time.perf_counter() - wall, time.process_time() - cpu, minutes
    finally:
        engine.dispose()


def _used_bytes(path: Path) -> int:
    """The pages in use (the file keeps the old table's pages as free ones until a VACUUM)."""
    with sqlite3.connect(path) as db:
        pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    return int((pages - free) * size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rowid_name, clustered_name = f"rowid (up to {BEFORE})", "clustered (0015)"
    with tempfile.TemporaryDirectory(prefix="fleetdesk-layout-") as tmp:
        paths = {rowid_name: Path(tmp) / "rowid.db", clustered_name: Path(tmp) / "clustered.db"}
        build_rowid(paths[rowid_name], args.devices, args.days)
        shutil.copyfile(paths[rowid_name], paths[clustered_name])
        engine = open_database(f"sqlite:///{paths[clustered_name]}")
        try:
            began = time.perf_counter()
            upgrade(engine)
            migrated_s = time.perf_counter() - began
        finally:
            engine.dispose()
        for path in paths.values():
            with sqlite3.connect(path) as db:
                layout = db.execute("SELECT sql FROM sqlite_master WHERE name = 'telemetry_minutes'").fetchone()[0]
                assert ("WITHOUT ROWID" in layout) == (path == paths[clustered_name]), layout
        sizes = {name: _used_bytes(path) for name, path in paths.items()}
        runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
        order = list(paths)
        for r in range(args.rounds):
            for name in order[r % 2:] + order[:r % 2]:
                runs[name].append(read_all(paths[name], args.days))
    figures = {name: {"wall_s": statistics.median(w for w, _, _ in found),
                      "cpu_s": statistics.median(c for _, c, _ in found),
                      "minutes": found[0][2], "used_mb": sizes[name] / 1e6} for name, found in runs.items()}
    rowid, clustered = figures[rowid_name], figures[clustered_name]
    result = {"devices": args.devices, "days": args.days, "rounds": args.rounds, "layouts": figures,
              "migration_s": migrated_s, "ratio_wall": clustered["wall_s"] / rowid["wall_s"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"telemetry history read, {args.devices} devices x {args.days} days written minute by minute; "
              f"median of {args.rounds} rounds")
        for name, f in figures.items():
            print(f"  {name:18} {f['wall_s']:6.2f} s wall  {f['cpu_s']:6.2f} s CPU  {f['minutes']} minutes  "
                  f"{f['used_mb']:.0f} MB of pages in use")
        print(f"  migration 0015 of that file: {migrated_s:.1f} s")
        print(f"  clustered / rowid (reference): {result['ratio_wall']:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
