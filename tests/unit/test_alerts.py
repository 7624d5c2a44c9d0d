"""Alert thresholds: raised once when crossed (after the hold time), cleared with hysteresis, stored and refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleetdesk.errors import ConfigError
from fleetdesk.telemetry.alerts import (
    DEFAULT_THRESHOLDS,
    AlertMonitor,
    Threshold,
    thresholds_from_json,
    thresholds_to_json,
    with_new_defaults,
)
from fleetdesk.telemetry.sample import Sample


def feed(monitor: AlertMonitor, device_id: int, metric: str, values: list[float | None], start: float = 1000.0):
    """One sample a second with `metric` at each value; every event in order."""
    events = []
    for n, value in enumerate(values):
        events += monitor.check(device_id, Sample(t=start + n, **{metric: value}))
    return events


def test_a_crossing_raises_once_and_clears_only_past_the_hysteresis() -> None:
    monitor = AlertMonitor([Threshold("temp_c", 80.0, hysteresis=5.0)])
    events = feed(monitor, 1, "temp_c", [70, 79, 81, 90, 85, 79, 76, 75.5, 74.9, 74, 81])
    assert [(e.kind, e.value, e.at) for e in events] == [
        ("raised", 81, 1002.0),  # once, though it stays above for four samples
        ("cleared", 74.9, 1008.0),  # 79 and 76 are under the bound but not under bound - hysteresis
        ("raised", 81, 1010.0),
    ]
    assert all(e.device_id == 1 and e.metric == "temp_c" and e.bound == 80.0 for e in events)
    assert monitor.active(1)["temp_c"].kind == "raised"
    assert monitor.alerting() == {1}


def test_a_hold_time_needs_the_value_past_the_bound_for_that_long_without_a_break() -> None:
    monitor = AlertMonitor([Threshold("cpu_pct", 95.0, hold_s=3.0, hysteresis=10.0)])
    # 96 for 3 s, a dip to 90, then 97 from t=1004: raised at 1007, when it has been above for 3 s.
    events = feed(monitor, 7, "cpu_pct", [96, 96, 96, 90, 97, 97, 97, 97, 80])
    assert [(e.kind, e.at) for e in events] == [("raised", 1007.0), ("cleared", 1008.0)]


def test_a_missing_value_neither_raises_nor_clears_and_restarts_a_hold() -> None:
    monitor = AlertMonitor([Threshold("latency_p95_ms", 50.0, hold_s=2.0, hysteresis=5.0)])
    assert feed(monitor, 1, "latency_p95_ms", [60, None, 60, 60]) == []  # the gap broke the hold
    assert [e.kind for e in feed(monitor, 1, "latency_p95_ms", [60], start=1004.0)] == ["raised"]
    assert feed(monitor, 1, "latency_p95_ms", [None, None], start=1005.0) == []
    assert "latency_p95_ms" in monitor.active(1)


def test_below_bounds_and_devices_are_judged_separately() -> None:
    monitor = AlertMonitor([Threshold("infer_rate", 1.0, above=False, hysteresis=0.5)])
    assert [e.kind for e in feed(monitor, 1, "infer_rate", [5, 0.5, 1.2, 1.6])] == ["raised", "cleared"]
    assert feed(monitor, 2, "infer_rate", [5, 4]) == []
    assert monitor.active(2) == {}


def test_a_switched_off_or_moved_rule_clears_its_alert() -> None:
    monitor = AlertMonitor([Threshold("temp_c", 80.0, hysteresis=5.0), Threshold("cpu_pct", 90.0)])
    feed(monitor, 1, "temp_c", [85])
    feed(monitor, 2, "cpu_pct", [99])
    cleared = monitor.set_thresholds([Threshold("temp_c", 90.0, hysteresis=5.0),
                                      Threshold("cpu_pct", 90.0, enabled=False)], at=2000.0)
    assert sorted((e.device_id, e.metric, e.kind, e.at) for e in cleared) == [
        (1, "temp_c", "cleared", 2000.0), (2, "cpu_pct", "cleared", 2000.0)]
    assert monitor.alerting() == set()
    assert feed(monitor, 1, "temp_c", [85], start=2001.0) == []  # judged against the new bound
    assert [e.bound for e in feed(monitor, 1, "temp_c", [91], start=2002.0)] == [90.0]


def test_thresholds_round_trip_through_their_stored_form() -> None:
    stored = thresholds_to_json(DEFAULT_THRESHOLDS)
    assert thresholds_from_json(stored) == list(DEFAULT_THRESHOLDS)


@pytest.mark.parametrize(("text", "words"), [
    ('[{"metric": "fan_rpm", "bound": 1}]', "no telemetry metric 'fan_rpm'"),
    ('[{"metric": "temp_c", "bound": "hot"}]', "not a number"),
    ('[{"metric": "temp_c", "bound": 80, "hold_s": -1}]', "negative"),
    ('[{"metric": "temp_c", "bound": 80}, {"metric": "temp_c", "bound": 90}]', "two thresholds"),
    ('{"metric": "temp_c"}', "not a list"),
    ("not json", "not readable"),
])
def test_bad_stored_thresholds_are_refused_with_the_fix(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        thresholds_from_json(text)
    assert words in str(caught.value)
    assert caught.value.fix


def test_an_event_says_what_crossed_in_operator_words() -> None:
    monitor = AlertMonitor([Threshold("temp_c", 80.0, hysteresis=5.0)])
    raised, cleared = feed(monitor, 1, "temp_c", [91.24, 70])
    assert raised.message == "Temperature °C 91.2 is above 80"
    assert cleared.message == "Temperature °C back to 70 (above 80 cleared)"
    assert Threshold("cpu_pct", 95, hold_s=30).describe() == "CPU % above 95 for 30 s"


def test_input_drift_scored_by_the_device_reaches_the_sample_and_the_default_alerts_raise_and_clear() -> None:
    """The agent's own drift statistics (fleetdesk.agent.shadowstats, as serve-stats.json carries them in each
    telemetry line): inputs like the reference score about 0; inputs whose mean moved 2 reference standard deviations
    raise both default drift alerts after their hold time; back to the reference, they clear."""
    import numpy as np

    from fleetdesk.agent.serve import _drift_summary
    from fleetdesk.agent.shadowstats import InputDrift, reference_statistics

    rng = np.random.default_rng(3)
    reference = reference_statistics(rng.normal(0.5, 0.1, size=(64, 3, 8, 8)))
    monitor = AlertMonitor([t for t in DEFAULT_THRESHOLDS if t.metric.startswith("drift_")])

    def line(drift: InputDrift) -> Sample:
        state = _drift_summary({"state": "watching", "sampled": 1, "dropped": 0, "inputs": {"image": drift.scores()}})
        return Sample.from_json({"type": "sample", "t": 0.0, "inference": {"model": "a" * 64, "drift": state}})

    window = InputDrift(reference, window=64)
    for _ in range(64):
        window.add(rng.normal(0.5, 0.1, size=(1, 3, 8, 8)))
    calm = line(window)
    assert calm.drift_psi is not None and calm.drift_psi < 0.1 and calm.drift_shift_sd is not None
    assert calm.drift_shift_sd < 0.25
    for _ in range(64):  # the scene changed: the window now holds only shifted inputs
        window.add(rng.normal(0.7, 0.1, size=(1, 3, 8, 8)))
    moved = line(window)
    assert moved.drift_psi is not None and moved.drift_psi > 0.25
    assert moved.drift_shift_sd is not None and 1.8 < moved.drift_shift_sd < 2.2
    events = []
    for t in range(0, 40):
        events += monitor.check(1, replace(calm if t < 5 else moved, t=1000.0 + t))
    assert sorted((e.kind, e.metric) for e in events) == [("raised", "drift_psi"), ("raised", "drift_shift_sd")]
    assert all(e.at == 1035.0 for e in events)  # 30 s hold from the first drifted sample at 1005
    cleared = monitor.check(1, replace(calm, t=1040.0))
    assert sorted((e.kind, e.metric) for e in cleared) == [("cleared", "drift_psi"), ("cleared", "drift_shift_sd")]
    # A server that does not watch drift (no reference) says nothing: no value, never an invented 0.
    off = Sample.from_json({"type": "sample", "t": 1.0, "inference": {"drift": {"state": "off", "reason": "x"}}})
    assert (off.drift_psi, off.drift_shift_sd) == (None, None)


def test_thresholds_saved_before_a_metric_existed_get_its_default_rule_and_keep_every_choice_made() -> None:
    """Saved before input drift was watched: the operator's rules stay as they were (one switched off stays off),
    and the drift rules a new installation has are added."""
    saved = [Threshold("temp_c", 70.0, hold_s=5.0), Threshold("cpu_pct", 95.0, enabled=False)]
    restored = with_new_defaults(thresholds_from_json(thresholds_to_json(saved)))
    assert restored[:2] == saved
    added = {t.metric: t for t in restored[2:]}
    assert set(added) == {t.metric for t in DEFAULT_THRESHOLDS} - {"temp_c", "cpu_pct"}
    assert added["drift_psi"] == next(t for t in DEFAULT_THRESHOLDS if t.metric == "drift_psi")
    assert with_new_defaults(restored) == restored  # nothing added twice
