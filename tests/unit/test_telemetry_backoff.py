"""Reconnect backoff: 1, 2, 4 ... seconds up to 30, each shortened by at most the jitter, from 1 again after reset."""

from __future__ import annotations

import random

import pytest

from fleetdesk.telemetry.stream import Backoff


class _Fixed(random.Random):
    """random() answers a chosen value: the jitter's edges can be checked exactly."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_without_jitter_the_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(rng=_Fixed(0.0))
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_jitter_shortens_by_at_most_a_quarter_and_never_exceeds_the_cap() -> None:
    assert Backoff(rng=_Fixed(0.999999)).next_delay() == pytest.approx(0.75, abs=1e-5)
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    nominal = [min(30.0, 2.0 ** i) for i in range(200)]
    assert all(0.75 * n <= d <= n for d, n in zip(delays, nominal, strict=True))
    assert len({round(d, 6) for d in delays[10:]}) > 100  # the fleet does not retry in lockstep


def test_reset_starts_from_the_first_delay_again() -> None:
    backoff = Backoff(rng=_Fixed(0.0))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1 and backoff.attempts == 1


def test_a_thousand_failures_do_not_overflow() -> None:
    backoff = Backoff(rng=_Fixed(0.0))
    for _ in range(1000):
        assert backoff.next_delay() <= 30


@pytest.mark.parametrize("kwargs", [{"first": 0}, {"first": 40, "cap": 30}, {"factor": 0.5}, {"jitter": 1.0}])
def test_nonsense_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
