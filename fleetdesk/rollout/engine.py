"""The rollout engine: drives a rollout's waves over the devices, journaling every step before it runs.

Per wave: stage the artifact on every device (up to transfer.max_parallel at once, retried with backoff),
then activate each staged device, measure its health gates through the soak and confirm it (or roll it back);
after each device `decide` says whether to go on, wait, pause, ask for approval or finish. Status lives in the
inventory, so a pause or abort from another process (the CLI, the GUI) is seen between steps, and a crash is
repaired by `recover`/`run`: each device's real state is asked of its agent and written back to the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import getpass
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.config import Settings
from fleetdesk.errors import (
    AuthFailedError,
    CommandTimeoutError,
    ConfigError,
    DiskFullError,
    FleetDeskError,
    HostKeyChangedError,
    HostKeyUnknownError,
    RolloutConflictError,
    RolloutStepError,
    TransportError,
    UnreachableError,
)
from fleetdesk.fleet import Fleet
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.rollouts import DeviceRow, RolloutRepo, RolloutRow
from fleetdesk.rollout import decide as dc
from fleetdesk.rollout import states as st
from fleetdesk.rollout.device_ops import AgentView, DeviceOps
from fleetdesk.rollout.gates import GateSample, evaluate
from fleetdesk.rollout.plan import ResolvedPlan, RolloutPlan, resolve

# Rollout statuses (fleetdesk/inventory/rollouts.py ROLLOUT_STATUSES).
PLANNED, RUNNING, PAUSED, WAITING = "planned", "running", "paused", "waiting-approval"
ABORTED, DONE, ROLLING_BACK, ROLLED_BACK, FAILED = "aborted", "done", "rolling-back", "rolled-back", "failed"
FINISHED = frozenset({ABORTED, DONE, ROLLED_BACK, FAILED})


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


class RolloutBusyError(FleetDeskError):
    """Another FleetDesk process on this laptop is driving the rollout now."""


class _Stop(Exception):
    """The rollout was paused or aborted (here or elsewhere) or a wave decided to stop: start no new steps."""


def _os_user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "unknown"


def _lost(exc: BaseException) -> bool:
    """True when the device stopped answering (LOST, not failed): it may come back. A dropped session is an
    UnreachableError (ConnectionLostError); a step past its timeout leaves the device's state unknown too."""
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError, UnreachableError, CommandTimeoutError))


def _retryable(exc: BaseException) -> bool:
    """A transfer error worth another try (lost, or a transport hiccup such as a failed verification);
    auth, host-key and disk problems will not heal by retrying."""
    if isinstance(exc, RolloutStepError):
        return exc.code in ("transfer-failed", "timeout")  # device_ops' codes for a push or command cut short
    return _lost(exc) or (isinstance(exc, TransportError) and not isinstance(
        exc, (DiskFullError, AuthFailedError, HostKeyChangedError, HostKeyUnknownError)))


def _message(exc: BaseException) -> str:
    if isinstance(exc, FleetDeskError):
        return exc.message + (f" — {exc.fix}" if exc.fix else "")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "the step took longer than the plan's step timeout"
    return f"{type(exc).__name__}: {exc}"


def _sample_dict(sample: GateSample | None) -> dict[str, Any] | None:
    return sample.to_dict() if sample is not None else None


def _sample_from(data: dict[str, Any] | None) -> GateSample | None:
    return GateSample.from_dict(data) if data else None


def reconciled_state(before: str, artifact: str, view: AgentView) -> str:
    """Where a device really is, from the state the journal last had for it and what its agent says now.

    The device runs the rollout's artifact: unconfirmed -> verifying (measure again, then confirm);
    confirmed after the engine asked for it -> done. It runs anything else: the activation never happened or
    the agent went back by itself (no confirmation came): the artifact is still there and verified -> staged
    (activate again); a rollback under way ended -> rolled-back.
    """
    runs_it = view.current == artifact
    pending = view.pending.get("sha") if isinstance(view.pending, dict) else None
    if before == st.ROLLING_BACK:
        return st.ROLLING_BACK if runs_it else st.ROLLED_BACK
    if before in (st.PENDING, st.STAGING):
        return before  # staging is idempotent: the push resumes and skips what is there
    if runs_it:
        if before == st.CONFIRMING and pending != artifact:
            return st.DONE
        if before == st.STAGED and pending != artifact:
            return st.STAGED  # it ran the artifact before the rollout: activation is a no-op, gates still measured
        return st.VERIFYING
    if artifact in view.artifacts:
        return st.STAGED
    return st.PENDING


class RolloutEngine:
    """`rid = await engine.start(plan); row = await engine.run(rid)`; control with pause/resume/approve/abort."""

    unreachable_poll_s = 3.0  # how often an unreachable device is asked again
    soak_interval_s = 5.0  # between gate measurements during the soak
    backoff_s = 1.0  # the first transfer retry waits this long, then twice as long each time (capped at 30 s)
    # A transfer whose bytes stop moving this long is cut short (its connection dropped) and retried: a cut link
    # is otherwise noticed only by SSH keepalives (90 s, fleetdesk/transport/asyncssh_transport.py) or the
    # step timeout. The resumed push re-sends at most the block that was in flight.
    stall_timeout_s = 30.0

    def __init__(self, fleet: Fleet, store: ArtifactStore, *, repo: RolloutRepo | None = None,
                 ops: DeviceOps | None = None, on_event: Callable[[RolloutEvent], None] | None = None,
                 actor: str | None = None, lock_dir: Path | None = None) -> None:
        self.fleet = fleet
        self.store = store
        self.repo = repo or RolloutRepo(fleet.inventory)
        self.ops = ops or DeviceOps(fleet, store)
        self.on_event = on_event
        self.actor = actor or _os_user()
        self._lock_dir = lock_dir
        self._held: dict[int, int] = {}  # rollout id -> fd of its lock file, while this process drives it

    # -- operator actions ------------------------------------------------------------------------------------

    async def start(self, plan: RolloutPlan) -> int:
        """Resolve the plan against the inventory and the store, journal it as planned; nothing is touched yet."""
        actor = plan.actor or self.actor
        if not plan.actor:
            plan = dataclasses.replace(plan, actor=actor)
        resolved = resolve(plan, self.fleet.inventory, self.store)
        row = self.repo.create(resolved, actor)
        self.repo.audit(actor, "start", "planned", rollout_id=row.id,
                        device_ids=tuple(d.device_id for d in resolved.devices),
                        detail={"model": resolved.model_ref, "waves": [list(w) for w in resolved.waves]})
        self._emit(row.id, "status", None, row.status,
                   f"rollout {row.id}: {resolved.model_ref} to {len(resolved.devices)} device(s) in "
                   f"{len(resolved.waves)} wave(s)")
        return row.id

    async def pause(self, rollout_id: int, reason: str = "operator") -> RolloutRow:
        row = self.repo.get(rollout_id)
        if row.status not in (RUNNING, PLANNED, WAITING):
            self.repo.audit(self.actor, "pause", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status}; only a running or waiting one can be paused",
                              fix="see `fleetdesk rollout status ID`")
        row = self.repo.set_status(rollout_id, PAUSED, reason=reason, expect=row.status)
        self.repo.audit(self.actor, "pause", "ok", rollout_id=rollout_id, detail={"reason": reason})
        self._emit(rollout_id, "status", None, PAUSED, f"rollout {rollout_id} paused: {reason}")
        return row

    async def resume(self, rollout_id: int) -> RolloutRow:
        """A paused rollout runs again (call `run` to drive it); a crashed running one is left running."""
        row = self.repo.get(rollout_id)
        if row.status not in (PAUSED, RUNNING, PLANNED):
            self.repo.audit(self.actor, "resume", "refused", rollout_id=rollout_id, detail={"status": row.status})
            hint = "approve it: `fleetdesk rollout approve ID`" if row.status == WAITING else \
                "a finished rollout cannot run again; plan a new one"
            raise ConfigError(f"rollout {rollout_id} is {row.status}, not paused", fix=hint)
        retried: list[int] = []
        if row.status == PAUSED:
            row = self.repo.set_status(rollout_id, RUNNING, expect=PAUSED)
            retried = self._retry_failed_before_switch(rollout_id)
        self.repo.audit(self.actor, "resume", "ok", rollout_id=rollout_id, device_ids=tuple(retried),
                        detail={"retried": retried} if retried else None)
        self._emit(rollout_id, "status", None, row.status, f"rollout {rollout_id} resumed")
        return row

    def _retry_failed_before_switch(self, rid: int) -> list[int]:
        """Devices that failed before they switched (staging: disk full, a transfer that kept failing, a copy
        that did not verify) go back to pending: the operator resumed because the cause is fixed, and nothing on
        them was switched. Devices that failed at or after activation (the model would not load) stay failed."""
        retried = []
        for row in self.repo.devices(rid):
            if row.state != st.FAILED:
                continue
            journal = self.repo.journal(rid, device_id=row.device_id)
            if any(e.event == st.ACTIVATE for e in journal):
                continue
            self._record(rid, row.device_id, st.RETRY, error="", detail={"by": self.actor, "failed": row.error})
            retried.append(row.device_id)
        return retried

    async def approve(self, rollout_id: int) -> RolloutRow:
        """The operator lets the next wave start (call `run` to drive it)."""
        row = self.repo.get(rollout_id)
        if row.status != WAITING:
            self.repo.audit(self.actor, "approve", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status}; nothing waits for approval",
                              fix="approve a rollout whose status is waiting-approval")
        wave = self._waiting_wave(rollout_id)
        row = self.repo.set_status(rollout_id, RUNNING, expect=WAITING)
        self.repo.audit(self.actor, "approve", "ok", rollout_id=rollout_id,
                        device_ids=self._wave_ids(rollout_id, wave + 1), detail={"wave": wave})
        self._emit(rollout_id, "status", None, RUNNING, f"rollout {rollout_id}: wave {wave + 2} approved")
        return row

    async def abort(self, rollout_id: int) -> RolloutRow:
        """No new steps; a device under verification rolls back, one not yet activated is skipped.

        When another process drives the rollout, it does that at its next step; otherwise it is done here.
        """
        row = self.repo.get(rollout_id)
        if row.status in FINISHED or row.status == ROLLING_BACK:
            self.repo.audit(self.actor, "abort", "refused", rollout_id=rollout_id, detail={"status": row.status})
            raise ConfigError(f"rollout {rollout_id} is {row.status} already; there is nothing to abort",
                              fix="roll it back instead: `fleetdesk rollout rollback ID`")
        row = self.repo.set_status(rollout_id, ABORTED, reason="aborted by the operator", expect=row.status)
        self._emit(rollout_id, "status", None, ABORTED, f"rollout {rollout_id} aborted")
        outcome = "ok"
        with self._try_lock(rollout_id) as mine:
            if mine:
                resolved = ResolvedPlan.from_dict(row.resolved)
                await self._settle_abort(rollout_id, resolved, [d.device_id for d in resolved.devices])
            else:
                outcome = "requested"  # the driving process settles the devices at its next step
        self.repo.audit(self.actor, "abort", outcome, rollout_id=rollout_id,
                        device_ids=tuple(d.device_id for d in self.repo.devices(rollout_id)))
        return self.repo.get(rollout_id)

    async def rollback(self, rollout_id: int, *, device_id: int | None = None, wave: int | None = None
                       ) -> RolloutRow:
        """Put devices back on the model they ran before: one device, one wave (0-based), or the whole rollout.

        Devices that switched are told to roll back (only when they still run the rollout's artifact, so a
        repeated rollback never swaps them forward again); devices that never switched are closed as
        rolled-back (staged, failed) or skipped (pending). The whole rollout ends rolled-back.
        """
        row = self.repo.get(rollout_id)
        resolved = ResolvedPlan.from_dict(row.resolved)
        rows = self.repo.devices(rollout_id)
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
        with self._try_lock(rollout_id) as mine:
            if not mine:
                self.repo.audit(self.actor, "rollback", "refused", rollout_id=rollout_id, device_ids=ids,
                                detail={"why": "another process drives the rollout"})
                raise RolloutBusyError(f"rollout {rollout_id} is being driven by another FleetDesk process",
                                       fix=f"pause it first (`fleetdesk rollout pause {rollout_id}`), wait for it "
                                           "to stop, then roll back")
            await self._reconcile_all(rollout_id, {})
            chosen = [self.repo.device(rollout_id, r.device_id) for r in chosen]
            whole = device_id is None and wave is None
            if whole:
                row = self.repo.set_status(rollout_id, ROLLING_BACK, reason="rollback by the operator")
                self._emit(rollout_id, "status", None, ROLLING_BACK, f"rollout {rollout_id} rolling back")
            elif row.status == RUNNING:
                # The engine is not driving it (we hold the lock): a part rolled back leaves it paused, so the
                # next `resume` decides again with these devices counted.
                row = self.repo.set_status(rollout_id, PAUSED, reason="a part was rolled back by the operator")
            results = await asyncio.gather(*(self._rollback_one(rollout_id, resolved, r, close_pending=whole)
                                             for r in chosen), return_exceptions=True)
            problems = [r for r in results if isinstance(r, BaseException)]
            left = [r for r in self.repo.devices(rollout_id) if r.device_id in ids and r.state not in
                    (st.ROLLED_BACK, st.SKIPPED, st.PENDING)]
            outcome = "ok" if not problems and not left else "incomplete"
            if whole:
                row = self.repo.set_status(rollout_id, ROLLED_BACK if outcome == "ok" else FAILED,
                                           reason="" if outcome == "ok" else
                                           f"{len(left)} device(s) could not be rolled back")
        self.repo.audit(self.actor, "rollback", outcome, rollout_id=rollout_id, device_ids=ids,
                        detail={"scope": "device" if device_id is not None else "wave" if wave is not None
                                else "rollout", "wave": wave,
                                "left": {str(r.device_id): r.state for r in left},
                                "problems": [_message(p) for p in problems]})
        return self.repo.get(rollout_id)

    async def recover(self) -> list[int]:
        """After a crash: every rollout still marked running has each switched device's real state asked of its
        agent and written to the journal. Returns their ids; `run` each to continue."""
        found = []
        for row in self.repo.list(active_only=True):
            if row.status != RUNNING:
                continue
            with self._try_lock(row.id) as mine:
                if not mine:
                    continue  # another live process drives it: it was not a crash
                resolved = ResolvedPlan.from_dict(row.resolved)
                devices = {d.device_id: d for d in resolved.devices}
                await self._reconcile_all(row.id, devices)
                found.append(row.id)
        return found

    # -- driving ---------------------------------------------------------------------------------------------

    async def run(self, rollout_id: int) -> RolloutRow:
        """Drive the rollout until it is done, paused, waiting for approval, aborted or failed."""
        with self._try_lock(rollout_id) as mine:
            if not mine:
                raise RolloutBusyError(f"rollout {rollout_id} is being driven by another FleetDesk process",
                                       fix="watch it with `fleetdesk rollout status ID`, or pause it there")
            row = self.repo.get(rollout_id)
            if row.status == PLANNED:
                row = self.repo.set_status(rollout_id, RUNNING, expect=PLANNED)
                self._emit(rollout_id, "status", None, RUNNING, f"rollout {rollout_id} running")
            if row.status == ABORTED:
                resolved = ResolvedPlan.from_dict(row.resolved)
                await self._settle_abort(rollout_id, resolved, [d.device_id for d in resolved.devices])
                return self.repo.get(rollout_id)
            if row.status != RUNNING:
                return row
            resolved = ResolvedPlan.from_dict(row.resolved)
            planned = {d.device_id: d for d in resolved.devices}
            # Whatever a crash left between "journaled" and "done": ask the agents before any new step.
            await self._reconcile_all(rollout_id, planned)
            approved = {a.detail.get("wave") for a in self.repo.audit_log(rollout_id=rollout_id, limit=10_000)
                        if a.action == "approve" and a.outcome == "ok"}
            for wave in range(len(resolved.waves)):
                decision = await self._run_wave(rollout_id, resolved, wave)
                if decision is None:
                    break  # stopped by a status change: it is already in the database
                self._emit(rollout_id, "decision", None, None, decision.reason)
                if decision.action == dc.NEXT_WAVE or (decision.action == dc.APPROVE and wave in approved):
                    continue
                status = {dc.APPROVE: WAITING, dc.DONE: DONE, dc.PAUSE: PAUSED}[decision.action]
                try:
                    self.repo.set_status(rollout_id, status, reason=decision.reason, expect=RUNNING)
                except RolloutConflictError:
                    break  # paused or aborted elsewhere a moment ago: that status stands
                if status == PAUSED:
                    self.repo.audit("fleetdesk", "pause", "ok", rollout_id=rollout_id,
                                    device_ids=tuple(resolved.waves[wave]), detail={"wave": wave, **decision.to_dict()})
                self._emit(rollout_id, "status", None, status, f"rollout {rollout_id} {status}: {decision.reason}")
                break
            row = self.repo.get(rollout_id)
            if row.status == ABORTED:
                await self._settle_abort(rollout_id, resolved, list(planned))
            return self.repo.get(rollout_id)

    async def _run_wave(self, rid: int, resolved: ResolvedPlan, wave: int) -> dc.Decision | None:
        plan = resolved.plan
        policy = resolved.policy_for(wave)
        ids = list(resolved.waves[wave])
        planned = {d.device_id: d for d in resolved.devices}
        unreachable_since: float | None = None
        while True:
            if self.repo.get(rid).status != RUNNING:
                return None
            tally = dc.WaveTally.of(self.repo.device(rid, i).state for i in ids)
            if not tally.unreachable:
                unreachable_since = None
            waited = unreachable_since is not None and time.monotonic() - unreachable_since >= plan.unreachable_wait_s
            decision = dc.decide(policy, tally, wave=wave, last_wave=wave == len(resolved.waves) - 1,
                                 unreachable=plan.unreachable, waited_out=waited)
            if decision.action == dc.WORK:
                await self._work_wave(rid, resolved, wave, ids, planned)
            elif decision.action == dc.WAIT:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    self._emit(rid, "note", None, None, f"{decision.reason} (up to {plan.unreachable_wait_s:g} s)")
                await asyncio.sleep(self.unreachable_poll_s)
                await self._retry_unreachable(rid, [i for i in ids if self.repo.device(rid, i).state
                                                    == st.UNREACHABLE], planned)
            elif decision.action == dc.PAUSE and tally.active:
                # Errors exceeded while devices are mid-way: those already switched finish their verification
                # (an unconfirmed switch is never left behind), nothing new starts.
                await self._finish_switched(rid, resolved, ids, planned)
                return dc.decide(policy, dc.WaveTally.of(self.repo.device(rid, i).state for i in ids), wave=wave,
                                 last_wave=wave == len(resolved.waves) - 1, unreachable=plan.unreachable,
                                 waited_out=waited)
            else:
                return decision

    async def _work_wave(self, rid: int, resolved: ResolvedPlan, wave: int, ids: list[int],
                         planned: dict[int, Any]) -> None:
        plan = resolved.plan
        policy = resolved.policy_for(wave)
        stop = asyncio.Event()  # set when a device's end state makes the wave pause: no device starts a new step
        # Transfers at once; a device whose turn comes after the wave stopped does not start.
        slots = _Slots(plan.transfer.max_parallel, lambda: not stop.is_set() and self._running(rid))
        # Activations move no artifact bytes (a few agent calls each): the transfer limit does not bound them, or a
        # wave of 10 with 4 transfers would activate in 3 rounds (benchmarks/rollout.py measured ~3 s a round).
        switching = asyncio.Semaphore(max(1, len(ids)))

        def check_wave() -> None:
            tally = dc.WaveTally.of(self.repo.device(rid, i).state for i in ids)
            decision = dc.decide(policy, tally, wave=wave, last_wave=wave == len(resolved.waves) - 1,
                                 unreachable=plan.unreachable)
            if decision.action == dc.PAUSE:
                stop.set()

        async def stage_one(device_id: int) -> None:
            if stop.is_set() or not self._running(rid):
                return
            await self._stage(rid, resolved, device_id, planned[device_id], slots)
            check_wave()

        async def activate_one(device_id: int) -> None:
            async with switching:
                state = self.repo.device(rid, device_id).state
                if state == st.STAGED and (stop.is_set() or not self._running(rid)):
                    return
                await self._activate(rid, resolved, wave, device_id)
                check_wave()

        def in_state(*wanted: str) -> list[int]:
            return [i for i in ids if self.repo.device(rid, i).state in wanted]

        if plan.transfer.prestage:
            await _gather(stage_one(i) for i in in_state(st.PENDING, st.STAGING))
            check_wave()
            if stop.is_set() or not self._running(rid):
                await self._finish_switched(rid, resolved, ids, planned)
                return
            await _gather(activate_one(i) for i in in_state(st.STAGED, st.VERIFYING, st.CONFIRMING,
                                                             st.ROLLING_BACK))
        else:
            async def both(device_id: int) -> None:
                if self.repo.device(rid, device_id).state in (st.PENDING, st.STAGING):
                    await stage_one(device_id)
                if self.repo.device(rid, device_id).state in (st.STAGED, st.VERIFYING, st.CONFIRMING,
                                                              st.ROLLING_BACK):
                    await activate_one(device_id)

            await _gather(both(i) for i in ids)
        if not self._running(rid):
            await self._finish_switched(rid, resolved, ids, planned)

    async def _finish_switched(self, rid: int, resolved: ResolvedPlan, ids: Sequence[int],
                               planned: dict[int, Any]) -> None:
        """Devices already switched to the new model end their verification (confirm or roll back); an abort
        rolls them back instead."""
        wave_of = {d.device_id: d.wave for d in resolved.devices}
        switched = [i for i in ids if self.repo.device(rid, i).state in (st.VERIFYING, st.CONFIRMING,
                                                                         st.ROLLING_BACK)]
        await _gather(self._activate(rid, resolved, wave_of[i], i) for i in switched)

    def _running(self, rid: int) -> bool:
        return self.repo.get(rid).status == RUNNING

    # -- one device ------------------------------------------------------------------------------------------

    async def _stage(self, rid: int, resolved: ResolvedPlan, device_id: int, planned: Any, slots: _Slots) -> None:
        """PENDING (or STAGING) to STAGED, or failed or lost. Only the transfer holds one of the wave's transfer
        slots: the space check before it and the device's verification after it run beside other transfers.
        The STAGE step is journaled when the device's first slot is granted (or its step ends without one); a
        device whose turn comes after the wave stopped stays as it was."""
        plan = resolved.plan
        timeout = plan.step_timeout_s
        row = self.repo.device(rid, device_id)
        device = self.fleet.inventory.device(device_id)
        sent_before = row.bytes_sent
        attempts = row.attempts
        delay = self.backoff_s

        def begin() -> None:
            nonlocal row
            if row.state == st.PENDING:
                row = self._record(rid, device_id, st.STAGE, detail={"artifact": row.artifact})

        for attempt in range(plan.transfer.retries + 1):
            attempts += 1
            self.repo.update(rid, device_id, attempts=attempts)
            meter = _Meter(self, rid, device_id, device.name)
            sent = 0
            try:
                staging = await asyncio.wait_for(self.ops.prepare(device, row.artifact), timeout)
                if staging.complete:
                    meter(staging.total, staging.total)
                else:
                    async with slots.take() as granted:
                        if not granted:
                            return
                        begin()
                        meter.started = time.monotonic()  # bytes/s from the first byte, not from the wait
                        work = asyncio.ensure_future(self.ops.transfer(
                            staging, bandwidth_bytes_s=plan.transfer.bandwidth_bytes_s, progress=meter))
                        watch = asyncio.ensure_future(self._watch_stall(device, meter, work))
                        try:
                            sent = await asyncio.wait_for(work, timeout)
                        finally:
                            watch.cancel()
                    await asyncio.wait_for(self.ops.verify_staged(staging), timeout)
            except Exception as exc:  # every failure is journaled as one of two events
                begin()
                if meter.stalled:
                    exc = UnreachableError(f"the transfer to {device.name} stalled: no byte moved for "
                                           f"{self.stall_timeout_s:g} s", device=device.name, step="stage",
                                           fix="check the device's network link; the transfer resumes where it "
                                               "stopped", cause=exc)
                # bytes_done: how far the device had acknowledged this attempt (what a resume need not re-send).
                figures = {"bytes_done": meter.done, "bytes_total": meter.total, "stalled": meter.stalled}
                if _retryable(exc) and attempt < plan.transfer.retries and self._running(rid):
                    self._emit(rid, "note", device_id, st.STAGING,
                               f"{device.name}: transfer attempt {attempt + 1} failed ({_message(exc)}); "
                               f"retrying in {delay:g} s", bytes_done=meter.done, bytes_total=meter.total)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self._emit(rid, "note", device_id, st.STAGING, f"{device.name}: transfer attempt {attempt + 1} "
                           f"failed ({_message(exc)})", bytes_done=meter.done, bytes_total=meter.total)
                self._record(rid, device_id, st.LOST if _lost(exc) else st.STEP_FAILED, error=_message(exc),
                             detail={"step": "stage", "attempts": attempts, **figures})
                return
            begin()
            self._record(rid, device_id, st.STAGED_OK, bytes_sent=sent_before + sent,
                         detail={"bytes_sent": sent, "seconds": round(time.monotonic() - meter.started, 3),
                                 "already_there": staging.complete})
            return

    async def _watch_stall(self, device: Device, meter: _Meter, work: asyncio.Future[Any]) -> None:
        """Drop the device's connection when the transfer's bytes stop moving (see stall_timeout_s); the push
        then fails as lost and the retry resumes it. Only once bytes flow and until the last: the space check before
        and the device's verification after are bounded by their own timeouts."""
        while not work.done():
            await asyncio.sleep(min(1.0, self.stall_timeout_s / 4))
            if meter.done < meter.total and time.monotonic() - meter.changed > self.stall_timeout_s:
                meter.stalled = True
                self.fleet.pool.abort(self.fleet.target(device))
                return

    async def _activate(self, rid: int, resolved: ResolvedPlan, wave: int, device_id: int) -> None:
        """From staged (or a reconciled later state) to an end state: activate, verify, confirm or roll back."""
        plan = resolved.plan
        policy = resolved.policy_for(wave)
        device = self.fleet.inventory.device(device_id)
        row = self.repo.device(rid, device_id)
        try:
            if row.state == st.STAGED:
                if not self._running(rid):
                    return
                # The model it runs now: from the baseline when the p95-ratio gate needs one (benching the old model
                # costs 2-3 s a device), else from the activation's answer (its "previous"): no call of its own.
                previous = baseline = None
                if plan.gates.p95_ratio_max is not None:
                    try:
                        baseline = await self._step(plan, self.ops.baseline(device, None))
                        previous = baseline.model
                    except Exception as exc:
                        if _lost(exc):
                            raise
                        self._emit(rid, "note", device_id, st.STAGED,
                                   f"{device.name}: no baseline on the current model ({_message(exc)}); "
                                   "the latency ratio gate has nothing to compare with")
                row = self._record(rid, device_id, st.ACTIVATE, previous_artifact=previous,
                                   gates={"baseline": _sample_dict(baseline)},
                                   detail={"previous": previous, "baseline": _sample_dict(baseline)})
                try:
                    answer = await self._step(plan, self.ops.activate(device, row.artifact, plan.confirm_within_s))
                except Exception as exc:
                    if _lost(exc):
                        raise
                    # The agent refused or the model did not load; make sure nothing stays switched.
                    with contextlib.suppress(Exception):
                        now = await self._step(plan, self.ops.view(device))
                        if now.current == row.artifact:
                            await self._step(plan, self.ops.rollback(device))
                    self._record(rid, device_id, st.STEP_FAILED, error=_message(exc),
                                 detail={"step": "activate", "code": getattr(exc, "code", None)})
                    return
                learned = {"previous_artifact": answer["previous"]} if previous is None and isinstance(
                    answer.get("previous"), str) and answer.get("changed", True) else {}
                row = self._record(rid, device_id, st.ACTIVATED, detail={"agent": _plain(answer)}, **learned)
            if row.state == st.VERIFYING:
                row = await self._verify(rid, resolved, policy.soak_s, device, row)
            if row.state == st.CONFIRMING:
                try:
                    answer = await self._step(plan, self.ops.confirm(device, row.artifact))
                except Exception as exc:
                    if _lost(exc):
                        raise
                    code = getattr(exc, "code", None)
                    # deadline-passed: the agent already went back on its own (the confirmation came too late).
                    event = st.REVERTED if code == "deadline-passed" else st.STEP_FAILED
                    row = self._record(rid, device_id, event, error=_message(exc),
                                       detail={"step": "confirm", "code": code})
                else:
                    row = self._record(rid, device_id, st.CONFIRMED, detail={"agent": _plain(answer)})
            if row.state == st.ROLLING_BACK:
                await self._undo(rid, plan, device, row)
        except Exception as exc:
            state = self.repo.device(rid, device_id).state
            event = st.LOST if _lost(exc) else st.STEP_FAILED
            if (state, event) not in st.TABLE:
                raise
            self._record(rid, device_id, event, error=_message(exc), detail={"step": state})

    async def _verify(self, rid: int, resolved: ResolvedPlan, soak_s: float, device: Device,
                      row: DeviceRow) -> DeviceRow:
        plan = resolved.plan
        baseline = _sample_from((row.gates or {}).get("baseline"))
        samples: list[GateSample] = []
        started = time.monotonic()
        while True:
            if self.repo.get(rid).status == ABORTED:
                return self._record(rid, row.device_id, st.ABORT, detail={"step": "verify"})
            try:
                samples.append(await self._step(plan, self.ops.measure(device, row.artifact, plan.gates)))
            except Exception as exc:
                if _lost(exc):
                    raise
                # A device whose health cannot be measured has not proved itself healthy.
                return self._record(rid, row.device_id, st.GATES_FAILED, error=f"measuring failed: {_message(exc)}",
                                    detail={"step": "measure", "code": getattr(exc, "code", None)})
            result = evaluate(plan.gates, baseline, samples)
            gates = {"baseline": _sample_dict(baseline), **result.to_dict(), "samples": len(samples)}
            self.repo.update(rid, row.device_id, gates=gates)
            self._emit(rid, "gates", row.device_id, st.VERIFYING,
                       f"{device.name}: gates {'pass' if result.passed else 'FAIL'} after {len(samples)} "
                       f"measurement(s)" + ("" if result.passed else f": {result.reason}"))
            if not result.passed:
                return self._record(rid, row.device_id, st.GATES_FAILED, gates=gates, error=result.reason,
                                    detail={"gates": result.to_dict()})
            left = soak_s - (time.monotonic() - started)
            if left <= 0:
                return self._record(rid, row.device_id, st.PASSED, gates=gates, detail={"gates": result.to_dict()})
            await asyncio.sleep(min(self.soak_interval_s, left))

    async def _undo(self, rid: int, plan: RolloutPlan, device: Device, row: DeviceRow) -> DeviceRow:
        """ROLLING_BACK -> the agent goes back to the previous model, only if it still runs the artifact."""
        view = await self._step(plan, self.ops.view(device))
        if view.current != row.artifact:
            return self._record(rid, row.device_id, st.ROLLED_BACK_OK,
                                detail={"already": True, "current": view.current})
        try:
            answer = await self._step(plan, self.ops.rollback(device))
        except Exception as exc:
            if _lost(exc):
                raise
            return self._record(rid, row.device_id, st.STEP_FAILED, error=_message(exc),
                                detail={"step": "rollback", "code": getattr(exc, "code", None)})
        return self._record(rid, row.device_id, st.ROLLED_BACK_OK, detail={"agent": _plain(answer)})

    async def _rollback_one(self, rid: int, resolved: ResolvedPlan, row: DeviceRow, *, close_pending: bool) -> None:
        plan = resolved.plan
        device = self.fleet.inventory.device(row.device_id)
        state = row.state
        if state in (st.ROLLED_BACK, st.SKIPPED):
            return
        if state in (st.PENDING, st.STAGING):
            if close_pending:
                self._record(rid, row.device_id, st.ABORT, detail={"why": "rollout rolled back"})
            return
        if state == st.CONFIRMING:
            row = await self._confirm_then(rid, plan, device, row)
        if row.state in (st.STAGED, st.FAILED, st.DONE, st.VERIFYING, st.UNREACHABLE):
            row = self._record(rid, row.device_id, st.ROLLBACK, detail={"by": self.actor})
        if row.state == st.ROLLING_BACK:
            try:
                await self._undo(rid, plan, device, row)
            except Exception as exc:
                if not _lost(exc):
                    raise
                self._record(rid, row.device_id, st.LOST, error=_message(exc), detail={"step": "rollback"})
                raise

    async def _confirm_then(self, rid: int, plan: RolloutPlan, device: Device, row: DeviceRow) -> DeviceRow:
        """A device caught between passing and confirming: settle it first so the table allows a rollback."""
        view = await self._step(plan, self.ops.view(device))
        target = reconciled_state(st.CONFIRMING, row.artifact, view)
        return self._move(rid, row, target, view)

    async def _settle_abort(self, rid: int, resolved: ResolvedPlan, ids: Sequence[int]) -> None:
        """Abort: devices not yet switched are skipped, devices under verification roll back."""
        plan = resolved.plan
        await self._reconcile_all(rid, {})
        for device_id in ids:
            await asyncio.sleep(0)  # one device's journal commit at a time: the window's loop runs in between
            row = self.repo.device(rid, device_id)
            if row.state in (st.PENDING, st.STAGING, st.STAGED, st.UNREACHABLE):
                self._record(rid, device_id, st.ABORT, detail={"why": "rollout aborted"})
            elif row.state in (st.VERIFYING, st.ROLLING_BACK):
                device = self.fleet.inventory.device(device_id)
                if row.state == st.VERIFYING:
                    row = self._record(rid, device_id, st.ABORT, detail={"why": "rollout aborted"})
                try:
                    await self._undo(rid, plan, device, row)
                except Exception as exc:
                    if not _lost(exc):
                        raise
                    self._record(rid, device_id, st.LOST, error=_message(exc), detail={"step": "rollback"})

    # -- reconciling with the agents ---------------------------------------------------------------------

    async def _reconcile_all(self, rid: int, planned: dict[int, Any]) -> None:
        """Devices the journal shows mid-switch are asked what they really run, and journaled as that."""
        rows = [r for r in self.repo.devices(rid) if r.state in (st.ACTIVATING, st.VERIFYING, st.CONFIRMING,
                                                                   st.ROLLING_BACK)]
        plan = ResolvedPlan.from_dict(self.repo.get(rid).resolved).plan

        async def one(row: DeviceRow) -> None:
            device = self.fleet.inventory.device(row.device_id)
            try:
                view = await self._step(plan, self.ops.view(device))
            except Exception as exc:
                if not _lost(exc):
                    raise
                self._record(rid, row.device_id, st.LOST, error=_message(exc), detail={"step": "reconcile"})
                return
            self._move(rid, row, reconciled_state(row.state, row.artifact, view), view)

        await _gather(one(r) for r in rows)

    async def _retry_unreachable(self, rid: int, ids: Sequence[int], planned: dict[int, Any]) -> None:
        plan = ResolvedPlan.from_dict(self.repo.get(rid).resolved).plan

        async def one(device_id: int) -> None:
            row = self.repo.device(rid, device_id)
            device = self.fleet.inventory.device(device_id)
            try:
                view = await asyncio.wait_for(self.ops.view(device), min(plan.step_timeout_s, 60.0))
            except Exception as exc:
                if _lost(exc):
                    return
                raise
            before = self._state_before_lost(rid, device_id)
            target = reconciled_state(before, row.artifact, view)
            if target == st.ROLLING_BACK:
                self._record(rid, device_id, st.ROLLBACK, detail={"why": "a rollback was under way when it was lost",
                                                                  "agent": _plain(dataclasses.asdict(view))})
                return
            self._record(rid, device_id, st.REACHABLE,
                         detail={"reconciled": target, "before": before, "agent": _plain(dataclasses.asdict(view))})

        await _gather(one(i) for i in ids)

    def _state_before_lost(self, rid: int, device_id: int) -> str:
        for entry in reversed(self.repo.journal(rid, device_id=device_id)):
            if entry.to_state == st.UNREACHABLE and entry.from_state != st.UNREACHABLE:
                return entry.from_state
        return st.PENDING

    def _move(self, rid: int, row: DeviceRow, target: str, view: AgentView) -> DeviceRow:
        """Journal a device from its recorded state to the one its agent shows: by the table's own event when
        there is one (activated, confirmed, rolled-back), else as lost and found again (reachable)."""
        if target == row.state:
            return row
        agent = _plain(dataclasses.asdict(view))
        for event in (st.ACTIVATED, st.CONFIRMED, st.ROLLED_BACK_OK):
            if st.TABLE.get((row.state, event)) == target:
                return self._record(rid, row.device_id, event, detail={"reconciled": True, "agent": agent})
        if row.state != st.UNREACHABLE:
            self._record(rid, row.device_id, st.LOST, detail={"why": "reconciling with the agent", "agent": agent})
        return self._record(rid, row.device_id, st.REACHABLE,
                            detail={"reconciled": target, "before": row.state, "agent": agent})

    # -- helpers ---------------------------------------------------------------------------------------------

    async def _step(self, plan: RolloutPlan, work: Any) -> Any:
        return await asyncio.wait_for(work, plan.step_timeout_s)

    def _record(self, rid: int, device_id: int, event: str, *, detail: dict[str, Any] | None = None,
                **fields: Any) -> DeviceRow:
        row = self.repo.record(rid, device_id, event, detail=detail, **fields)
        name = self._name(device_id)
        extra = f": {row.error}" if row.error and row.state in (st.FAILED, st.ROLLING_BACK, st.UNREACHABLE) else ""
        self._emit(rid, "state", device_id, row.state, f"{name}: {event} -> {row.state}{extra}")
        return row

    def _name(self, device_id: int) -> str:
        try:
            return self.fleet.inventory.device(device_id).name
        except FleetDeskError:
            return f"device {device_id}"

    def _emit(self, rid: int, kind: str, device_id: int | None, state: str | None, message: str, **extra: Any
              ) -> None:
        if self.on_event is not None:
            self.on_event(RolloutEvent(rid, kind, device_id, state, message, **extra))

    def _wave_ids(self, rid: int, wave: int) -> tuple[int, ...]:
        return tuple(r.device_id for r in self.repo.devices(rid) if r.wave == wave)

    def _waiting_wave(self, rid: int) -> int:
        """The wave that waits for approval: the last one any device of which has started."""
        started = [r.wave for r in self.repo.devices(rid) if r.state != st.PENDING]
        return max(started) if started else 0

    @contextlib.contextmanager
    def _try_lock(self, rid: int) -> Iterator[bool]:
        """An flock per rollout while this process drives it; the kernel drops it when the process dies."""
        if rid in self._held:
            yield True
            return
        folder = self._lock_dir or Settings.load().data_dir / "rollout-locks"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{rid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            self._held[rid] = fd
            try:
                yield True
            finally:
                del self._held[rid]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class _Meter:
    """Turns push progress into events with bytes/s and an ETA, at most a few per second."""

    def __init__(self, engine: RolloutEngine, rid: int, device_id: int, name: str) -> None:
        self.engine, self.rid, self.device_id, self.name = engine, rid, device_id, name
        self.started = time.monotonic()
        self.last = 0.0
        self.done, self.total = 0, 0  # bytes the device acknowledged (every report, not only those emitted)
        self.changed = self.started  # when `done` last moved (the stall watchdog reads it)
        self.stalled = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done != self.done or total != self.total:
            self.changed = now
        self.done, self.total = done, total
        if done < total and now - self.last < 0.5:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else None
        self.engine._emit(self.rid, "progress", self.device_id, st.STAGING,
                          f"{self.name}: {done}/{total} bytes", bytes_done=done, bytes_total=total,
                          rate_bytes_s=rate, eta_s=eta)


class _Slots:
    """How many transfers run at once; a slot granted after the wave stopped says so (False)."""

    def __init__(self, count: int, may_start: Callable[[], bool]) -> None:
        self._semaphore = asyncio.Semaphore(max(1, count))
        self._may_start = may_start

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[bool]:
        async with self._semaphore:
            yield self._may_start()


async def _gather(works: Any) -> None:
    """Run the coroutines together; the first unexpected error is raised after all of them ended."""
    results = await asyncio.gather(*list(works), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _plain(value: Any) -> Any:
    """Agent answers and views as JSON-safe data for the journal."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
