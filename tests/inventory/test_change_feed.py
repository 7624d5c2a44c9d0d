"""Live across laptops (issue 23): what one FleetDesk commits to a shared PostgreSQL inventory reaches another's
ChangeFeed as it commits (the triggers of migration 0010, LISTEN/NOTIFY), naming the rows; a feed whose connection
is cut says so and comes back by itself. On the real PostgreSQL the tests start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.changes import Change, ChangeFeed
from fleetdesk.inventory.records import Edit
from tests.inventory.conftest import PostgresCluster


class Heard:
    def __init__(self) -> None:
        self.changes: list[tuple[float, Change]] = []
        self.states: list[tuple[bool, str]] = []
        self.lock = threading.Lock()

    def on_changes(self, burst: Sequence[Change]) -> None:
        with self.lock:
            self.changes += [(time.monotonic(), c) for c in burst]

    def on_state(self, up: bool, why: str) -> None:
        with self.lock:
            self.states.append((up, why))

    def wait(self, predicate: object, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; heard {self.changes} {self.states}")
            time.sleep(0.01)

    def about(self, device_id: int) -> list[Change]:
        with self.lock:
            return [c for _, c in self.changes if c.device == device_id]


@pytest.fixture
def feed(postgres_url: str) -> Iterator[tuple[ChangeFeed, Heard]]:
    open_inventory(postgres_url).close()  # the schema, with its triggers
    heard = Heard()
    made = ChangeFeed.for_url(postgres_url, heard.on_changes, heard.on_state)
    assert made is not None
    made.start()
    assert made.connected.wait(10), "the feed never connected"
    yield made, heard
    made.stop()


def test_each_change_another_laptop_commits_arrives_naming_its_rows(feed: tuple[ChangeFeed, Heard],
                                                                     postgres_url: str) -> None:
    _, heard = feed
    other = open_inventory(postgres_url)
    try:
        committed = time.monotonic()
        device = other.add_device("198.18.5.10", name="press-cam")
        heard.wait(lambda: any(c.table == "devices" and c.op == "INSERT" for c in heard.about(device.id)), "the add")
        arrived = next(t for t, c in heard.changes if c.device == device.id)
        print(f"\na device added on one laptop reached the other's feed in {(arrived - committed) * 1000:.1f} ms")

        other.rename(device.id, "press-cam-2", edit=Edit(by="bob", seen_version=1))
        heard.wait(lambda: any(c.table == "devices" and c.op == "UPDATE" for c in heard.about(device.id)), "rename")
        other.add_to_group("line A", [device.id])
        heard.wait(lambda: any(c.table == "group_members" for c in heard.about(device.id)), "the membership")
        assert any(c.table == "groups" and c.op == "INSERT" for _, c in heard.changes)
        other.remove(device.id)
        heard.wait(lambda: any(c.table == "devices" and c.op == "DELETE" for c in heard.about(device.id)), "removal")
    finally:
        other.close()
    # Telemetry minutes are not announced (many rows, their own views read them).
    assert {c.table for _, c in heard.changes} <= {"devices", "device_addresses", "groups", "group_members"}


def test_a_transaction_is_heard_only_when_it_commits(feed: tuple[ChangeFeed, Heard], postgres_url: str) -> None:
    from sqlalchemy import text

    _, heard = feed
    other = open_inventory(postgres_url)
    try:
        with other.engine.begin() as conn:
            conn.execute(text("INSERT INTO groups (name, created_at) VALUES ('never', now())"))
            time.sleep(0.3)
            assert not heard.changes, "a change was announced before its transaction committed"
            conn.rollback()
        time.sleep(0.3)
        assert not heard.changes, "a rolled-back change was announced"
    finally:
        other.close()


def test_a_cut_connection_is_said_and_the_feed_comes_back(feed: tuple[ChangeFeed, Heard],
                                                          postgres_cluster: PostgresCluster, postgres_url: str) -> None:
    made, heard = feed
    assert heard.states == [(True, "")]
    postgres_cluster.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE query LIKE 'LISTEN fleetdesk_changes%' AND pid <> pg_backend_pid()")
    heard.wait(lambda: len(heard.states) >= 3, "down, then up again")
    assert heard.states[1][0] is False and heard.states[1][1], "going down says why"
    assert heard.states[2] == (True, "")
    assert made.connected.wait(10)
    other = open_inventory(postgres_url)
    try:
        device = other.add_device("198.18.5.11", name="drill-cam")
        heard.wait(lambda: heard.about(device.id), "a change after the reconnect")
    finally:
        other.close()


def test_sqlite_has_no_feed(tmp_path: object) -> None:
    assert ChangeFeed.for_url(f"sqlite:///{tmp_path}/x.db", lambda _c: None) is None
