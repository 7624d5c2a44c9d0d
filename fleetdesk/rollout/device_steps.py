"""One device's way through a rollout: stage, activate, verify, confirm or roll back, and reconcile after a crash.

The engine (fleetdesk.rollout.engine.RolloutEngine), which drives the waves and the operator's actions, holds one
`DeviceSteps` and gives it what it works with: the fleet (and its acting operator), the device operations, the
journal and where events go. Every step is journaled (`record`, on the inventory's thread) before it runs on the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from fleetdesk.agent_client import AgentView
from fleetdesk.errors import (
    AuthFailedError,
    CommandTimeoutError,
    DatabaseUnreachableError,
    DiskFullError,
    FleetDeskError,
    HostKeyChangedError,
    HostKeyUnknownError,
    RolloutStepError,
    TransportError,
    UnreachableError,
)
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.rollouts import DeviceRow
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.gates import SERVING, GateSample, evaluate, evaluate_shadow, shadow_agreement
from fleetdesk.rollout.journal import RolloutJournal
from fleetdesk.rollout.plan import ResolvedPlan, RolloutPlan

# Rollout statuses (fleetdesk/inventory/rollouts.py ROLLOUT_STATUSES).
PLANNED, RUNNING, PAUSED, WAITING = "planned", "running", "paused", "waiting-approval"
ABORTED, DONE, ROLLING_BACK, ROLLED_BACK, FAILED = "aborted", "done", "rolling-back", "rolled-back", "failed"
FINISHED = frozenset({ABORTED, DONE, ROLLED_BACK, FAILED})
# How long after a shadow step's time bound the device stops the shadow by itself if this laptop has not.
SHADOW_EXPIRY_MARGIN_S = 300.0


class Emit(Protocol):
    """Where the steps' events go: the engine's own, which hands each to its `on_event` as a RolloutEvent
    (fleetdesk.rollout.engine). `extra`: a transfer's bytes_done, bytes_total, rate_bytes_s and eta_s."""

    def __call__(self, rid: int, kind: str, device_id: int | None, state: str | None, message: str,
                 **extra: Any) -> None: ...


def lost(exc: BaseException) -> bool:
    """True when the device stopped answering (LOST, not failed): it may come back. A dropped session is an
    UnreachableError (ConnectionLostError); a step past its timeout leaves the device's state unknown too."""
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError, UnreachableError, CommandTimeoutError))


def _database(exc: BaseException) -> bool:
    """True when the inventory's database went away: never the device's failure. The step's handlers let it pass;
    the engine stops at the next safe point and rides it out (RolloutJournal keeps what the step learned)."""
    return isinstance(exc, DatabaseUnreachableError)


def _retryable(exc: BaseException) -> bool:
    """A transfer error worth another try (lost, or a transport hiccup such as a failed verification);
    auth, host-key and disk problems will not heal by retrying."""
    if isinstance(exc, RolloutStepError):
        return exc.code in ("transfer-failed", "timeout")  # device_ops' codes for a push or command cut short
    return lost(exc) or (isinstance(exc, TransportError) and not isinstance(
        exc, (DiskFullError, AuthFailedError, HostKeyChangedError, HostKeyUnknownError)))


def message(exc: BaseException) -> str:
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


class DeviceSteps:
    """A device's steps, over what the engine gives: the fleet (its SSH pool, to cut a stalled transfer), the
    agent's operations (`ops`) and the rollout journal (`db`); the fleet's acting operator is named in the journal
    when the operator rolls a device back, and every event goes to `emit`. The engine holds one (`engine.steps`)
    and calls it for each device of a wave, many at once."""

    soak_interval_s = 5.0  # between gate measurements during the soak
    backoff_s = 1.0  # the first transfer retry waits this long, then twice as long each time (capped at 30 s)
    # A transfer whose bytes stop moving this long is cut short (its connection dropped) and retried: a cut link
    # is otherwise noticed only by SSH keepalives (90 s, fleetdesk/transport/asyncssh_transport.py) or the
    # step timeout. The resumed push re-sends at most the block that was in flight.
    stall_timeout_s = 30.0
    shadow_interval_s = 2.0  # between looks at a running shadow's figures

    def __init__(self, fleet: Fleet, ops: DeviceOps, db: RolloutJournal, *, emit: Emit) -> None:
        self.fleet = fleet
        self.ops = ops
        self.db = db
        self.emit = emit
        self._names: dict[int, str] = {}  # device id -> name, for the events' messages

    async def running(self, rid: int) -> bool:
        """Whether the rollout's status (in the inventory: another process may have paused or aborted it) is
        still running, and the inventory reachable: while it is not, no new step starts."""
        return await self.db.status(rid) == RUNNING and not self.db.unreachable and not self.db.keeping(rid)

    async def _device(self, device_id: int) -> Device:
        device = await self.db.device_of(device_id)
        self._names[device_id] = device.name
        return device

    async def stage(self, rid: int, resolved: ResolvedPlan, device_id: int, slots: Slots) -> None:
        """PENDING (or STAGING) to STAGED, or failed or lost. Only the transfer (each file checked against the
        signed manifest before it goes, and by its SHA-256 on the device when it lands) holds one of the wave's
        transfer slots: the space check before it runs beside other transfers.
        The STAGE step is journaled when the device's first slot is granted (or its step ends without one); a
        device whose turn comes after the wave stopped stays as it was."""
        plan = resolved.plan
        timeout = plan.step_timeout_s
        row = await self.db.device(rid, device_id)
        device = await self._device(device_id)
        sent_before = row.bytes_sent
        attempts = row.attempts
        delay = self.backoff_s

        async def begin() -> None:
            nonlocal row
            if row.state == st.PENDING:
                row = await self.record(rid, device_id, st.STAGE, detail={"artifact": row.artifact})

        for attempt in range(plan.transfer.retries + 1):
            attempts += 1
            await self.db.update(rid, device_id, attempts=attempts)
            meter = _Meter(self.emit, rid, device_id, device.name)
            sent = 0
            try:
                staging = await asyncio.wait_for(self.ops.prepare(device, row.artifact), timeout)
                if staging.complete:
                    meter(staging.total, staging.total)
                else:
                    async with slots.take() as granted:
                        if not granted:
                            return
                        await begin()
                        meter.started = time.monotonic()  # bytes/s from the first byte, not from the wait
                        work = asyncio.ensure_future(self.ops.transfer(
                            staging, bandwidth_bytes_s=plan.transfer.bandwidth_bytes_s, progress=meter))
                        watch = asyncio.ensure_future(self._watch_stall(device, meter, work))
                        try:
                            sent = await asyncio.wait_for(work, timeout)
                        finally:
                            watch.cancel()
            except Exception as exc:  # every failure is journaled as one of two events
                if _database(exc):
                    raise
                await begin()
                if meter.stalled:
                    exc = UnreachableError(f"the transfer to {device.name} stalled: no byte moved for "
                                           f"{self.stall_timeout_s:g} s", device=device.name, step="stage",
                                           fix="check the device's network link; the transfer resumes where it "
                                               "stopped", cause=exc)
                # bytes_done: how far the device had acknowledged this attempt (what a resume need not re-send).
                figures = {"bytes_done": meter.done, "bytes_total": meter.total, "stalled": meter.stalled}
                if _retryable(exc) and attempt < plan.transfer.retries and await self.running(rid):
                    self.emit(rid, "note", device_id, st.STAGING,
                              f"{device.name}: transfer attempt {attempt + 1} failed ({message(exc)}); "
                              f"retrying in {delay:g} s", bytes_done=meter.done, bytes_total=meter.total)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self.emit(rid, "note", device_id, st.STAGING, f"{device.name}: transfer attempt {attempt + 1} "
                          f"failed ({message(exc)})", bytes_done=meter.done, bytes_total=meter.total)
                await self.record(rid, device_id, st.LOST if lost(exc) else st.STEP_FAILED, error=message(exc),
                                  detail={"step": "stage", "attempts": attempts, **figures})
                return
            await begin()
            await self.record(rid, device_id, st.STAGED_OK, bytes_sent=sent_before + sent,
                              detail={"bytes_sent": sent, "seconds": round(time.monotonic() - meter.started, 3),
                                       "already_there": staging.complete})
            return

    async def _watch_stall(self, device: Device, meter: _Meter, work: asyncio.Future[Any]) -> None:
        """Drop the device's connection when the transfer's bytes stop moving (see stall_timeout_s); the push
        then fails as lost and the retry resumes it. Only once bytes flow and until the last: the space check before
        and the device's hashing of the last file are bounded by the step timeout."""
        target = (await self.fleet.areach(device)).target  # read once, off the loop: the pool knows its connection
        while not work.done():
            await asyncio.sleep(min(1.0, self.stall_timeout_s / 4))
            if meter.done < meter.total and time.monotonic() - meter.changed > self.stall_timeout_s:
                meter.stalled = True
                self.fleet.pool.abort(target)
                return

    async def activate(self, rid: int, resolved: ResolvedPlan, wave: int, device_id: int) -> None:
        """From staged (or a reconciled later state) to an end state: activate, verify, confirm or roll back."""
        plan = resolved.plan
        policy = resolved.policy_for(wave)
        device = await self._device(device_id)
        row = await self.db.device(rid, device_id)
        try:
            if row.state == st.STAGED:
                if not await self.running(rid):
                    return
                shadowed = await self._shadow(rid, plan, wave, device, row)
                if shadowed is None or shadowed.state != st.STAGED:
                    return  # the rollout stopped meanwhile (still staged), or the candidate failed (failed)
                row = shadowed
                # The model it runs now: from the baseline when the p95-ratio gate needs one (benching the old model
                # costs 2-3 s a device), else from the activation's answer (its "previous"): no call of its own.
                previous = baseline = None
                if plan.gates.p95_ratio_max is not None:
                    try:
                        baseline = await self._step(plan, self.ops.baseline(device, None))
                        previous = baseline.model
                    except Exception as exc:
                        if lost(exc) or _database(exc):
                            raise
                        self.emit(rid, "note", device_id, st.STAGED,
                                  f"{device.name}: no baseline on the current model ({message(exc)}); "
                                  "the latency ratio gate has nothing to compare with")
                row = await self.record(rid, device_id, st.ACTIVATE, previous_artifact=previous,
                                        gates={"baseline": _sample_dict(baseline), **_shadow_of(row)},
                                        detail={"previous": previous, "baseline": _sample_dict(baseline)})
                try:
                    answer = await self._step(plan, self.ops.activate(device, row.artifact, plan.confirm_within_s))
                except Exception as exc:
                    if lost(exc) or _database(exc):
                        raise
                    # The agent refused or the model did not load; make sure nothing stays switched.
                    with contextlib.suppress(Exception):
                        now = await self._step(plan, self.ops.view(device))
                        if now.current == row.artifact:
                            await self._step(plan, self.ops.rollback(device))
                    await self.record(rid, device_id, st.STEP_FAILED, error=message(exc),
                                      detail={"step": "activate", "code": getattr(exc, "code", None)})
                    return
                learned = {"previous_artifact": answer["previous"]} if previous is None and isinstance(
                    answer.get("previous"), str) and answer.get("changed", True) else {}
                row = await self.record(rid, device_id, st.ACTIVATED, detail={"agent": _plain(answer)}, **learned)
            if row.state == st.VERIFYING:
                row = await self._verify(rid, resolved, policy.soak_s, device, row)
            if row.state == st.CONFIRMING:
                try:
                    answer = await self._step(plan, self.ops.confirm(device, row.artifact))
                except Exception as exc:
                    if lost(exc) or _database(exc):
                        raise
                    code = getattr(exc, "code", None)
                    # deadline-passed: the agent already went back on its own (the confirmation came too late).
                    event = st.REVERTED if code == "deadline-passed" else st.STEP_FAILED
                    row = await self.record(rid, device_id, event, error=message(exc),
                                            detail={"step": "confirm", "code": code})
                else:
                    row = await self.record(rid, device_id, st.CONFIRMED, detail={"agent": _plain(answer)})
            if row.state == st.ROLLING_BACK:
                await self._undo(rid, plan, device, row)
        except Exception as exc:
            if _database(exc):
                raise
            state = (await self.db.device(rid, device_id)).state
            event = st.LOST if lost(exc) else st.STEP_FAILED
            if (state, event) not in st.TABLE:
                raise
            await self.record(rid, device_id, event, error=message(exc), detail={"step": state})

    async def _shadow(self, rid: int, plan: RolloutPlan, wave: int, device: Device,
                      row: DeviceRow) -> DeviceRow | None:
        """The plan's shadow step on a staged device: the candidate beside the active model on mirrored requests
        until min_requests were compared or the time bound, then the shadow gate (gates.evaluate_shadow) and the
        candidate unloaded. The row: still staged when it passed (or the step does not apply to it), failed when
        not; None when the rollout stopped running meanwhile (the device stays staged, the candidate unloaded).
        Every figure goes to the journal and to the row's gates ("shadow")."""
        shadow = plan.shadow
        if shadow is None or not shadow.applies_to(wave):
            return row
        device_id = row.device_id
        if any(e.event == st.SHADOW_PASSED for e in await self.db.journal(rid, device_id=device_id)):
            return row  # it passed before a crash or a pause: activation goes on from there
        row = await self.record(rid, device_id, st.SHADOW, detail={"candidate": row.artifact, **shadow.to_dict()})
        started = time.monotonic()
        try:
            # The device ends it by itself a while after the time bound: a laptop gone mid-shadow (crashed, lid
            # closed) leaves no candidate loaded beside the model.
            figures = await self._step(plan, self.ops.shadow_start(device, row.artifact, shadow.share,
                                                                   shadow.max_wait_s + SHADOW_EXPIRY_MARGIN_S))
        except Exception as exc:
            if lost(exc) or _database(exc):
                raise
            return await self._shadow_refused(rid, plan, device, row, exc)
        running = True
        try:
            deadline = started + shadow.max_wait_s
            while figures.get("state") == "running":  # the server stops it itself when its active model changes
                if not await self.running(rid):
                    return None
                compared, failed = int(figures.get("compared") or 0), int(figures.get("failed") or 0)
                if compared >= shadow.min_requests or failed or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(max(0.0, min(self.shadow_interval_s, deadline - time.monotonic())))
                try:
                    figures = await self._step(plan, self.ops.shadow_status(device))
                except RolloutStepError as exc:
                    if exc.code != "not-found":
                        raise
                    figures = {**figures, "state": "gone",
                               "reason": "the model server no longer has the shadow (it restarted)"}
                agreement, _ = shadow_agreement(figures)
                ratio = figures.get("p95_ratio")
                ratio = float(ratio) if isinstance(ratio, int | float) and not isinstance(ratio, bool) else None
                compared = int(figures.get("compared") or 0)
                self.emit(rid, "gates", device_id, st.STAGED,
                          f"{device.name}: shadow {compared}/{shadow.min_requests} requests "
                          f"compared, {int(figures.get('dropped') or 0)} dropped, agreement "
                          f"{'-' if agreement is None else f'{agreement:.4f}'}, p95 ratio "
                          f"{'-' if ratio is None else f'{ratio:g}'}",
                          figures={"compared": float(compared), "agreement": agreement, "p95_ratio": ratio})
            try:
                figures = await self._step(plan, self.ops.shadow_stop(device))  # its final figures
            except RolloutStepError as exc:
                if exc.code != "not-found":
                    raise
                # The server stopped it already (its active model changed or it restarted): the last figures stand.
            running = False
        finally:
            if running:  # stopped, failed or lost: the candidate must not stay loaded beside the model
                with contextlib.suppress(Exception):
                    await self._step(plan, self.ops.shadow_stop(device))
        seconds = time.monotonic() - started
        verdict = evaluate_shadow(shadow, figures, seconds=seconds)
        found = {**verdict.to_dict(), "judged": True, "seconds": round(seconds, 3), "figures": _figures(figures)}
        if figures.get("state") not in ("running", "stopped") or figures.get("reason") not in (None, "", "stopped"):
            found["note"] = str(figures.get("reason") or figures.get("state"))
        event = st.SHADOW_PASSED if verdict.passed else st.SHADOW_FAILED
        self.emit(rid, "gates", device_id, st.STAGED,
                  f"{device.name}: shadow gate {'passes' if verdict.passed else 'FAILS'}"
                  + ("" if verdict.passed else f": {verdict.reason}"))
        return await self.record(rid, device_id, event, gates={"shadow": found}, detail=found,
                                 **({} if verdict.passed else {"error": f"shadow: {verdict.reason}"}))

    async def _shadow_refused(self, rid: int, plan: RolloutPlan, device: Device, row: DeviceRow,
                              exc: BaseException) -> DeviceRow:
        """The server would not load the candidate beside its model. Too little memory: the step is skipped and
        the plan's on_skip decides. No model served because the device runs none: nothing to compare with, the step
        does not apply. Anything else (no server, a candidate that does not verify, load or match the active
        model's inputs and outputs): the step failed, the device keeps its model."""
        shadow = plan.shadow
        assert shadow is not None
        code = getattr(exc, "code", None)
        why = message(exc)
        if code in ("not-ready", "no-server"):
            view = await self._step(plan, self.ops.view(device))
            if view.current is None:
                found = {"applies": False, "why": "the device runs no model: there is nothing to compare the candidate "
                                                  "with", "code": code}
                return await self.record(rid, row.device_id, st.SHADOW_PASSED, gates={"shadow": found}, detail=found)
        if code == "low-memory":
            verdict = evaluate_shadow(shadow, None, skipped=why)
            found = {**verdict.to_dict(), "skipped": why, "code": code}
        else:
            found = {"passed": False, "values": {}, "reason": f"the candidate could not be shadowed: {why}",
                     "code": code}
        self.emit(rid, "gates", row.device_id, st.STAGED, f"{device.name}: shadow step "
                  + (f"skipped: {why}" if code == "low-memory" else f"failed: {why}"))
        if found["passed"]:
            return await self.record(rid, row.device_id, st.SHADOW_PASSED, gates={"shadow": found}, detail=found)
        return await self.record(rid, row.device_id, st.SHADOW_FAILED, gates={"shadow": found}, detail=found,
                                 error=f"shadow: {found['reason']}")

    async def _verify(self, rid: int, resolved: ResolvedPlan, soak_s: float, device: Device,
                      row: DeviceRow) -> DeviceRow:
        plan = resolved.plan
        baseline = _sample_from((row.gates or {}).get("baseline"))
        samples: list[GateSample] = []
        started = time.monotonic()
        # A device that rebooted after its switch (reconciled to verifying) starts its model server again, and the
        # server loads the model: the activation's wait for that load is over. Until the first measurement finds
        # the model loaded, wait for it, bounded as that wait is (when the serving gate is on); afterwards a server
        # that stops fails the gates.
        load_until = started + self.ops.load_wait_s
        waiting = False
        while True:
            if await self.db.status(rid) == ABORTED:
                return await self.record(rid, row.device_id, st.ABORT, detail={"step": "verify"})
            try:
                sample = await self._step(plan, self.ops.measure(device, row.artifact, plan.gates))
            except Exception as exc:
                if lost(exc) or _database(exc):
                    raise
                # A device whose health cannot be measured has not proved itself healthy.
                return await self.record(rid, row.device_id, st.GATES_FAILED,
                                         error=f"measuring failed: {message(exc)}",
                                         detail={"step": "measure", "code": getattr(exc, "code", None)})
            if plan.gates.serving and not samples and not sample.serving and time.monotonic() < load_until:
                if not waiting:
                    waiting = True
                    self.emit(rid, "note", row.device_id, st.VERIFYING,
                              f"{device.name}: waiting up to {self.ops.load_wait_s:g} s for its model server to "
                              f"load the model ({sample.notes.get(SERVING, 'not serving')})")
                await asyncio.sleep(self.soak_interval_s)
                continue
            if waiting and not samples:
                started = time.monotonic()  # the soak counts from the model being served
            samples.append(sample)
            result = evaluate(plan.gates, baseline, samples)
            gates = {"baseline": _sample_dict(baseline), **result.to_dict(), "samples": len(samples),
                     **_shadow_of(row)}
            await self.db.update(rid, row.device_id, gates=gates)
            self.emit(rid, "gates", row.device_id, st.VERIFYING,
                      f"{device.name}: gates {'pass' if result.passed else 'FAIL'} after {len(samples)} "
                      f"measurement(s)" + ("" if result.passed else f": {result.reason}"))
            if not result.passed:
                return await self.record(rid, row.device_id, st.GATES_FAILED, gates=gates, error=result.reason,
                                         detail={"gates": result.to_dict()})
            left = soak_s - (time.monotonic() - started)
            if left <= 0:
                return await self.record(rid, row.device_id, st.PASSED, gates=gates,
                                         detail={"gates": result.to_dict()})
            await asyncio.sleep(min(self.soak_interval_s, left))

    async def _undo(self, rid: int, plan: RolloutPlan, device: Device, row: DeviceRow) -> DeviceRow:
        """ROLLING_BACK -> the agent goes back to the previous model, only if it still runs the artifact."""
        view = await self._step(plan, self.ops.view(device))
        if view.current != row.artifact:
            return await self.record(rid, row.device_id, st.ROLLED_BACK_OK,
                                     detail={"already": True, "current": view.current})
        try:
            answer = await self._step(plan, self.ops.rollback(device))
        except Exception as exc:
            if lost(exc) or _database(exc):
                raise
            return await self.record(rid, row.device_id, st.STEP_FAILED, error=message(exc),
                                     detail={"step": "rollback", "code": getattr(exc, "code", None)})
        return await self.record(rid, row.device_id, st.ROLLED_BACK_OK, detail={"agent": _plain(answer)})

    async def rollback_one(self, rid: int, resolved: ResolvedPlan, row: DeviceRow, *, close_pending: bool) -> None:
        plan = resolved.plan
        device = await self._device(row.device_id)
        state = row.state
        if state in (st.ROLLED_BACK, st.SKIPPED):
            return
        if state in (st.PENDING, st.STAGING):
            if close_pending:
                await self.record(rid, row.device_id, st.ABORT, detail={"why": "rollout rolled back"})
            return
        if state == st.CONFIRMING:
            row = await self._confirm_then(rid, plan, device, row)
        if row.state in (st.STAGED, st.FAILED, st.DONE, st.VERIFYING, st.UNREACHABLE):
            row = await self.record(rid, row.device_id, st.ROLLBACK, detail={"by": self.fleet.access.name})
        if row.state == st.ROLLING_BACK:
            try:
                await self._undo(rid, plan, device, row)
            except Exception as exc:
                if not lost(exc):
                    raise
                await self.record(rid, row.device_id, st.LOST, error=message(exc), detail={"step": "rollback"})
                raise

    async def _confirm_then(self, rid: int, plan: RolloutPlan, device: Device, row: DeviceRow) -> DeviceRow:
        """A device caught between passing and confirming: settle it first so the table allows a rollback."""
        view = await self._step(plan, self.ops.view(device))
        target = reconciled_state(st.CONFIRMING, row.artifact, view)
        return await self._move(rid, row, target, view)

    async def settle_abort(self, rid: int, resolved: ResolvedPlan, ids: Sequence[int]) -> None:
        """Abort: devices not yet switched are skipped, devices under verification roll back."""
        plan = resolved.plan
        await self.reconcile_all(rid)
        rows = {r.device_id: r for r in await self.db.devices(rid)}
        for device_id in ids:
            row = rows[device_id]
            if row.state in (st.PENDING, st.STAGING, st.STAGED, st.UNREACHABLE):
                await self.record(rid, device_id, st.ABORT, detail={"why": "rollout aborted"})
            elif row.state in (st.VERIFYING, st.ROLLING_BACK):
                device = await self._device(device_id)
                if row.state == st.VERIFYING:
                    row = await self.record(rid, device_id, st.ABORT, detail={"why": "rollout aborted"})
                try:
                    await self._undo(rid, plan, device, row)
                except Exception as exc:
                    if not lost(exc):
                        raise
                    await self.record(rid, device_id, st.LOST, error=message(exc), detail={"step": "rollback"})

    # -- reconciling with the agents ---------------------------------------------------------------------

    async def reconcile_all(self, rid: int) -> None:
        """Devices the journal shows mid-switch are asked what they really run, and journaled as that."""
        rows = [r for r in await self.db.devices(rid) if r.state in (st.ACTIVATING, st.VERIFYING, st.CONFIRMING,
                                                                       st.ROLLING_BACK)]
        plan = ResolvedPlan.from_dict((await self.db.get(rid)).resolved).plan

        async def one(row: DeviceRow) -> None:
            device = await self._device(row.device_id)
            try:
                view = await self._step(plan, self.ops.view(device))
            except Exception as exc:
                if not lost(exc):
                    raise
                await self.record(rid, row.device_id, st.LOST, error=message(exc), detail={"step": "reconcile"})
                return
            await self._move(rid, row, reconciled_state(row.state, row.artifact, view), view)

        await gather(one(r) for r in rows)

    async def retry_unreachable(self, rid: int, ids: Sequence[int]) -> None:
        plan = ResolvedPlan.from_dict((await self.db.get(rid)).resolved).plan

        async def one(device_id: int) -> None:
            row = await self.db.device(rid, device_id)
            device = await self._device(device_id)
            try:
                view = await asyncio.wait_for(self.ops.view(device), min(plan.step_timeout_s, 60.0))
            except Exception as exc:
                if lost(exc):
                    return
                raise
            before = await self._state_before_lost(rid, device_id)
            target = reconciled_state(before, row.artifact, view)
            agent = _plain(dataclasses.asdict(view))
            if target == st.ROLLING_BACK:
                await self.record(rid, device_id, st.ROLLBACK,
                                  detail={"why": "a rollback was under way when it was lost", "agent": agent})
                return
            await self.record(rid, device_id, st.REACHABLE,
                              detail={"reconciled": target, "before": before, "agent": agent})

        await gather(one(i) for i in ids)

    async def _state_before_lost(self, rid: int, device_id: int) -> str:
        for entry in reversed(await self.db.journal(rid, device_id=device_id)):
            if entry.to_state == st.UNREACHABLE and entry.from_state != st.UNREACHABLE:
                return entry.from_state
        return st.PENDING

    async def _move(self, rid: int, row: DeviceRow, target: str, view: AgentView) -> DeviceRow:
        """Journal a device from its recorded state to the one its agent shows: by the table's own event when
        there is one (activated, confirmed, rolled-back), else as lost and found again (reachable)."""
        if target == row.state:
            return row
        agent = _plain(dataclasses.asdict(view))
        for event in (st.ACTIVATED, st.CONFIRMED, st.ROLLED_BACK_OK):
            if st.TABLE.get((row.state, event)) == target:
                return await self.record(rid, row.device_id, event, detail={"reconciled": True, "agent": agent})
        if row.state != st.UNREACHABLE:
            await self.record(rid, row.device_id, st.LOST,
                              detail={"why": "reconciling with the agent", "agent": agent})
        return await self.record(rid, row.device_id, st.REACHABLE,
                                 detail={"reconciled": target, "before": row.state, "agent": agent})

    # -- helpers ---------------------------------------------------------------------------------------------

    async def _step(self, plan: RolloutPlan, work: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(work, plan.step_timeout_s)

    async def record(self, rid: int, device_id: int, event: str, *, detail: dict[str, Any] | None = None,
                     **fields: Any) -> DeviceRow:
        row = await self.db.record(rid, device_id, event, detail=detail, **fields)
        name = self._names.get(device_id)
        if name is None:
            try:
                name = (await self._device(device_id)).name
            except FleetDeskError:  # removed from the inventory since
                name = f"device {device_id}"
        extra = f": {row.error}" if row.error and row.state in (st.FAILED, st.ROLLING_BACK, st.UNREACHABLE) else ""
        self.emit(rid, "state", device_id, row.state, f"{name}: {event} -> {row.state}{extra}")
        return row


class _Meter:
    """Turns push progress into events with bytes/s and an ETA, at most a few per second."""

    def __init__(self, emit: Emit, rid: int, device_id: int, name: str) -> None:
        self.emit, self.rid, self.device_id, self.name = emit, rid, device_id, name
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
        self.emit(self.rid, "progress", self.device_id, st.STAGING, f"{self.name}: {done}/{total} bytes",
                  bytes_done=done, bytes_total=total, rate_bytes_s=rate, eta_s=eta)


class Slots:
    """How many transfers run at once; a slot granted after the wave stopped says so (False)."""

    def __init__(self, count: int, may_start: Callable[[], Awaitable[bool]]) -> None:
        self._semaphore = asyncio.Semaphore(max(1, count))
        self._may_start = may_start

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[bool]:
        async with self._semaphore:
            yield await self._may_start()


async def gather(works: Any) -> None:
    """Run the coroutines together; the first unexpected error is raised after all of them ended."""
    results = await asyncio.gather(*list(works), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _shadow_of(row: DeviceRow) -> dict[str, Any]:
    """The shadow step's verdict and figures the row holds, kept beside the health gates' ({} when none)."""
    found = (row.gates or {}).get("shadow")
    return {"shadow": found} if found is not None else {}


def _figures(answer: dict[str, Any]) -> dict[str, Any]:
    """The agent's shadow answer as figures for the journal (its line's type and command left out)."""
    return {k: _plain(v) for k, v in answer.items() if k not in ("type", "command", "action")}


def _plain(value: Any) -> Any:
    """Agent answers and views as JSON-safe data for the journal."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
