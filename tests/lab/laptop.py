"""The FleetDesk side of a lab test module: its own data folder and inventory, opened for each step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.profiles import ProfileSet, load_profiles


@dataclass
class LabLaptop:
    data_dir: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'fleetdesk.db'}"

    def fleet_profiles(self) -> ProfileSet:
        """The device profiles its Fleet uses (a module may adjust one for the lab's stand-ins)."""
        return load_profiles()

    def with_fleet(self, work: Callable[[Fleet], Coroutine[Any, Any, Any]]) -> Any:
        """Run `work` on a Fleet over this laptop's inventory in a fresh loop, closing the Fleet afterwards."""
        async def go() -> Any:
            fleet = Fleet(open_inventory(self.db_url), self.fleet_profiles())
            try:
                return await work(fleet)
            finally:
                await fleet.close()

        return asyncio.run(go())
