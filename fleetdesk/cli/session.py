"""Opening the fleet for a command: the inventory (--db) and the SSH pool (--ssh-config), closed when it ends; or,
for commands that reach no device, the inventory alone as the acting operator (--operator) sees it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetdesk.access import Access
    from fleetdesk.fleet import Fleet


def open_fleet(args: argparse.Namespace) -> Fleet:
    """The Fleet the global options name; the caller closes it (`await fleet.close()`)."""
    # Imported here: `fleetdesk lab ...` and `--help` need neither the inventory nor SSH.
    from fleetdesk.fleet import Fleet

    fleet = Fleet.open(args.db, ssh_config=getattr(args, "ssh_config", None), operator=getattr(args, "operator", None))
    _sign_checkpoints(fleet.access, args)
    return fleet


def with_fleet(args: argparse.Namespace, work: Callable[[Fleet], Coroutine[Any, Any, Any]]) -> int:
    """Open the inventory and the SSH pool, run `work(fleet)` on one event loop, close both; its exit status."""

    async def go() -> int:
        fleet = open_fleet(args)
        try:
            return int(await work(fleet))
        finally:
            await fleet.close()

    return asyncio.run(go())


@contextlib.contextmanager
def opened_access(args: argparse.Namespace) -> Iterator[Access]:
    """`with opened_access(args) as access:` the inventory the global options name, as the operator they name;
    closed when the block ends."""
    from fleetdesk.access import Access
    from fleetdesk.config import Settings
    from fleetdesk.inventory import open_inventory

    access = Access(open_inventory(Settings.load(args.db).db_url), getattr(args, "operator", None))
    _sign_checkpoints(access, args)
    try:
        yield access
    finally:
        access.inventory.close()


def _sign_checkpoints(access: Access, args: argparse.Namespace) -> None:
    """Every hundredth audit entry a command appends is signed as a checkpoint with the fleet key."""
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.config import Settings

    access.sign_checkpoints_with(FleetSigningKey.default(Settings.load(args.db)))
