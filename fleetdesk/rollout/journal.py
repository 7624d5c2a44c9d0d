"""The rollout engine's way to the inventory: every read and write on one thread, awaited from the event loop.

In the window the engine runs on the GUI's loop, and a journal commit (an fsync, a WAL checkpoint) would stall
the window while it lasts. Here each call runs on the inventory's thread and the engine awaits its end, so
"journaled before the step runs" still holds: the step starts only once the commit is done. Calls run one at a
time in the order they were made. The GUI passes its own inventory thread (fleetdesk.gui.bridge), so the
engine's writes queue with the window's reads instead of beside them.

When the database cannot be reached (DatabaseUnreachableError: stopped, restarting, its network gone) the journal
rides it out for the steps under way: reads are answered from what it read last, and an entry that reports what a
device did (staged, activated, passed, confirmed, rolled back...) is kept in memory, in order, for `write_kept`
once the database answers. An entry that would start something new on a device (stage, activate, shadow, a
rollback or abort asked for) is refused: nothing new starts before its entry is written. The engine
(fleetdesk.rollout.engine) stops at the next safe point, reconnects, writes what was kept and pauses the rollout.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fleetdesk.access import Access
from fleetdesk.errors import DatabaseUnreachableError
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.audit import AuditEntry, AuditFilter
from fleetdesk.inventory.records import Device, Edit
from fleetdesk.inventory.rollouts import (
    DeviceRow,
    JournalEntry,
    KeptEntry,
    ResolvedRollout,
    RolloutRepo,
    RolloutRow,
)

if TYPE_CHECKING:
    from fleetdesk.inventory.repository import Inventory
    from fleetdesk.rollout.plan import ResolvedPlan

T = TypeVar("T")
log = logging.getLogger(__name__)

# Events that start something on a device: journaled before the step runs, so never kept in memory. Every other event
# reports what a step under way found or did, and is kept while the database cannot be reached.
STARTS = frozenset({st.STAGE, st.ACTIVATE, st.SHADOW, st.RETRY, st.ROLLBACK, st.ABORT})


class RolloutJournal:
    """`RolloutRepo` (and the inventory's device lookup) as coroutines that run on one inventory thread."""

    # The annotations say builtins.list: in this class body `list` is the method below.

    def __init__(self, repo: RolloutRepo, inventory: Inventory, access: Access,
                 executor: Executor | None = None) -> None:
        self.repo = repo
        self.inventory = inventory
        self.access = access
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetdesk-journal")
        # While the database cannot be reached: since when (UTC), the error, and what the steps under way learned.
        self.unreachable_since: datetime | None = None
        self._error: DatabaseUnreachableError | None = None
        self._last_error: DatabaseUnreachableError | None = None  # the outage's, while a rollout's kept entries wait
        self.on_unreachable: Callable[[DatabaseUnreachableError], None] | None = None  # told once, at the loss
        # Whether steps are under way (the engine drives a rollout): only then does a loss switch to riding it out;
        # otherwise (an operator's action, a lease asked for) the error is the caller's, and nothing is kept.
        self.driving: Callable[[], bool] = lambda: True
        self._kept: dict[int, builtins.list[KeptEntry]] = {}
        # What was read or written last, to answer the steps under way while the database is away.
        self._rollouts: dict[int, RolloutRow] = {}
        self._rows: dict[tuple[int, int], DeviceRow] = {}
        self._order: dict[int, builtins.list[int]] = {}
        self._devices: dict[int, Device] = {}

    # -- the database going away ---------------------------------------------------------------------------

    @property
    def unreachable(self) -> bool:
        """Whether the database was found unreachable and has not answered since (`reconnected`)."""
        return self.unreachable_since is not None

    def lost(self, exc: DatabaseUnreachableError) -> None:
        """The database cannot be reached: from now on nothing is asked of it but by `attempt`, until
        `reconnected`. Told once to `on_unreachable`."""
        if self.unreachable_since is not None:
            return
        self.unreachable_since = datetime.now(UTC)
        self._error = self._last_error = exc
        log.warning("the inventory's database is unreachable: %s", exc.message)
        if self.on_unreachable is not None:
            self.on_unreachable(exc)

    def reconnected(self) -> None:
        """The database answers again (the caller's `attempt` succeeded): calls go to it again."""
        self.unreachable_since = None
        self._error = None

    def keeping(self, rollout_id: int) -> bool:
        """Whether entries of this rollout wait to be written: until they are, its later ones are kept behind them
        (in order) and no new step of it starts, even once the database answers (another rollout reconnected)."""
        return bool(self._kept.get(rollout_id))

    def kept(self, rollout_id: int) -> builtins.list[KeptEntry]:
        """What the steps under way learned while the database was unreachable, not written yet."""
        return list(self._kept.get(rollout_id, ()))

    def forget_kept(self, rollout_id: int) -> builtins.list[KeptEntry]:
        """Drop what was kept (another FleetDesk drives the rollout now and asks the devices itself)."""
        return self._kept.pop(rollout_id, [])

    async def write_kept(self, rollout_id: int) -> int:
        """Write what was kept, in one transaction; returns the number of journal entries written."""
        kept = self.kept(rollout_id)
        if not kept:
            return 0
        written = await self.call(self.repo.write_kept, rollout_id, kept)
        self._kept.pop(rollout_id, None)
        return written

    async def attempt(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One try at the database even while it is unreachable (the engine's reconnect loop)."""
        return await self._run(fn, *args, **kwargs)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except DatabaseUnreachableError as exc:
            if self.driving():
                self.lost(exc)
            raise

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any inventory work on the inventory's thread (resolving a plan reads devices and groups).
        DatabaseUnreachableError at once while the database is unreachable."""
        if self._error is not None:
            raise self._error
        return await self._run(fn, *args, **kwargs)

    async def _read(self, cached: Callable[[], T | None], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read, answered from what was read last while the database is unreachable (when there is one)."""
        try:
            return await self.call(fn, *args, **kwargs)
        except DatabaseUnreachableError:
            found = cached() if self.unreachable else None  # riding it out: the steps under way go on
            if found is None:
                raise
            return found

    def _keep(self, rollout_id: int, device_id: int, event: str | None, detail: Mapping[str, Any] | None,
              fields: Mapping[str, Any]) -> DeviceRow:
        """A step's entry while the database is unreachable: applied to the row read last, kept for write_kept."""
        row = self._rows.get((rollout_id, device_id))
        if row is None or event in STARTS:
            error = self._error or self._last_error
            assert error is not None  # kept entries exist only after a loss
            raise error  # nothing new starts before its entry (and those kept before it) is written
        detail = dict(detail or {})
        after = row.state if event is None else st.transition(row.state, event, reconciled=detail.get("reconciled"))
        now = datetime.now(UTC)
        changes = {k: (json.loads(json.dumps(v)) if k == "gates" else v) for k, v in fields.items()}
        new = dataclasses.replace(row, state=after, updated_at=now, **changes)
        self._rows[(rollout_id, device_id)] = new
        # Kept as JSON would store it: what a device put in a detail is written later exactly as now.
        self._kept.setdefault(rollout_id, []).append(KeptEntry(
            device_id, event, row.state, after, now, json.loads(json.dumps(detail, default=str)), dict(fields)))
        if event is not None:
            log.info("rollout %s: device %s %s -> %s kept until the database answers", rollout_id, device_id,
                     event, after)
        return new

    def _remember(self, row: DeviceRow) -> DeviceRow:
        self._rows[(row.rollout_id, row.device_id)] = row
        return row

    async def device_of(self, device_id: int) -> Device:
        device = await self._read(lambda: self._devices.get(device_id), self.inventory.device, device_id)
        self._devices[device_id] = device
        return device

    async def create(self, resolved: ResolvedPlan, actor: str) -> RolloutRow:
        stored: ResolvedRollout = resolved  # what the inventory stores of it (checked here: `call` takes Any)
        return await self.call(self.repo.create, stored, actor)

    async def get(self, rollout_id: int) -> RolloutRow:
        row = await self._read(lambda: self._rollouts.get(rollout_id), self.repo.get, rollout_id)
        self._rollouts[rollout_id] = row
        return row

    async def status(self, rollout_id: int) -> str:
        return (await self.get(rollout_id)).status

    async def list(self, *, active_only: bool = False) -> builtins.list[RolloutRow]:
        return await self.call(self.repo.list, active_only=active_only)

    async def set_status(self, rollout_id: int, status: str, *, reason: str = "",
                         expect: str | Collection[str] | None = None, edit: Edit | None = None) -> RolloutRow:
        row = await self.call(self.repo.set_status, rollout_id, status, reason=reason, expect=expect, edit=edit)
        self._rollouts[rollout_id] = row
        return row

    async def check_edit(self, rollout_id: int, edit: Edit, *, step: str) -> RolloutRow:
        return await self.call(self.repo.check_edit, rollout_id, edit, step=step)

    async def devices(self, rollout_id: int) -> builtins.list[DeviceRow]:
        def cached() -> builtins.list[DeviceRow] | None:
            order = self._order.get(rollout_id)
            return None if order is None else [self._rows[(rollout_id, i)] for i in order]
        rows = await self._read(cached, self.repo.devices, rollout_id)
        self._order[rollout_id] = [self._remember(r).device_id for r in rows]
        return rows

    async def device(self, rollout_id: int, device_id: int) -> DeviceRow:
        return self._remember(await self._read(lambda: self._rows.get((rollout_id, device_id)), self.repo.device,
                                               rollout_id, device_id))

    async def states(self, rollout_id: int, device_ids: Collection[int]) -> dict[int, str]:
        """The state of each of these devices, in one read."""
        wanted = set(device_ids)
        return {r.device_id: r.state for r in await self.devices(rollout_id) if r.device_id in wanted}

    async def record(self, rollout_id: int, device_id: int, event: str, *, detail: Mapping[str, Any] | None = None,
                     **fields: Any) -> DeviceRow:
        """Journal the event (RolloutRepo.record); while the database is unreachable, keep what a step learned."""
        if self._error is None and not self.keeping(rollout_id):
            try:
                return self._remember(await self.call(self.repo.record, rollout_id, device_id, event, detail=detail,
                                                      **fields))
            except DatabaseUnreachableError:
                if not self.unreachable:
                    raise  # not driving: the caller's error, nothing kept
                # nothing was written: kept below, or refused when it would start a step
        return self._keep(rollout_id, device_id, event, detail, fields)

    async def update(self, rollout_id: int, device_id: int, **fields: Any) -> DeviceRow:
        if self._error is None and not self.keeping(rollout_id):
            try:
                return self._remember(await self.call(self.repo.update, rollout_id, device_id, **fields))
            except DatabaseUnreachableError:
                if not self.unreachable:
                    raise
        return self._keep(rollout_id, device_id, None, None, fields)

    async def journal(self, rollout_id: int, *, device_id: int | None = None) -> builtins.list[JournalEntry]:
        return await self.call(self.repo.journal, rollout_id, device_id=device_id)

    async def allow(self, permission: str, action: str, rollout_id: int | None,
                    device_ids: Sequence[int]) -> None:
        """The acting operator may do `action` to these devices, or AccessDeniedError (the refusal audited)."""
        def check() -> None:
            devices = [d for d in self.inventory.devices() if d.id in set(device_ids)]
            self.access.require(permission, f"rollout.{action}", devices=devices,
                                targets=_targets(rollout_id, device_ids))
        await self.call(check)

    async def audit(self, action: str, outcome: str, *, rollout_id: int | None = None,
                    device_ids: Sequence[int] = (), detail: Mapping[str, Any] | None = None) -> AuditEntry:
        """Append the signed entry `rollout.<action>` for the acting operator to the audit trail."""
        return await self.call(self.access.record, f"rollout.{action}", outcome=outcome,
                               targets=_targets(rollout_id, device_ids), after=dict(detail or {}))

    async def audit_log(self, rollout_id: int) -> builtins.list[AuditEntry]:
        """The audit trail's entries about one rollout, newest first."""
        query = AuditFilter(target=f"rollout:{rollout_id}", action="rollout.")
        return await self.call(self.access.audit.entries, query, limit=None)


def _targets(rollout_id: int | None, device_ids: Sequence[int]) -> tuple[str, ...]:
    named = () if rollout_id is None else (f"rollout:{rollout_id}",)
    return (*named, *(f"device:{int(i)}" for i in device_ids))
