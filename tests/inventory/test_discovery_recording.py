"""Discovery keeps going when the inventory refuses writes: a disk that fills up (a real tmpfs) and a database
another connection holds the write lock of (real SQLite). The operator is told why and the fix, sightings are
held (bounded) and recorded once the cause is gone, and nothing committed before is lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.discovery.recorder import DiscoveryRecorder, RecordingState
from fleetdesk.errors import InventoryUnavailableError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Device, Sighting
from fleetdesk.profiles import load_profiles
from tests.small_disk import fill, small_disk

SSH = "_ssh._tcp.local."


def seen(name: str, address: str, *, port: int = 22, kind: str = "seen") -> DiscoveryEvent:
    """The event MdnsBrowser emits for a resolved _ssh._tcp service."""
    return DiscoveryEvent(kind, Sighting("mdns", (address,), host_name=f"{name}.local.",  # type: ignore[arg-type]
                                         instance_name=name, service_type=SSH, port=port))


async def until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")
        await asyncio.sleep(0.02)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def names(fleet: Fleet) -> set[str]:
    return {d.name for d in fleet.inventory.devices()}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "small") as folder:
        yield folder


@pytest.fixture
def fleet_on_disk(disk: Path) -> Iterator[Fleet]:
    fleet = Fleet(open_inventory(f"sqlite:///{disk / 'fleet.db'}"), load_profiles())
    yield fleet
    fleet.inventory.close()


def committed_then_full(fleet: Fleet, disk: Path, count: int) -> set[str]:
    """`count` devices committed, the WAL folded into the database file, then the disk filled to the last block.

    Folding the WAL first matters: SQLite reuses a WAL's space after a checkpoint, so a small write could still
    fit in a WAL left large, and the disk would not be full for the inventory at all.
    """
    fleet.apply_discovery_events([seen(f"line1-pi-{i:02d}", f"198.18.1.{i + 10}") for i in range(count)])
    with sqlite3.connect(disk / "fleet.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fill(disk)
    return names(fleet)


def test_a_full_disk_is_reported_with_its_fix_and_the_held_sightings_are_recorded_once_space_is_freed(
        fleet_on_disk: Fleet, disk: Path) -> None:
    fleet = fleet_on_disk
    before = committed_then_full(fleet, disk, 10)
    assert len(before) == 10
    states: list[RecordingState] = []
    stored: list[Device] = []
    newcomers = [f"line2-cam-{i:02d}" for i in range(20)]

    async def scenario() -> DiscoveryRecorder:
        recorder = DiscoveryRecorder(fleet.apply_discovery_events, stored.append, states.append, limit=40)
        for i, name in enumerate(newcomers):
            recorder.push(seen(name, f"198.18.2.{i + 10}"))
        # One camera keeps re-announcing while nothing can be stored: far more than the bound.
        for port in range(1000, 1200):
            recorder.push(seen("line2-cam-00", "198.18.2.10", port=port, kind="updated"))
        # A second report is a retry: the recorder did not stop at the first refusal.
        await until(lambda: len(states) >= 2, "two refused tries (the first and one retry)")
        assert all(not s.recording for s in states)
        (disk / "filler").unlink()
        await until(lambda: any(s.recording for s in states), "recording again once space was freed")
        await recorder.close()
        return recorder

    asyncio.run(scenario())

    refused = states[0]
    assert isinstance(refused.error, InventoryUnavailableError)
    assert "is full" in refused.error.message and str(disk / "fleet.db") in refused.error.message
    assert refused.error.fix is not None and "free space" in refused.error.fix
    assert "not recording" in refused.text and refused.retry_in is not None
    assert refused.held <= 40, "the held sightings grew past their bound"
    recovered = next(s for s in states if s.recording)
    # 220 events against a bound of 40: only the camera's superseded re-announcements were let go.
    assert recovered.dropped == 180 and "recording again" in recovered.text
    assert names(fleet) == before | set(newcomers), "a device heard during the outage was lost"
    assert fleet.inventory.device("line2-cam-00").port == 1199, "the newest announcement was not the one kept"
    assert {d.name for d in stored} >= set(newcomers)
    assert integrity(disk / "fleet.db") == "ok"


def test_closing_while_the_disk_is_still_full_says_what_was_not_recorded(fleet_on_disk: Fleet, disk: Path) -> None:
    fleet = fleet_on_disk
    before = committed_then_full(fleet, disk, 3)
    states: list[RecordingState] = []

    async def scenario() -> None:
        recorder = DiscoveryRecorder(fleet.apply_discovery_events, None, states.append)
        for i in range(5):
            recorder.push(seen(f"line3-pi-{i}", f"198.18.3.{i + 10}"))
        await until(lambda: states, "the refusal reported")
        await recorder.close()  # the last try, made at once rather than after the backoff

    with pytest.raises(InventoryUnavailableError) as caught:
        asyncio.run(scenario())
    assert caught.value.message.startswith("5 sighting(s) were not recorded: the disk holding the inventory")
    assert caught.value.fix is not None and "free space" in caught.value.fix
    (disk / "filler").unlink()
    assert names(fleet) == before
    assert integrity(disk / "fleet.db") == "ok"


def test_a_database_another_connection_holds_locked_is_reported_and_recorded_once_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    fleet = Fleet(open_inventory(f"sqlite:///{path}"), load_profiles())
    fleet.apply_discovery_events([seen("line1-pi-01", "198.18.1.11"), seen("line1-pi-02", "198.18.1.12")])
    states: list[RecordingState] = []
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program's write transaction, left open
    other.execute("UPDATE devices SET name = name")

    async def scenario() -> None:
        recorder = fleet.recorder(None, states.append)
        for i in range(3):
            recorder.push(seen(f"line4-pi-{i}", f"198.18.4.{i + 10}"))
        await until(lambda: states, "the lock reported")  # after SQLite's busy timeout
        assert names(fleet) == {"line1-pi-01", "line1-pi-02"}
        other.execute("ROLLBACK")
        await until(lambda: any(s.recording for s in states), "recording again once the lock was released")
        await recorder.close()

    try:
        asyncio.run(scenario())
    finally:
        other.close()
        fleet.inventory.close()
    locked = states[0]
    assert isinstance(locked.error, InventoryUnavailableError)
    assert "is locked by another program" in locked.error.message and str(path) in locked.error.message
    assert locked.error.fix is not None and "sqlite3 shell" in locked.error.fix
    assert states[-1].recording and states[-1].dropped == 0
    reopened = open_inventory(f"sqlite:///{path}")
    try:
        assert {d.name for d in reopened.devices()} == {"line1-pi-01", "line1-pi-02", "line4-pi-0", "line4-pi-1",
                                                        "line4-pi-2"}
    finally:
        reopened.close()
    assert integrity(path) == "ok"
