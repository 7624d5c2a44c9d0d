"""The bridge's part for who acts: the signed-in operator, switching operator, and the audit trail.

Every call reads the inventory (and verification reads the whole trail), so each runs as an Activity: reads on the
inventory's thread, verification on a thread of its own so the window's other reads do not queue behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sized
from typing import Any

from PySide6.QtCore import QObject, Signal

from fleetdesk.access import Verification
from fleetdesk.inventory.audit import AuditEntry, AuditFilter

from .activities import Activity
from .bridge_context import BridgeContext

AUDIT_ROWS = 500  # the newest entries the window lists at once (the CLI and an export give them all)


class AccessPart(QObject):
    operator_changed = Signal(object)  # dict: Access.whoami() of the operator now acting in this window

    def __init__(self, context: BridgeContext) -> None:
        super().__init__()
        self._context = context
        self.fleet = context.fleet
        self.activities = context.activities
        self.current: dict[str, Any] = {}

    def load(self) -> Activity:
        """Say who acts (at start): operator_changed carries their name, roles and scope."""
        async def job(activity: Activity) -> str:
            self.current = await self._context.db(self.fleet.access.whoami)
            self.operator_changed.emit(dict(self.current))
            return str(self.current["operator"])

        return self.activities.start("Who is signed in", job, summarize=lambda name: f"acting as {name}")

    def operator_names(self, then: Callable[[list[str]], object]) -> Activity:
        async def job(activity: Activity) -> list[str]:
            names = [o.name for o in await self._context.db(self.fleet.access.operators.list)]
            then(names)
            return names

        return self.activities.start("List operators", job, summarize=lambda names: f"{len(names)} operator(s)")

    def switch(self, name: str) -> Activity:
        """Act as `name` from now on in this window; an unknown name is refused and nothing changes."""
        async def job(activity: Activity) -> str:
            await self._context.db(self.fleet.access.switch, name)
            self.current = await self._context.db(self.fleet.access.whoami)
            self.operator_changed.emit(dict(self.current))
            return name

        return self.activities.start(f"Switch operator to {name}", job, summarize=lambda n: f"acting as {n}")

    def audit_entries(self, query: AuditFilter, prepare: Callable[[list[AuditEntry]], Sized],
                      then: Callable[[Any], object]) -> Activity:
        """The newest entries matching `query` (the audit permission is needed, and a refusal is audited), made
        ready for showing by `prepare` off the loop, then handed to `then` on it."""
        def read() -> Sized:
            self.fleet.access.require("audit", "audit.list")
            return prepare(self.fleet.access.audit.entries(query, limit=AUDIT_ROWS))

        async def job(activity: Activity) -> int:
            found = await self._context.db(read)
            then(found)
            return len(found)

        return self.activities.start("Read the audit trail", job, summarize=lambda n: f"{n} entries")

    def verify(self, then: Callable[[Verification], object]) -> Activity:
        """Check the whole trail off the loop and off the inventory's thread; `then` gets the result."""
        async def job(activity: Activity) -> str:
            await self._context.db(self.fleet.access.require, "audit", "audit.verify")
            activity.report(None, "checking every entry's hash, chain and signature")
            result = await asyncio.to_thread(self.fleet.access.verify)
            then(result)
            return str(result)

        return self.activities.start("Verify the audit trail", job, summarize=lambda text: text)
