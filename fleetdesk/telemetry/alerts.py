"""Operator-set alert thresholds and the monitor that turns samples into raised and cleared alerts.

A threshold is crossed when a metric stays beyond its bound for `hold_s` seconds of the device's own
sample time; it raises once, and clears only when the value comes back past the bound by `hysteresis`,
so a value hovering at the bound does not flap. No Qt here: the GUI and the CLI render `AlertEvent`s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fleetdesk.errors import ConfigError
from fleetdesk.telemetry.sample import METRIC_LABELS, METRICS, Sample

AlertKind = Literal["raised", "cleared"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """`metric` above (or below) `bound` for `hold_s` seconds raises; back past the bound by `hysteresis` clears."""

    metric: str
    bound: float
    above: bool = True
    hold_s: float = 0.0
    hysteresis: float = 0.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"there is no telemetry metric {self.metric!r}",
                              fix=f"choose one of {', '.join(METRICS)}")
        for name in ("bound", "hold_s", "hysteresis"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"the {name} of the {self.metric} threshold is not a number: {value!r}",
                                  fix="type a number")
        if self.hold_s < 0 or self.hysteresis < 0:
            raise ConfigError(f"the {self.metric} threshold has a negative hold time or hysteresis",
                              fix="use 0 or more")

    @property
    def clear_at(self) -> float:
        """The value the metric must come back past before the alert clears."""
        return self.bound - self.hysteresis if self.above else self.bound + self.hysteresis

    def beyond(self, value: float) -> bool:
        """Whether `value` is out of range (past the bound)."""
        return value > self.bound if self.above else value < self.bound

    def back(self, value: float) -> bool:
        """Whether `value` is back in range past the hysteresis (an active alert clears)."""
        return value < self.clear_at if self.above else value > self.clear_at

    def describe(self) -> str:
        """The rule in an operator's words: "Temperature °C above 80 (for 10 s)"."""
        text = f"{METRIC_LABELS[self.metric]} {'above' if self.above else 'below'} {_number(self.bound)}"
        if self.hold_s:
            text += f" for {_number(self.hold_s)} s"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Threshold:
        if not isinstance(data, Mapping) or "metric" not in data or "bound" not in data:
            raise ConfigError("a stored alert threshold has no metric or bound", fix="set the thresholds again")
        return cls(metric=str(data["metric"]), bound=data["bound"], above=bool(data.get("above", True)),
                   hold_s=data.get("hold_s", 0.0), hysteresis=data.get("hysteresis", 0.0),
                   enabled=bool(data.get("enabled", True)))


def _number(value: float) -> str:
    return f"{value:g}"


# What a new installation watches: sensible for the devices FleetDesk targets, all editable.
# Raspberry Pi firmware starts soft throttling at 80 °C (raspberrypi.com documentation, "Frequency
# management and thermal control"); Jetson Orin throttles in the high 90s, so 80 °C is an early warning.
DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("temp_c", 80.0, hold_s=5.0, hysteresis=5.0),
    Threshold("cpu_pct", 95.0, hold_s=30.0, hysteresis=10.0),
    Threshold("mem_pct", 90.0, hold_s=10.0, hysteresis=5.0),
    Threshold("latency_p95_ms", 100.0, hold_s=10.0, hysteresis=10.0),
    # Input drift: a population stability index over 0.25 is the usual reading of "the population has shifted
    # significantly" (0.1-0.25 moderate; the convention of credit scoring, where PSI comes from), and a mean a whole
    # reference standard deviation away is a different scene. Held 30 s: the device's window is 512 requests.
    Threshold("drift_psi", 0.25, hold_s=30.0, hysteresis=0.1),
    Threshold("drift_shift_sd", 1.0, hold_s=30.0, hysteresis=0.25),
)


def thresholds_to_json(thresholds: Iterable[Threshold]) -> str:
    return json.dumps([t.to_dict() for t in thresholds])


def thresholds_from_json(text: str) -> list[Threshold]:
    """Thresholds stored by `thresholds_to_json`; ConfigError names what is wrong with them."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError("the stored alert thresholds are not readable", fix="set the thresholds again",
                          cause=exc) from exc
    if not isinstance(data, list):
        raise ConfigError("the stored alert thresholds are not a list", fix="set the thresholds again")
    return check_thresholds([Threshold.from_dict(item) for item in data])


def with_new_defaults(stored: Sequence[Threshold]) -> list[Threshold]:
    """Stored thresholds, and the default rule of each metric they do not name: a metric FleetDesk learned to watch
    after they were saved (input drift) is watched as a new installation watches it. Rules the operator switched
    off are stored switched off, never dropped, so a metric they do not name did not exist when they were saved."""
    named = {t.metric for t in stored}
    return check_thresholds([*stored, *(t for t in DEFAULT_THRESHOLDS if t.metric not in named)])


def check_thresholds(thresholds: Sequence[Threshold]) -> list[Threshold]:
    """The thresholds as given, refusing two rules for the same metric and direction (which one would win?)."""
    seen: set[tuple[str, bool]] = set()
    for threshold in thresholds:
        key = (threshold.metric, threshold.above)
        if key in seen:
            raise ConfigError(f"two thresholds for {METRIC_LABELS[threshold.metric]} "
                              f"{'above' if threshold.above else 'below'} a bound",
                              fix="keep one of them")
        seen.add(key)
    return list(thresholds)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A threshold was crossed ("raised") or the value came back ("cleared"), at device time `at`."""

    device_id: int
    metric: str
    value: float
    bound: float
    kind: AlertKind
    at: float
    above: bool = True

    @property
    def message(self) -> str:
        label = METRIC_LABELS[self.metric]
        side = "above" if self.above else "below"
        if self.kind == "raised":
            return f"{label} {_number(round(self.value, 1))} is {side} {_number(self.bound)}"
        return f"{label} back to {_number(round(self.value, 1))} ({side} {_number(self.bound)} cleared)"


@dataclass(slots=True)
class _Watch:
    pending_since: float | None = None  # device time the value first went past the bound
    raised: AlertEvent | None = None
    last: float = math.nan


@dataclass
class AlertMonitor:
    """Watches every device's samples against the thresholds; `check` returns what changed."""

    thresholds: list[Threshold] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    # device id -> (metric, above) -> what is known; per device so the dashboard's reads stay cheap
    _watches: dict[int, dict[tuple[str, bool], _Watch]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.thresholds = check_thresholds(self.thresholds)

    def check(self, device_id: int, sample: Sample) -> list[AlertEvent]:
        """Feed one sample of one device; the alerts it raised or cleared, in threshold order."""
        events: list[AlertEvent] = []
        watches = self._watches.setdefault(device_id, {})
        for threshold in self.thresholds:
            if not threshold.enabled:
                continue
            value = sample.value(threshold.metric)
            key = (threshold.metric, threshold.above)
            watch = watches.get(key)
            if value is None:
                # Not reported this time: nothing is known, so a hold starts again, and an alert stays.
                if watch is not None:
                    watch.pending_since = None
                continue
            if watch is None:
                watch = watches[key] = _Watch()
            watch.last = value
            if watch.raised is None:
                if not threshold.beyond(value):
                    watch.pending_since = None
                    continue
                if watch.pending_since is None:
                    watch.pending_since = sample.t
                if sample.t - watch.pending_since >= threshold.hold_s:
                    watch.raised = AlertEvent(device_id, threshold.metric, value, threshold.bound, "raised",
                                              sample.t, threshold.above)
                    events.append(watch.raised)
            elif threshold.back(value):
                watch.raised = None
                watch.pending_since = None
                events.append(AlertEvent(device_id, threshold.metric, value, threshold.bound, "cleared",
                                         sample.t, threshold.above))
        return events

    def set_thresholds(self, thresholds: Sequence[Threshold], at: float) -> list[AlertEvent]:
        """Use new thresholds; alerts whose rule went away, was switched off or got a new bound are cleared
        (returned, at time `at`) and judged afresh from the next sample."""
        new = check_thresholds(thresholds)
        kept = {(t.metric, t.above): t for t in new if t.enabled}
        events: list[AlertEvent] = []
        for device_id, watches in self._watches.items():
            for key, watch in list(watches.items()):
                metric, above = key
                rule = kept.get(key)
                if rule is not None and (watch.raised is None or rule.bound == watch.raised.bound):
                    continue
                del watches[key]
                if watch.raised is not None:
                    events.append(AlertEvent(device_id, metric, watch.last, watch.raised.bound, "cleared", at,
                                             above))
        self.thresholds = new
        return events

    def active(self, device_id: int) -> dict[str, AlertEvent]:
        """The raised alerts of one device, by metric."""
        watches = self._watches.get(device_id)
        if not watches:
            return {}
        return {w.raised.metric: w.raised for w in watches.values() if w.raised is not None}

    def alerting(self) -> set[int]:
        """Devices with at least one raised alert."""
        return {d for d, watches in self._watches.items() if any(w.raised is not None for w in watches.values())}

    def threshold(self, metric: str) -> Threshold | None:
        """The enabled "above" rule for `metric` (or its "below" rule if that is the only one)."""
        rules = [t for t in self.thresholds if t.metric == metric and t.enabled]
        rules.sort(key=lambda t: not t.above)
        return rules[0] if rules else None

    def forget(self, device_id: int) -> None:
        self._watches.pop(device_id, None)
