"""The bridge's side of rollouts: start, drive, pause, resume, approve, abort, roll back and recover them.

`RolloutsPart` is one part of `FleetBridge` (fleetdesk.gui.bridge): it owns the engine and the rollouts this window
drives, and turns engine events into its signals. The models part gives it the artifact store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import QObject, Signal

from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.rollouts import RolloutRepo, RolloutRow
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent
from fleetdesk.rollout.plan import RolloutPlan

from .activities import Activity, window_loop
from .bridge_context import BridgeContext
from .bridge_devices import DevicesPart
from .bridge_models import ModelsPart
from .bridge_views import RolloutDetail, read_rollout

ROLLOUT_REFRESH_S = 0.25  # engine events are gathered this long before the rollout view reads the inventory
WINDOW_CLOSED = "the window was closed"  # the pause reason of a rollout whose window closed while driving it
CLOSE_PAUSE_WAIT_S = 30.0  # how long quitting waits for a paused rollout's current step to end


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
            await self.refresh_rollouts()

        self._refreshing = window_loop().create_task(later(), name="rollout view refresh")

    async def refresh_rollouts(self) -> list[RolloutRow]:
        """Announce every rollout, and the watched one's detail (read in the inventory's thread)."""
        repo = self._rollout_repo()
        rows = await self._context.db(repo.list)
        self.rollouts_changed.emit(rows)
        if self._watched is not None and any(r.id == self._watched for r in rows):
            self.rollout_detail.emit(await self._context.db(read_rollout, repo, self._watched, self._devices.known()))
        return rows

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
            detail = await self._context.db(read_rollout, self._rollout_repo(), rollout_id, self._devices.known())
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
                await first()
            self._runs[rollout_id] = activity
            await self.refresh_rollouts()
            row = await self.rollout_engine().run(rollout_id)
            await self.refresh_rollouts()
            return row

        return self.activities.start(title or f"Rollout {rollout_id}", job, devices=ids, summarize=_rollout_summary)

    def rollout_action(self, action: str, rollout_id: int, options: Mapping[str, Any] | None = None) -> Activity:
        """An operator's button: pause, resume, approve, abort or rollback (options: device_id or wave), always
        through the engine, so each is journaled and written to the audit log. Resume and approve drive the
        rollout on; abort and rollback of a rollout this window drives pause it first and wait for its step."""
        engine = self.rollout_engine()
        opts = dict(options or {})
        if action == "resume":
            return self.drive_rollout(rollout_id, lambda: engine.resume(rollout_id), f"Resume rollout {rollout_id}")
        if action == "approve":
            return self.drive_rollout(rollout_id, lambda: engine.approve(rollout_id),
                                      f"Approve rollout {rollout_id}")
        if action not in ("pause", "abort", "rollback"):
            raise ValueError(f"{action!r} is not a rollout action")

        async def job(activity: Activity) -> RolloutRow:
            if action == "pause":
                row = await engine.pause(rollout_id, "paused by the operator")
            else:
                await self._stop_driving(rollout_id, f"{action} by the operator")
                row = await (engine.abort(rollout_id) if action == "abort" else
                             engine.rollback(rollout_id, device_id=opts.get("device_id"), wave=opts.get("wave")))
            await self.refresh_rollouts()
            return row

        what = {"device_id": f"device {opts.get('device_id')} of ",
                "wave": f"wave {int(opts.get('wave') or 0) + 1} of "}
        scope = next((text for key, text in what.items() if key in opts), "")
        return self.activities.start(f"{action.capitalize()} {scope}rollout {rollout_id}", job,
                                     summarize=_rollout_summary)

    async def _stop_driving(self, rollout_id: int, reason: str, wait: float | None = None) -> None:
        """Pause a rollout this window drives and wait for its run to stop at the next step boundary."""
        run = self._runs.get(rollout_id)
        if run is None or not run.running or run._task is None:
            return
        with contextlib.suppress(FleetDeskError):
            await self.rollout_engine().pause(rollout_id, reason, witness=False)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(run._task), wait)

    async def close(self) -> None:
        """The window is closing: rollouts it drives pause at their next step boundary (the engine never leaves a
        device half-switched there), each waited for up to CLOSE_PAUSE_WAIT_S; a pending view refresh is
        cancelled."""
        for rid in [r for r, a in self._runs.items() if a.running]:
            await self._stop_driving(rid, WINDOW_CLOSED, CLOSE_PAUSE_WAIT_S)
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
