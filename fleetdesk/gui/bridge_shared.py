"""The bridge's part for a shared inventory: on PostgreSQL, what other laptops commit (devices added, renamed,
trusted, probed, grouped, provisioned; rollouts started, paused, progressing; operators; models imported) is shown
as it commits, each change reloading only the rows it names (fleetdesk.inventory.changes). While the database is
unreachable the window says that what it shows may be out of date; when it is back, the window reads everything
again, since what was committed meanwhile was never announced to it.

On SQLite there is no other laptop: the part does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any

from PySide6.QtCore import QObject, Signal

from fleetdesk.inventory.changes import Change, ChangeFeed

from .bridge_access import AccessPart
from .bridge_context import BridgeContext
from .bridge_devices import DevicesPart
from .bridge_models import ModelsPart
from .bridge_rollouts import RolloutsPart

DEVICE_TABLES = frozenset({"devices", "device_addresses", "device_names", "device_services", "host_keys",
                           "group_members", "device_runtimes"})


class SharedInventoryPart(QObject):
    # True: live (other laptops' changes arrive); False: the database is unreachable, with the reason.
    connection_changed = Signal(bool, str)

    def __init__(self, context: BridgeContext, devices: DevicesPart, rollouts: RolloutsPart,
                 access: AccessPart, models: ModelsPart) -> None:
        super().__init__()
        self._context = context
        self._devices = devices
        self._models = models
        self._rollouts = rollouts
        self._access = access
        url = context.fleet.inventory.engine.url.render_as_string(hide_password=False)
        self._feed = ChangeFeed.for_url(url, self._heard, self._state)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.live: bool | None = None  # None: not shared (or not started)

    @property
    def shared(self) -> bool:
        return self._feed is not None

    def start(self) -> None:
        """Listen from now on (after the first load: what came before is in it)."""
        if self._feed is not None and self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._feed.start()

    async def close(self) -> None:
        if self._feed is not None:
            await asyncio.to_thread(self._feed.stop)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- from the feed's thread ----------------------------------------------------------------------

    def _heard(self, burst: Sequence[Change]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._run, self._apply(burst))

    def _state(self, up: bool, why: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_state, up, why)

    # -- on the loop ---------------------------------------------------------------------------------

    def _run(self, job: Coroutine[Any, Any, None]) -> None:
        if self._context.closed or self._loop is None:
            job.close()  # never awaited: closed, so no warning
            return
        # The loop the part started on, not get_running_loop(): qasync also runs callbacks from Qt's event
        # processing while its loop is not running, and there that call would fail with the job left unawaited.
        task = self._loop.create_task(job, name="shared inventory change")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_state(self, up: bool, why: str) -> None:
        was, self.live = self.live, up
        self.connection_changed.emit(up, why)
        if up and was is False:
            self._run(self._catch_up())

    async def _catch_up(self) -> None:
        await self._devices.load()
        self._rollouts.refresh_soon()
        self._access.load()
        self._models.load_models()

    async def _apply(self, burst: Sequence[Change]) -> None:
        tables = {c.table for c in burst}
        await self._devices.reload(
            {c.device for c in burst if c.table in DEVICE_TABLES and c.device is not None},
            trust="host_keys" in tables, groups=bool(tables & {"groups", "group_members"}),
            runtimes="device_runtimes" in tables)
        if tables & {"rollouts", "rollout_devices"}:
            self._rollouts.refresh_soon()
        if "operators" in tables:
            self._access.load()
        if "models" in tables:  # a model imported on another laptop (the catalogue, migration 0017)
            self._models.load_models()
