"""The shadow and drift statistics of the on-device agent (fleetdesk/agent/shadowstats.py), against numpy on
fixed data: quantiles, top-1 agreement, cosine, max abs difference, PSI, mean shift, the sliding window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetdesk.agent.shadowstats import (
    RESERVOIR_SIZE,
    InputDrift,
    Reservoir,
    ShadowStats,
    histogram_quantile,
    psi,
    reference_statistics,
    top1_agreement,
)


def numpy_psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    pe = np.maximum(expected / expected.sum(), floor)
    pa = np.maximum(actual / actual.sum(), floor)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def test_reservoir_quantiles_equal_numpy_up_to_its_size_and_stay_bounded_after() -> None:
    values = np.random.default_rng(3).gamma(2.0, 5.0, size=RESERVOIR_SIZE)
    reservoir = Reservoir()
    for v in values:
        reservoir.add(float(v))
    for q in (0.0, 0.05, 0.5, 0.95, 0.99, 1.0):
        assert reservoir.quantile(q) == pytest.approx(float(np.percentile(values, q * 100)), rel=1e-12)

    more = np.random.default_rng(4).uniform(0.0, 1.0, size=20 * RESERVOIR_SIZE)
    bounded = Reservoir()
    for v in more:
        bounded.add(float(v))
    assert len(bounded.values) == RESERVOIR_SIZE and bounded.count == more.size
    assert bounded.low == more.min() and bounded.high == more.max()
    # A uniform sample of U(0, 1): its median is within a few standard errors (0.5 / sqrt(1024) ~ 0.016) of 0.5.
    assert abs(bounded.quantile(0.5) - 0.5) < 0.06


def test_top1_agreement_equals_numpy_argmax_and_refuses_what_is_not_a_classifier() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((64, 10)).astype(np.float32)
    b = a.copy()
    b[::4] = rng.standard_normal((16, 10))  # a quarter of the rows changed
    agree, rows = top1_agreement(a, b)
    assert rows == 64 and agree == int((np.argmax(a, -1) == np.argmax(b, -1)).sum())
    assert agree < 64
    assert top1_agreement(a, a) == (64, 64)
    assert top1_agreement(a[:, :1], b[:, :1]) == (0, 0)  # one class: no argmax to compare
    assert top1_agreement(a.ravel(), b.ravel()) == (0, 0)  # rank 1
    assert top1_agreement(a, b[:32]) == (0, 0)


def test_shadow_stats_of_fixed_outputs_match_numpy() -> None:
    rng = np.random.default_rng(6)
    stats = ShadowStats("cand", "act", ["logits"])
    actives, candidates = [], []
    for i in range(50):
        a = rng.standard_normal((2, 10)).astype(np.float32)
        c = a + (0.0 if i % 2 else rng.standard_normal((2, 10)).astype(np.float32))
        actives.append(a)
        candidates.append(c)
        stats.count_offer(queued=True)
        stats.record([a], [c], active_ms=float(i + 1), candidate_ms=2.0 * (i + 1))
    stats.count_offer(queued=False)
    snap = stats.snapshot()
    assert (snap["offered"], snap["mirrored"], snap["dropped"], snap["compared"]) == (51, 50, 1, 50)

    a_all, c_all = np.concatenate(actives), np.concatenate(candidates)
    want_agree = float(np.mean(np.argmax(a_all, -1) == np.argmax(c_all, -1)))
    assert snap["top1_agreement"] == pytest.approx(want_agree, abs=1e-6)
    cosines = [float(np.dot(a.ravel(), c.ravel()) / (np.linalg.norm(a) * np.linalg.norm(c)))
               for a, c in zip(actives, candidates, strict=True)]
    out = snap["outputs"]["logits"]
    assert out["cosine"]["p50"] == pytest.approx(float(np.median(cosines)), abs=1e-5)
    assert out["cosine"]["min"] == pytest.approx(min(cosines), abs=1e-5)
    assert sum(out["cosine_histogram"]["counts"]) == 50 and out["cosine_histogram"]["counts"][-1] >= 25
    diffs = [float(np.max(np.abs(a.astype(np.float64) - c))) for a, c in zip(actives, candidates, strict=True)]
    assert out["max_abs_diff"]["max"] == pytest.approx(max(diffs), abs=1e-6)
    assert out["max_abs_diff"]["min"] == 0.0
    assert snap["active_ms"]["p95"] == pytest.approx(float(np.percentile(np.arange(1, 51), 95)))
    assert snap["p95_ratio"] == pytest.approx(2.0)


def test_psi_equals_the_numpy_formula_and_is_zero_for_the_same_shares() -> None:
    expected = np.array([10, 20, 30, 25, 10, 5])
    actual = np.array([5, 10, 30, 30, 15, 0])  # an empty bin: floored, finite
    assert psi(list(expected), list(actual)) == pytest.approx(numpy_psi(expected, actual), rel=1e-12)
    assert psi(list(expected), list(expected * 3)) == pytest.approx(0.0, abs=1e-12)
    assert psi(list(expected), list(actual)) > 0.1


def test_reference_statistics_equal_numpy_per_channel() -> None:
    rng = np.random.default_rng(7)
    samples = (rng.standard_normal((40, 3, 8, 8)) * np.array([1.0, 2.0, 0.5])[None, :, None, None]
               + np.array([0.0, 5.0, -1.0])[None, :, None, None])
    reference = reference_statistics(samples)
    assert len(reference) == 3
    for c, ref in enumerate(reference):
        values = samples[:, c].ravel()
        assert ref["mean"] == pytest.approx(float(values.mean()))
        assert ref["std"] == pytest.approx(float(values.std()))
        assert ref["quantiles"] == pytest.approx([float(v) for v in np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])])
        edges = np.linspace(ref["low"], ref["high"], len(ref["counts"]) + 1)
        inner = np.histogram(np.clip(values, ref["low"], ref["high"]), bins=edges)[0]
        assert ref["counts"] == [int(n) for n in inner]


def test_histogram_quantile_interpolates_within_the_bin() -> None:
    # 100 values uniform over [0, 10) in ten bins of 10: the histogram's quantiles are the values' own.
    counts = [10] * 10
    assert histogram_quantile(counts, 0.0, 10.0, 0.5) == pytest.approx(5.0)
    assert histogram_quantile(counts, 0.0, 10.0, 0.25) == pytest.approx(2.5)
    assert histogram_quantile([0] * 10, 0.0, 10.0, 0.5) is None


def test_drift_of_the_reference_distribution_is_small_and_a_two_std_shift_is_seen_then_leaves_the_window() -> None:
    rng = np.random.default_rng(8)
    reference = reference_statistics(rng.standard_normal((200, 2, 16)) * 3.0 + 1.0)
    drift = InputDrift(reference, window=20)
    for _ in range(20):
        drift.add(rng.standard_normal((1, 2, 16)) * 3.0 + 1.0)
    calm = drift.scores()
    assert calm["requests"] == 20 and calm["psi"] < 0.1 and calm["mean_shift_std"] < 0.3

    for _ in range(20):  # the mean moves by 2 reference standard deviations (6.0)
        drift.add(rng.standard_normal((1, 2, 16)) * 3.0 + 7.0)
    shifted = drift.scores()
    assert shifted["psi"] > 1.0
    for channel, ref in zip(shifted["channels"], reference, strict=True):
        assert channel["mean_shift_std"] == pytest.approx(2.0, abs=0.35)
        assert (channel["mean"] - ref["mean"]) / ref["std"] == pytest.approx(channel["mean_shift_std"], abs=1e-4)

    for _ in range(20):  # back to normal: the shifted requests leave the window
        drift.add(rng.standard_normal((1, 2, 16)) * 3.0 + 1.0)
    assert drift.scores()["mean_shift_std"] < 0.3
    assert not math.isnan(drift.scores()["psi"])
