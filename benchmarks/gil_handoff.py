"""Why the window sets Python's thread switch interval (fleetdesk.gui.app.SWITCH_INTERVAL) below the default 5 ms.

Qt calls into the window's Python code many times for one repaint (a delegate's paint and sizeHint, a model's
data), and each time the window's thread has to take the interpreter lock back. While a worker thread runs Python
(verifying the audit trail, gathering a report), every one of those takes the lock only after the worker's switch
interval has run out: 30 of them cost up to 30 x 5 ms. CI failed a GUI test on exactly that: a 169 ms stall, the
loop's thread inside the activity view's sizeHint while the Audit view verified 20,000 entries.

Here the loop's thread does what a repaint does (30 calls into C that let go of the lock, every 10 ms) while two
workers run: one Python (encoding and hashing records, as the trail's chaining does) and one in C that lets go of
the lock (hashing 64 KiB buffers, as the signature threads do). Figures: how long the 30 hand-backs took (median,
p99, worst) and how much work the Python worker got done, at the default interval (the reference) and at the
window's; several rounds in rotating order, median of each.

Run: .venv/bin/python benchmarks/gil_handoff.py [--seconds 3] [--rounds 4] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetdesk.gui.app import SWITCH_INTERVAL

DEFAULT = 0.005  # CPython's default (sys.getswitchinterval() in a fresh interpreter)
HANDBACKS = 30  # calls back into Python in one repaint


def one_round(interval: float, seconds: float) -> dict[str, float]:
    stop = threading.Event()
    done = [0]

    def python_worker() -> None:
        n = 0
        while not stop.is_set():
            record = {"seq": n, "action": "device.rename", "targets": [f"device:{n}"], "after": {"name": "x" * 40}}
            hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
            n += 1
        done[0] = n

    def c_worker() -> None:
        buffer = b"\0" * 65536
        while not stop.is_set():
            hashlib.sha256(buffer).digest()  # lets go of the lock over 2047 bytes

    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    workers = [threading.Thread(target=python_worker), threading.Thread(target=c_worker)]
    try:
        for worker in workers:
            worker.start()
        ticks: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            for _ in range(HANDBACKS):
                time.sleep(0)
            ticks.append(time.perf_counter() - start)
            time.sleep(0.01)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        sys.setswitchinterval(previous)
    ticks.sort()
    return {"median_ms": ticks[len(ticks) // 2] * 1000, "p99_ms": ticks[int(0.99 * (len(ticks) - 1))] * 1000,
            "worst_ms": ticks[-1] * 1000, "worker_per_s": done[0] / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    intervals = {"default 5 ms": DEFAULT, f"window {SWITCH_INTERVAL * 1000:g} ms": SWITCH_INTERVAL}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in intervals}
    names = list(intervals)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:  # rotating order
            runs[name].append(one_round(intervals[name], args.seconds))
    result = {name: {key: statistics.median(run[key] for run in rounds) for key in rounds[0]}
              for name, rounds in runs.items()}
    reference, window = (result[name] for name in names)
    ratios = {"p99": window["p99_ms"] / reference["p99_ms"],
              "worker": window["worker_per_s"] / reference["worker_per_s"]}
    if args.json:
        print(json.dumps({"result": result, "ratio": ratios}, indent=2))
        return 0
    print(f"{HANDBACKS} hand-backs of the interpreter lock to the loop's thread while two workers run "
          f"({args.rounds} rounds of {args.seconds:g} s, rotating order, median):")
    for name, figures in result.items():
        print(f"  {name:>14}: median {figures['median_ms']:6.1f} ms, p99 {figures['p99_ms']:6.1f} ms, worst "
              f"{figures['worst_ms']:6.1f} ms; Python worker {figures['worker_per_s']:,.0f} records/s")
    print(f"  ratio window/default: p99 {ratios['p99']:.2f}, Python worker's work {ratios['worker']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
