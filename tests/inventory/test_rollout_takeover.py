"""Taking over a rollout whose driver stopped (issue 23: "a laptop that dies mid-rollout"), on SQLite and on the real
PostgreSQL: RolloutEngine.take_over waits while another laptop's lease is live (naming it and until when), takes the
rollout once the lease ran out, journals the takeover (both drivers) and audits it, and drives on from the journal
without redoing what is finished; of two laptops taking over at once exactly one does; it stops waiting when the
rollout was paused elsewhere; and a second process on another host name takes over from the command line.

Laptops are two Fleets on one inventory, each engine named as its own laptop ("laptop-b", "laptop-c"): the engine
tells laptops apart by host name, and these tests run on one. The laptop that stopped ("laptop-a") is its lease in
the inventory, renewed by the test while it "lives". The rollouts' devices are done already (nothing is ever sent:
they have no agent), so driving them on decides "done" from the journal alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.access import Access
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import AccessDeniedError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory import rollout_states as s
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.rollouts import TAKEOVER, RolloutRepo
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent, Takeover
from tests.conftest import skip_or_fail
from tests.inventory.test_rollouts import make_plan

DEAD = "laptop-a:100"  # the laptop that drove the rollout and stopped
JOURNEY = (s.STAGE, s.STAGED_OK, s.ACTIVATE, s.ACTIVATED, s.PASSED, s.CONFIRMED)


@pytest.fixture
def rollout(laptops: tuple[Fleet, Fleet]) -> int:
    """A running rollout of two devices in two waves, both devices done (as laptop-a journaled them), laptop-a's
    lease on it live for 30 s."""
    alice, _ = laptops
    repo = RolloutRepo(alice.inventory)
    rid = repo.create(make_plan(alice.inventory, "cam-01", "cam-02"), "alice").id
    repo.take_lease(rid, DEAD, 30)
    repo.set_status(rid, "running", expect="planned")
    for device in repo.devices(rid):
        for event in JOURNEY:
            repo.record(rid, device.device_id, event, bytes_sent=1000)
    return rid


def laptop(fleet: Fleet, tmp_path: Path, host: str, events: list[RolloutEvent] | None = None) -> RolloutEngine:
    """An engine as the FleetDesk of laptop `host` would be (its own lock folder: another laptop's file system)."""
    engine = RolloutEngine(fleet, ArtifactStore.default(), lock_dir=tmp_path / f"locks-{host}",
                           on_event=None if events is None else events.append)
    engine.host, engine.driver = host, f"{host}:4242"
    engine.takeover_check_s = 0.2
    return engine


class Renewing:
    """laptop-a alive: its lease renewed every 0.2 s for 1 s, from its own connection, until `stop()`."""

    def __init__(self, db_url: str, rid: int) -> None:
        self.inventory = open_inventory(db_url)
        self.repo = RolloutRepo(self.inventory)
        self.rid = rid
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self.repo.take_lease(self.rid, DEAD, 1.0)

    def __enter__(self) -> Renewing:
        self.repo.take_lease(self.rid, DEAD, 1.0)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)

    def __exit__(self, *_: object) -> None:
        self.stop()
        self.inventory.close()


def takeover_entries(repo: RolloutRepo, rid: int) -> list[dict[str, object]]:
    return [e.detail for e in repo.journal(rid) if e.device_id is None and e.event == TAKEOVER]


def takeover_audit(fleet: Fleet, rid: int) -> list[tuple[str, str, dict[str, object]]]:
    entries = fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}", action="rollout.takeover"), limit=None)
    return [(e.operator, e.outcome, dict(e.after or {})) for e in entries]


def test_waits_while_the_lease_is_live_then_takes_over_journals_audits_and_finishes(
        db_url: str, laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    alice, _ = laptops
    events: list[RolloutEvent] = []
    engine = laptop(alice, tmp_path, "laptop-b", events)
    repo = RolloutRepo(alice.inventory)
    before = {d.device_id: d for d in repo.devices(rollout)}
    last_device_entry = max(e.id for e in repo.journal(rollout) if e.device_id is not None)

    async def go() -> tuple[Takeover, bool, list[RolloutEvent]]:
        with Renewing(db_url, rollout) as alive:
            task = asyncio.create_task(engine.take_over(rollout))
            await asyncio.sleep(1.5)  # laptop-a lives: several looks, each finding its lease renewed
            still_waiting = not task.done() and not engine.driving(rollout)
            told = list(events)
            alive.stop()  # laptop-a stops: its lease runs out within 1 s
            return await asyncio.wait_for(task, 30), still_waiting, told

    result, still_waiting, told = asyncio.run(go())
    assert still_waiting, "took the rollout over while laptop-a's lease was live"
    waiting = [e.message for e in told if e.kind == "lease"]
    assert waiting and "driven by the FleetDesk on laptop-a (process 100)" in waiting[0], waiting
    assert "lease runs until" in waiting[0] and "UTC" in waiting[0] and "waiting for it to stop" in waiting[0]
    assert len(waiting) == 1, f"told the same holder again on every look: {waiting}"

    assert (result.taken, result.previous, result.reason) == (True, DEAD, ""), result
    assert result.waited_s >= 1.5 and result.row.status == "done", result
    # The journal names both drivers, once; the audit trail has it by the acting operator.
    (entry,) = takeover_entries(repo, rollout)
    assert (entry["previous"], entry["driver"], entry["why"]) == (DEAD, "laptop-b:4242", "its lease ran out")
    ((operator, outcome, after),) = takeover_audit(alice, rollout)
    assert (operator, outcome, after["previous"], after["driver"]) == ("alice", "ok", DEAD, "laptop-b:4242")
    assert after["takeover"] == "ask" and str(after["why"]).startswith("its lease ran out at ")
    assert any("taken over from the FleetDesk on laptop-a (process 100)" in e.message for e in events)
    # Nothing finished was redone: no device entry after the takeover, the devices as laptop-a left them.
    assert max(e.id for e in repo.journal(rollout) if e.device_id is not None) == last_device_entry
    assert {d.device_id: (d.state, d.bytes_sent) for d in repo.devices(rollout)} == {
        i: (d.state, d.bytes_sent) for i, d in before.items()}
    # Given back when it stopped driving.
    assert repo.get(rollout).driver is None


def test_exactly_one_of_two_laptops_taking_over_at_once_takes_it(
        laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    alice, bob = laptops
    RolloutRepo(alice.inventory).take_lease(rollout, DEAD, 0.3)  # laptop-a's last renewal
    engines = [laptop(alice, tmp_path, "laptop-b"), laptop(bob, tmp_path, "laptop-c")]
    start = threading.Barrier(2)
    results: list[Takeover] = []
    problems: list[BaseException] = []

    def one(engine: RolloutEngine) -> None:
        start.wait()
        try:
            results.append(asyncio.run(engine.take_over(rollout)))
        except BaseException as exc:  # shown by the assertion below
            problems.append(exc)

    threads = [threading.Thread(target=one, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not problems, problems
    assert sorted(r.taken for r in results) == [False, True], results
    (winner,) = [r for r in results if r.taken]
    (loser,) = [r for r in results if not r.taken]
    assert winner.previous == DEAD and winner.row.status == "done"
    # The other waited for the winner, then found nothing to take over.
    assert loser.row.status == "done" and "is done" in loser.reason and "nothing to take over" in loser.reason
    entries = takeover_entries(RolloutRepo(alice.inventory), rollout)
    assert len(entries) == 1 and entries[0]["previous"] == DEAD, entries
    assert len(takeover_audit(alice, rollout)) == 1


def test_of_many_laptops_asking_for_a_lease_that_ran_out_one_gets_it_and_one_takeover_is_journaled(
        db_url: str) -> None:
    """take_lease is the one atomic step every takeover goes through: proven here without the engine."""
    laptops = [open_inventory(db_url) for _ in range(4)]
    try:
        repo = RolloutRepo(laptops[0])
        rid = repo.create(make_plan(laptops[0], "cam-01"), "op").id
        assert repo.take_lease(rid, DEAD, 0.2).previous is None  # a free rollout: not a takeover
        assert repo.take_lease(rid, DEAD, 0.2).previous is None  # a renewal: not a takeover either
        threading.Event().wait(0.4)
        start = threading.Barrier(len(laptops))
        leases = []

        def ask(i: int) -> None:
            start.wait()
            leases.append(RolloutRepo(laptops[i]).take_lease(rid, f"laptop-{i + 1}:7", 30))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(laptops))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len({lease.driver for lease in leases}) == 1, leases
        assert [lease.previous for lease in leases].count(DEAD) == 1, leases
        winner = leases[0].driver
        (entry,) = takeover_entries(repo, rid)
        assert (entry["previous"], entry["driver"], entry["why"]) == (DEAD, winner, "its lease ran out")
    finally:
        for inventory in laptops:
            inventory.close()


def test_stops_waiting_and_says_so_when_the_rollout_is_paused_elsewhere(
        db_url: str, laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    alice, bob = laptops
    events: list[RolloutEvent] = []
    engine = laptop(alice, tmp_path, "laptop-b", events)

    async def go() -> Takeover:
        with Renewing(db_url, rollout):
            task = asyncio.create_task(engine.take_over(rollout))
            await asyncio.sleep(0.6)
            await laptop(bob, tmp_path, "laptop-c").pause(rollout, "shift change", witness=False)
            return await asyncio.wait_for(task, 30)

    result = asyncio.run(go())
    assert not result.taken and result.row.status == "paused", result
    assert result.reason == (f"rollout {rollout} is paused (shift change) now, changed elsewhere while waiting: "
                             "nothing to take over"), result.reason
    assert result.reason in [e.message for e in events]
    assert takeover_entries(RolloutRepo(alice.inventory), rollout) == []
    assert takeover_audit(alice, rollout) == []


def test_looking_once_names_who_drives_it_and_changes_nothing(
        laptops: tuple[Fleet, Fleet], rollout: int, tmp_path: Path) -> None:
    alice, _ = laptops
    result = asyncio.run(laptop(alice, tmp_path, "laptop-b").take_over(rollout, wait=False))
    assert not result.taken and result.lease is not None and result.lease.driver == DEAD, result
    assert "driven by the FleetDesk on laptop-a (process 100); its lease runs until" in result.reason
    assert result.to_dict()["holder"] == DEAD
    repo = RolloutRepo(alice.inventory)
    assert repo.get(rollout).driver == DEAD and takeover_entries(repo, rollout) == []


@pytest.fixture
def viewer(laptops: tuple[Fleet, Fleet], db_url: str) -> Iterator[Fleet]:
    alice, _ = laptops
    alice.access.add_operator("vic", ["viewer"])
    fleet = Fleet(open_inventory(db_url), load_profiles(), operator="vic")
    yield fleet
    asyncio.run(fleet.close())


def test_a_viewer_cannot_take_a_rollout_over(viewer: Fleet, rollout: int, tmp_path: Path) -> None:
    RolloutRepo(viewer.inventory).take_lease(rollout, DEAD, 0.01)
    threading.Event().wait(0.05)
    with pytest.raises(AccessDeniedError):
        asyncio.run(laptop(viewer, tmp_path, "laptop-b").take_over(rollout))
    repo = RolloutRepo(viewer.inventory)
    assert repo.get(rollout).driver == DEAD and takeover_entries(repo, rollout) == []


def test_another_laptop_process_takes_over_with_the_command_line_once_the_driver_is_killed(
        postgres_url: str, tmp_path: Path) -> None:
    """Two processes on two host names for real, on the real PostgreSQL: a driver renewing its lease is SIGKILLed;
    `fleetdesk rollout run ID --take-over --json` in a UTS namespace named laptop-b waits for the lease to run out
    and finishes the rollout (its devices were done: nothing is sent). The lab proves it with a real driver and
    devices (tests/lab/test_takeover_lab.py)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_or_fail("naming a process's host laptop-b takes root and unshare (util-linux)")
    with open_inventory(postgres_url) as inventory:
        Access(inventory, "alice").record("fleet.start")  # alice: the first admin, on both laptops
        repo = RolloutRepo(inventory)
        rid = repo.create(make_plan(inventory, "cam-01", "cam-02"), "alice").id
        repo.set_status(rid, "running", expect="planned")
        for device in repo.devices(rid):
            for event in JOURNEY:
                repo.record(rid, device.device_id, event, bytes_sent=1000)
    checkout = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "FLEETDESK_OPERATOR": "alice", "PYTHONPATH": checkout}
    driver = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from fleetdesk.inventory import open_inventory\n"
        "from fleetdesk.inventory.rollouts import RolloutRepo\n"
        "from fleetdesk.rollout.engine import LEASE_S\n"
        "repo = RolloutRepo(open_inventory(sys.argv[1]))\n"
        "import os, socket\n"
        "me = f'{socket.gethostname()}:{os.getpid()}'\n"
        "while True:\n"
        "    assert repo.take_lease(int(sys.argv[2]), me, LEASE_S).driver == me\n"
        "    print('renewed', flush=True)\n"
        "    time.sleep(LEASE_S / 3)\n"), postgres_url, str(rid)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "renewed"
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    dead = f"{socket.gethostname()}:{driver.pid}"
    env["FLEETDESK_DATA_DIR"] = str(tmp_path / "laptop-b")
    proc = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', "laptop-b",
                           sys.executable, "-m", "fleetdesk", "--db", postgres_url, "rollout", "run", str(rid),
                           "--take-over", "--json"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    taken = report["takeover"]
    assert report["status"] == "done" and taken["taken"] and taken["previous"] == dead, report
    assert f"driven by the FleetDesk on {socket.gethostname()} (process {driver.pid})" in proc.stderr
    assert taken["waited_s"] > 5, taken  # the killed driver's lease (15 s) was live when laptop-b looked
    with open_inventory(postgres_url) as inventory:
        (entry,) = takeover_entries(RolloutRepo(inventory), rid)
    assert entry["previous"] == dead and str(entry["driver"]).startswith("laptop-b:"), entry
