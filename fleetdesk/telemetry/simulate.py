"""A synthetic fleet on simulated time, for the dashboard benchmark and the GUI tests ONLY.

Nothing here comes from a device: the numbers are made up (smooth random walks), so they are never
shown to an operator as a fleet's telemetry. Each device prints the agent's JSON sample line, and the
line goes into a `TelemetryStore` the way the hub's stream reader takes it (json -> `Sample.from_json`
-> `store.add`), so the dashboard sees exactly what a real stream gives it, only on a clock the caller
advances as fast as it likes. `hold()` pins a metric at a value, for a test that wants a device hot.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.telemetry.buffers import TelemetryStore
from fleetdesk.telemetry.sample import Sample

# Kinds of simulated device and what each reports; the sources name the real readers (see fleetdesk/agent).
KINDS: tuple[str, ...] = ("jetson", "rpi", "ipc", "ipc-nvidia")
_SOURCES = {
    "jetson": {"cpu": "/proc/stat", "mem": "/proc/meminfo", "temps": "/sys/class/thermal", "gpu": "tegrastats"},
    "rpi": {"cpu": "/proc/stat", "mem": "/proc/meminfo", "temps": "/sys/class/thermal", "throttled": "vcgencmd"},
    "ipc": {"cpu": "/proc/stat", "mem": "/proc/meminfo", "temps": "/sys/class/thermal"},
    "ipc-nvidia": {"cpu": "/proc/stat", "mem": "/proc/meminfo", "temps": "/sys/class/thermal",
                   "gpu": "nvidia-smi"},
}
_CORES = {"jetson": 6, "rpi": 4, "ipc": 8, "ipc-nvidia": 8}
_MEM_MB = {"jetson": 7620, "rpi": 3796, "ipc": 15890, "ipc-nvidia": 31880}


def _walk(rng: random.Random, value: float, low: float, high: float, step: float) -> float:
    """One step of a random walk that is pulled back towards the middle of [low, high]."""
    middle = (low + high) / 2
    value += rng.gauss(0.0, step) + 0.05 * (middle - value)
    return min(high, max(low, value))


@dataclass
class SimulatedDevice:
    """One made-up device: its kind, whether it serves a model, and where its walks are now."""

    device_id: int
    kind: str
    serving: bool
    rng: random.Random
    cpu: float = 30.0
    gpu: float = 40.0
    mem: float = 40.0
    temp: float = 50.0
    latency: float = 8.0
    held: dict[str, float] = field(default_factory=dict)  # metric -> pinned value
    seq: int = 0

    def line(self, t: float) -> str:
        """The agent's JSON line for the moment `t` (the format in fleetdesk/telemetry/sample.py)."""
        rng = self.rng
        self.seq += 1
        self.cpu = _walk(rng, self.cpu, 2.0, 98.0, 4.0)
        self.mem = _walk(rng, self.mem, 20.0, 80.0, 0.5)
        self.temp = _walk(rng, 38.0 + 0.35 * self.cpu, 35.0, 78.0, 0.6)
        cores = _CORES[self.kind]
        cpu = self.held.get("cpu_pct", self.cpu)
        obj: dict[str, Any] = {
            "type": "sample", "v": 1, "t": t, "seq": self.seq,
            "cpu": {"total": round(cpu, 1),
                    "per_core": [round(min(100.0, max(0.0, cpu + rng.gauss(0, 6))), 1) for _ in range(cores)]},
            "load": [round(cpu / 100 * cores, 2), 0.0, 0.0],
            "mem": {"total_mb": _MEM_MB[self.kind],
                    "used_mb": round(_MEM_MB[self.kind] * self.held.get("mem_pct", self.mem) / 100)},
            "swap": {"total_mb": 1024, "used_mb": 0},
            "disk": {"path": "/opt/fleetdesk", "total_mb": 30000, "used_mb": 9000},
            "temps": {"cpu-thermal": round(self.held.get("temp_c", self.temp), 1)},
            "sources": dict(_SOURCES[self.kind]),
        }
        if self.kind in ("jetson", "ipc-nvidia"):
            self.gpu = _walk(rng, self.gpu, 0.0, 99.0, 5.0)
            gpu = self.held.get("gpu_pct", self.gpu)
            obj["gpu"] = {"util_pct": round(gpu), "mem_used_mb": 900, "mem_total_mb": 4000,
                          "temp_c": round(self.temp + 3, 1), "power_w": round(5 + gpu / 10, 1)}
        if self.kind == "rpi":
            flags = ["throttled"] if self.held.get("temp_c", self.temp) > 80 else []
            obj["throttled"] = {"raw": "0x4" if flags else "0x0", "now": flags, "since_boot": flags}
        if self.serving:
            self.latency = _walk(rng, self.latency, 3.0, 40.0, 0.8)
            p95 = self.held.get("latency_p95_ms", self.latency * 1.6)
            obj["inference"] = {"model": "0" * 64, "requests": self.seq * 10, "rate_per_s": 10.0,
                                "p50_ms": round(self.held.get("latency_p50_ms", self.latency), 2),
                                "p95_ms": round(p95, 2),
                                "p99_ms": round(self.held.get("latency_p99_ms", max(p95, self.latency * 2.2)), 2),
                                "errors": 0, "batch_mean": 1.4, "cache_hits": 0,
                                # Inputs like the import samples: a small, slowly varying drift (no draw from the
                                # random stream, so every other figure stays what it was).
                                "drift": {"state": "watching", "sampled": self.seq, "dropped": 0, "inputs": {
                                    "input": {"requests": min(self.seq, 512),
                                              "psi": round(self.held.get("drift_psi",
                                                                         0.03 + 0.015 * math.sin(self.seq / 40)), 4),
                                              "mean_shift_std": round(self.held.get(
                                                  "drift_shift_sd", 0.15 + 0.08 * math.sin(self.seq / 55)), 4)}}}}
            obj["sources"]["inference"] = "serve-stats.json"
        return json.dumps(obj)


class SimulatedFleet:
    """`device_ids` streaming at 1 Hz of simulated time into `store`; `step()` is one simulated second."""

    def __init__(self, store: TelemetryStore, device_ids: Sequence[int], *, seed: int = 1,
                 start: float = 1_763_700_000.0, interval: float = 1.0, kinds: Sequence[str] = KINDS) -> None:
        """`kinds` (of KINDS) is repeated over the devices in order; every third device serves no model."""
        self.store = store
        self.now = start
        self.interval = interval
        rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        self.devices = {
            device_id: SimulatedDevice(device_id, kinds[n % len(kinds)], serving=n % 3 != 2,
                                       cpu=rng.uniform(10, 60), temp=rng.uniform(40, 60),
                                       rng=random.Random(rng.random()))  # noqa: S311
            for n, device_id in enumerate(device_ids)}

    def clock(self) -> float:
        """The simulated time, Unix seconds."""
        return self.now

    def hold(self, device_id: int, metric: str, value: float | None) -> None:
        """Pin `metric` of one device at `value` from the next sample on (None lets it wander again)."""
        held = self.devices[device_id].held
        if value is None:
            held.pop(metric, None)
        else:
            held[metric] = value

    def lines(self, device_ids: Sequence[int] | None = None) -> list[tuple[int, str]]:
        """Each device's line for the current simulated moment (without storing them)."""
        chosen = self.devices if device_ids is None else device_ids
        return [(d, self.devices[d].line(self.now)) for d in chosen]

    def step(self, device_ids: Sequence[int] | None = None) -> int:
        """Advance the clock by one interval and store one sample per device; returns how many were stored."""
        self.now += self.interval
        stored = 0
        for device_id, line in self.lines(device_ids):
            deliver(self.store, device_id, line)
            stored += 1
        return stored


def deliver(store: TelemetryStore, device_id: int, line: str) -> Sample:
    """One line as a stream reader takes it: parsed, read as a Sample, stored (listeners hear it)."""
    sample = Sample.from_json(json.loads(line))
    store.add(device_id, sample)
    return sample

