"""One telemetry sample as the laptop keeps it, read from the agent's JSON line (or the agentless reader).

The agent prints one JSON object per line (`fleetdesk/agent`, "telemetry"):

    {"type": "sample", "v": 1, "t": 1763700000.12, "seq": 7,
     "cpu": {"total": 12.5, "per_core": [10.0, 15.0], "freq_mhz": [1800, 1500]},
     "load": [0.5, 0.4, 0.3],
     "mem": {"total_mb": 3796, "used_mb": 1200, "available_mb": 2596},
     "swap": {"total_mb": 100, "used_mb": 0},
     "disk": {"path": "/opt/fleetdesk", "total_mb": 32768, "used_mb": 1000},
     "temps": {"cpu-thermal": 48.3},
     "gpu": {"util_pct": 30, "mem_used_mb": 100, "mem_total_mb": 2000, "temp_c": 45, "power_w": 12.5},
     "throttled": {"raw": "0x50005", "now": ["under-voltage", "throttled"], "since_boot": ["under-voltage"]},
     "inference": {"model": "<sha256>", "requests": 120, "rate_per_s": 9.8, "p50_ms": 3.1, "p95_ms": 5.0,
                   "p99_ms": 7.2, "errors": 0, "batch_mean": 1.6, "cache_hits": 4,
                   "refused": null or {"artifact", "file", "code", "reason", "fix", "at"},
                   "drift": {"state": "watching", "inputs": {"<input>": {"requests": 512, "psi": 0.03,
                                                                         "mean_shift_std": 0.2}}}
                            or {"state": "off", "reason": "..."}},
     "sources": {"cpu": "/proc/stat", "gpu": "nvidia-smi", ...}}

Every part but "t" may be missing or null (a Pi has no "gpu", a device without a model server no
"inference"). What is missing stays None here and NaN in the ring buffers; it is never invented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# The numeric series every ring buffer keeps, in column order. Units are in the names.
METRICS: tuple[str, ...] = (
    "cpu_pct",
    "load1",
    "mem_pct",
    "swap_pct",
    "disk_pct",
    "temp_c",
    "gpu_pct",
    "gpu_mem_pct",
    "gpu_temp_c",
    "gpu_power_w",
    "infer_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "infer_errors",
    "drift_psi",
    "drift_shift_sd",
)

# What an operator reads on an axis or a column header.
METRIC_LABELS: dict[str, str] = {
    "cpu_pct": "CPU %",
    "load1": "Load (1 min)",
    "mem_pct": "Memory %",
    "swap_pct": "Swap %",
    "disk_pct": "Disk %",
    "temp_c": "Temperature °C",
    "gpu_pct": "GPU %",
    "gpu_mem_pct": "GPU memory %",
    "gpu_temp_c": "GPU temperature °C",
    "gpu_power_w": "GPU power W",
    "infer_rate": "Inferences/s",
    "latency_p50_ms": "Latency p50 ms",
    "latency_p95_ms": "Latency p95 ms",
    "latency_p99_ms": "Latency p99 ms",
    "infer_errors": "Inference errors",
    "drift_psi": "Input drift (PSI)",
    "drift_shift_sd": "Input mean shift (ref. std)",
}


class SampleError(ValueError):
    """A line that is not a telemetry sample FleetDesk can read (the reader logs it and goes on)."""


def _num(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, text, NaN, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pct(used: float | None, total: float | None) -> float | None:
    if used is None or total is None or total <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * used / total))


def _part(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Sample:
    """One moment of one device. Percentages are 0-100; None where the device did not say."""

    t: float
    cpu_pct: float | None = None
    cpu_per_core: tuple[float, ...] = ()
    load1: float | None = None
    mem_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    swap_pct: float | None = None
    disk_pct: float | None = None
    temp_c: float | None = None  # the hottest zone
    temps: Mapping[str, float] = field(default_factory=dict)
    gpu_pct: float | None = None
    gpu_mem_pct: float | None = None
    gpu_temp_c: float | None = None
    gpu_power_w: float | None = None
    throttled: tuple[str, ...] = ()  # flags active now, e.g. ("under-voltage",)
    infer_rate: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    infer_errors: float | None = None
    # Input drift of the active model's live inputs against its import samples, the worst input: population
    # stability index, and how far its mean moved in the reference's standard deviations (fleetdesk/agent/drift.py).
    drift_psi: float | None = None
    drift_shift_sd: float | None = None
    model: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    # The model server would not load an artifact (a file's hash or the signature did not verify): which file,
    # why and the fix, in an operator's words (refusal_text); None when nothing was refused.
    refused: str | None = None

    def value(self, metric: str) -> float | None:
        """The value of one of METRICS."""
        # Every name in METRICS is a float | None field; getattr cannot know which name it is given.
        result: float | None = getattr(self, metric)
        return result

    @classmethod
    def from_json(cls, obj: Any) -> Sample:
        """Read the agent's "sample" object; raises SampleError for anything that is not one."""
        if not isinstance(obj, Mapping) or obj.get("type", "sample") != "sample":
            raise SampleError("not a telemetry sample")
        t = _num(obj.get("t"))
        if t is None:
            raise SampleError("a telemetry sample without a time (t)")
        cpu = _part(obj, "cpu")
        per_core = cpu.get("per_core")
        cores = tuple(v for v in (_num(x) for x in per_core) if v is not None) if isinstance(per_core, list) else ()
        load = obj.get("load")
        load1 = _num(load[0]) if isinstance(load, list) and load else None
        mem, swap, disk = _part(obj, "mem"), _part(obj, "swap"), _part(obj, "disk")
        temps_raw = _part(obj, "temps")
        temps = {str(k): v for k, v in ((k, _num(v)) for k, v in temps_raw.items()) if v is not None}
        gpu = _part(obj, "gpu")
        inference = _part(obj, "inference")
        throttled = _part(obj, "throttled").get("now")
        sources = _part(obj, "sources")
        model = inference.get("model")
        refused = inference.get("refused")
        drift_psi, drift_shift = _drift(inference.get("drift"))
        return cls(
            t=t,
            cpu_pct=_num(cpu.get("total")),
            cpu_per_core=cores,
            load1=load1,
            mem_pct=_pct(_num(mem.get("used_mb")), _num(mem.get("total_mb"))),
            mem_used_mb=_num(mem.get("used_mb")),
            mem_total_mb=_num(mem.get("total_mb")),
            swap_pct=_pct(_num(swap.get("used_mb")), _num(swap.get("total_mb"))),
            disk_pct=_pct(_num(disk.get("used_mb")), _num(disk.get("total_mb"))),
            temp_c=max(temps.values()) if temps else None,
            temps=temps,
            gpu_pct=_num(gpu.get("util_pct")),
            gpu_mem_pct=_pct(_num(gpu.get("mem_used_mb")), _num(gpu.get("mem_total_mb"))),
            gpu_temp_c=_num(gpu.get("temp_c")),
            gpu_power_w=_num(gpu.get("power_w")),
            throttled=tuple(str(f) for f in throttled) if isinstance(throttled, list) else (),
            infer_rate=_num(inference.get("rate_per_s")),
            latency_p50_ms=_num(inference.get("p50_ms")),
            latency_p95_ms=_num(inference.get("p95_ms")),
            latency_p99_ms=_num(inference.get("p99_ms")),
            infer_errors=_num(inference.get("errors")),
            drift_psi=drift_psi,
            drift_shift_sd=drift_shift,
            model=model if isinstance(model, str) else None,
            sources={str(k): str(v) for k, v in sources.items()},
            refused=refusal_text(refused) if isinstance(refused, Mapping) else None,
        )


def _drift(drift: Any) -> tuple[float | None, float | None]:
    """(PSI, mean shift) of the worst input while the server watches drift and has seen requests; else Nones."""
    inputs = drift.get("inputs") if isinstance(drift, Mapping) and drift.get("state") == "watching" else None
    if not isinstance(inputs, Mapping):
        return None, None
    scored = [d for d in inputs.values() if isinstance(d, Mapping) and (_num(d.get("requests")) or 0) > 0]
    psis = [v for v in (_num(d.get("psi")) for d in scored) if v is not None]
    shifts = [abs(v) for v in (_num(d.get("mean_shift_std")) for d in scored) if v is not None]
    return max(psis, default=None), max(shifts, default=None)


def refusal_text(refused: Mapping[str, Any]) -> str:
    """The agent's refusal of an artifact (fleetdesk/agent/verified.py) in an operator's words: which artifact and
    file, why, and the fix. Device-supplied text: shown through the visible-text helpers like any other."""
    file = refused.get("file")
    where = f" ({str(file)[:200]})" if file else ""
    fix = refused.get("fix")
    return (f"the model server refused artifact {str(refused.get('artifact'))[:12]}{where}: "
            f"{str(refused.get('reason'))[:600]}" + (f" — {str(fix)[:300]}" if fix else ""))
