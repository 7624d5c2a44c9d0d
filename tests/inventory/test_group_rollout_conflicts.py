"""No lost updates on groups and rollouts (issue 23, migration 0014): two laptops (two Fleets, each with its own
connection, on one SQLite file and on the real PostgreSQL) act on the same group or rollout from what each read.
The second change, made from an outdated view, is refused naming who changed it and when; nothing of it is
written, and what the first wrote stays. A rollout's driver moving it on (and its lease) is not an operator's
edit and never makes an operator's action fail; nor is a device leaving the inventory an edit of its groups.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import EditConflictError, InventoryError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.records import Edit, Group
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.rollout.engine import RolloutEngine
from tests.inventory.test_rollouts import make_plan


def _line_a(fleet: Fleet, *names: str) -> tuple[Group, list[int]]:
    ids = [fleet.inventory.add_device(f"198.18.5.{n + 10}", name=name).id for n, name in enumerate(names)]
    return fleet.group([fleet.inventory.device(i) for i in ids[:2]], "line A"), ids


# -- groups ----------------------------------------------------------------------------------------------------


def test_a_membership_change_from_an_outdated_view_is_refused_naming_who_changed_the_group(
        laptops: tuple[Fleet, Fleet]) -> None:
    alice, bob = laptops
    made, (press, drill, oven) = _line_a(alice, "press", "drill", "oven")
    assert made.version == 1
    seen_by_bob = bob.inventory.group("line A")
    assert seen_by_bob.version == 1 and seen_by_bob.device_ids == (press, drill)

    added = alice.group([alice.inventory.device(oven)], "line A", seen=alice.inventory.group("line A"))
    assert added.version == 2 and added.device_ids == (press, drill, oven)
    with pytest.raises(EditConflictError) as refused:
        bob.group([bob.inventory.device(press)], "line A", remove=True, seen=seen_by_bob)
    message = str(refused.value)
    assert "the group 'line A' was changed by alice at " in message and "your change was not made" in message
    assert "you saw 1" in message and refused.value.changed_by == "alice" and refused.value.version == 2
    assert "make your change again" in (refused.value.fix or "")
    assert bob.inventory.group("line A").device_ids == (press, drill, oven)  # alice's change stands
    # Only alice's changes are in the audit trail: a refused edit changed nothing.
    assert {e.operator for e in bob.access.audit.entries(AuditFilter(action="group."))} == {"alice"}

    # Bob, looking again, makes his change from the current version.
    current = bob.inventory.group("line A")
    assert bob.group([bob.inventory.device(press)], "line A", remove=True, seen=current).version == 3
    assert alice.inventory.group("line A").device_ids == (drill, oven)


def test_rename_and_delete_from_an_outdated_view_are_refused_too(laptops: tuple[Fleet, Fleet]) -> None:
    alice, bob = laptops
    _, (press, drill, _) = _line_a(alice, "press", "drill", "oven")
    old = bob.inventory.group("line A")
    alice.group([alice.inventory.device(press)], "line A", remove=True, seen=alice.inventory.group("line A"))
    with pytest.raises(EditConflictError, match="the group 'line A' was changed by alice"):
        bob.rename_group(old, "line A north")
    with pytest.raises(EditConflictError, match="the group 'line A' was changed by alice"):
        bob.delete_group(old)
    kept = bob.inventory.group("line A")
    assert (kept.device_ids, kept.version) == ((drill,), 2)

    renamed = alice.rename_group(kept, "line A north")
    assert (renamed.name, renamed.device_ids, renamed.version) == ("line A north", (drill,), 3)
    assert alice.inventory.device(drill).groups == ("line A north",)
    # Bob's view still says "line A": adding to it now would silently make a new group of that name.
    with pytest.raises(EditConflictError, match="'line A' was deleted or renamed after you read it"):
        bob.group([bob.inventory.device(press)], "line A", seen=kept)
    assert [g.name for g in bob.inventory.groups()] == ["line A north"]
    alice.delete_group(alice.inventory.group("line A north"))
    assert alice.inventory.groups() == [] and len(alice.inventory.devices()) == 3  # the devices stay
    actions = [(e.operator, e.action) for e in reversed(alice.access.audit.entries(AuditFilter(action="group.")))]
    assert actions[-2:] == [("alice", "group.rename"), ("alice", "group.delete")]


def test_a_group_an_operators_scope_names_is_not_renamed_or_deleted(laptops: tuple[Fleet, Fleet]) -> None:
    alice, _ = laptops
    _line_a(alice, "press", "drill")
    alice.access.add_operator("dan", ["deployer"], groups=["line A"])
    group = alice.inventory.group("line A")
    with pytest.raises(InventoryError, match="the scope of dan names it"):
        alice.rename_group(group, "line B")
    with pytest.raises(InventoryError, match="the scope of dan names it"):
        alice.delete_group(group)
    assert alice.inventory.group("line A").version == 1  # nothing was written


def test_a_device_leaving_the_inventory_is_not_an_edit_of_its_groups(laptops: tuple[Fleet, Fleet]) -> None:
    alice, bob = laptops
    _, (press, drill, oven) = _line_a(alice, "press", "drill", "oven")
    seen_by_bob = bob.inventory.group("line A")
    alice.remove_devices([alice.inventory.device(press)])
    assert alice.inventory.group("line A").version == 1
    assert bob.group([bob.inventory.device(oven)], "line A", seen=seen_by_bob).device_ids == (drill, oven)


def test_concurrent_group_edits_from_one_version_let_exactly_one_through(db_url: str) -> None:
    inventories = [open_inventory(db_url) for _ in range(4)]
    try:
        ids = [inventories[0].add_device(f"198.18.5.{30 + i}", name=f"cam-{i}").id for i in range(5)]
        inventories[0].add_to_group("line A", [ids[4]], edit=Edit(by="setup", seen_version=None))
        outcomes = _at_once(len(inventories), lambda i: inventories[i].add_to_group(
            "line A", [ids[i]], edit=Edit(by=f"laptop-{i}", seen_version=1)))
        assert sorted(outcomes) == ["made"] + ["refused"] * (len(inventories) - 1)
        group = inventories[0].group("line A")
        assert group.version == 2 and len(group.device_ids) == 2
    finally:
        for inventory in inventories:
            inventory.close()


# -- rollouts --------------------------------------------------------------------------------------------------


@pytest.fixture
def rollout(laptops: tuple[Fleet, Fleet]) -> int:
    """A planned rollout of two devices in two waves (nothing is ever sent: the devices have no agent)."""
    alice, _ = laptops
    return RolloutRepo(alice.inventory).create(make_plan(alice.inventory, "cam-01", "cam-02"), "alice").id


def _engine(fleet: Fleet, tmp_path: Path, name: str) -> RolloutEngine:
    return RolloutEngine(fleet, ArtifactStore.default(), lock_dir=tmp_path / f"locks-{name}")


def test_an_approval_from_an_outdated_view_is_refused_naming_who_approved(
        laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    """Bob's window shows wave 1 waiting for approval; alice approves it, and the driver runs wave 1 and waits again
    (for wave 2). Bob's click, meant for wave 1, would approve wave 2 unseen: it is refused, naming alice."""
    alice, bob = laptops
    driver = RolloutRepo(alice.inventory)
    driver.set_status(rollout, "running")
    driver.set_status(rollout, "waiting-approval")
    seen_by_bob = RolloutRepo(bob.inventory).get(rollout)
    assert seen_by_bob.version == 1  # the driver's own progress is not an edit

    approved = asyncio.run(_engine(alice, tmp_path, "a").approve(rollout))
    assert (approved.status, approved.version, approved.changed_by) == ("running", 2, "alice")
    driver.set_status(rollout, "waiting-approval", expect="running")  # wave 2 now waits
    with pytest.raises(EditConflictError) as refused:
        asyncio.run(_engine(bob, tmp_path, "b").approve(rollout, seen=seen_by_bob.version))
    message = str(refused.value)
    assert f"rollout {rollout} (cnn@2) was changed by alice at " in message
    assert "now waiting-approval; you saw 1" in message and "your change was not made" in message
    assert f"fleetdesk rollout status {rollout}" in (refused.value.fix or "")
    stored = RolloutRepo(bob.inventory).get(rollout)
    assert (stored.status, stored.version) == ("waiting-approval", 2)
    approvals = [(e.operator, e.outcome) for e in reversed(bob.access.audit.entries(
        AuditFilter(action="rollout.approve")))]
    assert approvals == [("alice", "ok"), ("bob", "refused")]

    # From what is there now, bob approves wave 2.
    now = RolloutRepo(bob.inventory).get(rollout)
    assert asyncio.run(_engine(bob, tmp_path, "b").approve(rollout, seen=now.version)).changed_by == "bob"


def test_an_abort_or_resume_from_an_outdated_view_is_refused(
        laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    alice, bob = laptops
    seen_by_bob = RolloutRepo(bob.inventory).get(rollout)
    asyncio.run(_engine(alice, tmp_path, "a").pause(rollout, "shift change"))
    for action in (lambda e: e.abort(rollout, seen=seen_by_bob.version),
                   lambda e: e.resume(rollout, seen=seen_by_bob.version),
                   lambda e: e.rollback(rollout, seen=seen_by_bob.version)):
        with pytest.raises(EditConflictError, match=r"changed by alice at .* now paused; you saw 1"):
            asyncio.run(action(_engine(bob, tmp_path, "b")))
    stored = RolloutRepo(bob.inventory).get(rollout)
    assert (stored.status, stored.paused_reason, stored.version) == ("paused", "shift change", 2)
    aborted = asyncio.run(_engine(bob, tmp_path, "b").abort(rollout, seen=stored.version))
    assert (aborted.status, aborted.changed_by, aborted.version) == ("aborted", "bob", 3)


def test_the_driver_and_its_lease_are_not_edits(laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    alice, bob = laptops
    seen_by_bob = RolloutRepo(bob.inventory).get(rollout)
    repo = RolloutRepo(alice.inventory)
    lease = repo.take_lease(rollout, "laptop-a:100", 15.0)
    assert lease.driver == "laptop-a:100"
    repo.set_status(rollout, "running", expect="planned")
    repo.take_lease(rollout, "laptop-a:100", 15.0)
    assert repo.get(rollout).version == 1
    paused = asyncio.run(_engine(bob, tmp_path, "b").pause(rollout, "look", seen=seen_by_bob.version))
    assert (paused.status, paused.version, paused.changed_by) == ("paused", 2, "bob")
    assert repo.take_lease(rollout, "laptop-b:200", 15.0).driver == "laptop-a:100"  # the lease is untouched
    repo.release_lease(rollout, "laptop-a:100")
    assert repo.get(rollout).version == 2


def test_two_operators_approving_at_once_exactly_one_approves(
        laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    """Both windows show wave 1 waiting; both operators click Approve at the same moment."""
    alice, bob = laptops
    RolloutRepo(alice.inventory).set_status(rollout, "waiting-approval")
    engines = [_engine(alice, tmp_path, "a"), _engine(bob, tmp_path, "b")]
    outcomes = _at_once(2, lambda i: asyncio.run(engines[i].approve(rollout, seen=1)))
    assert sorted(outcomes) == ["made", "refused"]
    stored = RolloutRepo(alice.inventory).get(rollout)
    assert (stored.status, stored.version) == ("running", 2)
    approvals = [e.outcome for e in alice.access.audit.entries(AuditFilter(action="rollout.approve"))]
    assert sorted(approvals) == ["ok", "refused"]


def test_concurrent_status_changes_from_one_version_let_exactly_one_through(db_url: str) -> None:
    inventories = [open_inventory(db_url) for _ in range(4)]
    try:
        rid = RolloutRepo(inventories[0]).create(make_plan(inventories[0], "cam-01"), "setup").id
        outcomes = _at_once(len(inventories), lambda i: RolloutRepo(inventories[i]).set_status(
            rid, "paused" if i % 2 else "aborted", edit=Edit(by=f"laptop-{i}", seen_version=1)))
        assert sorted(outcomes) == ["made"] + ["refused"] * (len(inventories) - 1)
        assert RolloutRepo(inventories[0]).get(rid).version == 2
    finally:
        for inventory in inventories:
            inventory.close()


def _at_once(n: int, act: Callable[[int], object]) -> list[str]:
    """`act(i)` in n threads released together; "made" or "refused" (an edit conflict) for each."""
    start = threading.Barrier(n)
    outcomes: list[str] = []
    problems: list[BaseException] = []

    def one(i: int) -> None:
        start.wait()
        try:
            act(i)
            outcomes.append("made")
        except EditConflictError:
            outcomes.append("refused")
        except Exception as exc:  # a RolloutConflictError, or anything else: shown by the assertion below
            problems.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not problems, problems
    return outcomes
