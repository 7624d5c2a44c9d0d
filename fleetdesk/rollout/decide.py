"""What a rollout does next, given the states of one wave's devices and the wave's policy: pure decisions.

The engine calls `decide` after every device of a wave reaches an end state (and whenever it wakes up);
the thresholds mean exactly what fleetdesk/rollout/policy.py says: success is *reached* (done >= needed),
errors are *exceeded* (errors > allowed), so errors=0 pauses on the first failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetdesk.inventory import rollout_states as st
from fleetdesk.rollout.policy import WavePolicy

# -- actions --------------------------------------------------------------------------------------------------

WORK = "work"  # devices of the wave still have steps to run: run them
WAIT = "wait"  # only unreachable devices are left (policy "wait"): retry them until unreachable_wait_s
NEXT_WAVE = "next-wave"  # the wave reached its success threshold: start the next one
APPROVE = "approve"  # the wave succeeded and its policy wants the operator's approval before the next
DONE = "done"  # the last wave succeeded: the rollout is done
PAUSE = "pause"  # the error threshold was exceeded, or the success threshold can no longer be reached

ACTIONS = (WORK, WAIT, NEXT_WAVE, APPROVE, DONE, PAUSE)

# A device that ended rolled back in a wave that is still running was rolled back because of a failure
# (a failed gate, or the agent reverted it): it counts as an error, like `failed`.
ERROR_STATES = frozenset({st.FAILED, st.ROLLED_BACK})


@dataclass(frozen=True)
class WaveTally:
    """How many devices of one wave are in which kind of state."""

    size: int
    done: int = 0
    errors: int = 0  # failed or rolled back
    unreachable: int = 0
    skipped: int = 0
    active: int = 0  # not yet at an end: pending, staging, staged, activating, verifying, confirming, rolling back

    @classmethod
    def of(cls, device_states: Iterable[str]) -> WaveTally:
        counts = {"done": 0, "errors": 0, "unreachable": 0, "skipped": 0, "active": 0}
        size = 0
        for state in device_states:
            size += 1
            if state == st.DONE:
                counts["done"] += 1
            elif state in ERROR_STATES:
                counts["errors"] += 1
            elif state == st.UNREACHABLE:
                counts["unreachable"] += 1
            elif state == st.SKIPPED:
                counts["skipped"] += 1
            else:
                counts["active"] += 1
        return cls(size=size, **counts)


@dataclass(frozen=True)
class Decision:
    """The action, the reason in the operator's words, and the figures it was decided on."""

    action: str
    reason: str
    done: int
    success_needed: int
    errors: int
    errors_allowed: int

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "reason": self.reason, "done": self.done,
                "success_needed": self.success_needed, "errors": self.errors, "errors_allowed": self.errors_allowed}


def success_needed(policy: WavePolicy, size: int) -> int:
    """Devices that must be done before the next wave starts (a share rounded up, never more than the wave)."""
    return policy.success.devices(size)


def errors_allowed(policy: WavePolicy, size: int) -> int:
    """Failed devices the wave tolerates (a share rounded down); one more pauses the rollout."""
    return policy.errors.tolerated(size)


def decide(policy: WavePolicy, tally: WaveTally, *, wave: int, last_wave: bool, unreachable: str = "wait",
           waited_out: bool = False) -> Decision:
    """The next action for wave `wave` (0-based).

    `unreachable`: the plan's policy, "wait" (unreachable devices are not errors; the wave waits for them
    until `waited_out`) or "count" (each unreachable device counts as an error at once).
    After waiting out, an unreachable device is still not an error: the wave goes on if its success
    threshold is reached without it, and pauses otherwise.
    """
    if unreachable not in ("wait", "count"):
        raise ValueError(f"unreachable policy {unreachable!r} is neither 'wait' nor 'count'")
    needed = success_needed(policy, tally.size)
    allowed = errors_allowed(policy, tally.size)
    errors = tally.errors + (tally.unreachable if unreachable == "count" else 0)

    def decision(action: str, reason: str) -> Decision:
        return Decision(action, reason, tally.done, needed, errors, allowed)

    label = f"wave {wave + 1}"
    if policy.errors_exceeded(errors, tally.size):
        what = "failed" if unreachable == "wait" or not tally.unreachable else "failed or unreachable"
        return decision(PAUSE, f"{errors} of {tally.size} device(s) in {label} {what}, more than the error "
                               f"threshold allows ({allowed})")
    if tally.active:
        return decision(WORK, f"{tally.active} device(s) in {label} still have steps to run")
    if tally.unreachable and unreachable == "wait" and not waited_out:
        return decision(WAIT, f"{tally.unreachable} device(s) in {label} unreachable; waiting for them")
    if policy.success_reached(tally.done, tally.size):
        left = f" ({tally.unreachable} unreachable left behind)" if tally.unreachable else ""
        if last_wave:
            return decision(DONE, f"{label} (the last) reached its success threshold: {tally.done} of "
                                  f"{tally.size} done, {needed} needed{left}")
        if policy.approve:
            return decision(APPROVE, f"{label} succeeded ({tally.done} of {tally.size} done{left}); waiting for "
                                     f"the operator's approval before wave {wave + 2}")
        return decision(NEXT_WAVE, f"{label} reached its success threshold: {tally.done} of {tally.size} done, "
                                   f"{needed} needed{left}")
    why = f" ({tally.unreachable} still unreachable)" if tally.unreachable else ""
    return decision(PAUSE, f"only {tally.done} of {tally.size} device(s) in {label} are done{why}; the success "
                           f"threshold needs {needed}")
