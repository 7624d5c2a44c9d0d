"""Figures for issue 23 "Several laptops, one fleet": 500 devices in one PostgreSQL inventory and two laptops. One
laptop changes every device once a second (in transactions of 50 devices every 100 ms, each change carrying the
time it was written); the other hears each change through its ChangeFeed (LISTEN/NOTIFY, migration 0010) and reads
the changed device again, as its window does. Printed: p50/p99 of the delay from the write to the other side
having read the device, the changes heard against those written, and PostgreSQL's CPU share (its processes' CPU
time over the run, from /proc, against one core).

Reference, measured in the same run: reading the whole inventory (`Inventory.devices()`), what a window without
notifications would have to do on each poll. A poll every second delays a change by half a second on average
(up to a whole one) plus that read; the ratio printed is the feed's p50 delay against that poll's p50
(0.5 s + one read).

Several rounds, the order of feed and reference rotating, median. The PostgreSQL cluster is the tests' own
(tests/postgres.py): loopback, no fsync.

Run: .venv/bin/python benchmarks/shared_inventory.py [--devices 500] [--seconds 10] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from fleetdesk.inventory import Inventory, open_inventory
from fleetdesk.inventory.changes import Change, ChangeFeed
from tests.postgres import PostgresCluster, running_cluster

BATCH_EVERY_S = 0.1
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5))
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def feed_round(cluster: PostgresCluster, url: str, ids: list[int], seconds: float) -> dict[str, Any]:
    reader = open_inventory(url)
    delays: list[float] = []
    heard = threading.Event()
    lock = threading.Lock()

    def on_changes(burst: Sequence[Change]) -> None:
        # As the window does (DevicesPart.reload): read the changed devices again, in one go.
        for device in reader.devices(ids={c.device for c in burst if c.device is not None}):
            written = int(device.name.rsplit("-", 1)[1]) / 1e9
            with lock:
                delays.append(time.time() - written)
        heard.set()

    feed = ChangeFeed.for_url(url, on_changes)
    assert feed is not None
    feed.start()
    if not feed.connected.wait(10):
        raise SystemExit("the change feed did not connect")
    writer = open_inventory(url)
    batch = max(1, round(len(ids) * BATCH_EVERY_S))
    written = 0
    pids = cluster.server_pids()
    cpu_before, started = cpu_seconds(pids), time.monotonic()
    try:
        next_at = started
        while time.monotonic() - started < seconds:
            for first in range(0, len(ids), batch):
                with writer.engine.begin() as conn:
                    now = time.time_ns()
                    conn.execute(text("UPDATE devices SET name = :name WHERE id = :id"),
                                 [{"id": i, "name": f"dev-{i}-{now}"} for i in ids[first:first + batch]])
                written += len(ids[first:first + batch])
                next_at += BATCH_EVERY_S
                time.sleep(max(0.0, next_at - time.monotonic()))
        wall = time.monotonic() - started
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(delays) >= written:
                    break
            time.sleep(0.05)
        cpu = cpu_seconds(cluster.server_pids()) - cpu_before
    finally:
        feed.stop()
        writer.close()
        reader.close()
    ordered = sorted(delays)
    return {"written": written, "heard": len(ordered), "wall_s": wall,
            "p50_ms": 1000 * ordered[len(ordered) // 2] if ordered else None,
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None,
            "db_cpu_share_of_one_core": cpu / wall}


def full_read_ms(inventory: Inventory, reads: int = 5) -> float:
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        inventory.devices()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with running_cluster() as cluster:
        cluster.admin("CREATE DATABASE fleet")
        url = cluster.url("fleet")
        with open_inventory(url) as inventory:
            ids = [inventory.add_device(f"198.18.{8 + i // 250}.{1 + i % 250}", name=f"dev-{i}-0").id
                   for i in range(args.devices)]
            feeds, reads = [], []
            for r in range(args.rounds):
                steps = [lambda: feeds.append(feed_round(cluster, url, ids, args.seconds)),
                         lambda: reads.append(full_read_ms(inventory))]
                for step in steps[r % 2:] + steps[:r % 2]:
                    step()
    p50 = statistics.median(f["p50_ms"] for f in feeds)
    p99 = statistics.median(f["p99_ms"] for f in feeds)
    read_ms = statistics.median(reads)
    poll_p50 = 500 + read_ms
    result = {"devices": args.devices, "changes_per_s": args.devices, "rounds": args.rounds, "seconds": args.seconds,
              "feed_p50_ms": p50, "feed_p99_ms": p99, "target_ms": 1000,
              "heard_of_written": [f"{f['heard']}/{f['written']}" for f in feeds],
              "db_cpu_share_of_one_core": statistics.median(f["db_cpu_share_of_one_core"] for f in feeds),
              "reference_full_read_ms": read_ms, "reference_poll_1s_p50_ms": poll_p50, "ratio_p50": p50 / poll_p50}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"shared inventory, {args.devices} devices, each changed once a second on one laptop, "
              f"{args.rounds} rounds of {args.seconds:.0f} s (median):")
        print(f"  delay until the other laptop has read the change: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"(target: within 1000 ms); heard {', '.join(result['heard_of_written'])}")
        print(f"  PostgreSQL CPU: {100 * result['db_cpu_share_of_one_core']:.1f} % of one core")
        print(f"  reference: reading the whole inventory {read_ms:.1f} ms; a 1 s poll's p50 delay {poll_p50:.0f} ms; "
              f"ratio feed/poll p50 {result['ratio_p50']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
