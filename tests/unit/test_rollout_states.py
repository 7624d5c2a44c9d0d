"""The per-device transition table (fleetdesk.inventory.rollout_states) read as a specification: every state can be
reached from pending, every state can end, the terminal states leave only by an operator's rollback, and the paths
the issue names are walks through the table."""

from __future__ import annotations

from collections import deque

import pytest

from fleetdesk.inventory import rollout_states as s
from fleetdesk.inventory.rollout_states import TABLE, TransitionError, allowed_events, transition

EVENTS = {s.STAGE, s.STAGED_OK, s.ACTIVATE, s.ACTIVATED, s.PASSED, s.CONFIRMED, s.GATES_FAILED, s.STEP_FAILED, s.LOST,
          s.REACHABLE, s.ROLLBACK, s.ROLLED_BACK_OK, s.ABORT, s.REVERTED, s.RETRY, s.SHADOW, s.SHADOW_PASSED,
          s.SHADOW_FAILED}


def successors(state: str) -> set[str]:
    nxt = {to for (frm, _), to in TABLE.items() if frm == state}
    if state == s.UNREACHABLE:
        nxt |= set(s.REACHABLE_TO)
    return nxt


def reachable_from(start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in successors(todo.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def walk(*events: str, start: str = s.PENDING, reconciled: str | None = None) -> list[str]:
    path = [start]
    for event in events:
        path.append(transition(path[-1], event, reconciled=reconciled))
    return path


def test_the_table_names_only_known_states_and_events() -> None:
    assert len(set(s.STATES)) == len(s.STATES) == 12
    for (frm, event), to in TABLE.items():
        assert frm in s.STATES and to in s.STATES, (frm, event, to)
        assert event in EVENTS, event
    assert s.TERMINAL <= set(s.STATES) and s.SWITCHED <= set(s.STATES)
    assert set(s.REACHABLE_TO) <= set(s.STATES)
    # Every event the module defines is used somewhere (REACHABLE by the unreachable rule).
    assert {event for (_, event) in TABLE} | {s.REACHABLE} == EVENTS


def test_every_state_is_reachable_from_pending() -> None:
    assert reachable_from(s.PENDING) == set(s.STATES)


def test_every_state_can_end_in_a_terminal_state() -> None:
    for state in s.STATES:
        assert reachable_from(state) & s.TERMINAL, f"{state} can never finish"


def test_terminal_states_leave_only_by_an_operators_rollback_or_a_retry_of_a_failure() -> None:
    exits = {state: {event: to for (frm, event), to in TABLE.items() if frm == state} for state in s.TERMINAL}
    assert exits == {
        s.DONE: {s.ROLLBACK: s.ROLLING_BACK},  # a confirmed device runs the new model: going back needs the agent
        # A failed device already runs its old model; `resume` retries one that failed before it switched.
        s.FAILED: {s.ROLLBACK: s.ROLLED_BACK, s.RETRY: s.PENDING},
        s.ROLLED_BACK: {},
        s.SKIPPED: {},
    }
    for state in s.TERMINAL:
        with pytest.raises(TransitionError):
            transition(state, s.REACHABLE, reconciled=s.DONE)


def test_the_happy_path_and_the_documented_ends() -> None:
    assert walk(s.STAGE, s.STAGED_OK, s.ACTIVATE, s.ACTIVATED, s.PASSED, s.CONFIRMED) == [
        s.PENDING, s.STAGING, s.STAGED, s.ACTIVATING, s.VERIFYING, s.CONFIRMING, s.DONE]
    # A model that does not load: the agent keeps the old one, the device is failed (nothing to roll back).
    assert walk(s.STAGE, s.STAGED_OK, s.ACTIVATE, s.STEP_FAILED)[-1] == s.FAILED
    # A disk that fills or a tampered artifact during staging fails the device before anything switched.
    assert walk(s.STAGE, s.STEP_FAILED)[-1] == s.FAILED
    # A failed gate goes back through the agent.
    assert walk(s.STAGE, s.STAGED_OK, s.ACTIVATE, s.ACTIVATED, s.GATES_FAILED, s.ROLLED_BACK_OK)[-2:] == [
        s.ROLLING_BACK, s.ROLLED_BACK]
    # The agent reverted by itself (no confirmation in time) while the laptop was away.
    assert walk(s.STAGE, s.STAGED_OK, s.ACTIVATE, s.ACTIVATED, s.PASSED, s.REVERTED)[-1] == s.ROLLED_BACK
    # The operator rolls back a finished device.
    assert walk(s.ROLLBACK, s.ROLLED_BACK_OK, start=s.DONE) == [s.DONE, s.ROLLING_BACK, s.ROLLED_BACK]


def test_unreachable_is_not_failed_and_comes_back_where_the_agent_says() -> None:
    for state in (s.PENDING, s.STAGING, s.STAGED, s.ACTIVATING, s.VERIFYING, s.CONFIRMING, s.ROLLING_BACK):
        assert transition(state, s.LOST) == s.UNREACHABLE
    assert s.UNREACHABLE not in s.TERMINAL
    # A cut link mid-transfer: back in staging, the transfer resumes.
    assert walk(s.STAGE, s.LOST, s.REACHABLE, reconciled=s.STAGING) == [s.PENDING, s.STAGING, s.UNREACHABLE,
                                                                          s.STAGING]
    for where in s.REACHABLE_TO:
        assert transition(s.UNREACHABLE, s.REACHABLE, reconciled=where) == where
    # Half-states the agent never reports (it switches atomically) are not accepted.
    for where in (s.ACTIVATING, s.ROLLING_BACK, s.UNREACHABLE, s.SKIPPED, None, "sideways"):
        with pytest.raises(TransitionError, match="cannot come back"):
            transition(s.UNREACHABLE, s.REACHABLE, reconciled=where)
    assert transition(s.UNREACHABLE, s.ABORT) == s.SKIPPED


def test_abort_never_leaves_an_unconfirmed_switch_behind() -> None:
    # Before the switch, abort skips the device; after it, abort goes back through the agent.
    for state in (s.PENDING, s.STAGING, s.STAGED):
        assert transition(state, s.ABORT) == s.SKIPPED
    assert transition(s.VERIFYING, s.ABORT) == s.ROLLING_BACK
    for state in s.SWITCHED - {s.VERIFYING}:
        with pytest.raises(TransitionError):
            transition(state, s.ABORT)


def test_refused_pairs_raise_and_allowed_events_lists_exactly_the_table() -> None:
    with pytest.raises(TransitionError, match="no transition from 'pending' on 'activate'"):
        transition(s.PENDING, s.ACTIVATE)
    with pytest.raises(TransitionError):
        transition(s.DONE, s.CONFIRMED)
    for state in s.STATES:
        listed = set(allowed_events(state))
        for event in EVENTS - {s.REACHABLE}:
            assert ((state, event) in TABLE) == (event in listed)
        assert (s.REACHABLE in listed) == (state == s.UNREACHABLE)


def test_the_shadow_step_runs_in_staged_and_a_failed_shadow_leaves_the_old_model() -> None:
    # Passed: staged again, then activated as without a shadow step.
    assert walk(s.STAGE, s.STAGED_OK, s.SHADOW, s.SHADOW_PASSED, s.ACTIVATE)[-3:] == [s.STAGED, s.STAGED,
                                                                                     s.ACTIVATING]
    # Failed: the device never switched, it ends failed (an error of its wave), and never goes through rolling-back.
    assert walk(s.STAGE, s.STAGED_OK, s.SHADOW, s.SHADOW_FAILED)[-1] == s.FAILED
    assert s.STAGED not in s.SWITCHED
    # Aborted, lost or rolled back mid-shadow: as any staged device.
    assert walk(s.SHADOW, s.ABORT, start=s.STAGED)[-1] == s.SKIPPED
    assert walk(s.SHADOW, s.LOST, start=s.STAGED)[-1] == s.UNREACHABLE
    assert walk(s.SHADOW, s.ROLLBACK, start=s.STAGED)[-1] == s.ROLLED_BACK
    for state in set(s.STATES) - {s.STAGED}:
        for event in (s.SHADOW, s.SHADOW_PASSED, s.SHADOW_FAILED):
            assert (state, event) not in TABLE
