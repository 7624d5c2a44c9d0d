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
from pathlib import Path
from typing import Any

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.config import Settings
from fleetdesk.errors import AccessDeniedError, ConfigError, FleetDeskError, RolloutConflictError
from fleetdesk.files import exclusive_lock
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.records import Device
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

__all__ = ["RolloutBusyError", "RolloutEngine", "RolloutEvent"]


class RolloutBusyError(FleetDeskError):
    """Another FleetDesk process (on this laptop, or on another one sharing the inventory) is driving the rollout."""


# A driver renews its lease every third of this; one that stops (crashed, lid closed, network gone) loses the
# rollout to whoever asks after it ran out. A process that dies on this laptop frees it at once (the file lock).
LEASE_S = 15.0


@dataclass(frozen=True)
class RolloutEvent:
    """Something the operator may want to see: a device's new state, transfer progress, a gate's value."""

    rollout_id: int
    kind: str  # "state" | "progress" | "gates" | "status" | "decision" | "note"
    device_id: int | None
    state: str | None
    message: str
    bytes_done: int = 0
    bytes_total: int = 0
    rate_bytes_s: float = 0.0
    eta_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RolloutEngine:
    """`rid = await engine.start(plan); row = await engine.run(rid)`; control with pause/resume/approve/abort.

    `repo` is the inventory's rollout tables for callers that read them synchronously (the CLI, tests); the
    engine itself goes through `db`, on `executor` (the GUI's inventory thread) or a thread of its own.
    `steps` (DeviceSteps) takes each device of a wave through its steps: its soak interval, transfer backoff
    and stall timeout are set there. Every event, the engine's and the steps', goes to `on_event`.
    """

    unreachable_poll_s = 3.0  # how often an unreachable device is asked again

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
        self.host = socket.gethostname()
        self.driver = f"{self.host}:{os.getpid()}"  # this process, as the lease names it
        self.steps = DeviceSteps(fleet, self.ops, self.db, emit=self._emit)

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

    async def pause(self, rollout_id: int, reason: str = "operator", *, witness: bool = True) -> RolloutRow:
        """No new steps once the current ones end. `witness=False` (a closing window) skips handing the devices
        the audit checkpoint, so the pause is not held up by a device that does not answer."""
        row = await self.db.get(rollout_id)
        await self._allow("deploy", "pause", rollout_id)
        if row.status not in (RUNNING, PLANNED, WAITING):
            await self.db.audit("pause", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status}; only a running or waiting one can be paused",
                              fix="see `fleetdesk rollout status ID`")
        row = await self.db.set_status(rollout_id, PAUSED, reason=reason, expect=row.status)
        await self.db.audit("pause", "ok", rollout_id=rollout_id, detail={"reason": reason})
        if witness:
            await self._witness(rollout_id)
        self._emit(rollout_id, "status", None, PAUSED, f"rollout {rollout_id} paused: {reason}")
        return row

    async def resume(self, rollout_id: int) -> RolloutRow:
        """A paused rollout runs again (call `run` to drive it); a crashed running one is left running."""
        row = await self.db.get(rollout_id)
        await self._allow("deploy", "resume", rollout_id)
        if row.status not in (PAUSED, RUNNING, PLANNED):
            await self.db.audit("resume", "refused", rollout_id=rollout_id, detail={"status": row.status})
            hint = "approve it: `fleetdesk rollout approve ID`" if row.status == WAITING else \
                "a finished rollout cannot run again; plan a new one"
            raise ConfigError(f"rollout {rollout_id} is {row.status}, not paused", fix=hint)
        retried: list[int] = []
        if row.status == PAUSED:
            row = await self.db.set_status(rollout_id, RUNNING, expect=PAUSED)
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
            if any(e.event == st.ACTIVATE for e in journal):
                continue
            await self.steps.record(rid, row.device_id, st.RETRY, error="",
                                    detail={"by": self.actor, "failed": row.error})
            retried.append(row.device_id)
        return retried

    async def approve(self, rollout_id: int) -> RolloutRow:
        """The operator lets the next wave start (call `run` to drive it).

        Needs the approve permission over the rollout's devices; under four-eyes (the plan's approval_by_other)
        the operator who started the rollout may not approve its waves."""
        row = await self.db.get(rollout_id)
        await self._allow("approve", "approve", rollout_id)
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
        row = await self.db.set_status(rollout_id, RUNNING, expect=WAITING)
        await self.db.audit("approve", "ok", rollout_id=rollout_id,
                            device_ids=tuple(r.device_id for r in rows if r.wave == wave + 1), detail={"wave": wave})
        await self._witness(rollout_id)
        self._emit(rollout_id, "status", None, RUNNING, f"rollout {rollout_id}: wave {wave + 2} approved")
        return row

    async def abort(self, rollout_id: int) -> RolloutRow:
        """No new steps; a device under verification rolls back, one not yet activated is skipped.

        When another process drives the rollout, it does that at its next step; otherwise it is done here.
        """
        row = await self.db.get(rollout_id)
        await self._allow("deploy", "abort", rollout_id)
        if row.status in FINISHED or row.status == ROLLING_BACK:
            await self.db.audit("abort", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status} already; there is nothing to abort",
                              fix="roll it back instead: `fleetdesk rollout rollback ID`")
        row = await self.db.set_status(rollout_id, ABORTED, reason="aborted by the operator", expect=row.status)
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

    async def rollback(self, rollout_id: int, *, device_id: int | None = None, wave: int | None = None
                       ) -> RolloutRow:
        """Put devices back on the model they ran before: one device, one wave (0-based), or the whole rollout.

        Devices that switched are told to roll back (only when they still run the rollout's artifact, so a
        repeated rollback never swaps them forward again); devices that never switched are closed as
        rolled-back (staged, failed) or skipped (pending). The whole rollout ends rolled-back.
        """
        row = await self.db.get(rollout_id)
        resolved = ResolvedPlan.from_dict(row.resolved)
        rows = await self.db.devices(rollout_id)
        await self._allow("deploy", "rollback", rollout_id)
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
                row = await self.db.set_status(rollout_id, ROLLING_BACK, reason="rollback by the operator")
                self._emit(rollout_id, "status", None, ROLLING_BACK, f"rollout {rollout_id} rolling back")
            elif row.status == RUNNING:
                # The engine is not driving it (we hold the lock): a part rolled back leaves it paused, so the
                # next `resume` decides again with these devices counted.
                row = await self.db.set_status(rollout_id, PAUSED, reason="a part was rolled back by the operator")
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

    # -- driving ---------------------------------------------------------------------------------------------

    async def run(self, rollout_id: int) -> RolloutRow:
        """Drive the rollout until it is done, paused, waiting for approval, aborted or failed."""
        async with self._try_lock(rollout_id) as mine:
            if not mine:
                raise RolloutBusyError(self._driven_elsewhere(rollout_id),
                                       fix="watch it with `fleetdesk rollout status ID`, or pause it there")
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
                yield True
            finally:
                self._held.discard(rid)
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                with contextlib.suppress(FleetDeskError):
                    await self.db.call(self.repo.release_lease, rid, self.driver)

    async def _renew_lease(self, rid: int) -> None:
        """Keep the lease while driving; say so when it was lost (this process was stopped longer than LEASE_S
        and another FleetDesk took the rollout over) or cannot be renewed (the inventory is unreachable)."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
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
