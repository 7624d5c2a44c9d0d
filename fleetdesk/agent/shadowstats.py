"""Statistics of a shadow candidate against the active model (agreement, cosine, max abs difference, latencies)
and of the live inputs against reference statistics (drift: PSI and mean shift). Only figures are kept, never inputs.

numpy is reached through inference.import_runtime(), so this module imports with the standard library alone.
Running quantiles use a fixed reservoir (Vitter's algorithm R, seeded): memory is bounded whatever the count, every
value seen has the same chance to be in it, and up to RESERVOIR_SIZE values its quantiles are exactly numpy's.
P² would use less memory but its five markers are poor for the first few hundred values, which is what a shadow
gate of a few hundred requests reads.
"""

from __future__ import annotations

import collections
import math
import random
import threading
from typing import Any

from .check import cosine
from .inference import import_runtime
from .servestats import percentile

RESERVOIR_SIZE = 1024
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
COSINE_BINS = 20  # a histogram of per-request cosine similarity over [-1, 1]
DRIFT_BINS = 10  # fixed bins of each input channel between the reference's 1st and 99th percentiles
DRIFT_WINDOW = 512  # live requests in the sliding drift window
PSI_FLOOR = 1e-4  # an empty bin counts as this share: PSI stays finite (the usual convention)


class Reservoir:
    """A bounded uniform sample of a stream of numbers, with its count, min and max over the whole stream."""

    def __init__(self, size: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        self.size = size
        self.count = 0
        self.values: list[float] = []
        self.low = math.inf
        self.high = -math.inf
        self._random = random.Random(seed)  # noqa: S311 - sampling, not secrecy: seeded so figures repeat

    def add(self, value: float) -> None:
        self.count += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._random.randrange(self.count)  # algorithm R: keep the new value with probability size/count
        if slot < self.size:
            self.values[slot] = value

    def quantile(self, q: float) -> float | None:
        return percentile(sorted(self.values), q)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.values)
        return {"count": self.count, "min": _r(self.low) if self.count else None,
                "max": _r(self.high) if self.count else None,
                "p50": _r(percentile(ordered, 0.5)), "p95": _r(percentile(ordered, 0.95))}


def histogram_bin(value: float, low: float, high: float, bins: int) -> int:
    """The bin of `value` among `bins` equal bins over [low, high]; values outside go to the outer bins."""
    if not high > low:
        return 0
    index = int((value - low) / (high - low) * bins)
    return min(max(index, 0), bins - 1)


def top1_agreement(active: Any, candidate: Any) -> tuple[int, int]:
    """(rows whose argmax over the last axis agree, rows) of two classifier outputs; (0, 0) when not comparable
    (rank below 2, a last axis of one class, or different shapes)."""
    _, np = import_runtime()
    a, b = np.asarray(active), np.asarray(candidate)
    if a.ndim < 2 or a.shape != b.shape or a.shape[-1] < 2:
        return 0, 0
    same = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
    return int(same.sum()), int(same.size)


def max_abs_difference(active: Any, candidate: Any) -> float:
    _, np = import_runtime()
    a = np.asarray(active, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


class OutputComparison:
    """One output's figures over the shadow: top-1 agreement, cosine similarity and max abs difference."""

    def __init__(self) -> None:
        self.agree = 0
        self.rows = 0
        self.cosine = Reservoir()
        self.cosine_histogram = [0] * COSINE_BINS
        self.max_abs = Reservoir()

    def add(self, active: Any, candidate: Any) -> None:
        _, np = import_runtime()
        agree, rows = top1_agreement(active, candidate)
        self.agree += agree
        self.rows += rows
        similarity = cosine(np, candidate, active)
        self.cosine.add(similarity)
        self.cosine_histogram[histogram_bin(similarity, -1.0, 1.0, COSINE_BINS)] += 1
        self.max_abs.add(max_abs_difference(active, candidate))

    def summary(self) -> dict[str, Any]:
        return {"top1_agreement": _r(self.agree / self.rows) if self.rows else None, "top1_rows": self.rows,
                "cosine": self.cosine.summary(), "cosine_histogram": {"low": -1.0, "high": 1.0,
                                                                     "counts": list(self.cosine_histogram)},
                "max_abs_diff": self.max_abs.summary()}


class ShadowStats:
    """Thread-safe figures of one shadow: request threads count what they offer, the shadow worker compares.
    offered = mirrored + dropped; mirrored = compared + failed + still queued."""

    def __init__(self, candidate: str, active: str, output_names: list[str]) -> None:
        self.candidate = candidate
        self.active = active
        self._lock = threading.Lock()
        self.offered = 0
        self.mirrored = 0
        self.dropped = 0
        self.compared = 0
        self.failed = 0
        self.last_failure: str | None = None
        self.outputs = {name: OutputComparison() for name in output_names}
        self.active_ms = Reservoir()
        self.candidate_ms = Reservoir()

    def count_offer(self, queued: bool) -> None:
        with self._lock:
            self.offered += 1
            if queued:
                self.mirrored += 1
            else:
                self.dropped += 1

    def record(self, active: list[Any], candidate: list[Any], active_ms: float, candidate_ms: float) -> None:
        with self._lock:
            self.compared += 1
            for figures, got_active, got_candidate in zip(self.outputs.values(), active, candidate):
                figures.add(got_active, got_candidate)
            self.active_ms.add(active_ms)
            self.candidate_ms.add(candidate_ms)

    def record_failure(self, message: str) -> None:
        with self._lock:
            self.failed += 1
            self.last_failure = message

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            outputs = {name: figures.summary() for name, figures in self.outputs.items()}
            rows = sum(f.rows for f in self.outputs.values())
            agree = sum(f.agree for f in self.outputs.values())
            active_p95 = self.active_ms.quantile(0.95)
            candidate_p95 = self.candidate_ms.quantile(0.95)
            return {"candidate": self.candidate, "active": self.active, "offered": self.offered,
                    "mirrored": self.mirrored, "dropped": self.dropped, "compared": self.compared,
                    "failed": self.failed, "last_failure": self.last_failure,
                    "top1_agreement": _r(agree / rows) if rows else None, "outputs": outputs,
                    "active_ms": self.active_ms.summary(), "candidate_ms": self.candidate_ms.summary(),
                    "p95_ratio": _r(candidate_p95 / active_p95) if candidate_p95 is not None and active_p95 else None}


# --- input drift --------------------------------------------------------------------------------------------


def channels(np: Any, array: Any) -> Any:
    """An input as [channel, values]: axis 1 is the channel/feature axis ([N, C, ...] or [N, F]); rank 0 or 1
    is one channel."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim < 2:
        return a.reshape(1, -1)
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


def reference_statistics(samples: Any, bins: int = DRIFT_BINS) -> list[dict[str, Any]]:
    """Per channel of `samples` (an input's stacked sample tensors): mean, std, QUANTILES and a histogram of `bins`
    fixed bins between the 1st and 99th percentiles (outer bins take the tails). JSON-ready (the model card's form)."""
    _, np = import_runtime()
    out = []
    for values in channels(np, samples):
        low, high = (float(v) for v in np.quantile(values, [0.01, 0.99]))
        if not high > low:
            high = low + 1.0
        counts = [0] * bins
        index = np.clip(((values - low) / (high - low) * bins).astype(np.int64), 0, bins - 1)
        for i, n in enumerate(np.bincount(index, minlength=bins)):
            counts[i] = int(n)
        out.append({"mean": float(values.mean()), "std": float(values.std()),
                    "quantiles": [float(v) for v in np.quantile(values, QUANTILES)],
                    "low": low, "high": high, "counts": counts})
    return out


def psi(expected: list[int], actual: list[int], floor: float = PSI_FLOOR) -> float:
    """Population stability index of two histograms over the same bins: sum((a - e) * ln(a / e)) of their shares,
    an empty bin counted as `floor`."""
    total_e, total_a = sum(expected), sum(actual)
    if not total_e or not total_a:
        return 0.0
    score = 0.0
    for e, a in zip(expected, actual):
        pe, pa = max(e / total_e, floor), max(a / total_a, floor)
        score += (pa - pe) * math.log(pa / pe)
    return score


def histogram_quantile(counts: list[int], low: float, high: float, q: float) -> float | None:
    """The q-quantile of a fixed-bin histogram, linear within the bin (outer bins are clipped to [low, high])."""
    total = sum(counts)
    if not total:
        return None
    width = (high - low) / len(counts)
    target = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= target:
            return low + width * (i + (target - seen) / n)
        seen += n
    return high


class InputDrift:
    """Live statistics of one input over the last `window` requests against its reference (reference_statistics's
    form): per channel mean, std, quantiles and histogram; a drift score per channel (PSI and the mean's shift in
    reference standard deviations) and per input (the worst channel)."""

    def __init__(self, reference: list[dict[str, Any]], window: int = DRIFT_WINDOW) -> None:
        self.reference = reference
        self._bins = len(reference[0]["counts"]) if reference else DRIFT_BINS
        # per request: [channel] -> (n, sum, sum of squares, counts)
        self._window: collections.deque[list[tuple[int, float, float, list[int]]]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, array: Any) -> None:
        _, np = import_runtime()
        per_channel = []
        data = channels(np, array)
        if data.shape[0] != len(self.reference):
            return  # not this reference's shape: nothing to compare it with
        for values, ref in zip(data, self.reference):
            low, high = ref["low"], ref["high"]
            index = np.clip(((values - low) / (high - low) * self._bins).astype(np.int64), 0, self._bins - 1)
            counts = [int(n) for n in np.bincount(index, minlength=self._bins)]
            per_channel.append((int(values.size), float(values.sum()), float(np.square(values).sum()), counts))
        with self._lock:
            self._window.append(per_channel)

    def scores(self) -> dict[str, Any]:
        with self._lock:
            window = list(self._window)
        out: list[dict[str, Any]] = []
        for c, ref in enumerate(self.reference):
            n = sum(request[c][0] for request in window)
            if not n:
                continue
            total = sum(request[c][1] for request in window)
            squares = sum(request[c][2] for request in window)
            counts = [sum(request[c][3][b] for request in window) for b in range(self._bins)]
            mean = total / n
            std = math.sqrt(max(squares / n - mean * mean, 0.0))
            shift = (mean - ref["mean"]) / ref["std"] if ref["std"] > 0 else (0.0 if mean == ref["mean"] else math.inf)
            out.append({"mean": _r(mean), "std": _r(std), "counts": counts,
                        "quantiles": [_r(histogram_quantile(counts, ref["low"], ref["high"], q)) for q in QUANTILES],
                        "psi": _r(psi(ref["counts"], counts)), "mean_shift_std": _r(shift)})
        return {"requests": len(window), "channels": out,
                "psi": max((c["psi"] for c in out), default=None),
                "mean_shift_std": max((abs(c["mean_shift_std"]) for c in out), default=None)}


def _r(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


def reference_document(samples: dict[str, Any], bins: int = DRIFT_BINS) -> dict[str, Any]:
    """The reference statistics file an artifact carries (drift.py reads it): {"inputs": {name: per channel}} from
    each input's stacked sample tensors."""
    return {"inputs": {name: reference_statistics(array, bins) for name, array in samples.items()}}
