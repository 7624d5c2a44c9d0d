"""The rollout journal (migration 0006, fleetdesk.inventory.rollouts): a rollout and its devices as the plan made
them, every transition applied through the table and journaled in the same transaction, refused transitions and
lost compare-and-sets writing nothing, one active rollout per device, and two processes writing at
once. Every test runs on SQLite and on a real PostgreSQL (see conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from alembic import command
from sqlalchemy import inspect, text

from fleetdesk.errors import RolloutConflictError, RolloutNotFoundError
from fleetdesk.inventory import Inventory, open_inventory
from fleetdesk.inventory import rollout_states as s
from fleetdesk.inventory.database import for_writing, open_database
from fleetdesk.inventory.migrate import alembic_config, upgrade
from fleetdesk.inventory.models import Base
from fleetdesk.inventory.rollout_states import TransitionError
from fleetdesk.inventory.rollouts import (
    ROLLOUT_STATUSES,
    DeviceRow,
    JournalEntry,
    RolloutRepo,
    RolloutRow,
)
from fleetdesk.rollout.plan import PlannedDevice, ResolvedPlan, RolloutPlan
from fleetdesk.rollout.policy import WavePolicy

NEW = "a" * 64
OLD = "b" * 64
ROLLOUT_TABLES = {"rollouts", "rollout_devices", "rollout_journal", "audit_log"}  # audit_log: before the chain


def make_plan(inventory: Inventory, *names: str, model: str = "cnn@2") -> ResolvedPlan:
    """A resolved plan over devices added by name (the repo stores what resolve() made; no store needed)."""
    known = {d.name: d for d in inventory.devices()}
    devices = []
    for n, name in enumerate(names):
        device = known.get(name) or inventory.add_device(f"198.18.2.{len(known) + n + 1}", name=name)
        devices.append(device)
    planned = tuple(PlannedDevice(d.id, d.name, "rpi4", NEW, "fp16", 0 if i == 0 else 1, 1000)
                    for i, d in enumerate(devices))
    waves = (planned[0].device_id,), tuple(p.device_id for p in planned[1:])
    plan = RolloutPlan(model, devices=tuple(d.id for d in devices), policy=WavePolicy(errors="10%"))
    return ResolvedPlan(plan, model, planned, tuple(w for w in waves if w))


def events(entries: list[JournalEntry]) -> list[tuple[int | None, str, str, str]]:
    return [(e.device_id, e.from_state, e.event, e.to_state) for e in entries]


def test_create_stores_the_plan_with_every_device_pending(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    resolved = make_plan(inventory, "cam-01", "cam-02", "cam-03")
    row = repo.create(resolved, "op@line-a")
    assert isinstance(row, RolloutRow)
    assert (row.model_ref, row.status, row.actor, row.paused_reason) == ("cnn@2", "planned", "op@line-a", "")
    assert ResolvedPlan.from_dict(row.resolved) == resolved
    assert RolloutPlan.from_dict(row.plan) == resolved.plan
    assert row.created_at.tzinfo is not None and row.created_at == row.updated_at
    assert repo.get(row.id) == row and repo.list() == [row] and repo.list(active_only=True) == [row]
    devices = repo.devices(row.id)
    assert [(d.device_id, d.wave, d.artifact, d.state, d.attempts, d.bytes_sent, d.previous_artifact, d.error,
             d.gates) for d in devices] == [
        (p.device_id, p.wave, NEW, s.PENDING, 0, 0, None, "", {}) for p in resolved.devices]
    assert repo.device(row.id, resolved.devices[1].device_id) == devices[1]
    assert events(repo.journal(row.id)) == [(None, "", "create", "planned")]
    with pytest.raises(AttributeError):
        row.status = "running"  # type: ignore[misc]


def test_record_walks_the_table_and_journals_every_transition_in_order(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    resolved = make_plan(inventory, "cam-01", "cam-02")
    rid = repo.create(resolved, "op").id
    a, b = (p.device_id for p in resolved.devices)
    assert repo.record(rid, a, s.STAGE, attempts=1).state == s.STAGING
    repo.record(rid, b, s.STAGE)
    staged = repo.record(rid, a, s.STAGED_OK, bytes_sent=52_428_800, detail={"seconds": 0.4})
    assert (staged.state, staged.bytes_sent, staged.attempts) == (s.STAGED, 52_428_800, 1)
    repo.record(rid, a, s.ACTIVATE, previous_artifact=OLD)
    repo.record(rid, b, s.LOST, error="connection refused by 198.18.2.2")
    repo.record(rid, a, s.ACTIVATED)
    gates = {"p95_ms": {"value": 3.2, "bound": 40.0, "ok": True}}
    repo.record(rid, a, s.PASSED, gates=gates)
    done = repo.record(rid, a, s.CONFIRMED)
    assert isinstance(done, DeviceRow)
    assert (done.state, done.previous_artifact, done.gates, done.error) == (s.DONE, OLD, gates, "")
    assert repo.device(rid, b).state == s.UNREACHABLE and repo.device(rid, b).error.startswith("connection refused")
    assert events(repo.journal(rid)) == [
        (None, "", "create", "planned"),
        (a, s.PENDING, s.STAGE, s.STAGING),
        (b, s.PENDING, s.STAGE, s.STAGING),
        (a, s.STAGING, s.STAGED_OK, s.STAGED),
        (a, s.STAGED, s.ACTIVATE, s.ACTIVATING),
        (b, s.STAGING, s.LOST, s.UNREACHABLE),
        (a, s.ACTIVATING, s.ACTIVATED, s.VERIFYING),
        (a, s.VERIFYING, s.PASSED, s.CONFIRMING),
        (a, s.CONFIRMING, s.CONFIRMED, s.DONE),
    ]
    journal = repo.journal(rid, device_id=a)
    assert [e.to_state for e in journal] == [s.STAGING, s.STAGED, s.ACTIVATING, s.VERIFYING, s.CONFIRMING, s.DONE]
    assert journal[1].detail == {"seconds": 0.4}
    assert [e.id for e in journal] == sorted(e.id for e in journal)
    assert all(e.at.tzinfo is not None for e in journal) and journal[0].at <= journal[-1].at
    # An unreachable device comes back where its agent says it is; the journal says so too.
    back = repo.record(rid, b, s.REACHABLE, detail={"reconciled": s.STAGING, "agent": {"artifacts": []}})
    assert back.state == s.STAGING
    assert events(repo.journal(rid, device_id=b))[-1] == (b, s.UNREACHABLE, s.REACHABLE, s.STAGING)
    assert repo.journal(rid, device_id=b)[-1].detail["reconciled"] == s.STAGING


def test_a_refused_transition_or_field_writes_nothing(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    resolved = make_plan(inventory, "cam-01")
    rid = repo.create(resolved, "op").id
    device_id = resolved.devices[0].device_id
    before_row, before_journal = repo.device(rid, device_id), repo.journal(rid)
    with pytest.raises(TransitionError, match="no transition from 'pending' on 'activate'"):
        repo.record(rid, device_id, s.ACTIVATE, previous_artifact=OLD, bytes_sent=5)
    with pytest.raises(TransitionError):
        repo.record(rid, device_id, s.CONFIRMED, detail={"note": "out of order"})
    with pytest.raises(TypeError, match="not a rollout device field: state"):
        repo.record(rid, device_id, s.STAGE, state=s.DONE)
    with pytest.raises(TypeError, match="wave"):
        repo.update(rid, device_id, wave=3)
    repo.record(rid, device_id, s.LOST)
    with pytest.raises(TransitionError, match="cannot come back as 'activating'"):
        repo.record(rid, device_id, s.REACHABLE, detail={"reconciled": s.ACTIVATING})
    after = repo.device(rid, device_id)
    assert after.state == s.UNREACHABLE and after.previous_artifact is None and after.bytes_sent == 0
    assert (after.artifact, after.wave, after.attempts) == (before_row.artifact, before_row.wave, before_row.attempts)
    assert repo.journal(rid)[:-1] == before_journal and len(repo.journal(rid)) == len(before_journal) + 1


def test_update_records_progress_without_a_journal_entry(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    resolved = make_plan(inventory, "cam-01")
    rid = repo.create(resolved, "op").id
    device_id = resolved.devices[0].device_id
    repo.record(rid, device_id, s.STAGE)
    entries = len(repo.journal(rid))
    first = repo.update(rid, device_id, bytes_sent=1 << 20)
    second = repo.update(rid, device_id, bytes_sent=3 << 31, attempts=2)  # beyond 32 bits: BIGINT
    assert (second.state, second.bytes_sent, second.attempts) == (s.STAGING, 3 << 31, 2)
    assert second.updated_at >= first.updated_at
    assert len(repo.journal(rid)) == entries


def test_set_status_is_journaled_and_expect_is_a_compare_and_set(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    rid = repo.create(make_plan(inventory, "cam-01", "cam-02"), "op").id
    running = repo.set_status(rid, "running", expect="planned")
    assert running.status == "running" and running.updated_at >= running.created_at
    # Another process pauses it while the engine runs...
    other = RolloutRepo(inventory)
    other.set_status(rid, "paused", reason="operator: line stopped", expect=("running", "waiting-approval"))
    # ... so the engine's own compare-and-set fails and writes nothing.
    before = repo.journal(rid)
    with pytest.raises(RolloutConflictError) as caught:
        repo.set_status(rid, "waiting-approval", expect="running")
    assert (caught.value.rollout_id, caught.value.expected, caught.value.actual) == (rid, ("running",), "paused")
    assert "paused" in caught.value.message and caught.value.fix
    row = repo.get(rid)
    assert (row.status, row.paused_reason) == ("paused", "operator: line stopped")
    assert repo.journal(rid) == before
    resumed = repo.set_status(rid, "running", expect=("paused", "waiting-approval"))
    assert resumed.paused_reason == ""  # the reason went with the pause
    assert events(repo.journal(rid)) == [(None, "", "create", "planned"), (None, "planned", "status", "running"),
                                         (None, "running", "status", "paused"), (None, "paused", "status", "running")]
    assert repo.journal(rid)[2].detail == {"reason": "operator: line stopped"}
    with pytest.raises(ValueError, match="not a rollout status"):
        repo.set_status(rid, "half-done")
    assert set(ROLLOUT_STATUSES) >= {"planned", "running", "paused", "waiting-approval", "aborted", "done",
                                     "rolling-back", "rolled-back", "failed"}


def test_a_device_is_in_one_active_rollout_at_a_time(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    first = repo.create(make_plan(inventory, "cam-01", "cam-02"), "op")
    overlapping = make_plan(inventory, "cam-03", "cam-02", model="cnn@3")
    with pytest.raises(RolloutConflictError) as caught:
        repo.create(overlapping, "someone else")
    assert "cam-02" in caught.value.message and "cam-03" not in caught.value.message
    assert f"rollout {first.id}" in caught.value.message and caught.value.rollout_id == first.id
    assert repo.list() == [first]  # nothing of the refused rollout was written
    repo.set_status(first.id, "done")
    second = repo.create(overlapping, "someone else")
    assert [r.id for r in repo.list(active_only=True)] == [second.id]
    assert [r.id for r in repo.list()] == [first.id, second.id]


def test_unknown_rollouts_and_devices_are_clear_errors(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    rid = repo.create(make_plan(inventory, "cam-01"), "op").id
    for call in (lambda: repo.get(rid + 1), lambda: repo.devices(rid + 1), lambda: repo.journal(rid + 1),
                 lambda: repo.set_status(rid + 1, "paused"), lambda: repo.record(rid + 1, 1, s.STAGE)):
        with pytest.raises(RolloutNotFoundError, match=f"no rollout {rid + 1}"):
            call()
    with pytest.raises(RolloutNotFoundError, match=f"device 9999 is not in rollout {rid}"):
        repo.record(rid, 9999, s.STAGE)


def test_the_history_outlives_a_device_removed_from_the_inventory(inventory: Inventory) -> None:
    repo = RolloutRepo(inventory)
    resolved = make_plan(inventory, "cam-01", "cam-02")
    rid = repo.create(resolved, "op").id
    gone = resolved.devices[1].device_id
    repo.record(rid, gone, s.STAGE)
    inventory.remove(gone)
    assert [d.device_id for d in repo.devices(rid)] == [p.device_id for p in resolved.devices]
    assert events(repo.journal(rid, device_id=gone)) == [(gone, s.PENDING, s.STAGE, s.STAGING)]


@pytest.fixture
def two_processes(db_url: str) -> Iterator[tuple[Inventory, Inventory]]:
    """Two Inventory objects on one database, as the GUI and a CLI (each its own engine and pool)."""
    with open_inventory(db_url) as first, open_inventory(db_url) as second:
        yield first, second


def run_together(*calls: Callable[[], None]) -> None:
    start = threading.Barrier(len(calls))
    problems: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:  # handed to the test thread
            problems.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not problems, problems


def test_two_writers_recording_at_once_never_apply_the_same_transition_twice(
        two_processes: tuple[Inventory, Inventory]) -> None:
    gui, cli = two_processes
    names = [f"cam-{i:02d}" for i in range(12)]
    resolved = make_plan(gui, *names)
    rid = RolloutRepo(gui).create(resolved, "op").id
    device_ids = [p.device_id for p in resolved.devices]
    outcomes: dict[str, list[int]] = {"gui": [], "cli": []}

    def writer(inventory: Inventory, who: str) -> Callable[[], None]:
        repo = RolloutRepo(inventory)

        def go() -> None:
            # Both try the same step on every device: the table must let exactly one through per device.
            for device_id in device_ids:
                try:
                    repo.record(rid, device_id, s.STAGE, detail={"by": who})
                    outcomes[who].append(device_id)
                except TransitionError:
                    pass
        return go

    run_together(writer(gui, "gui"), writer(cli, "cli"))
    assert sorted(outcomes["gui"] + outcomes["cli"]) == sorted(device_ids)
    repo = RolloutRepo(cli)
    assert all(d.state == s.STAGING for d in repo.devices(rid))
    journal = repo.journal(rid)
    assert len(journal) == 1 + len(device_ids)  # the creation, then one stage per device
    for device_id in device_ids:
        (entry,) = [e for e in journal if e.device_id == device_id]
        assert device_id in outcomes[entry.detail["by"]]


def test_two_writers_creating_rollouts_for_the_same_device_at_once_one_wins(
        two_processes: tuple[Inventory, Inventory]) -> None:
    gui, cli = two_processes
    plans = {"gui": make_plan(gui, "cam-01", "cam-02"), "cli": make_plan(gui, "cam-02", "cam-03", model="cnn@3")}
    refused: list[str] = []

    def creator(inventory: Inventory, who: str) -> Callable[[], None]:
        def go() -> None:
            try:
                RolloutRepo(inventory).create(plans[who], who)
            except RolloutConflictError:
                refused.append(who)
        return go

    run_together(creator(gui, "gui"), creator(cli, "cli"))
    assert len(refused) == 1
    (kept,) = RolloutRepo(gui).list()
    assert kept.actor != refused[0]


def test_migration_0006_adds_the_tables_the_orm_describes_and_downgrades(db_url: str) -> None:
    assert ROLLOUT_TABLES <= set(Base.metadata.tables)
    engine = open_database(db_url)
    try:
        upgrade(engine, "0005")
        assert not ROLLOUT_TABLES & set(inspect(engine).get_table_names())
        upgrade(engine, "0006")
        assert ROLLOUT_TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == ["0006"]
        columns = {c["name"] for c in inspect(engine).get_columns("rollout_devices")}
        assert columns == {"rollout_id", "device_id", "wave", "artifact", "previous_artifact", "state", "attempts",
                           "bytes_sent", "error", "gates", "updated_at"}
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0005")
        assert not ROLLOUT_TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_one_driver_holds_the_lease_until_it_runs_out_or_is_given_back(db_url: str) -> None:
    """Two laptops (two Inventories on one database) asking to drive the same rollout at once: exactly one gets the
    lease; the other gets it once the lease ran out, or was given back; a dead process of the same host is
    taken over at once when the caller knows no local driver lives (it holds the host's lock)."""
    import time

    laptops = [open_inventory(db_url) for _ in range(4)]
    try:
        rid = RolloutRepo(laptops[0]).create(make_plan(laptops[0], "cam-01"), "op").id
        start = threading.Barrier(len(laptops))
        taken: list[str] = []

        def ask(i: int) -> None:
            start.wait()
            lease = RolloutRepo(laptops[i]).take_lease(rid, f"laptop-{i}:100", 30)
            taken.append(lease.driver)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(laptops))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(set(taken)) == 1, f"more than one driver took the lease: {taken}"
        winner = taken[0]
        repo = RolloutRepo(laptops[1])
        held = repo.take_lease(rid, "laptop-9:1", 30)
        assert held.driver == winner and held.until > held.now  # refused: the winner's lease still runs
        assert held.host == winner.rpartition(":")[0] and held.pid == "100"

        repo.release_lease(rid, "laptop-9:1")  # not the holder: nothing happens
        assert repo.take_lease(rid, "laptop-9:1", 30).driver == winner
        RolloutRepo(laptops[0]).release_lease(rid, winner)
        assert repo.take_lease(rid, "laptop-9:1", 0.3).driver == "laptop-9:1"  # given back: taken
        assert repo.take_lease(rid, "laptop-8:1", 30).driver == "laptop-9:1"
        time.sleep(0.5)
        assert repo.take_lease(rid, "laptop-8:1", 30).driver == "laptop-8:1"  # ran out: taken over
        # Same host, another (dead) process: taken over only when the caller says the host has no live driver.
        assert repo.take_lease(rid, "laptop-8:2", 30).driver == "laptop-8:1"
        assert repo.take_lease(rid, "laptop-8:2", 30, stale_host="laptop-8").driver == "laptop-8:2"
    finally:
        for inventory in laptops:
            inventory.close()
