"""A device's life in a rollout, as one transition table (in the style of Mender's update state machine).

Every change of a device's state goes through `transition`, and the engine writes the new state to the
inventory's journal *before* it runs the step that state names: after any crash the journal says which
step was under way, and the engine asks the device (through its agent) how far it got.

The table lives in the inventory, which applies it in the same write as the state (inventory/rollouts.py), on
a floor below fleetdesk.rollout, whose engine drives it.

    pending --stage--> staging --staged--> staged --activate--> activating --activated--> verifying
    staged --shadow--> staged --shadow-passed--> staged (the plan's shadow step; shadow-failed --> failed)
    verifying --passed--> confirming --confirmed--> done

Ends: done, failed, unreachable (not failed: the device may come back), rolled-back, skipped.
A device that failed before it switched (staging: disk full, a transfer that kept failing) goes back to pending
by `retry` when the operator resumes the rollout: nothing on it was switched, so trying again is safe.
`unreachable` is left by `reachable`, to the state the engine finds on the device when it is back.
Rolling back a device that was activated goes through rolling-back; one that never activated has
nothing to undo and goes straight to rolled-back.
"""

from __future__ import annotations

from collections.abc import Mapping

# -- states ---------------------------------------------------------------------------------------------------

PENDING = "pending"  # planned, nothing sent yet
STAGING = "staging"  # the artifact is being copied to ROOT/artifacts/<id> and checked there
STAGED = "staged"  # the artifact is on the device, every byte checked; the old model still serves
ACTIVATING = "activating"  # the agent switches `current` (with a confirm deadline) and restarts its server
VERIFYING = "verifying"  # health gates are measured on the device, through the soak time
CONFIRMING = "confirming"  # the gates passed; the agent is told to keep the new model
DONE = "done"  # confirmed: the device runs the new model for good
ROLLING_BACK = "rolling-back"  # the agent is told to go back to the previous model
ROLLED_BACK = "rolled-back"  # the device runs the model it ran before the rollout
FAILED = "failed"  # a step failed for a reason that retrying will not fix (the device runs its old model)
UNREACHABLE = "unreachable"  # the device did not answer; not a failure (see the plan's unreachable policy)
SKIPPED = "skipped"  # the rollout was aborted before this device started

STATES = (PENDING, STAGING, STAGED, ACTIVATING, VERIFYING, CONFIRMING, DONE, ROLLING_BACK, ROLLED_BACK, FAILED,
          UNREACHABLE, SKIPPED)
TERMINAL = frozenset({DONE, ROLLED_BACK, FAILED, SKIPPED})  # nothing more happens unless the operator rolls back
# States in which the device may already run the new model (a crash here needs the agent's word).
SWITCHED = frozenset({ACTIVATING, VERIFYING, CONFIRMING, DONE, ROLLING_BACK})

# -- events ---------------------------------------------------------------------------------------------------

STAGE = "stage"  # the engine starts copying
STAGED_OK = "staged"  # every file is on the device with the manifest's hashes
ACTIVATE = "activate"  # the engine asks the agent to switch
ACTIVATED = "activated"  # the agent switched and its server loaded the model
PASSED = "passed"  # every health gate passed through the soak
CONFIRMED = "confirmed"  # the agent kept the new model
GATES_FAILED = "gates-failed"  # a health gate failed (its measured value is recorded)
STEP_FAILED = "step-failed"  # the step failed on the device: disk full, bad signature, model did not load...
LOST = "lost"  # the device stopped answering during a step
REACHABLE = "reachable"  # an unreachable device answers again (the engine then reconciles its real state)
ROLLBACK = "rollback"  # the operator (or a failed gate) asks for the previous model back
ROLLED_BACK_OK = "rolled-back"  # the agent runs the previous model again
ABORT = "abort"  # the operator aborts the rollout
REVERTED = "reverted"  # the agent says it went back by itself (no confirmation in time)
SHADOW = "shadow"  # the staged candidate runs beside the active model on mirrored requests (the plan's shadow step)
SHADOW_PASSED = "shadow-passed"  # the shadow gate passed (or the step was skipped and the plan lets that pass)
SHADOW_FAILED = "shadow-failed"  # the shadow gate failed: the candidate is unloaded, the device keeps its model
RETRY = "retry"  # the operator resumes a rollout paused by a device that failed before it switched (disk full...)

# (state, event) -> next state. Anything not listed is refused by `transition`.
TABLE: Mapping[tuple[str, str], str] = {
    (PENDING, STAGE): STAGING,
    (PENDING, ABORT): SKIPPED,
    (PENDING, LOST): UNREACHABLE,
    (STAGING, STAGED_OK): STAGED,
    (STAGING, STEP_FAILED): FAILED,
    (STAGING, LOST): UNREACHABLE,
    (STAGING, ABORT): SKIPPED,  # a half-copied artifact is never activated; the partial file resumes later
    (STAGED, ACTIVATE): ACTIVATING,
    (STAGED, ABORT): SKIPPED,
    (STAGED, LOST): UNREACHABLE,
    (STAGED, ROLLBACK): ROLLED_BACK,  # nothing switched: nothing to undo
    (STAGED, STEP_FAILED): FAILED,  # the agent could not be asked before activation; nothing switched
    # The shadow step runs in `staged`: the old model still answers every request, nothing is switched, so an abort,
    # a lost device or a crash finds it exactly as staged (a crash shadows again; a start replaces a running one).
    (STAGED, SHADOW): STAGED,
    (STAGED, SHADOW_PASSED): STAGED,
    (STAGED, SHADOW_FAILED): FAILED,
    (ACTIVATING, ACTIVATED): VERIFYING,
    (ACTIVATING, STEP_FAILED): FAILED,  # the agent refused or its server did not load it: old model kept
    (ACTIVATING, LOST): UNREACHABLE,
    (ACTIVATING, REVERTED): ROLLED_BACK,
    (VERIFYING, PASSED): CONFIRMING,
    (VERIFYING, GATES_FAILED): ROLLING_BACK,
    (VERIFYING, ROLLBACK): ROLLING_BACK,
    (VERIFYING, ABORT): ROLLING_BACK,  # abort never leaves an unconfirmed switch behind
    (VERIFYING, LOST): UNREACHABLE,
    (VERIFYING, REVERTED): ROLLED_BACK,
    (CONFIRMING, CONFIRMED): DONE,
    (CONFIRMING, LOST): UNREACHABLE,
    (CONFIRMING, REVERTED): ROLLED_BACK,  # the deadline passed before the confirmation landed
    (CONFIRMING, STEP_FAILED): ROLLING_BACK,
    (DONE, ROLLBACK): ROLLING_BACK,
    (ROLLING_BACK, ROLLED_BACK_OK): ROLLED_BACK,
    (ROLLING_BACK, LOST): UNREACHABLE,
    (ROLLING_BACK, STEP_FAILED): FAILED,
    (FAILED, ROLLBACK): ROLLED_BACK,  # a failed device runs its old model already
    (FAILED, RETRY): PENDING,  # `resume` after the operator fixed the cause: staging starts again (and resumes)
    (UNREACHABLE, ABORT): SKIPPED,
    (UNREACHABLE, ROLLBACK): ROLLING_BACK,
}

# Leaving `unreachable`: the engine asks the agent what the device runs and re-enters the state that says it.
REACHABLE_TO = frozenset({PENDING, STAGING, STAGED, VERIFYING, CONFIRMING, DONE, ROLLED_BACK, FAILED})


class TransitionError(ValueError):
    """A (state, event) pair the table does not allow: a bug in the engine, never an operator's mistake."""


def transition(state: str, event: str, *, reconciled: str | None = None) -> str:
    """The state after `event` in `state`; `reconciled` is where a device that is reachable again really is."""
    if state == UNREACHABLE and event == REACHABLE:
        if reconciled not in REACHABLE_TO:
            raise TransitionError(f"an unreachable device cannot come back as {reconciled!r}")
        return reconciled
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state!r} on {event!r}") from None


def allowed_events(state: str) -> tuple[str, ...]:
    """The events the table accepts in `state` (for the docs, the plan view and the tests)."""
    events = [event for (s, event) in TABLE if s == state]
    if state == UNREACHABLE:
        events.append(REACHABLE)
    return tuple(events)
