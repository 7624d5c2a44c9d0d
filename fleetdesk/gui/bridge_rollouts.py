"""The bridge's side of rollouts: start, drive, pause, resume, approve, abort, roll back, recover and take them over.

A rollout whose plan says takeover "auto" is taken over by this window by itself when the lease of the FleetDesk
driving it runs out (that FleetDesk stopped renewing it): the window looks again when the lease it last read ends,
and takes it over through the same engine.take_over an operator's `fleetdesk rollout run ID --take-over` uses.

`RolloutsPart` is one part of `FleetBridge` (fleetdesk.gui.bridge): it owns the engine and the rollouts this window
drives, and turns engine events into its signals. The models part gives it the artifact store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from PySide6.QtCore import QObject, Signal

from fleetdesk.errors import EditConflictError, FleetDeskError
from fleetdesk.inventory.rollouts import RolloutRepo, RolloutRow
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent, Takeover
from fleetdesk.rollout.plan import RolloutPlan

from .activities import Activity, window_loop
from .bridge_context import BridgeContext
from .bridge_devices import DevicesPart
from .bridge_models import ModelsPart
from .bridge_views import RolloutDetail, read_rollout

ROLLOUT_REFRESH_S = 0.25  # engine events are gathered this long before the rollout view reads the inventory
WINDOW_CLOSED = "the window was closed"  # the pause reason of a rollout whose window closed while driving it
CLOSE_PAUSE_WAIT_S = 30.0  # how long quitting waits for a paused rollout's current step to end
LEASE_LOOK_AFTER_S = 0.2  # an auto-takeover rollout's lease is looked at again this long after it should end


class RolloutsPart(QObject):
    """The rollout operations; the devices part names the devices in a rollout's detail, the models part gives
    the artifact store."""

    rollouts_changed = Signal(list)  # list[RolloutRow]: every rollout in the inventory
    rollout_detail = Signal(object)  # RolloutDetail of the rollout the view watches
    rollout_event = Signal(object)  # RolloutEvent, as the engine emits it
    rollout_started = Signal(int)  # a rollout was created (before it is driven)

    def __init__(self, context: BridgeContext, devices: DevicesPart, models: ModelsPart) -> None:
        super().__init__()
        self._context = context
        self.fleet = context.fleet
        self.activities = context.activities
        self._devices = devices
        self._models = models
        self._engine: RolloutEngine | None = None  # the rollout engine, made on first use
        self._runs: dict[int, Activity] = {}  # rollout id -> the activity that drives it (engine.run)
        self._watched: int | None = None  # the rollout the view shows
        self._refreshing: asyncio.Task[None] | None = None  # a pending read for the rollout view
        # Auto-takeover rollouts another FleetDesk drives: when to look at each one's lease again.
        self._lease_looks: dict[int, asyncio.TimerHandle] = {}
        self._taking_over: set[int] = set()  # rollouts this window is taking over now

    def rollout_engine(self) -> RolloutEngine:
        """The engine over this window's fleet and store; its events become `rollout_event` signals."""
        if self._engine is None:
            # Its journal writes go to this window's inventory thread, in order with the window's own reads.
            self._engine = RolloutEngine(self.fleet, self._models.artifact_store(), on_event=self._rollout_event,
                                         executor=self._context.db_thread)
        return self._engine

    def _rollout_repo(self) -> RolloutRepo:
        return RolloutRepo(self.fleet.inventory)

    def _rollout_event(self, event: RolloutEvent) -> None:
        self.rollout_event.emit(event)
        run = self._runs.get(event.rollout_id)
        if run is not None and run.running:
            if event.kind == "progress" and event.bytes_total:
                run.report(event.bytes_done / event.bytes_total, event.message)
            else:
                run.report(None, event.message)
        if event.kind != "progress":
            self.refresh_soon()

    def refresh_soon(self) -> None:
        """Read the rollouts again soon: events come in bursts, the view reads once per burst."""
        if self._context.closed or (self._refreshing is not None and not self._refreshing.done()):
            return

        async def later() -> None:
            await asyncio.sleep(ROLLOUT_REFRESH_S)
            if not self._context.closed:  # the window closed meanwhile: its inventory thread is being shut down
                await self.refresh_rollouts()

        self._refreshing = window_loop().create_task(later(), name="rollout view refresh")

    async def refresh_rollouts(self) -> list[RolloutRow]:
        """Announce every rollout, and the watched one's detail (read in the inventory's thread)."""
        repo = self._rollout_repo()
        rows = await self._context.db(repo.list)
        self.rollouts_changed.emit(rows)
        self._watch_leases(rows)
        if self._watched is not None and any(r.id == self._watched for r in rows):
            self.rollout_detail.emit(await self._read_detail(self._watched))
        return rows

    async def _read_detail(self, rollout_id: int) -> RolloutDetail:
        detail = await self._context.db(read_rollout, self._rollout_repo(), rollout_id, self._devices.known())
        here = self.rollout_running_here(rollout_id) or rollout_id in self._taking_over
        return dataclasses.replace(detail, driven_here=here)

    def load_rollouts(self, then: Callable[[list[RolloutRow]], object] | None = None) -> Activity:
        async def job(activity: Activity) -> list[RolloutRow]:
            rows = await self.refresh_rollouts()
            if then is not None:
                then(rows)
            return rows

        return self.activities.start("Read the rollouts", job, summarize=lambda rows: f"{len(rows)} rollout(s)")

    def watch_rollout(self, rollout_id: int) -> Activity:
        """Show this rollout's detail (and follow it as its events arrive)."""
        self._watched = rollout_id

        async def job(activity: Activity) -> RolloutDetail:
            detail = await self._read_detail(rollout_id)
            self.rollout_detail.emit(detail)
            return detail

        return self.activities.start(f"Read rollout {rollout_id}", job, summarize=lambda detail: detail.row.status)

    def rollout_running_here(self, rollout_id: int) -> bool:
        run = self._runs.get(rollout_id)
        return run is not None and run.running

    def start_rollout(self, plan: RolloutPlan, device_ids: Sequence[int] = (), *, run: bool = True) -> Activity:
        """Journal the plan as a rollout (engine.start) and, with run, drive it (engine.run) in the same activity.
        Nothing is sent to a device before start has written the plan."""
        async def job(activity: Activity) -> RolloutRow:
            engine = self.rollout_engine()
            rid = await engine.start(plan)
            self._watched = rid
            await self.refresh_rollouts()
            self.rollout_started.emit(rid)  # after the refresh: the view selects the new row, so it must be listed
            if not run:
                return await self._context.db(self._rollout_repo().get, rid)
            self._runs[rid] = activity
            activity.title = f"Rollout {rid}: {plan.model}"
            activity.changed.emit()
            row = await engine.run(rid)
            await self.refresh_rollouts()
            return row

        return self.activities.start(f"{'Roll out' if run else 'Plan a rollout of'} {plan.model}", job,
                                     devices=device_ids, summarize=_rollout_summary)

    def drive_rollout(self, rollout_id: int, first: Callable[[], Awaitable[object]] | None = None,
                      title: str = "") -> Activity:
        """Drive a rollout (engine.run) as an activity, after `first` (resume, approve, recover) when given;
        waits for this window's previous drive of it to stop first, so one process never drives it twice."""
        prior = self._runs.get(rollout_id)
        ids = [d.device_id for d in self._rollout_repo().devices(rollout_id)] if prior is None else prior.devices

        async def job(activity: Activity) -> RolloutRow:
            if prior is not None and prior.running and prior._task is not None:
                activity.report(None, "waiting for the current step to end")
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(prior._task)
            if first is not None:
                async with self._showing_rollout_as_it_is():
                    await first()
            self._runs[rollout_id] = activity
            await self.refresh_rollouts()
            row = await self.rollout_engine().run(rollout_id)
            await self.refresh_rollouts()
            return row

        return self.activities.start(title or f"Rollout {rollout_id}", job, devices=ids, summarize=_rollout_summary)

    def rollout_action(self, action: str, rollout_id: int, options: Mapping[str, Any] | None = None) -> Activity:
        """An operator's button: pause, resume, approve, abort, rollback (options: device_id or wave) or take-over,
        always through the engine, so each is journaled and written to the audit log. Resume and approve drive the
        rollout on; abort and rollback of a rollout this window drives pause it first and wait for its step.

        options["seen_version"]: the rollout's version the view showed when the operator clicked; another
        operator's action since refuses this one (naming them) and the view shows the rollout as it is now."""
        engine = self.rollout_engine()
        opts = dict(options or {})
        seen = opts.pop("seen_version", None)
        if action == "resume":
            return self.drive_rollout(rollout_id, lambda: engine.resume(rollout_id, seen=seen),
                                      f"Resume rollout {rollout_id}")
        if action == "approve":
            return self.drive_rollout(rollout_id, lambda: engine.approve(rollout_id, seen=seen),
                                      f"Approve rollout {rollout_id}")
        if action == "take-over":
            return self.take_over_rollout(rollout_id)
        if action not in ("pause", "abort", "rollback"):
            raise ValueError(f"{action!r} is not a rollout action")

        async def job(activity: Activity) -> RolloutRow:
            async with self._showing_rollout_as_it_is():
                if action == "pause":
                    row = await engine.pause(rollout_id, "paused by the operator", seen=seen)
                else:
                    # This window's own pause (of a rollout it drives) is part of the action: the action goes on
                    # from the version that pause left.
                    paused = await self._stop_driving(rollout_id, f"{action} by the operator", seen=seen)
                    now = paused if paused is not None else seen
                    row = await (engine.abort(rollout_id, seen=now) if action == "abort" else
                                 engine.rollback(rollout_id, device_id=opts.get("device_id"), wave=opts.get("wave"),
                                                 seen=now))
            await self.refresh_rollouts()
            return row

        what = {"device_id": f"device {opts.get('device_id')} of ",
                "wave": f"wave {int(opts.get('wave') or 0) + 1} of "}
        scope = next((text for key, text in what.items() if key in opts), "")
        return self.activities.start(f"{action.capitalize()} {scope}rollout {rollout_id}", job,
                                     summarize=_rollout_summary)

    async def _stop_driving(self, rollout_id: int, reason: str, wait: float | None = None, *,
                            seen: int | None = None) -> int | None:
        """Pause a rollout this window drives and wait for its run to stop at the next step boundary; the version
        the pause left (None when there was nothing to pause). A pause from an outdated `seen` raises
        EditConflictError."""
        run = self._runs.get(rollout_id)
        if run is None or not run.running or run._task is None:
            return None
        if rollout_id in self._taking_over and not self.rollout_engine().driving(rollout_id):
            return None  # only waiting to take it over: another FleetDesk drives it, this window has nothing to pause
        version = None
        try:
            version = (await self.rollout_engine().pause(rollout_id, reason, witness=False, seen=seen)).version
        except EditConflictError:
            raise
        except FleetDeskError:
            pass
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(run._task), wait)
        return version

    @contextlib.asynccontextmanager
    async def _showing_rollout_as_it_is(self) -> AsyncIterator[None]:
        """An action refused because another operator acted on the rollout since this view read it: the view shows
        the rollout as it is now, and the activity fails naming who acted."""
        try:
            yield
        except EditConflictError:
            with contextlib.suppress(FleetDeskError):
                await self.refresh_rollouts()
            raise

    # -- taking over ----------------------------------------------------------------------------------------

    def take_over_rollout(self, rollout_id: int, *, wait: bool = True,
                          then: Callable[[Takeover], object] | None = None) -> Activity:
        """Take over a rollout whose driver stopped (engine.take_over) and drive it on, as an activity: with
        `wait`, waiting while another FleetDesk's lease is live (the activity says whose, and until when).
        `then` gets the outcome."""
        async def job(activity: Activity) -> Takeover:
            self._taking_over.add(rollout_id)
            self._runs[rollout_id] = activity  # from the moment it drives: a closing window pauses it
            try:
                result = await self.rollout_engine().take_over(rollout_id, wait=wait)
            finally:
                self._taking_over.discard(rollout_id)
                if not self.rollout_engine().driving(rollout_id) and self._runs.get(rollout_id) is activity:
                    del self._runs[rollout_id]
            if then is not None:
                then(result)
            await self.refresh_rollouts()
            return result

        ids = [d.device_id for d in self._rollout_repo().devices(rollout_id)]
        return self.activities.start(f"Take over rollout {rollout_id}", job, devices=ids,
                                     summarize=_takeover_summary)

    def _watch_leases(self, rows: Sequence[RolloutRow]) -> None:
        """For each running rollout with takeover "auto" that another FleetDesk drives, look at its lease again when
        it should end (its driver renews it well before: each renewal is a change this window hears, and moves the
        look on); one that ran out is taken over."""
        if self._context.closed:
            return
        loop = asyncio.get_running_loop()
        auto = [r for r in rows if r.status == "running" and r.plan.get("takeover") == "auto"
                and r.driver is not None and r.lease_until is not None]
        watched = set()
        for row in auto:
            assert row.lease_until is not None
            if row.driver == self.rollout_engine().driver or row.id in self._taking_over \
                    or self.rollout_running_here(row.id):
                continue
            watched.add(row.id)
            self._look_at_lease(loop, row.id, (row.lease_until - datetime.now(UTC)).total_seconds())
        for rid in set(self._lease_looks) - watched:
            self._lease_looks.pop(rid).cancel()

    def _look_at_lease(self, loop: asyncio.AbstractEventLoop, rollout_id: int, in_s: float) -> None:
        old = self._lease_looks.pop(rollout_id, None)
        if old is not None:
            old.cancel()
        self._lease_looks[rollout_id] = loop.call_later(max(0.0, in_s) + LEASE_LOOK_AFTER_S, self._lease_ran_out,
                                                        rollout_id)

    def _lease_ran_out(self, rollout_id: int) -> None:
        self._lease_looks.pop(rollout_id, None)
        if self._context.closed or rollout_id in self._taking_over or self.rollout_running_here(rollout_id):
            return

        def looked(result: Takeover) -> None:
            # Another FleetDesk holds it after all (a renewal this window has not heard of yet, or another window
            # was first): look again when that lease should end.
            if not result.taken and result.lease is not None and result.row.status == "running" \
                    and not self._context.closed:
                left = (result.lease.until - result.lease.now).total_seconds()
                self._look_at_lease(asyncio.get_running_loop(), rollout_id, left)

        self.take_over_rollout(rollout_id, wait=False, then=looked)

    async def close(self) -> None:
        """The window is closing: rollouts it drives pause at their next step boundary (the engine never leaves a
        device half-switched there), each waited for up to CLOSE_PAUSE_WAIT_S; a pending view refresh is
        cancelled."""
        for rid in [r for r, a in self._runs.items() if a.running]:
            await self._stop_driving(rid, WINDOW_CLOSED, CLOSE_PAUSE_WAIT_S)
        for look in self._lease_looks.values():
            look.cancel()
        self._lease_looks.clear()
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refreshing

    def recover_rollouts(self) -> Activity:
        """After a crash: ask each switched device of every rollout left running where it is (engine.recover),
        then drive each on."""
        async def job(activity: Activity) -> list[int]:
            activity.report(None, "asking the devices of rollouts left running where they are")
            found = await self.rollout_engine().recover()
            for rid in found:
                self.drive_rollout(rid, title=f"Continue rollout {rid}")
            return found

        return self.activities.start("Recover rollouts", job,
                                     summarize=lambda ids: f"{len(ids)} rollout(s) recovered and continued")


def _rollout_summary(row: RolloutRow) -> str:
    return f"rollout {row.id} {row.status}" + (f": {row.paused_reason}" if row.paused_reason else "")


def _takeover_summary(result: Takeover) -> str:
    if result.taken:
        came = f"taken over from {result.previous}" if result.previous else "driven (nobody else drove it)"
        return f"{came}: {_rollout_summary(result.row)}"
    return result.reason
