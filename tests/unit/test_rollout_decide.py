"""What a rollout does after each device of a wave ends: the threshold semantics of fleetdesk/rollout/policy.py
(success is reached with >=, errors are exceeded with >) as a table, and the unreachable policy."""

from __future__ import annotations

import pytest

from fleetdesk.inventory import rollout_states as st
from fleetdesk.rollout.decide import (
    APPROVE,
    DONE,
    NEXT_WAVE,
    PAUSE,
    WAIT,
    WORK,
    WaveTally,
    decide,
)
from fleetdesk.rollout.policy import Threshold, WavePolicy


def policy(success: str | int = "100%", errors: str | int = 0, approve: bool = False) -> WavePolicy:
    return WavePolicy(success=Threshold.parse(success), errors=Threshold.parse(errors), approve=approve)


def wave(done: int = 0, failed: int = 0, rolled_back: int = 0, unreachable: int = 0, skipped: int = 0,
         pending: int = 0, verifying: int = 0) -> list[str]:
    return ([st.DONE] * done + [st.FAILED] * failed + [st.ROLLED_BACK] * rolled_back
            + [st.UNREACHABLE] * unreachable + [st.SKIPPED] * skipped + [st.PENDING] * pending
            + [st.VERIFYING] * verifying)


# (policy, device states, last wave, unreachable policy, waited out) -> action
TABLE = [
    # errors=0: the first failure pauses, even while other devices still have work to do
    pytest.param(policy(), wave(failed=1, pending=2), False, "wait", False, PAUSE, id="errors 0: first failure"),
    pytest.param(policy(), wave(rolled_back=1, done=2), False, "wait", False, PAUSE,
                 id="a gate rollback is a failure"),
    pytest.param(policy(), wave(done=1, pending=2), False, "wait", False, WORK, id="work left"),
    # errors="10%" of 20 tolerates 2 (exceeded means more than): the 3rd failure pauses
    pytest.param(policy(success="80%", errors="10%"), wave(done=10, failed=2, pending=8), False, "wait", False,
                 WORK, id="10% of 20: 2 failed goes on"),
    pytest.param(policy(success="80%", errors="10%"), wave(done=10, failed=3, pending=7), False, "wait", False,
                 PAUSE, id="10% of 20: 3rd failure pauses"),
    # "10%" of 15 is 1.5: 1 tolerated, the 2nd pauses
    pytest.param(policy(success="80%", errors="10%"), wave(done=13, failed=1, pending=1), False, "wait", False,
                 WORK, id="10% of 15: 1 failed goes on"),
    pytest.param(policy(success="80%", errors="10%"), wave(done=12, failed=2, pending=1), False, "wait", False,
                 PAUSE, id="10% of 15: 2nd failure pauses"),
    # errors as a count
    pytest.param(policy(success=1, errors=1), wave(done=2, failed=1), False, "wait", False, NEXT_WAVE,
                 id="count 1 tolerates 1"),
    pytest.param(policy(success=1, errors=1), wave(done=1, failed=2), False, "wait", False, PAUSE,
                 id="count 1: 2nd pauses"),
    # success is reached (>=); a share rounds up: 90% of 15 needs 14
    pytest.param(policy(), wave(done=3), False, "wait", False, NEXT_WAVE, id="100% reached"),
    pytest.param(policy(success="90%", errors=5), wave(done=14, failed=1), False, "wait", False, NEXT_WAVE,
                 id="90% of 15: 14 done reaches"),
    pytest.param(policy(success="90%", errors=5), wave(done=13, failed=2), False, "wait", False, PAUSE,
                 id="90% of 15: 13 done does not"),
    pytest.param(policy(success=5, errors=0), wave(done=2), False, "wait", False, NEXT_WAVE,
                 id="a count above the wave means the whole wave"),
    # the last wave finishes the rollout; approval only between waves
    pytest.param(policy(), wave(done=3), True, "wait", False, DONE, id="last wave: done"),
    pytest.param(policy(approve=True), wave(done=3), False, "wait", False, APPROVE, id="approve between waves"),
    pytest.param(policy(approve=True), wave(done=3), True, "wait", False, DONE, id="no approval after the last"),
    # skipped devices are neither done nor failed
    pytest.param(policy(success=1), wave(done=1, skipped=2), False, "wait", False, NEXT_WAVE, id="skipped"),
    pytest.param(policy(), wave(done=1, skipped=2), False, "wait", False, PAUSE, id="skipped is not done"),
    # unreachable with "wait": not an error; the wave waits, then goes on only if success is reached without it
    pytest.param(policy(), wave(done=2, unreachable=1), False, "wait", False, WAIT, id="wait: waits"),
    pytest.param(policy(), wave(unreachable=1, pending=1), False, "wait", False, WORK, id="wait: work first"),
    pytest.param(policy(), wave(done=2, unreachable=1), False, "wait", True, PAUSE,
                 id="wait: waited out, success not reached"),
    pytest.param(policy(success="60%"), wave(done=2, unreachable=1), False, "wait", True, NEXT_WAVE,
                 id="wait: waited out, success reached"),
    pytest.param(policy(errors=0), wave(done=2, unreachable=3), False, "wait", False, WAIT,
                 id="wait: unreachable never counts as an error"),
    # unreachable with "count": an error at once
    pytest.param(policy(), wave(done=2, unreachable=1), False, "count", False, PAUSE, id="count: pauses"),
    pytest.param(policy(success=2, errors=1), wave(done=2, unreachable=1), False, "count", False, NEXT_WAVE,
                 id="count: within the threshold"),
]


@pytest.mark.parametrize(("wave_policy", "states", "last", "unreachable", "waited_out", "action"), TABLE)
def test_the_decision_table(wave_policy: WavePolicy, states: list[str], last: bool, unreachable: str,
                            waited_out: bool, action: str) -> None:
    decision = decide(wave_policy, WaveTally.of(states), wave=0, last_wave=last, unreachable=unreachable,
                      waited_out=waited_out)
    assert decision.action == action, decision.reason


def test_the_reason_names_the_figures() -> None:
    decision = decide(policy(success="80%", errors="10%"), WaveTally.of(wave(done=10, failed=3, pending=7)),
                      wave=1, last_wave=False)
    assert (decision.errors, decision.errors_allowed, decision.success_needed) == (3, 2, 16)
    assert "3 of 20" in decision.reason and "wave 2" in decision.reason and "(2)" in decision.reason
    approve = decide(policy(approve=True), WaveTally.of(wave(done=1)), wave=0, last_wave=False)
    assert "wave 2" in approve.reason and "approval" in approve.reason


def test_tally_counts_each_kind_of_state() -> None:
    tally = WaveTally.of([st.DONE, st.FAILED, st.ROLLED_BACK, st.UNREACHABLE, st.SKIPPED, st.STAGED, st.VERIFYING,
                          st.ROLLING_BACK, st.PENDING])
    assert (tally.size, tally.done, tally.errors, tally.unreachable, tally.skipped, tally.active) == (9, 1, 2, 1, 1, 4)


def test_an_unknown_unreachable_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="neither"):
        decide(policy(), WaveTally.of(wave(done=1)), wave=0, last_wave=True, unreachable="ignore")
