"""The rollout engine: drives a rollout's waves over the devices, journaling every step before it runs.

Per wave: stage the artifact on every device (up to transfer.max_parallel at once, retried with backoff),
then activate each staged device, measure its health gates through the soak and confirm it (or roll it back);
after each device `decide` says whether to go on, wait, pause, ask for approval or finish. Status lives in the
inventory, so a pause or abort from another process (the CLI, the GUI) is seen between steps, and a crash is
repaired by `recover`/`run`: each device's real state is asked of its agent and written back to the journal.
One device's steps are fleetdesk.rollout.device_steps.DeviceSteps, which the engine holds (`engine.steps`) and
gives what they work with: the fleet (and its acting operator), the device operations, the journal and the
engine's own way to report events (`RolloutEvent`s, to `on_event`). The inventory is reached through
fleetdesk.rollout.journal, on the inventory's thread, so the event loop (the window's) never waits on a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.config import Settings
from fleetdesk.errors import (
    AccessDeniedError,
    ConfigError,
    DatabaseUnreachableError,
    EditConflictError,
    FleetDeskError,
    RolloutConflictError,
)
from fleetdesk.files import exclusive_lock
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.records import Device, Edit
from fleetdesk.inventory.rollouts import Lease, RolloutRepo, RolloutRow
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.rollout import decide as dc
from fleetdesk.rollout.checkpoints import hand_checkpoint
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.device_steps import (
    ABORTED,
    DONE,
    FAILED,
    FINISHED,
    PAUSED,
    PLANNED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    WAITING,
    DeviceSteps,
    Slots,
    gather,
    message,
)
from fleetdesk.rollout.journal import RolloutJournal
from fleetdesk.rollout.plan import ResolvedPlan, RolloutPlan, resolve
from fleetdesk.text import visible_text

log = logging.getLogger(__name__)

__all__ = ["RolloutBusyError", "RolloutEngine", "RolloutEvent", "Takeover"]


class RolloutBusyError(FleetDeskError):
    """Another FleetDesk process (on this laptop, or on another one sharing the inventory) is driving the rollout."""


# A driver renews its lease every third of this; one that stops (crashed, lid closed, network gone) loses the
# rollout to whoever asks after it ran out. A process that dies on this laptop frees it at once (the file lock).
LEASE_S = 15.0


@dataclass(frozen=True)
class RolloutEvent:
    """Something the operator may want to see: a device's new state, transfer progress, a gate's value."""

    rollout_id: int
    kind: str  # "state" | "progress" | "gates" | "status" | "decision" | "note" | "lease" (who drives it)
    device_id: int | None
    state: str | None
    message: str
    bytes_done: int = 0
    bytes_total: int = 0
    rate_bytes_s: float = 0.0
    eta_s: float | None = None
    # A gate's figures as they stand, for a live plot: the shadow step's {"compared", "agreement", "p95_ratio"}
    # (None where not measured yet).
    figures: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Takeover:
    """What `RolloutEngine.take_over` did: took the rollout over (from `previous`, whose lease ran out; None when
    nobody held it) and drove it until it stopped (`row`), or did not, and why (`reason`)."""

    rollout_id: int
    taken: bool
    previous: str | None  # the driver taken over from ("host:pid")
    reason: str  # why it was not taken over; "" when it was
    waited_s: float  # how long it waited for the previous driver's lease to run out
    row: RolloutRow  # the rollout as it stands at the end
    lease: Lease | None = None  # who holds it, when not taken because another FleetDesk drives it

    def to_dict(self) -> dict[str, Any]:
        return {"taken": self.taken, "previous": self.previous, "reason": self.reason,
                "waited_s": round(self.waited_s, 1),
                "holder": None if self.lease is None else self.lease.driver,
                "holder_until": None if self.lease is None else self.lease.until.isoformat()}


class RolloutEngine:
    """`rid = await engine.start(plan); row = await engine.run(rid)`; control with pause/resume/approve/abort.

    `repo` is the inventory's rollout tables for callers that read them synchronously (the CLI, tests); the
    engine itself goes through `db`, on `executor` (the GUI's inventory thread) or a thread of its own.
    `steps` (DeviceSteps) takes each device of a wave through its steps: its soak interval, transfer backoff
    and stall timeout are set there. Every event, the engine's and the steps', goes to `on_event`.
    """

    unreachable_poll_s = 3.0  # how often an unreachable device is asked again
    # While the inventory's database cannot be reached: the first try to reconnect after this long, then twice as
    # long each time, capped.
    reconnect_first_s = 1.0
    reconnect_max_s = 30.0
    takeover_check_s = LEASE_S / 3  # how often take_over looks again at a lease another FleetDesk holds

    def __init__(self, fleet: Fleet, store: ArtifactStore, *, repo: RolloutRepo | None = None,
                 ops: DeviceOps | None = None, on_event: Callable[[RolloutEvent], None] | None = None,
                 lock_dir: Path | None = None, executor: Executor | None = None) -> None:
        self.fleet = fleet
        self.store = store
        fleet.access.sign_checkpoints_with(store.signer)  # the checkpoints it hands the devices
        self.repo = repo or RolloutRepo(fleet.inventory)
        self.db = RolloutJournal(self.repo, fleet.inventory, fleet.access, executor)
        self.ops = ops or DeviceOps(fleet, store)
        self.on_event = on_event
        self._lock_dir = lock_dir
        self._held: set[int] = set()  # the rollouts whose lock this process holds, while it drives them
        self._elsewhere: dict[int, Lease | None] = {}  # who drives a rollout this process found busy (None: local)
        self._taken_from: dict[int, Lease] = {}  # the lease this process took each rollout over with
        self._outages: dict[int, datetime] = {}  # rollouts driven when the database went away, and since when
        self.host = socket.gethostname()
        self.driver = f"{self.host}:{os.getpid()}"  # this process, as the lease names it
        self.steps = DeviceSteps(fleet, self.ops, self.db, emit=self._emit)
        self.db.on_unreachable = self._database_lost
        self.db.driving = lambda: bool(self._held)

    @property
    def actor(self) -> str:
        """The acting operator (the fleet's, who may switch in the window): their roles are checked, their
        actions audited."""
        return self.fleet.access.name

    # -- operator actions ------------------------------------------------------------------------------------

    async def _witness(self, rollout_id: int) -> None:
        """Hand the audit trail's newest checkpoint to the rollout's devices (best effort: a device that cannot
        take it now is only not a witness of this one; the action stands)."""
        ids = {r.device_id for r in await self.db.devices(rollout_id)}

        def with_agent() -> list[Device]:
            # Only devices provisioning gave an agent: asking any other would be a connection for nothing.
            runtimes = DeviceRuntimes(self.fleet.inventory)
            return [d for d in self.fleet.inventory.devices() if d.id in ids and runtimes.get(d.id) is not None]
        devices = await self.db.call(with_agent)
        try:
            missed = {name: why for name, why in (await hand_checkpoint(self.ops, devices)).items() if why}
        except FleetDeskError as exc:
            log.warning("rollout %s: no audit checkpoint was handed to its devices: %s", rollout_id, exc)
            return
        if missed:
            log.info("rollout %s: %d device(s) did not take the audit checkpoint: %s", rollout_id, len(missed),
                     "; ".join(f"{visible_text(n)}: {w}" for n, w in sorted(missed.items())))

    async def _allow(self, permission: str, action: str, rollout_id: int) -> None:
        """The acting operator may do `action` to every device of the rollout, or AccessDeniedError (audited)."""
        ids = [r.device_id for r in await self.db.devices(rollout_id)]
        await self.db.allow(permission, action, rollout_id, ids)

    async def _check_seen(self, rollout_id: int, action: str, seen: int | None) -> None:
        """An action chosen on a view older than another operator's action is refused (audited) before anything
        else is decided: "nothing waits for approval" would hide that alice approved it a moment ago."""
        if seen is None:
            return
        try:
            await self.db.check_edit(rollout_id, Edit(by=self.actor, seen_version=seen), step=action)
        except EditConflictError as exc:
            await self._refused_edit(rollout_id, action, exc)
            raise

    async def _refused_edit(self, rollout_id: int, action: str, exc: EditConflictError) -> None:
        await self.db.audit(action, "refused", rollout_id=rollout_id,
                            detail={"changed_by": exc.changed_by, "version": exc.version, "seen": exc.seen_version})

    async def _operator_status(self, rollout_id: int, action: str, status: str, row: RolloutRow, seen: int | None,
                               **change: Any) -> RolloutRow:
        """The status change of an operator's action, as their edit of the rollout (counted in its version): one
        made from an older version than the stored one is refused (EditConflictError), audited, and changes
        nothing. The driver's lease is not touched: who drives a rollout is not an operator's edit."""
        edit = Edit(by=self.actor, seen_version=seen if seen is not None else row.version)
        try:
            return await self.db.set_status(rollout_id, status, edit=edit, **change)
        except EditConflictError as exc:
            await self._refused_edit(rollout_id, action, exc)
            raise

    async def start(self, plan: RolloutPlan) -> int:
        """Resolve the plan against the inventory and the store, journal it as planned; nothing is touched yet."""
        actor = self.actor
        plan = dataclasses.replace(plan, actor=actor)
        resolved = await self.db.call(resolve, plan, self.fleet.inventory, self.store)
        await self.db.allow("deploy", "start", None, [d.device_id for d in resolved.devices])
        row = await self.db.create(resolved, actor)
        await self.db.audit("start", "planned", rollout_id=row.id,
                            device_ids=tuple(d.device_id for d in resolved.devices),
                            detail={"model": resolved.model_ref, "waves": [list(w) for w in resolved.waves]})
        await self._witness(row.id)
        self._emit(row.id, "status", None, row.status,
                   f"rollout {row.id}: {resolved.model_ref} to {len(resolved.devices)} device(s) in "
                   f"{len(resolved.waves)} wave(s)")
        return row.id

    async def pause(self, rollout_id: int, reason: str = "operator", *, witness: bool = True,
                    seen: int | None = None) -> RolloutRow:
        """No new steps once the current ones end. `witness=False` (a closing window) skips handing the devices
        the audit checkpoint, so the pause is not held up by a device that does not answer.

        `seen` (here and in resume, approve, abort, rollback): the rollout's version the operator acted on (what
        their window showed). Another operator's action since refuses this one (EditConflictError, naming them);
        without it, the version read as the action starts is checked, so of two operators acting at once exactly
        one acts."""
        row = await self.db.get(rollout_id)
        await self._allow("deploy", "pause", rollout_id)
        await self._check_seen(rollout_id, "pause", seen)
        if row.status not in (RUNNING, PLANNED, WAITING):
            await self.db.audit("pause", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status}; only a running or waiting one can be paused",
                              fix="see `fleetdesk rollout status ID`")
        row = await self._operator_status(rollout_id, "pause", PAUSED, row, seen, reason=reason, expect=row.status)
        await self.db.audit("pause", "ok", rollout_id=rollout_id, detail={"reason": reason})
        if witness:
            await self._witness(rollout_id)
        self._emit(rollout_id, "status", None, PAUSED, f"rollout {rollout_id} paused: {reason}")
        return row

    async def resume(self, rollout_id: int, *, seen: int | None = None) -> RolloutRow:
        """A paused rollout runs again (call `run` to drive it); a crashed running one is left running."""
        row = await self.db.get(rollout_id)
        await self._allow("deploy", "resume", rollout_id)
        await self._check_seen(rollout_id, "resume", seen)
        if row.status not in (PAUSED, RUNNING, PLANNED):
            await self.db.audit("resume", "refused", rollout_id=rollout_id, detail={"status": row.status})
            hint = "approve it: `fleetdesk rollout approve ID`" if row.status == WAITING else \
                "a finished rollout cannot run again; plan a new one"
            raise ConfigError(f"rollout {rollout_id} is {row.status}, not paused", fix=hint)
        retried: list[int] = []
        if row.status == PAUSED:
            row = await self._operator_status(rollout_id, "resume", RUNNING, row, seen, expect=PAUSED)
            retried = await self._retry_failed_before_switch(rollout_id)
        await self.db.audit("resume", "ok", rollout_id=rollout_id, device_ids=tuple(retried),
                            detail={"retried": retried} if retried else None)
        await self._witness(rollout_id)
        self._emit(rollout_id, "status", None, row.status, f"rollout {rollout_id} resumed")
        return row

    async def _retry_failed_before_switch(self, rid: int) -> list[int]:
        """Devices that failed before they switched (staging: disk full, a transfer that kept failing, a copy
        that did not verify) go back to pending: the operator resumed because the cause is fixed, and nothing on
        them was switched. Devices that failed at or after activation (the model would not load) stay failed."""
        retried = []
        for row in await self.db.devices(rid):
            if row.state != st.FAILED:
                continue
            journal = await self.db.journal(rid, device_id=row.device_id)
            # A candidate the shadow gate judged and failed would fail again: only what stopped the step before a
            # verdict (no server, too little memory) is worth another try.
            if any(e.event == st.ACTIVATE or (e.event == st.SHADOW_FAILED and e.detail.get("judged"))
                   for e in journal):
                continue
            await self.steps.record(rid, row.device_id, st.RETRY, error="",
                                    detail={"by": self.actor, "failed": row.error})
            retried.append(row.device_id)
        return retried

    async def approve(self, rollout_id: int, *, seen: int | None = None) -> RolloutRow:
        """The operator lets the next wave start (call `run` to drive it).

        Needs the approve permission over the rollout's devices; under four-eyes (the plan's approval_by_other)
        the operator who started the rollout may not approve its waves."""
        row = await self.db.get(rollout_id)
        await self._allow("approve", "approve", rollout_id)
        await self._check_seen(rollout_id, "approve", seen)
        if row.plan.get("approval_by_other") and row.actor == self.actor:
            reason = (f"rollout {rollout_id} needs its waves approved by another operator than {row.actor}, "
                      "who started it (four-eyes)")
            await self.db.audit("approve", "refused", rollout_id=rollout_id, detail={"reason": reason})
            raise AccessDeniedError(reason, operator=self.actor, permission="approve",
                                    fix="ask another operator with the approver role to approve it")
        if row.status != WAITING:
            await self.db.audit("approve", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status}; nothing waits for approval",
                              fix="approve a rollout whose status is waiting-approval")
        rows = await self.db.devices(rollout_id)
        started = [r.wave for r in rows if r.state != st.PENDING]  # the waiting wave: the last one started
        wave = max(started) if started else 0
        row = await self._operator_status(rollout_id, "approve", RUNNING, row, seen, expect=WAITING)
        await self.db.audit("approve", "ok", rollout_id=rollout_id,
                            device_ids=tuple(r.device_id for r in rows if r.wave == wave + 1), detail={"wave": wave})
        await self._witness(rollout_id)
        self._emit(rollout_id, "status", None, RUNNING, f"rollout {rollout_id}: wave {wave + 2} approved")
        return row

    async def abort(self, rollout_id: int, *, seen: int | None = None) -> RolloutRow:
        """No new steps; a device under verification rolls back, one not yet activated is skipped.

        When another process drives the rollout, it does that at its next step; otherwise it is done here.
        """
        row = await self.db.get(rollout_id)
        await self._allow("deploy", "abort", rollout_id)
        await self._check_seen(rollout_id, "abort", seen)
        if row.status in FINISHED or row.status == ROLLING_BACK:
            await self.db.audit("abort", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status} already; there is nothing to abort",
                              fix="roll it back instead: `fleetdesk rollout rollback ID`")
        row = await self._operator_status(rollout_id, "abort", ABORTED, row, seen, reason="aborted by the operator",
                                          expect=row.status)
        self._emit(rollout_id, "status", None, ABORTED, f"rollout {rollout_id} aborted")
        outcome = "ok"
        async with self._try_lock(rollout_id) as mine:
            if mine:
                resolved = ResolvedPlan.from_dict(row.resolved)
                await self.steps.settle_abort(rollout_id, resolved, [d.device_id for d in resolved.devices])
            else:
                outcome = "requested"  # the driving process settles the devices at its next step
        await self.db.audit("abort", outcome, rollout_id=rollout_id,
                            device_ids=tuple(d.device_id for d in await self.db.devices(rollout_id)))
        await self._witness(rollout_id)
        return await self.db.get(rollout_id)

    async def rollback(self, rollout_id: int, *, device_id: int | None = None, wave: int | None = None,
                       seen: int | None = None) -> RolloutRow:
        """Put devices back on the model they ran before: one device, one wave (0-based), or the whole rollout.

        Devices that switched are told to roll back (only when they still run the rollout's artifact, so a
        repeated rollback never swaps them forward again); devices that never switched are closed as
        rolled-back (staged, failed) or skipped (pending). The whole rollout ends rolled-back.
        """
        row = await self.db.get(rollout_id)
        resolved = ResolvedPlan.from_dict(row.resolved)
        rows = await self.db.devices(rollout_id)
        await self._allow("deploy", "rollback", rollout_id)
        await self._check_seen(rollout_id, "rollback", seen)
        if device_id is not None:
            chosen = [r for r in rows if r.device_id == device_id]
            if not chosen:
                raise ConfigError(f"device {device_id} is not part of rollout {rollout_id}",
                                  fix="see the rollout's devices with `fleetdesk rollout status ID`")
        elif wave is not None:
            if not 0 <= wave < len(resolved.waves):
                raise ConfigError(f"rollout {rollout_id} has no wave {wave + 1}",
                                  fix=f"give a wave from 1 to {len(resolved.waves)}")
            chosen = [r for r in rows if r.wave == wave]
        else:
            chosen = rows
        ids = tuple(r.device_id for r in chosen)
        async with self._try_lock(rollout_id) as mine:
            if not mine:
                await self.db.audit("rollback", "refused", rollout_id=rollout_id, device_ids=ids,
                                    detail={"why": "another process drives the rollout"})
                raise RolloutBusyError(self._driven_elsewhere(rollout_id),
                                       fix=f"pause it first (`fleetdesk rollout pause {rollout_id}`), wait for it "
                                           "to stop, then roll back")
            await self.steps.reconcile_all(rollout_id)
            now = {r.device_id: r for r in await self.db.devices(rollout_id)}
            chosen = [now[i] for i in ids]
            whole = device_id is None and wave is None
            if whole:
                row = await self._operator_status(rollout_id, "rollback", ROLLING_BACK, row, seen,
                                                  reason="rollback by the operator")
                self._emit(rollout_id, "status", None, ROLLING_BACK, f"rollout {rollout_id} rolling back")
            elif row.status == RUNNING:
                # The engine is not driving it (we hold the lock): a part rolled back leaves it paused, so the
                # next `resume` decides again with these devices counted.
                row = await self._operator_status(rollout_id, "rollback", PAUSED, row, seen,
                                                  reason="a part was rolled back by the operator")
            results = await asyncio.gather(*(self.steps.rollback_one(rollout_id, resolved, r, close_pending=whole)
                                             for r in chosen), return_exceptions=True)
            problems = [r for r in results if isinstance(r, BaseException)]
            left = [r for r in await self.db.devices(rollout_id) if r.device_id in ids and r.state not in
                    (st.ROLLED_BACK, st.SKIPPED, st.PENDING)]
            outcome = "ok" if not problems and not left else "incomplete"
            if whole:
                row = await self.db.set_status(rollout_id, ROLLED_BACK if outcome == "ok" else FAILED,
                                               reason="" if outcome == "ok" else
                                               f"{len(left)} device(s) could not be rolled back")
        await self.db.audit("rollback", outcome, rollout_id=rollout_id, device_ids=ids,
                            detail={"scope": "device" if device_id is not None else "wave" if wave is not None
                                    else "rollout", "wave": wave,
                                    "left": {str(r.device_id): r.state for r in left},
                                    "problems": [message(p) for p in problems]})
        await self._witness(rollout_id)
        return await self.db.get(rollout_id)

    async def recover(self) -> list[int]:
        """After a crash: every rollout still marked running has each switched device's real state asked of its
        agent and written to the journal. Returns their ids; `run` each to continue."""
        found = []
        for row in await self.db.list(active_only=True):
            if row.status != RUNNING:
                continue
            async with self._try_lock(row.id) as mine:
                if not mine:
                    continue  # another live process drives it: it was not a crash
                await self.steps.reconcile_all(row.id)
                found.append(row.id)
        return found

    async def take_over(self, rollout_id: int, *, wait: bool = True) -> Takeover:
        """Drive a rollout whose driver stopped: the one way an operator (`fleetdesk rollout run ID --take-over`)
        and a window (by itself, for a plan with takeover "auto") take a rollout over.

        While another FleetDesk's lease is live, waits, looking again every `takeover_check_s` (sooner when the
        lease ends sooner) and telling who holds it and until when (`lease` events); `wait=False` looks once.
        Once the lease ran out it takes it (of several FleetDesks asking at once exactly one gets it:
        RolloutRepo.take_lease), which journals a "takeover" entry naming both drivers and audits
        rollout.takeover; then it drives the rollout as `run` does after `recover`: each device the journal shows
        mid-switch is asked where it is, nothing staged is sent again and nothing finished is redone.
        Stops waiting (not taken, and says why) when the rollout is not running (any more): paused, waiting for
        approval, done or aborted elsewhere, or planned and never started. Needs the deploy permission over the
        rollout's devices.
        """
        if rollout_id in self._held:  # run() below would drive it a second time in this process
            row = await self.db.get(rollout_id)
            why = f"rollout {rollout_id} is driven by this FleetDesk already: nothing to take over"
            return Takeover(rollout_id, False, None, why, 0.0, row)
        await self._allow("deploy", "takeover", rollout_id)
        started = time.monotonic()
        waiting, told, told_at = False, None, 0.0  # the holder last told of ("host:pid"; None: a local process)
        while True:
            waited = time.monotonic() - started
            row = await self.db.get(rollout_id)
            if row.status != RUNNING:
                # A planned one was saved to be started by an operator (`rollout resume`, the window's Start): no
                # driver stopped, and taking it over would start it.
                why = (f"rollout {rollout_id} is {row.status}"
                       + (f" ({visible_text(row.paused_reason)})" if row.paused_reason else "")
                       + (" now, changed elsewhere while waiting" if waiting else "")
                       + (": nothing to take over" if row.status != PLANNED else
                          ", not started: start it with `fleetdesk rollout resume ID`"))
                self._emit(rollout_id, "lease", None, row.status, why)
                return Takeover(rollout_id, False, None, why, waited, row)
            async with self._try_lock(rollout_id) as mine:
                if mine:
                    taken = self._taken_from.pop(rollout_id, None)
                    if (await self.db.get(rollout_id)).status != RUNNING:
                        continue  # paused or finished between the look above and the lease: said at the top
                    previous = taken.previous if taken is not None else None
                    driven = await self.run(rollout_id)
                    return Takeover(rollout_id, True, previous, "", waited, driven)
            lease = self._elsewhere.get(rollout_id)
            why = self._driven_elsewhere(rollout_id)
            if not wait:
                return Takeover(rollout_id, False, None, why, waited, row, lease)
            holder = None if lease is None else lease.driver
            # Told when the wait starts, when another FleetDesk holds it, and once a minute while it lasts.
            if not waiting or holder != told or time.monotonic() - told_at >= 60:
                self._emit(rollout_id, "lease", None, row.status,
                           f"{why}: waiting for it to stop (looking again every {self.takeover_check_s:g} s)")
                told_at = time.monotonic()
            waiting, told = True, holder
            delay = self.takeover_check_s
            if lease is not None:  # look again right after it runs out, not up to takeover_check_s later
                delay = min(delay, max(0.0, (lease.until - lease.now).total_seconds()) + 0.05)
            await asyncio.sleep(delay)

    # -- driving ---------------------------------------------------------------------------------------------

    def driving(self, rollout_id: int) -> bool:
        """Whether this process holds the rollout's lease now (drives it, or acts on it as its driver)."""
        return rollout_id in self._held

    async def run(self, rollout_id: int) -> RolloutRow:
        """Drive the rollout until it is done, paused, waiting for approval, aborted or failed.

        When the inventory's database cannot be reached meanwhile, the steps under way finish (what they learn is
        kept in memory), nothing new starts, and the engine tries to reconnect with backoff (`_ride_out`); once
        the database answers it writes what was kept and pauses the rollout with the outage as its reason (audited),
        then returns, or drives on when the plan says so (on_database_loss "resume"). A rollout another FleetDesk
        took over meanwhile is left to it (RolloutBusyError, saying so)."""
        async with self._try_lock(rollout_id) as mine:
            if not mine:
                raise RolloutBusyError(self._driven_elsewhere(rollout_id),
                                       fix="watch it with `fleetdesk rollout status ID`, or pause it there; if that "
                                           "FleetDesk stopped, `fleetdesk rollout run ID --take-over` takes it over "
                                           "once its lease runs out")
            while True:
                row: RolloutRow | None = None
                try:
                    row = await self._drive(rollout_id)
                except DatabaseUnreachableError as exc:
                    self.db.lost(exc)  # found by a device's step (its reach) rather than the journal: the same
                    self._outages.setdefault(rollout_id, self.db.unreachable_since or datetime.now(UTC))
                if self.db.unreachable:
                    self._outages.setdefault(rollout_id, self.db.unreachable_since or datetime.now(UTC))
                if rollout_id not in self._outages and row is not None:
                    return row
                if not await self._ride_out(rollout_id):
                    return await self.db.get(rollout_id)

    async def _drive(self, rollout_id: int) -> RolloutRow:
        """`run`'s work, with the lease held: the waves from the journal, until the rollout stops."""
        row = await self.db.get(rollout_id)
        if row.status == PLANNED:
            row = await self.db.set_status(rollout_id, RUNNING, expect=PLANNED)
            self._emit(rollout_id, "status", None, RUNNING, f"rollout {rollout_id} running")
        if row.status == ABORTED:
            resolved = ResolvedPlan.from_dict(row.resolved)
            await self.steps.settle_abort(rollout_id, resolved, [d.device_id for d in resolved.devices])
            return await self.db.get(rollout_id)
        if row.status != RUNNING:
            return row
        resolved = ResolvedPlan.from_dict(row.resolved)
        # Whatever a crash left between "journaled" and "done": ask the agents before any new step.
        await self.steps.reconcile_all(rollout_id)
        approved = {a.after.get("wave") for a in await self.db.audit_log(rollout_id)
                    if a.action == "rollout.approve" and a.outcome == "ok"}
        for wave in range(len(resolved.waves)):
            decision = await self._run_wave(rollout_id, resolved, wave)
            if decision is None:
                break  # stopped by a status change: it is already in the database
            self._emit(rollout_id, "decision", None, None, decision.reason)
            if decision.action == dc.NEXT_WAVE or (decision.action == dc.APPROVE and wave in approved):
                continue
            status = {dc.APPROVE: WAITING, dc.DONE: DONE, dc.PAUSE: PAUSED}[decision.action]
            try:
                await self.db.set_status(rollout_id, status, reason=decision.reason, expect=RUNNING)
            except RolloutConflictError:
                break  # paused or aborted elsewhere a moment ago: that status stands
            if status == PAUSED:
                await self.db.audit("pause", "ok", rollout_id=rollout_id, device_ids=tuple(resolved.waves[wave]),
                                    detail={"by": "fleetdesk", "wave": wave, **decision.to_dict()})
            self._emit(rollout_id, "status", None, status, f"rollout {rollout_id} {status}: {decision.reason}")
            break
        row = await self.db.get(rollout_id)
        if row.status == ABORTED:
            await self.steps.settle_abort(rollout_id, resolved, [d.device_id for d in resolved.devices])
        return await self.db.get(rollout_id)

    async def _tally(self, rid: int, ids: Sequence[int]) -> dc.WaveTally:
        states = await self.db.states(rid, ids)
        return dc.WaveTally.of(states[i] for i in ids)

    async def _run_wave(self, rid: int, resolved: ResolvedPlan, wave: int) -> dc.Decision | None:
        plan = resolved.plan
        policy = resolved.policy_for(wave)
        ids = list(resolved.waves[wave])
        unreachable_since: float | None = None
        while True:
            if not await self.steps.running(rid):
                return None
            tally = await self._tally(rid, ids)
            if not tally.unreachable:
                unreachable_since = None
            waited = unreachable_since is not None and time.monotonic() - unreachable_since >= plan.unreachable_wait_s
            decision = dc.decide(policy, tally, wave=wave, last_wave=wave == len(resolved.waves) - 1,
                                 unreachable=plan.unreachable, waited_out=waited)
            if decision.action == dc.WORK:
                await self._work_wave(rid, resolved, wave, ids)
            elif decision.action == dc.WAIT:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    self._emit(rid, "note", None, None, f"{decision.reason} (up to {plan.unreachable_wait_s:g} s)")
                await asyncio.sleep(self.unreachable_poll_s)
                states = await self.db.states(rid, ids)
                await self.steps.retry_unreachable(rid, [i for i in ids if states[i] == st.UNREACHABLE])
            elif decision.action == dc.PAUSE and tally.active:
                # Errors exceeded while devices are mid-way: those already switched finish their verification
                # (an unconfirmed switch is never left behind), nothing new starts.
                await self._finish_switched(rid, resolved, ids)
                return dc.decide(policy, await self._tally(rid, ids), wave=wave,
                                 last_wave=wave == len(resolved.waves) - 1, unreachable=plan.unreachable,
                                 waited_out=waited)
            else:
                return decision

    async def _work_wave(self, rid: int, resolved: ResolvedPlan, wave: int, ids: list[int]) -> None:
        plan = resolved.plan
        policy = resolved.policy_for(wave)
        stop = asyncio.Event()  # set when a device's end state makes the wave pause: no device starts a new step

        async def may_start() -> bool:
            return not stop.is_set() and await self.steps.running(rid)

        # Transfers at once; a device whose turn comes after the wave stopped does not start.
        slots = Slots(plan.transfer.max_parallel, may_start)
        # Activations move no artifact bytes (a few agent calls each): the transfer limit does not bound them, or a
        # wave of 10 with 4 transfers would activate in 3 rounds (benchmarks/rollout.py measured ~3 s a round).
        switching = asyncio.Semaphore(max(1, len(ids)))

        async def check_wave() -> None:
            decision = dc.decide(policy, await self._tally(rid, ids), wave=wave,
                                 last_wave=wave == len(resolved.waves) - 1, unreachable=plan.unreachable)
            if decision.action == dc.PAUSE:
                stop.set()

        async def stage_one(device_id: int) -> None:
            if not await may_start():
                return
            await self.steps.stage(rid, resolved, device_id, slots)
            await check_wave()

        async def activate_one(device_id: int) -> None:
            async with switching:
                state = (await self.db.device(rid, device_id)).state
                if state == st.STAGED and not await may_start():
                    return
                await self.steps.activate(rid, resolved, wave, device_id)
                await check_wave()

        async def in_state(*wanted: str) -> list[int]:
            states = await self.db.states(rid, ids)
            return [i for i in ids if states[i] in wanted]

        if plan.transfer.prestage:
            await gather(stage_one(i) for i in await in_state(st.PENDING, st.STAGING))
            await check_wave()
            if not await may_start():
                await self._finish_switched(rid, resolved, ids)
                return
            await gather(activate_one(i) for i in await in_state(st.STAGED, st.VERIFYING, st.CONFIRMING,
                                                                  st.ROLLING_BACK))
        else:
            async def both(device_id: int) -> None:
                if (await self.db.device(rid, device_id)).state in (st.PENDING, st.STAGING):
                    await stage_one(device_id)
                if (await self.db.device(rid, device_id)).state in (st.STAGED, st.VERIFYING, st.CONFIRMING,
                                                                    st.ROLLING_BACK):
                    await activate_one(device_id)

            await gather(both(i) for i in ids)
        if not await self.steps.running(rid):
            await self._finish_switched(rid, resolved, ids)

    async def _finish_switched(self, rid: int, resolved: ResolvedPlan, ids: Sequence[int]) -> None:
        """Devices already switched to the new model end their verification (confirm or roll back); an abort
        rolls them back instead."""
        wave_of = {d.device_id: d.wave for d in resolved.devices}
        states = await self.db.states(rid, ids)
        switched = [i for i in ids if states[i] in (st.VERIFYING, st.CONFIRMING, st.ROLLING_BACK)]
        await gather(self.steps.activate(rid, resolved, wave_of[i], i) for i in switched)

    def _emit(self, rid: int, kind: str, device_id: int | None, state: str | None, message: str, **extra: Any
              ) -> None:
        if self.on_event is not None:
            self.on_event(RolloutEvent(rid, kind, device_id, state, message, **extra))

    @contextlib.asynccontextmanager
    async def _try_lock(self, rid: int) -> AsyncIterator[bool]:
        """A file lock per rollout while this process drives it; the system drops it when the process dies."""
        if rid in self._held:
            yield True
            return
        folder = self._lock_dir or Settings.load().data_dir / "rollout-locks"
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(folder / f"{rid}.lock", blocking=False) as held:
            if not held:
                self._elsewhere[rid] = None
                yield False
                return
            # No other process on this laptop drives it (they would hold the lock): a lease of this host's is a
            # dead process's, and is taken over; another laptop's holds until it runs out.
            lease = await self.db.call(self.repo.take_lease, rid, self.driver, LEASE_S, stale_host=self.host)
            if lease.driver != self.driver:
                self._elsewhere[rid] = lease
                yield False
                return
            self._held.add(rid)
            renewing = asyncio.create_task(self._renew_lease(rid), name=f"rollout {rid} lease")
            try:
                if lease.previous is not None:
                    await self._took_over(rid, lease)
                yield True
            finally:
                self._held.discard(rid)
                self._taken_from.pop(rid, None)
                if not self._held and self.db.unreachable:
                    self.db.reconnected()  # nothing driven rides it out any more: the next call tries the database
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                with contextlib.suppress(FleetDeskError):
                    await self.db.call(self.repo.release_lease, rid, self.driver)

    async def _took_over(self, rid: int, lease: Lease) -> None:
        """This process took the rollout over from a driver that stopped (the journal has it already): audited,
        and told."""
        self._taken_from[rid] = lease
        previous = lease.previous or ""
        host, _, pid = previous.rpartition(":")
        why = "its process on this laptop is gone" if host == self.host else (
            f"its lease ran out at {lease.previous_until:%H:%M:%S} UTC" if lease.previous_until else
            "its lease ran out")
        await self.db.audit("takeover", "ok", rollout_id=rid,
                            detail={"previous": previous, "driver": self.driver, "why": why,
                                    "takeover": (await self.db.get(rid)).plan.get("takeover", "ask")})
        self._emit(rid, "lease", None, None, f"rollout {rid} taken over from the FleetDesk on {host} (process {pid}): "
                   f"{why}; now driven by {self.host} (process {os.getpid()})")

    # -- the database going away ----------------------------------------------------------------------------

    def _database_lost(self, exc: DatabaseUnreachableError) -> None:
        """The journal found the database unreachable: told at once for every rollout this process drives."""
        since = self.db.unreachable_since or datetime.now(UTC)
        for rid in sorted(self._held):
            self._outages.setdefault(rid, since)
            self._emit(rid, "note", None, None,
                       f"rollout {rid}: database unreachable since {since:%H:%M:%S} UTC ({exc.message}): the steps "
                       "under way finish, nothing new starts; retrying")

    async def _ride_out(self, rid: int) -> bool:
        """The database went away while driving, and every step under way has ended. Try to reconnect with backoff
        (reconnect_first_s, doubling up to reconnect_max_s), telling each try; once it answers: take the lease
        again, write what the steps kept, and pause the rollout with "database unreachable from HH:MM:SS to
        HH:MM:SS UTC" (journaled and audited). True when `run` drives on (the plan's on_database_loss is "resume",
        or the rollout's status changed elsewhere meanwhile and `_drive` acts on it); False when it stays paused.
        RolloutBusyError when another FleetDesk took the rollout over meanwhile: this one stops, writing nothing."""
        since = self._outages.get(rid) or self.db.unreachable_since or datetime.now(UTC)
        try:
            return await self._outage_ends(rid, since)
        finally:
            self._outages.pop(rid, None)

    async def _outage_ends(self, rid: int, since: datetime) -> bool:
        while True:
            lease = await self._reconnect(rid, since)
            until = datetime.now(UTC)
            window = f"database unreachable from {since:%H:%M:%S} to {until:%H:%M:%S} UTC"
            if lease.driver != self.driver:
                dropped = self.db.forget_kept(rid)
                self.db.reconnected()
                entries = f"{len(dropped)} journal entr{'y' if len(dropped) == 1 else 'ies'}"
                told = (f"rollout {rid}: {window}; meanwhile the FleetDesk on {lease.host} (process {lease.pid}) "
                        "took it over: this one stops driving it"
                        + (f" ({entries} of the steps it finished were not written: that FleetDesk asks each device "
                           "where it is)" if dropped else ""))
                log.warning("%s", told)
                self._emit(rid, "lease", None, None, told)
                raise RolloutBusyError(told, fix=f"watch it with `fleetdesk rollout status {rid}`")
            self.db.reconnected()
            try:
                return await self._after_outage(rid, since, until, window)
            except DatabaseUnreachableError as exc:
                self.db.lost(exc)  # gone again before all was written: the same outage, from the same moment

    async def _reconnect(self, rid: int, since: datetime) -> Lease:
        """Try the database until it answers, with backoff; its first answer is this driver's lease, taken again."""
        delay = self.reconnect_first_s
        told_at = -1e9
        while True:
            if time.monotonic() - told_at >= 60 or delay <= self.reconnect_first_s:
                told_at = time.monotonic()
                self._emit(rid, "note", None, None,
                           f"rollout {rid}: database unreachable since {since:%H:%M:%S} UTC, retrying (next try in "
                           f"{delay:g} s; at most every {self.reconnect_max_s:g} s)")
            await asyncio.sleep(delay)
            try:
                return await self.db.attempt(self.repo.take_lease, rid, self.driver, LEASE_S)
            except DatabaseUnreachableError as exc:
                log.info("rollout %s: the database is still unreachable: %s", rid, exc.message)
                delay = min(delay * 2, self.reconnect_max_s)

    async def _after_outage(self, rid: int, since: datetime, until: datetime, window: str) -> bool:
        """The database answers again: what the steps kept is written, then the rollout is paused for the outage
        (unless its status changed elsewhere meanwhile), and resumed at once when its plan says so."""
        written = await self.db.write_kept(rid)
        row = await self.db.get(rid)
        self._emit(rid, "note", None, None, f"rollout {rid}: the database answers again ({window}); "
                   f"{written} journal entr{'y' if written == 1 else 'ies'} kept meanwhile written")
        if row.status != RUNNING:
            return True  # paused, aborted... by an operator meanwhile: that stands, and _drive acts on it
        try:
            await self.db.set_status(rid, PAUSED, reason=window, expect=RUNNING)
        except RolloutConflictError:
            return True
        await self.db.audit("pause", "ok", rollout_id=rid,
                            detail={"by": "fleetdesk", "reason": window, "since": since.isoformat(),
                                    "until": until.isoformat(), "kept": written})
        self._emit(rid, "status", None, PAUSED, f"rollout {rid} paused: {window}")
        if row.plan.get("on_database_loss", "pause") != "resume":
            return False
        await self.db.set_status(rid, RUNNING, expect=PAUSED)
        await self.db.audit("resume", "ok", rollout_id=rid,
                            detail={"by": "fleetdesk", "why": "its plan resumes it once the database answers again "
                                                              "(on_database_loss: resume)"})
        self._emit(rid, "status", None, RUNNING, f"rollout {rid} resumed: its plan says so once the database "
                   "answers again (on_database_loss: resume)")
        return True

    async def _renew_lease(self, rid: int) -> None:
        """Keep the lease while driving; say so when it was lost (this process was stopped longer than LEASE_S
        and another FleetDesk took the rollout over) or cannot be renewed (the inventory is unreachable)."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            if self.db.unreachable or rid in self._outages:
                continue  # the driver's reconnect loop tries the database, and takes the lease again when it answers
            try:
                lease = await self.db.call(self.repo.take_lease, rid, self.driver, LEASE_S)
            except FleetDeskError as exc:
                log.warning("rollout %s: cannot renew the lease on driving it: %s", rid, exc)
                continue
            if lease.driver != self.driver:
                log.warning("rollout %s: lost the lease on driving it to %s", rid, lease.driver)
                self._emit(rid, "lease", None, None,
                           f"rollout {rid} is now driven by the FleetDesk on {lease.host} (process {lease.pid}): "
                           "this one was stopped longer than its lease")
                return

    def _driven_elsewhere(self, rid: int) -> str:
        lease = self._elsewhere.get(rid)
        if lease is None:
            return f"rollout {rid} is being driven by another FleetDesk process on this laptop"
        return (f"rollout {rid} is being driven by the FleetDesk on {lease.host} (process {lease.pid}); its lease "
                f"runs until {lease.until:%H:%M:%S} UTC and is renewed while it drives")
