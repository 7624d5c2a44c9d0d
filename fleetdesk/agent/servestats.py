"""The model server's statistics: counters, and latency/batch figures over a bounded recent window,
written atomically to ROOT/run/serve-stats.json for the telemetry command to read.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

WINDOW_S = 60.0
# At most this many latencies are kept whatever the rate (memory stays bounded on a busy device).
WINDOW_MAX = 20000


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default method); None for no values."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class ServeStats:
    """Thread-safe: request threads record, the housekeeping thread snapshots and writes."""

    def __init__(self, window_s: float = WINDOW_S, window_max: int = WINDOW_MAX) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._latencies: collections.deque[tuple[float, float]] = collections.deque(maxlen=window_max)
        self._batches: collections.deque[tuple[float, int]] = collections.deque(maxlen=window_max)
        self._started = time.monotonic()
        self.requests = 0
        self.errors = 0
        self.cache_hits = 0
        self.runs = 0

    def record_request(self, ms: float | None, ok: bool, cached: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1
            if cached:
                self.cache_hits += 1
            if ok and ms is not None:
                self._latencies.append((now, ms))

    def record_run(self, rows: int) -> None:
        with self._lock:
            self.runs += 1
            self._batches.append((time.monotonic(), rows))

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        horizon = now - self.window_s
        with self._lock:
            while self._latencies and self._latencies[0][0] < horizon:
                self._latencies.popleft()
            while self._batches and self._batches[0][0] < horizon:
                self._batches.popleft()
            latencies = sorted(ms for _, ms in self._latencies)
            rows = [n for _, n in self._batches]
            counts: dict[str, float | None] = {"requests": self.requests, "errors": self.errors,
                                               "cache_hits": self.cache_hits, "runs": self.runs}
        # The rate is over the window, or over the time since start while that is shorter.
        span = max(min(self.window_s, now - self._started), 1e-3)
        counts.update({
            "rate_per_s": round(len(latencies) / span, 3),
            "p50_ms": _round(percentile(latencies, 0.50)),
            "p95_ms": _round(percentile(latencies, 0.95)),
            "p99_ms": _round(percentile(latencies, 0.99)),
            "batch_mean": round(sum(rows) / len(rows), 3) if rows else None,
        })
        return counts


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# The keys of serve-stats.json, exactly as the telemetry command (and common.md) expect them.
# "refused": the artifact the server last would not load ({"artifact", "file", "code", "reason", "fix", "at"}), or null.
# "shadow": the shadow candidate's state and figures (GET /v1/shadow's body), or null when none has run.
# "drift": the active model's input drift ({"state": "watching", "inputs": {name: scores}} or {"state": "off",
# "reason"}), or null with no model.
STATS_FILE_KEYS = ("t", "model", "requests", "rate_per_s", "p50_ms", "p95_ms", "p99_ms", "errors",
                   "batch_mean", "cache_hits", "cache_size", "provider", "refused", "shadow", "drift")


SHADOW_HEADLINE = ("state", "candidate", "active", "reason", "code", "fix", "share", "offered", "mirrored", "dropped",
                   "compared", "failed", "top1_agreement", "p95_ratio")


def shadow_headline(shadow: dict[str, Any] | None) -> dict[str, Any] | None:
    """A shadow's state and headline figures (for /v1/health and `status`; GET /v1/shadow has them all)."""
    if shadow is None:
        return None
    return {key: shadow[key] for key in SHADOW_HEADLINE if key in shadow}


def stats_document(snapshot: dict[str, Any], model: str | None, provider: str | None,
                   cache_size: int, refused: dict[str, Any] | None = None,
                   shadow: dict[str, Any] | None = None, drift: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = dict(snapshot, t=round(time.time(), 3), model=model, provider=provider, cache_size=cache_size,
               refused=refused, shadow=shadow, drift=drift)
    return {key: doc.get(key) for key in STATS_FILE_KEYS}


def write_atomically(path: str, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file beside `path` and rename it over: a reader sees old or new, never half."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, separators=(",", ":"))
        handle.write("\n")
    os.replace(temporary, path)
