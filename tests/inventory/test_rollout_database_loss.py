"""The database going away mid-rollout (issue 23), on the real PostgreSQL the tests start, stopped (pg_ctl stop -m
fast) and started again: one place tells "unreachable" from a refused statement (DatabaseUnreachableError, for reads
and writes, and the same Inventory works again once the server is back); the rollout journal keeps what a step
under way learned and refuses to start a new step; the engine rides the outage out (its lease renewal does not
crash), pauses the rollout with the outage as its reason (journaled, audited) or resumes it when the plan says so,
and stops, saying so, when another laptop took the rollout over meanwhile.

The engine's rollouts wait on devices that do not answer (loopback addresses where nothing listens): the engine is
busy driving, asking them again every fraction of a second, when the database goes away. The lab proves it with real
devices mid-wave (tests/lab/test_takeover_lab.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.access import Access
from fleetdesk.errors import DatabaseUnreachableError, RolloutConflictError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import Inventory, open_inventory
from fleetdesk.inventory import rollout_states as s
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.engine import RolloutBusyError, RolloutEngine, RolloutEvent
from fleetdesk.rollout.journal import RolloutJournal
from fleetdesk.rollout.plan import RolloutPlan
from tests.inventory.test_rollouts import make_plan
from tests.postgres import PostgresCluster

REASON = re.compile(r"^database unreachable from \d\d:\d\d:\d\d to \d\d:\d\d:\d\d UTC$")


@pytest.fixture
def cluster(postgres_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The session's cluster, started again after the test whatever happened (the other tests share it)."""
    yield postgres_cluster
    if not (postgres_cluster.data_dir / "postmaster.pid").exists():
        postgres_cluster.start()


@pytest.fixture
def fleet(postgres_url: str) -> Iterator[Fleet]:
    fleet = Fleet(open_inventory(postgres_url), load_profiles(), operator="alice")
    fleet.access.require("administer", "operator.add")  # alice: the fresh inventory's first admin
    yield fleet
    asyncio.run(fleet.close())


def _silent_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def waiting_rollout(inventory: Inventory, *, on_database_loss: str = "pause") -> int:
    """A running rollout of two loopback devices where nothing listens, both unreachable: the engine waits for
    them (the plan's unreachable policy), asking them again and again."""
    for n, name in enumerate(("cam-01", "cam-02")):
        address = f"127.0.0.{n + 2}"
        inventory.add_device(address, port=_silent_port(address), name=name)
    resolved = make_plan(inventory, "cam-01", "cam-02")
    plan = RolloutPlan.from_dict({**resolved.plan.to_dict(), "on_database_loss": on_database_loss})
    repo = RolloutRepo(inventory)
    rid = repo.create(type(resolved)(plan, resolved.model_ref, resolved.devices, resolved.waves), "alice").id
    repo.set_status(rid, "running", expect="planned")
    for device in repo.devices(rid):
        repo.record(rid, device.device_id, s.STAGE)
        repo.record(rid, device.device_id, s.LOST, error="no answer")
    return rid


def engine_of(fleet: Fleet, tmp_path: Path, events: list[RolloutEvent], host: str = "laptop-b") -> RolloutEngine:
    engine = RolloutEngine(fleet, _no_store(), lock_dir=tmp_path / f"locks-{host}", on_event=events.append)
    engine.host, engine.driver = host, f"{host}:4242"
    engine.unreachable_poll_s = 0.1
    engine.reconnect_first_s = 0.2
    return engine


def _no_store() -> object:
    from fleetdesk.artifacts.store import ArtifactStore

    return ArtifactStore.default()


async def until(found: object, timeout: float = 60) -> None:
    """Wait (bounded) until `found()` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not found():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def test_a_stopped_server_is_unreachable_for_reads_and_writes_and_the_same_inventory_works_once_it_is_back(
        postgres_url: str, cluster: PostgresCluster) -> None:
    with open_inventory(postgres_url) as inventory:
        inventory.add_device("127.0.0.9", name="before")
        cluster.stop()
        with pytest.raises(DatabaseUnreachableError) as read:
            inventory.devices()
        with pytest.raises(DatabaseUnreachableError) as write:
            inventory.add_device("127.0.0.10", name="during")
        assert "cannot be reached" in read.value.message and read.value.fix
        assert str(cluster.port) in write.value.message
        cluster.start()
        assert [d.name for d in inventory.devices()] == ["before"]  # nothing of the refused write was made
        inventory.add_device("127.0.0.10", name="after")
        assert sorted(d.name for d in inventory.devices()) == ["after", "before"]


def test_a_refused_statement_is_not_unreachable(postgres_url: str, cluster: PostgresCluster) -> None:
    with open_inventory(postgres_url) as inventory:
        cluster.admin("ALTER DATABASE inventory SET default_transaction_read_only = on")
        try:
            cluster.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'inventory' "
                          "AND pid <> pg_backend_pid()")
            with contextlib.suppress(DatabaseUnreachableError):
                inventory.devices()  # the pooled connection just ended: that is "unreachable", and it is replaced
            inventory.devices()
            with pytest.raises(Exception) as refused:
                inventory.add_device("127.0.0.11", name="read-only")
            assert not isinstance(refused.value, DatabaseUnreachableError), refused.value
        finally:
            cluster.admin("ALTER DATABASE inventory RESET default_transaction_read_only")


def test_the_journal_keeps_what_a_step_learned_refuses_a_new_step_and_writes_what_it_kept_once_back(
        fleet: Fleet, cluster: PostgresCluster) -> None:
    repo = RolloutRepo(fleet.inventory)
    rid = repo.create(make_plan(fleet.inventory, "cam-01", "cam-02"), "alice").id
    one, two = (d.device_id for d in repo.devices(rid))
    journal = RolloutJournal(repo, fleet.inventory, fleet.access)

    async def go() -> None:
        await journal.record(rid, one, s.STAGE)
        await journal.record(rid, one, s.STAGED_OK, bytes_sent=1000)
        await journal.record(rid, one, s.ACTIVATE)
        assert [r.state for r in await journal.devices(rid)] == [s.ACTIVATING, s.PENDING]
        await journal.get(rid)
        await asyncio.to_thread(cluster.stop)
        # The activation under way answers: kept, and the steps see it; its soak's progress too.
        row = await journal.record(rid, one, s.ACTIVATED, detail={"agent": {"changed": True}})
        assert row.state == s.VERIFYING and journal.unreachable and journal.unreachable_since is not None
        await journal.update(rid, one, gates={"passed": True})
        await journal.record(rid, one, s.PASSED)
        await journal.record(rid, one, s.CONFIRMED)
        assert (await journal.device(rid, one)).state == s.DONE
        assert (await journal.get(rid)).status == "planned"  # read last
        # Nothing new starts before its entry is written.
        with pytest.raises(DatabaseUnreachableError):
            await journal.record(rid, two, s.STAGE)
        with pytest.raises(DatabaseUnreachableError):
            await journal.journal(rid)  # not read before: no answer to give
        assert [k.event for k in journal.kept(rid)] == [s.ACTIVATED, None, s.PASSED, s.CONFIRMED]
        await asyncio.to_thread(cluster.start)
        await journal.attempt(repo.get, rid)
        journal.reconnected()
        assert await journal.write_kept(rid) == 3
        assert journal.kept(rid) == [] and await journal.write_kept(rid) == 0

    asyncio.run(go())
    entries = [(e.from_state, e.event, e.to_state) for e in repo.journal(rid, device_id=one)]
    assert entries == [(s.PENDING, s.STAGE, s.STAGING), (s.STAGING, s.STAGED_OK, s.STAGED),
                       (s.STAGED, s.ACTIVATE, s.ACTIVATING), (s.ACTIVATING, s.ACTIVATED, s.VERIFYING),
                       (s.VERIFYING, s.PASSED, s.CONFIRMING), (s.CONFIRMING, s.CONFIRMED, s.DONE)]
    kept = repo.journal(rid, device_id=one)[3:]
    assert kept[0].detail == {"agent": {"changed": True}} and kept[0].at <= kept[1].at <= kept[2].at
    row = repo.device(rid, one)
    assert (row.state, row.bytes_sent, row.gates) == (s.DONE, 1000, {"passed": True})
    assert repo.device(rid, two).state == s.PENDING


def test_kept_entries_already_committed_are_not_written_twice_and_a_device_changed_elsewhere_refuses_all(
        fleet: Fleet) -> None:
    from fleetdesk.inventory.rollouts import KeptEntry

    repo = RolloutRepo(fleet.inventory)
    rid = repo.create(make_plan(fleet.inventory, "cam-01", "cam-02"), "alice").id
    one, two = (d.device_id for d in repo.devices(rid))
    repo.record(rid, one, s.STAGE)
    repo.record(rid, one, s.STAGED_OK)  # committed as the connection broke: the driver kept it too
    at = repo.device(rid, one).updated_at
    kept = [KeptEntry(one, s.STAGED_OK, s.STAGING, s.STAGED, at), KeptEntry(one, None, s.STAGED, s.STAGED, at,
                                                                            fields={"bytes_sent": 7})]
    assert repo.write_kept(rid, kept) == 0
    assert [e.event for e in repo.journal(rid, device_id=one)] == [s.STAGE, s.STAGED_OK]
    assert repo.device(rid, one).bytes_sent == 7
    with pytest.raises(RolloutConflictError, match="another FleetDesk changed it"):
        repo.write_kept(rid, [KeptEntry(one, s.ACTIVATED, s.ACTIVATING, s.VERIFYING, at),
                              KeptEntry(two, s.STAGED_OK, s.STAGING, s.STAGED, at)])
    assert repo.device(rid, two).state == s.PENDING  # all or nothing


def _pauses(fleet: Fleet, rid: int) -> list[dict[str, object]]:
    entries = fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}", action="rollout."), limit=None)
    return [{"action": e.action, **dict(e.after or {})} for e in reversed(entries)]


def test_the_engine_rides_out_a_database_restart_and_pauses_with_the_outage_as_the_reason(
        fleet: Fleet, cluster: PostgresCluster, tmp_path: Path) -> None:
    rid = waiting_rollout(fleet.inventory)
    events: list[RolloutEvent] = []
    engine = engine_of(fleet, tmp_path, events)

    async def go() -> object:
        task = asyncio.create_task(engine.run(rid))
        await until(lambda: any("waits" in e.message or "unreachable" in e.message for e in events))
        await asyncio.to_thread(cluster.stop)
        await until(lambda: any("retrying" in e.message for e in events))
        await asyncio.sleep(6)  # longer than a lease renewal's interval (LEASE_S / 3): it must not crash
        await asyncio.to_thread(cluster.start)
        return await asyncio.wait_for(task, 120)

    row = asyncio.run(go())
    repo = RolloutRepo(fleet.inventory)
    stored = repo.get(rid)
    assert row.status == stored.status == "paused", row  # type: ignore[attr-defined]
    assert REASON.match(stored.paused_reason), stored.paused_reason
    told = [e.message for e in events]
    assert any(f"rollout {rid}: database unreachable since" in m and "retrying" in m for m in told), told
    assert any(m == f"rollout {rid} paused: {stored.paused_reason}" for m in told), told
    (pause,) = [a for a in _pauses(fleet, rid) if a["action"] == "rollout.pause"]
    assert pause["by"] == "fleetdesk" and pause["reason"] == stored.paused_reason and pause["kept"] == 0
    status = [e for e in repo.journal(rid) if e.device_id is None and e.event == "status"]
    assert (status[-1].to_state, status[-1].detail) == ("paused", {"reason": stored.paused_reason})
    assert {d.state for d in repo.devices(rid)} == {s.UNREACHABLE}  # nothing was made up about the devices
    assert stored.driver is None  # the lease, taken again after the outage, given back as it stopped


def test_a_plan_that_says_resume_goes_on_by_itself_once_the_database_answers(
        fleet: Fleet, cluster: PostgresCluster, tmp_path: Path) -> None:
    rid = waiting_rollout(fleet.inventory, on_database_loss="resume")
    events: list[RolloutEvent] = []
    engine = engine_of(fleet, tmp_path, events)

    async def go() -> None:
        task = asyncio.create_task(engine.run(rid))
        await until(lambda: engine.driving(rid))
        await asyncio.to_thread(cluster.stop)
        await until(lambda: any("retrying" in e.message for e in events))
        await asyncio.to_thread(cluster.start)
        await until(lambda: any("resumed" in e.message for e in events))
        await engine.pause(rid, "shift change", witness=False)  # the operator stops it: the driver ends
        await asyncio.wait_for(task, 120)

    asyncio.run(go())
    actions = [(a["action"], a.get("by"), a.get("reason")) for a in _pauses(fleet, rid)]
    assert [a[:2] for a in actions[-3:]] == [("rollout.pause", "fleetdesk"), ("rollout.resume", "fleetdesk"),
                                            ("rollout.pause", None)], actions
    assert REASON.match(str(actions[-3][2])), actions
    assert RolloutRepo(fleet.inventory).get(rid).paused_reason == "shift change"


def test_a_driver_whose_lease_was_taken_over_during_the_outage_stops_and_says_so(
        fleet: Fleet, cluster: PostgresCluster, tmp_path: Path) -> None:
    rid = waiting_rollout(fleet.inventory)
    events: list[RolloutEvent] = []
    engine = engine_of(fleet, tmp_path, events)
    engine.reconnect_first_s = 8.0  # the other laptop takes the lease before this one tries again
    repo = RolloutRepo(fleet.inventory)

    async def go() -> BaseException | None:
        task = asyncio.create_task(engine.run(rid))
        await until(lambda: engine.driving(rid))
        await asyncio.to_thread(cluster.stop)
        await until(lambda: any("retrying" in e.message for e in events))
        await asyncio.to_thread(cluster.start)
        # A partition longer than the lease, as laptop-c saw it: the lease ran out, and laptop-c took the rollout.
        await asyncio.to_thread(cluster.admin, "UPDATE rollouts SET lease_until = now() - interval '1 second'",
                                dbname="inventory")
        assert (await asyncio.to_thread(repo.take_lease, rid, "laptop-c:7", 60)).driver == "laptop-c:7"
        try:
            await asyncio.wait_for(task, 120)
        except RolloutBusyError as exc:
            return exc
        return None

    stopped = asyncio.run(go())
    assert isinstance(stopped, RolloutBusyError), stopped
    assert "took it over: this one stops driving it" in stopped.message and "laptop-c (process 7)" in stopped.message
    assert any(e.kind == "lease" and e.message == stopped.message for e in events)
    row = repo.get(rid)
    assert (row.status, row.driver) == ("running", "laptop-c:7")  # left to laptop-c, not paused, not released


def test_an_operator_action_while_the_database_is_away_fails_clearly_and_works_once_it_is_back(
        fleet: Fleet, cluster: PostgresCluster, tmp_path: Path) -> None:
    rid = waiting_rollout(fleet.inventory)
    engine = engine_of(fleet, tmp_path, [])

    async def go() -> str:
        await asyncio.to_thread(cluster.stop)
        with pytest.raises(DatabaseUnreachableError):
            await engine.pause(rid, "shift change", witness=False)
        assert not engine.db.unreachable  # nothing driven: no outage to ride out, nothing kept
        await asyncio.to_thread(cluster.start)
        return (await engine.pause(rid, "shift change", witness=False)).status

    assert asyncio.run(go()) == "paused"


def test_the_command_line_driver_prints_the_pause_reason_and_exits_paused(
        postgres_url: str, cluster: PostgresCluster, tmp_path: Path) -> None:
    """`fleetdesk rollout run ID --json` in its own process, its database stopped and started again under it."""
    with open_inventory(postgres_url) as inventory:
        Access(inventory, "alice").record("fleet.start")  # alice: the first admin
        rid = waiting_rollout(inventory)
    env = {**os.environ, "FLEETDESK_OPERATOR": "alice", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "FLEETDESK_DATA_DIR": str(tmp_path / "laptop")}
    driver = subprocess.Popen([sys.executable, "-m", "fleetdesk", "--db", postgres_url, "rollout", "run", str(rid),
                               "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open_inventory(postgres_url) as inventory:
            repo = RolloutRepo(inventory)
            for _ in range(600):
                if repo.get(rid).driver is not None or driver.poll() is not None:
                    break
                threading.Event().wait(0.1)
        cluster.stop()
        threading.Event().wait(3)
        cluster.start()
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 3, err[-3000:]
    report = json.loads(out)
    assert report["status"] == "paused" and REASON.match(report["paused_reason"]), report
    assert f"rollout {rid}: database unreachable since" in err and "retrying" in err, err[-3000:]
    assert f"rollout {rid} paused: {report['paused_reason']}" in err, err[-3000:]
