"""Opening the fleet for a command: the inventory (--db) and the SSH pool (--ssh-config), closed when it ends; or,
for commands that reach no device, the inventory alone as the acting operator (--operator) sees it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetdesk.access import Access
    from fleetdesk.fleet import Fleet


def open_fleet(args: argparse.Namespace) -> Fleet:
    """The Fleet the global options name; the caller closes it (`await fleet.close()`)."""
    # Imported here: `fleetdesk lab ...` and `--help` need neither the inventory nor SSH.
    from fleetdesk.fleet import Fleet

    return Fleet.open(args.db, ssh_config=getattr(args, "ssh_config", None), operator=getattr(args, "operator", None))


def with_fleet(args: argparse.Namespace, work: Callable[[Fleet], Coroutine[Any, Any, Any]]) -> int:
    """Open the inventory and the SSH pool, run `work(fleet)` on one event loop, close both; its exit status."""

    async def go() -> int:
        fleet = open_fleet(args)
        try:
            return int(await work(fleet))
        finally:
            await fleet.close()

    return asyncio.run(go())


def open_access(args: argparse.Namespace) -> Access:
    """The inventory the global options name, as the operator they name; the caller closes `.inventory`."""
    from fleetdesk.access import Access
    from fleetdesk.config import Settings
    from fleetdesk.inventory import open_inventory

    return Access(open_inventory(Settings.load(args.db).db_url), getattr(args, "operator", None))
