"""The agent's own footprint on a device: CPU % and RSS while it streams telemetry at 1 Hz, against a
reference doing the same sampling in the same window on the same device: `vmstat 1` (procps, C, reads
/proc/stat, /proc/meminfo and /proc/vmstat every second).

Both run over their own SSH channel for --seconds (after a warm-up); CPU time is the first field of the
device's /proc/PID/schedstat (ns on a CPU; utime+stime from /proc/PID/stat, in 10 ms ticks, is printed beside
it), RSS is VmRSS from /proc/PID/status, all read over SSH at the start and the end of the window. Needs a running lab:

    make bench    # or: FLEETDESK_LAB_DIR=/tmp/devlab .venv/bin/python benchmarks/agent_footprint.py [--device ipc-01]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fleetdesk.transport import SSHPool, SSHTarget, shell_join, shell_quote

ROOT = Path(__file__).resolve().parent.parent
AGENT_DIR = ROOT / "fleetdesk" / "agent"
DEVICE_TREE = "/opt/fleetdesk/agent/dev"
WARM_UP_S = 3.0


def lab_state() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "lab", "status", "--json"], capture_output=True,
                          text=True, check=True, timeout=120)
    return json.loads(proc.stdout)


def target_for(state: dict[str, Any], name: str) -> SSHTarget:
    device = next((d for d in state["devices"] if d["name"] == name), None)
    if device is None:
        sys.exit(f"no lab device {name!r}; the lab has {', '.join(d['name'] for d in state['devices'])}")
    keys = []
    for line in Path(state["known_hosts"]).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and device["address"] in parts[0].split(","):
            keys.append(f"{parts[1]} {parts[2]}")
    return SSHTarget(device=name, host=device["address"], pinned_host_keys=tuple(keys),
                     identity_files=(state["ssh_key"],), use_agent=False, connect_timeout=60)


async def reading(pool: SSHPool, target: SSHTarget, pids: list[int]) -> dict[str, Any]:
    """The device's clock, clock ticks per second, and utime+stime (ticks) and VmRSS (kB) of each pid."""
    parts = ["date +%s.%N", "getconf CLK_TCK"]
    for pid in pids:
        parts += [f"cat /proc/{pid}/stat", f"grep VmRSS /proc/{pid}/status", f"cat /proc/{pid}/schedstat"]
    out = (await pool.run(target, "; ".join(parts), check=True)).stdout.splitlines()
    now, hz = float(out[0]), int(out[1])
    procs = {}
    for i, pid in enumerate(pids):
        stat, rss, sched = out[2 + 3 * i: 5 + 3 * i]
        fields = stat.rsplit(")", 1)[1].split()  # proc(5): after "(comm)", field 3 is the first
        # schedstat's first field is the time on a CPU in ns (kernel docs, sched-stats.rst): ticks of 10 ms
        # are too coarse for programs that use well under 1 % of a core.
        procs[pid] = {"ticks": int(fields[11]) + int(fields[12]), "rss_kb": int(rss.split()[1]),
                      "cpu_ns": int(sched.split()[0])}
    return {"t": now, "hz": hz, "procs": procs}


async def measure(target: SSHTarget, seconds: float) -> dict[str, Any]:
    async with SSHPool() as pool:
        for path in sorted(AGENT_DIR.glob("*.py")):
            await pool.push(target, path, f"{DEVICE_TREE}/fleetdesk_agent/{path.name}")
        session = await pool.session(target)
        # `exec` keeps the shell's pid, which it printed first: the pid of the program we measure.
        agent = (f"echo $$; exec env PYTHONPATH={shell_quote(DEVICE_TREE)} "
                 + shell_join(["python3", "-m", "fleetdesk_agent", "telemetry", "--interval", "1"]))
        reference = "echo $$; exec vmstat 1"
        counts = {"agent": 0, "vmstat": 0}
        pids: dict[str, int] = {}
        window: dict[str, float] = {}

        async def follow(name: str, command: str) -> None:
            async with session.stream(command) as lines:
                async for line in lines:
                    if name not in pids:
                        pids[name] = int(line)
                    elif window.get("start") and time.monotonic() < window.get("end", float("inf")):
                        counts[name] += 1

        tasks = [asyncio.create_task(follow(n, c)) for n, c in (("agent", agent), ("vmstat", reference))]
        await asyncio.sleep(WARM_UP_S)
        if set(pids) != {"agent", "vmstat"}:
            raise SystemExit(f"the programs did not start on {target.device}: {pids}")
        first = await reading(pool, target, [pids["agent"], pids["vmstat"]])
        window["start"] = time.monotonic()
        await asyncio.sleep(seconds)
        last = await reading(pool, target, [pids["agent"], pids["vmstat"]])
        window["end"] = time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = last["t"] - first["t"]
    result: dict[str, Any] = {"device": target.device, "seconds": round(elapsed, 1)}
    for name, pid in pids.items():
        ticks = last["procs"][pid]["ticks"] - first["procs"][pid]["ticks"]
        ns = last["procs"][pid]["cpu_ns"] - first["procs"][pid]["cpu_ns"]
        result[name] = {"cpu_pct": round(100.0 * ns / 1e9 / elapsed, 3),
                        "cpu_pct_ticks": round(100.0 * ticks / last["hz"] / elapsed, 2),
                        "rss_mb": round(last["procs"][pid]["rss_kb"] / 1024, 1), "lines": counts[name]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="ipc-01", help="lab device name (default ipc-01)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window (default 30)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.environ.get("FLEETDESK_LAB_DIR"):
        sys.exit("set FLEETDESK_LAB_DIR to a running lab (fleetdesk lab up)")
    result = asyncio.run(measure(target_for(lab_state(), args.device), args.seconds))
    if args.json:
        print(json.dumps(result))
        return
    a, r = result["agent"], result["vmstat"]
    print(f"agent footprint on {result['device']}, telemetry at 1 Hz for {result['seconds']} s")
    print(f"  fleetdesk agent: CPU {a['cpu_pct']:.3f} % of one core (ticks: {a['cpu_pct_ticks']:.2f} %), "
          f"RSS {a['rss_mb']:.1f} MB, {a['lines']} samples")
    print(f"  vmstat 1 (ref):  CPU {r['cpu_pct']:.3f} % of one core (ticks: {r['cpu_pct_ticks']:.2f} %), "
          f"RSS {r['rss_mb']:.1f} MB, {r['lines']} lines")
    cpu_ratio = a["cpu_pct"] / r["cpu_pct"] if r["cpu_pct"] else float("inf")
    print(f"  ratio agent/vmstat: CPU {cpu_ratio:.1f}x, RSS {a['rss_mb'] / r['rss_mb']:.1f}x")


if __name__ == "__main__":
    main()
