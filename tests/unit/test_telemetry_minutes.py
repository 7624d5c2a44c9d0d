"""Folding samples into minutes: averages over the samples that had a metric, maxima, counts; merging two
partial summaries of one minute."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from fleetdesk.telemetry.history import HISTORY_METRICS, MinuteAccumulator, MinuteSummary, minute_of
from fleetdesk.telemetry.sample import Sample

T0 = 1763700000.0  # 2025-11-21 04:40:00 UTC, a minute's start


def test_minute_of_floors_to_the_minute() -> None:
    assert minute_of(T0) == T0 and minute_of(T0 + 59.999) == T0 and minute_of(T0 + 60) == T0 + 60


def test_average_and_max_count_only_samples_that_had_the_metric() -> None:
    acc = MinuteAccumulator(3, int(T0))
    acc.add(Sample(t=T0 + 1, cpu_pct=10.0, temp_c=40.0))
    acc.add(Sample(t=T0 + 2, cpu_pct=30.0))
    acc.add(Sample(t=T0 + 3, cpu_pct=math.nan, gpu_pct=None, latency_p95_ms=5.0))
    summary = acc.summary()
    assert summary.device_id == 3 and summary.samples == 3
    assert summary.minute == datetime.fromtimestamp(T0, UTC)
    assert summary.avg["cpu_pct"] == 20.0 and summary.max["cpu_pct"] == 30.0
    assert summary.avg["temp_c"] == 40.0 and summary.avg["latency_p95_ms"] == 5.0
    assert summary.avg["gpu_pct"] is None and summary.max["gpu_pct"] is None
    assert set(summary.avg) == set(HISTORY_METRICS)


def test_absorbing_another_accumulator_is_the_same_as_one_that_saw_everything() -> None:
    samples = [Sample(t=T0 + i, cpu_pct=float(i), infer_rate=float(i % 3) if i % 2 else None) for i in range(10)]
    whole, a, b = (MinuteAccumulator(1, int(T0)) for _ in range(3))
    for i, s in enumerate(samples):
        whole.add(s)
        (a if i < 4 else b).add(s)
    a.absorb(b)
    assert a.summary() == whole.summary()


def test_merging_two_stored_summaries_weights_by_samples() -> None:
    minute = datetime.fromtimestamp(T0, UTC)
    first = MinuteSummary(1, minute, 3, {"cpu_pct": 10.0, "temp_c": None}, {"cpu_pct": 20.0, "temp_c": None})
    second = MinuteSummary(1, minute, 1, {"cpu_pct": 50.0, "temp_c": 45.0}, {"cpu_pct": 50.0, "temp_c": 45.0})
    merged = first.merged(second)
    assert merged.samples == 4 and merged.avg["cpu_pct"] == 20.0 and merged.max["cpu_pct"] == 50.0
    assert merged.avg["temp_c"] == 45.0 and merged.max["temp_c"] == 45.0
    assert merged.avg["gpu_pct"] is None
