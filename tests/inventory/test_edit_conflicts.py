"""No lost updates (issue 23): two laptops (two Fleets, each with its own connection, on one SQLite file and on the
real PostgreSQL) edit the same device from what each read. The second edit, made from an outdated view, is
refused with who changed it and when; nothing of it is written, and what the first wrote stays. What the fleet
observes by itself (sightings, online state, probes) is not an edit and never makes an operator's edit fail.
"""

from __future__ import annotations

import asyncio

import pytest

from fleetdesk.errors import EditConflictError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.records import Edit


def test_the_second_rename_from_an_outdated_view_is_refused_naming_who_changed_it(
        laptops: tuple[Fleet, Fleet]) -> None:
    alice, bob = laptops
    added = asyncio.run(alice.add("198.18.4.10", name="press-cam"))
    seen_by_alice = alice.inventory.device(added.id)
    seen_by_bob = bob.inventory.device(added.id)
    assert seen_by_alice.version == seen_by_bob.version == 1

    renamed = alice.rename(seen_by_alice, "press-cam-line-1")
    assert renamed.version == 2
    with pytest.raises(EditConflictError) as refused:
        bob.rename(seen_by_bob, "press-cam-old-hall")
    message = str(refused.value)
    assert "'press-cam-line-1' was changed by alice at " in message and "your change was not made" in message
    assert "make your change again" in (refused.value.fix or "")
    assert bob.inventory.device(added.id).name == "press-cam-line-1"  # alice's change stands
    # Only alice's rename is in the audit trail: a refused edit changed nothing.
    renames = bob.access.audit.entries(AuditFilter(action="device.rename"))
    assert [(e.operator, e.after) for e in renames] == [("alice", {"name": "press-cam-line-1"})]

    # Bob, looking again, makes his change from the current version.
    current = bob.inventory.device(added.id)
    assert bob.rename(current, "press-cam-old-hall").version == 3
    stored = alice.inventory.device(added.id)
    assert stored.name == "press-cam-old-hall" and stored.version == 3


def test_login_and_removal_from_an_outdated_view_are_refused_too(laptops: tuple[Fleet, Fleet]) -> None:
    alice, bob = laptops
    added = asyncio.run(alice.add("198.18.4.11", name="drill-cam"))
    old = bob.inventory.device(added.id)
    asyncio.run(alice.set_login(alice.inventory.device(added.id), username="pi", port=2222))
    with pytest.raises(EditConflictError, match="changed by alice"):
        asyncio.run(bob.set_login(old, username="root"))
    with pytest.raises(EditConflictError, match="changed by alice"):
        bob.remove_devices([old])
    kept = bob.inventory.device(added.id)
    assert (kept.username, kept.port, kept.version) == ("pi", 2222, 2)


def test_what_the_fleet_observes_is_not_an_edit(laptops: tuple[Fleet, Fleet]) -> None:
    alice, bob = laptops
    added = asyncio.run(alice.add("198.18.4.12", name="oven-cam"))
    seen_by_bob = bob.inventory.device(added.id)
    alice.inventory.set_online(added.id, True)
    alice.inventory.set_online(added.id, False)
    assert alice.inventory.device(added.id).version == 1
    assert bob.rename(seen_by_bob, "oven-cam-2").name == "oven-cam-2"


def test_two_edits_from_the_same_version_at_once_let_exactly_one_through(db_url: str) -> None:
    """Many writers, all from version 1, at the same moment on their own connections: one wins, the rest are
    refused (the check and the count are in one write transaction)."""
    import threading

    inventories = [open_inventory(db_url) for _ in range(4)]
    try:
        device = inventories[0].add_device("198.18.4.13", name="mixer-cam")
        start = threading.Barrier(len(inventories))
        outcomes: list[str] = []

        def edit(i: int) -> None:
            start.wait()
            try:
                inventories[i].rename(device.id, f"mixer-cam-{i}", edit=Edit(by=f"laptop-{i}", seen_version=1))
                outcomes.append("made")
            except EditConflictError:
                outcomes.append("refused")

        threads = [threading.Thread(target=edit, args=(i,)) for i in range(len(inventories))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(outcomes) == ["made"] + ["refused"] * (len(inventories) - 1)
        assert inventories[0].device(device.id).version == 2
    finally:
        for inventory in inventories:
            inventory.close()
