"""What every part of the bridge shares: the fleet, the activity registry, the inventory's thread, the closed flag.

`FleetBridge` (fleetdesk.gui.bridge) makes one and hands it to each of its parts (bridge_devices, bridge_models,
bridge_rollouts, bridge_telemetry); none of them makes its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fleetdesk.fleet import Fleet

from .activities import Activities

T = TypeVar("T")


class BridgeContext:
    """The fleet and the activity registry the window works through, and one thread for the inventory."""

    def __init__(self, fleet: Fleet, activities: Activities) -> None:
        self.fleet = fleet
        self.activities = activities
        # One thread for the inventory: reads and writes stay in order and the loop never waits on SQL.
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetdesk-inventory")
        self.closed = False  # set when the window starts closing: nothing new is scheduled after that

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in the inventory's thread, in order with every other inventory call of this window."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_thread, functools.partial(fn, *args, **kwargs))
