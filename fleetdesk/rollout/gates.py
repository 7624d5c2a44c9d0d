"""Health gates: what one measurement on a device holds (GateSample) and the verdict over a soak (evaluate); the
shadow gate's verdict on a candidate's figures beside the active model (evaluate_shadow).

Pure: no I/O. Every gate that is on is recorded with its measured value and bound; a gate whose measurement is
missing fails (closed), with the reason in words, so a device is never confirmed on evidence nobody took.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.rollout.policy import Gates, ShadowPolicy

# Gate names, in the order a failure is reported (the first failing one is the reason).
SERVING = "serving"
GOLDEN = "golden_cosine"
ERROR_RATE = "error_rate"
P95 = "p95_ms"
P95_RATIO = "p95_ratio"
P95_RATIO_SLACK_MS = 0.5  # the ratio gate forgives a slowdown this small in absolute terms
TEMPERATURE = "temperature_c"
MEMORY = "memory_free_pct"
GATE_ORDER = (SERVING, GOLDEN, ERROR_RATE, P95, P95_RATIO, TEMPERATURE, MEMORY)


@dataclass(frozen=True)
class GateSample:
    """One measurement on one device. None = not measured; `notes` says why, per gate name."""

    at: float
    serving: bool  # the model server runs and has the model under test loaded
    model: str | None  # what the server has loaded (None: nothing)
    p95_ms: float | None
    requests: int  # the server's counters since it started
    errors: int
    temperature_c: float | None  # the hottest zone
    memory_free_pct: float | None  # available / total memory
    golden_cosine: float | None  # lowest cosine similarity to the golden outputs
    notes: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "serving": self.serving, "model": self.model, "p95_ms": self.p95_ms,
                "requests": self.requests, "errors": self.errors, "temperature_c": self.temperature_c,
                "memory_free_pct": self.memory_free_pct, "golden_cosine": self.golden_cosine,
                "notes": dict(self.notes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateSample:
        return cls(at=float(data["at"]), serving=bool(data["serving"]), model=data.get("model"),
                   p95_ms=data.get("p95_ms"), requests=int(data.get("requests") or 0),
                   errors=int(data.get("errors") or 0), temperature_c=data.get("temperature_c"),
                   memory_free_pct=data.get("memory_free_pct"), golden_cosine=data.get("golden_cosine"),
                   notes=dict(data.get("notes") or {}))


@dataclass(frozen=True)
class GateResult:
    """The verdict: passed, each gate's {"value", "bound", "ok"} (and "note" when there is more to say), and the
    first failing gate in words ("" when every gate passed)."""

    passed: bool
    values: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "values": {k: dict(v) for k, v in self.values.items()}, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        return cls(passed=bool(data["passed"]), values={str(k): dict(v) for k, v in dict(data["values"]).items()},
                   reason=str(data.get("reason", "")))


def _note(samples: Sequence[GateSample], gate: str, default: str) -> str:
    for sample in reversed(samples):
        if sample.notes.get(gate):
            return str(sample.notes[gate])
    return default


def _present(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _error_rate(samples: Sequence[GateSample]) -> tuple[float, int] | None:
    """(errors / requests, requests) over the soak from the server's counters; None when no sample saw a server."""
    served = [s for s in samples if s.serving]
    if not served:
        return None
    first, last = served[0], served[-1]
    requests, errors = last.requests - first.requests, last.errors - first.errors
    if len(served) == 1 or requests < 0 or errors < 0:  # one look, or the server restarted (counters reset)
        requests, errors = last.requests, last.errors
    return (errors / requests if requests > 0 else 0.0), requests


class _Tally:
    """Each gate's value against its bound, and why those that failed did."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self.reasons: dict[str, str] = {}

    def record(self, gate: str, value: Any, bound: Any, ok: bool, why: str, note: str = "") -> None:
        self.values[gate] = {"value": value, "bound": bound, "ok": ok, **({"note": note} if note else {})}
        if not ok:
            self.reasons[gate] = why


def evaluate(gates: Gates, baseline: GateSample | None, samples: Sequence[GateSample]) -> GateResult:
    """Every gate that is on, over every sample of the soak: worst value against its bound.

    `baseline` is the same device measured on the model it ran before (for the p95 ratio); a baseline with no
    model (the device ran none) makes the ratio gate not apply. No samples, or a gate's value missing in all of
    them: that gate fails, with the reason."""
    tally = _Tally()
    values, reasons, record = tally.values, tally.reasons, tally.record

    def missing(gate: str, bound: Any, what: str, default: str) -> None:
        note = _note(samples, gate, default)
        record(gate, None, bound, False, f"{what} was not measured: {note}", note)

    nothing = "no measurement was taken on the device" if not samples else ""
    if gates.serving:
        if not samples:
            missing(SERVING, True, "serving", nothing)
        else:
            down = next((s for s in samples if not s.serving), None)
            why = ""
            if down is not None:
                why = down.notes.get(SERVING) or (f"the model server serves {down.model}" if down.model
                                                  else "the model server has no model loaded")
            record(SERVING, down is None, True, down is None, f"not serving the new model: {why}", why)
    if gates.golden_min_cosine is not None:
        bound = gates.golden_min_cosine
        found = _present([s.golden_cosine for s in samples])
        if not found:
            missing(GOLDEN, bound, "agreement with the golden outputs", nothing or "no golden-output check ran")
        else:
            worst = min(found)
            record(GOLDEN, worst, bound, worst >= bound,
                   f"outputs agree with the golden outputs only to cosine {worst:.4f}, below the bound {bound:g}")
    if gates.error_rate_max is not None:
        bound = gates.error_rate_max
        rate = _error_rate(samples)
        if rate is None:
            missing(ERROR_RATE, bound, "the error rate",
                    nothing or "the model server was not running, so it kept no statistics")
        else:
            value, requests = rate
            record(ERROR_RATE, round(value, 6), bound, value <= bound,
                   f"{value:.2%} of {requests} requests failed, above the bound of {bound:.2%}",
                   "" if requests else "no requests were served during the soak")
    if gates.p95_ms_max is not None:
        bound = gates.p95_ms_max
        found = _present([s.p95_ms for s in samples])
        if not found:
            missing(P95, bound, "p95 latency", nothing or "the benchmark gave no figure")
        else:
            worst = max(found)
            record(P95, worst, bound, worst <= bound, f"p95 latency {worst:g} ms is above the bound of {bound:g} ms")
    if gates.p95_ratio_max is not None:
        bound = gates.p95_ratio_max
        found = _present([s.p95_ms for s in samples])
        if baseline is not None and baseline.model is None and baseline.p95_ms is None:
            values[P95_RATIO] = {"value": None, "bound": bound, "ok": True,
                                 "note": "the device ran no model before: nothing to compare with"}
        elif baseline is None or baseline.p95_ms is None or baseline.p95_ms <= 0:
            default = "the previous model's latency on this device was not measured"
            note = (baseline.notes.get(P95) if baseline is not None else None) or default
            record(P95_RATIO, None, bound, False, f"the p95 ratio cannot be computed: {note}", note)
        elif not found:
            missing(P95_RATIO, bound, "the p95 ratio", nothing or "the benchmark gave no figure")
        else:
            worst = max(found)
            ratio = worst / baseline.p95_ms
            # Sub-millisecond models jitter by more than the ratio allows between two benches (0.065 ms then
            # 0.16 ms for the same graph on a lab device): a slowdown within the slack is not a regression.
            within_slack = ratio > bound and worst <= bound * baseline.p95_ms + P95_RATIO_SLACK_MS
            record(P95_RATIO, round(ratio, 4), bound, ratio <= bound or within_slack,
                   f"p95 latency {worst:g} ms is {ratio:.2f}x the previous model's {baseline.p95_ms:g} ms, "
                   f"above the bound of {bound:g}x",
                   f"{ratio:.2f}x, but within {P95_RATIO_SLACK_MS:g} ms of the bound: timer noise on a model this fast"
                   if within_slack else "")
    if gates.temperature_c_max is not None:
        bound = gates.temperature_c_max
        found = _present([s.temperature_c for s in samples])
        if not found:
            missing(TEMPERATURE, bound, "temperature", nothing or "the device reports no temperature")
        else:
            worst = max(found)
            record(TEMPERATURE, worst, bound, worst <= bound, f"temperature {worst:g} °C is above {bound:g} °C")
    if gates.memory_free_pct_min is not None:
        bound = gates.memory_free_pct_min
        found = _present([s.memory_free_pct for s in samples])
        if not found:
            missing(MEMORY, bound, "free memory", nothing or "the device reports no memory figures")
        else:
            worst = min(found)
            record(MEMORY, worst, bound, worst >= bound, f"free memory {worst:g}% is below the bound of {bound:g}%")
    first = next((g for g in GATE_ORDER if g in reasons), None)
    return GateResult(passed=first is None, values=values, reason=reasons[first] if first else "")


# -- the shadow gate ------------------------------------------------------------------------------------------

SHADOW_SKIPPED = "shadow_skipped"  # the candidate could not be loaded beside the active model (memory)
SHADOW_FAILURES = "shadow_failures"  # mirrored requests the candidate failed to run
SHADOW_REQUESTS = "shadow_requests"  # mirrored requests compared
SHADOW_AGREEMENT = "shadow_agreement"
SHADOW_P95_RATIO = "shadow_p95_ratio"
SHADOW_ORDER = (SHADOW_SKIPPED, SHADOW_FAILURES, SHADOW_REQUESTS, SHADOW_AGREEMENT, SHADOW_P95_RATIO)


def _figure(data: Any, *path: str) -> float | None:
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return float(data) if isinstance(data, int | float) and not isinstance(data, bool) else None


def shadow_agreement(figures: Mapping[str, Any]) -> tuple[float | None, str]:
    """How far the candidate agrees with the active model, and what that figure is: the top-1 agreement when the
    outputs are class scores, else the lowest median cosine similarity over the outputs; None when nothing was
    compared."""
    top1 = _figure(figures, "top1_agreement")
    if top1 is not None:
        return top1, "top-1 agreement"
    outputs = figures.get("outputs")
    medians = [m for o in (outputs.values() if isinstance(outputs, Mapping) else ())
               if (m := _figure(o, "cosine", "p50")) is not None]
    if medians:
        return min(medians), "median cosine similarity (the outputs are not class scores)"
    return None, "no output was compared"


def evaluate_shadow(policy: ShadowPolicy, figures: Mapping[str, Any] | None, *, skipped: str = "",
                    seconds: float | None = None) -> GateResult:
    """The shadow gate over a candidate's final figures (the agent's `shadow stop`/`status` answer).

    `skipped`: why the candidate was not loaded (too little memory); the plan's on_skip is then the verdict.
    Otherwise the candidate passes when it failed no mirrored request, at least min_requests were compared, and
    agreement and p95 ratio are within their bounds (a bound that is on and has no figure fails, closed).
    `seconds`: how long the shadow ran, for the reason's words."""
    tally = _Tally()
    values, reasons, record = tally.values, tally.reasons, tally.record

    if skipped:
        ok = policy.on_skip == "pass"
        record(SHADOW_SKIPPED, True, f"on skip: {policy.on_skip}", ok,
               f"the shadow step was skipped and the plan counts that as failed: {skipped}", skipped)
        return GateResult(passed=ok, values=values, reason=reasons.get(SHADOW_SKIPPED, ""))
    figures = figures or {}
    failed = int(_figure(figures, "failed") or 0)
    compared = int(_figure(figures, "compared") or 0)
    dropped = int(_figure(figures, "dropped") or 0)
    record(SHADOW_FAILURES, failed, 0, failed == 0,
           f"the candidate failed to run {failed} mirrored request(s): {figures.get('last_failure') or 'no reason'}")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    record(SHADOW_REQUESTS, compared, policy.min_requests, compared >= policy.min_requests,
           f"only {compared} mirrored request(s) were compared{took}, fewer than the {policy.min_requests} the plan "
           "needs (too little traffic for the time bound, or the share is too small)",
           f"{dropped} dropped while the candidate was busy" if dropped else "")
    if policy.min_agreement is not None:
        bound = policy.min_agreement
        agreement, what = shadow_agreement(figures)
        if agreement is None:
            record(SHADOW_AGREEMENT, None, bound, False, f"agreement was not measured: {what}", what)
        else:
            record(SHADOW_AGREEMENT, agreement, bound, agreement >= bound,
                   f"the candidate's {what} with the active model is {agreement:.4f}, below the bound {bound:g}", what)
    if policy.p95_ratio_max is not None:
        bound = policy.p95_ratio_max
        candidate, active = _figure(figures, "candidate_ms", "p95"), _figure(figures, "active_ms", "p95")
        if candidate is None or active is None or active <= 0:
            record(SHADOW_P95_RATIO, None, bound, False, "the p95 ratio was not measured: no request was compared",
                   "no request was compared")
        else:
            ratio = candidate / active
            # As the health gate's ratio: a sub-millisecond model's p95 jitters by more than the bound allows.
            within_slack = ratio > bound and candidate <= bound * active + P95_RATIO_SLACK_MS
            record(SHADOW_P95_RATIO, round(ratio, 4), bound, ratio <= bound or within_slack,
                   f"the candidate's p95 {candidate:g} ms is {ratio:.2f}x the active model's {active:g} ms on the same "
                   f"requests, above the bound of {bound:g}x",
                   f"candidate p95 {candidate:g} ms, active {active:g} ms" + (
                       f"; within {P95_RATIO_SLACK_MS:g} ms of the bound: timer noise" if within_slack else ""))
    first = next((g for g in SHADOW_ORDER if g in reasons), None)
    return GateResult(passed=first is None, values=values, reason=reasons[first] if first else "")
