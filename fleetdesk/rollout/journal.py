"""The rollout engine's way to the inventory: every read and write on one thread, awaited from the event loop.

In the window the engine runs on the GUI's loop, and a journal commit (an fsync, a WAL checkpoint) would stall
the window while it lasts. Here each call runs on the inventory's thread and the engine awaits its end, so
"journaled before the step runs" still holds: the step starts only once the commit is done. Calls run one at a
time in the order they were made. The GUI passes its own inventory thread (fleetdesk.gui.bridge), so the
engine's writes queue with the window's reads instead of beside them.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from fleetdesk.access import Access
from fleetdesk.inventory.audit import AuditEntry, AuditFilter
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.rollouts import (
    DeviceRow,
    JournalEntry,
    ResolvedRollout,
    RolloutRepo,
    RolloutRow,
)

if TYPE_CHECKING:
    from fleetdesk.inventory.repository import Inventory
    from fleetdesk.rollout.plan import ResolvedPlan

T = TypeVar("T")


class RolloutJournal:
    """`RolloutRepo` (and the inventory's device lookup) as coroutines that run on one inventory thread."""

    # The annotations say builtins.list: in this class body `list` is the method below.

    def __init__(self, repo: RolloutRepo, inventory: Inventory, access: Access,
                 executor: Executor | None = None) -> None:
        self.repo = repo
        self.inventory = inventory
        self.access = access
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetdesk-journal")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any inventory work on the inventory's thread (resolving a plan reads devices and groups)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def device_of(self, device_id: int) -> Device:
        return await self.call(self.inventory.device, device_id)

    async def create(self, resolved: ResolvedPlan, actor: str) -> RolloutRow:
        stored: ResolvedRollout = resolved  # what the inventory stores of it (checked here: `call` takes Any)
        return await self.call(self.repo.create, stored, actor)

    async def get(self, rollout_id: int) -> RolloutRow:
        return await self.call(self.repo.get, rollout_id)

    async def status(self, rollout_id: int) -> str:
        return (await self.get(rollout_id)).status

    async def list(self, *, active_only: bool = False) -> builtins.list[RolloutRow]:
        return await self.call(self.repo.list, active_only=active_only)

    async def set_status(self, rollout_id: int, status: str, *, reason: str = "",
                         expect: str | Collection[str] | None = None) -> RolloutRow:
        return await self.call(self.repo.set_status, rollout_id, status, reason=reason, expect=expect)

    async def devices(self, rollout_id: int) -> builtins.list[DeviceRow]:
        return await self.call(self.repo.devices, rollout_id)

    async def device(self, rollout_id: int, device_id: int) -> DeviceRow:
        return await self.call(self.repo.device, rollout_id, device_id)

    async def states(self, rollout_id: int, device_ids: Collection[int]) -> dict[int, str]:
        """The state of each of these devices, in one read."""
        wanted = set(device_ids)
        return {r.device_id: r.state for r in await self.devices(rollout_id) if r.device_id in wanted}

    async def record(self, rollout_id: int, device_id: int, event: str, *, detail: Mapping[str, Any] | None = None,
                     **fields: Any) -> DeviceRow:
        return await self.call(self.repo.record, rollout_id, device_id, event, detail=detail, **fields)

    async def update(self, rollout_id: int, device_id: int, **fields: Any) -> DeviceRow:
        return await self.call(self.repo.update, rollout_id, device_id, **fields)

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
