"""`fleetdesk rollout ...` through the real command line (main()) on a real SQLite inventory and a real signed
artifact store, touching no device: plan (text and --json), start's refusals, status, list, journal, pause,
abort and rollback of a rollout no engine ran, the audit log they write, the exit codes, and actions and group
edits from an outdated version (--seen-version) refused as clear errors naming who acted."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.cli import main
from fleetdesk.config import Settings
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import ProbeFacts
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.rollout.engine import RolloutEngine
from fleetdesk.rollout.plan import RolloutPlan
from tests.fixtures.models.build import save_mlp_external
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]

# Documentation addresses (RFC 5737): added to the inventory only, never connected to.
DEVICES = {"line-a-1": "192.0.2.11", "line-a-2": "192.0.2.12", "line-a-3": "192.0.2.13", "line-b-1": "192.0.2.21"}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    try:
        data = json.loads(out) if "--json" in args and out.strip() else out
    except ValueError:
        data = out
    return code, data, err


@pytest.fixture
def fleet_with_model(capsys: pytest.CaptureFixture[str], keyring_daemon: KeyringDaemon, tmp_path: Path) -> str:
    """Four ipc-x86 devices in the inventory (two in group "line A") and model mlp@1 in the store."""
    (tmp_path / "mlp").mkdir()
    model = save_mlp_external(tmp_path / "mlp" / "mlp.onnx")
    code, record, err = cli(capsys, "model", "import", str(model), "--profile", "ipc-x86", "--no-device-bench",
                            "--json")
    assert code == 0, err
    for name in ("tester", "ann"):  # the import made this OS user the fleet's first admin
        code, _, err = cli(capsys, "operator", "add", name, "--role", "deployer")
        assert code == 0, err
    fleet = Fleet.open()
    try:
        for name, address in DEVICES.items():
            device = fleet.inventory.add_device(address, name=name)
            fleet.inventory.save_probe(device.id, ProbeFacts(arch="x86_64"), profile="ipc-x86")
        fleet.inventory.add_to_group("line A", [fleet.inventory.device("line-a-1").id,
                                                fleet.inventory.device("line-a-2").id])
    finally:
        asyncio.run(fleet.close())
    return str(record["artifacts"]["ipc-x86"])


def test_plan_shows_waves_and_thresholds_and_touches_nothing(capsys: pytest.CaptureFixture[str],
                                                             fleet_with_model: str) -> None:
    code, text, err = cli(capsys, "rollout", "plan", "mlp@1", "--device", "line-a-3", "--group", "line A",
                          "--profile", "ipc-x86", "--waves", "1,50%,100%", "--errors", "10%", "--soak", "30")
    assert code == 0, err
    assert "Rollout of mlp@1 to 4 devices in 3 waves" in text
    assert "wave 1 (canary), 1 device: line-a-1" in text  # the canary is the first by name
    assert fleet_with_model[:12] in text
    assert "Health gates" in text

    code, resolved, _ = cli(capsys, "rollout", "plan", "mlp", "--group", "line A", "--waves", "1,100%",
                            "--p95-max", "20", "--golden-min", "-1", "--json")
    assert code == 0
    assert [len(w) for w in resolved["waves"]] == [1, 1]
    assert {d["artifact"] for d in resolved["devices"]} == {fleet_with_model}
    assert resolved["plan"]["gates"]["p95_ms_max"] == 20 and resolved["plan"]["gates"]["golden_min_cosine"] is None

    code, rollouts, _ = cli(capsys, "rollout", "list", "--json")
    assert code == 0 and rollouts == []  # planning stores nothing


def test_bad_input_is_a_usage_error_naming_the_fix(capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    code, data, err = cli(capsys, "rollout", "plan", "mlp@1", "--device", "line-a-1", "--errors", "abc", "--json")
    assert code == 2 and "abc" in data["message"] and data["fix"]
    code, _, err = cli(capsys, "rollout", "plan", "nosuch@1", "--device", "line-a-1")
    assert code == 2 and "nosuch" in err
    code, _, err = cli(capsys, "rollout", "plan", "mlp@1")
    assert code == 2 and "no device" in err
    code, _, err = cli(capsys, "rollout", "status", "42")
    assert code == 2 and "no rollout 42" in err


def test_the_shadow_options_make_the_plans_shadow_step(capsys: pytest.CaptureFixture[str],
                                                       fleet_with_model: str) -> None:
    code, resolved, err = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--shadow", "0.5",
                              "--shadow-min", "300", "--shadow-agree", "0.97", "--shadow-p95-ratio", "-1",
                              "--shadow-max-wait", "120", "--shadow-canary-only", "--shadow-on-skip", "pass", "--json")
    assert code == 0, err
    assert resolved["plan"]["shadow"] == {"share": 0.5, "min_requests": 300, "min_agreement": 0.97,
                                          "p95_ratio_max": None, "max_wait_s": 120.0, "waves": "canary",
                                          "on_skip": "pass"}
    code, text, err = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--shadow", "1")
    assert code == 0, err
    assert "Shadow step (before activation):\n  every device: after staging" in text
    assert "verdict after 200 compared requests, or after 600 s" in text  # the defaults
    assert "at least 0.98" in text and "at most 1.2 x the active model's" in text
    code, resolved, _ = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--json")
    assert code == 0 and resolved["plan"]["shadow"] is None

    code, data, _ = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--shadow", "1.5", "--json")
    assert code == 2 and data["field"] == "--shadow" and "above 1" in data["message"] and data["fix"]
    code, data, _ = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--shadow", "1", "--shadow-min",
                        "0", "--json")
    assert code == 2 and data["field"] == "--shadow-min" and "below 1" in data["message"]
    code, data, _ = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--shadow-min", "10", "--json")
    assert code == 2 and "--shadow-min given without --shadow" in data["message"] and "--shadow SHARE" in data["fix"]


def _start_without_running(plan: RolloutPlan) -> int:
    """engine.start journals a planned rollout; nothing contacts a device until run()."""
    async def go() -> int:
        fleet = Fleet.open(operator="tester")
        try:
            return await RolloutEngine(fleet, ArtifactStore.default()).start(plan)
        finally:
            await fleet.close()

    return asyncio.run(go())


def test_status_pause_abort_journal_and_audit(capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    rid = _start_without_running(RolloutPlan(model="mlp@1", groups=("line A",), waves=(1, "100%")))
    code, status, _ = cli(capsys, "rollout", "status", str(rid), "--json")
    assert code == 0 and status["status"] == "planned" and status["model_ref"] == "mlp@1"
    assert [(d["wave"], d["state"]) for d in status["devices"]] == [(0, "pending"), (1, "pending")]
    code, latest, _ = cli(capsys, "rollout", "status", "--json")
    assert latest["id"] == rid  # no id: the latest active rollout

    # The same devices cannot be in two active rollouts.
    code, _, err = cli(capsys, "rollout", "start", "mlp@1", "--device", "line-a-1")
    assert code == 2 and f"already in rollout {rid}" in err

    code, paused, _ = cli(capsys, "--operator", "ann", "rollout", "pause", str(rid), "--reason", "shift change",
                          "--json")
    assert code == 0 and paused["status"] == "paused" and paused["paused_reason"] == "shift change"
    code, _, err = cli(capsys, "rollout", "approve", str(rid))
    assert code == 2 and "nothing waits for approval" in err

    code, aborted, _ = cli(capsys, "--operator", "ann", "rollout", "abort", str(rid), "--json")
    assert code == 0 and aborted["status"] == "aborted"
    assert {d["state"] for d in aborted["devices"]} == {"skipped"}  # not started: skipped, no device contacted
    code, _, err = cli(capsys, "rollout", "abort", str(rid))
    assert code == 2 and "nothing to abort" in err

    code, text, _ = cli(capsys, "rollout", "status", str(rid))
    assert f"rollout {rid}: mlp@1, aborted" in text and "line-a-1" in text and "skipped" in text

    code, journal, _ = cli(capsys, "rollout", "journal", str(rid), "--json")
    assert code == 0
    events = [(e["device_id"] is None, e["event"], e["to_state"]) for e in journal["journal"]]
    assert events[0] == (True, "create", "planned")
    assert (True, "status", "paused") in events and (True, "status", "aborted") in events
    assert [e for e in events if not e[0]] == [(False, "abort", "skipped")] * 2
    actions = [(a["operator"], a["action"], a["outcome"]) for a in reversed(journal["audit"])]
    assert [a[1:] for a in actions] == [("rollout.start", "planned"), ("rollout.pause", "ok"),
                                        ("rollout.approve", "refused"), ("rollout.abort", "ok"),
                                        ("rollout.abort", "refused")]
    assert [a[0] for a in actions][:2] == ["tester", "ann"] and actions[3][0] == "ann"

    code, listed, _ = cli(capsys, "rollout", "list", "--json")
    assert [(r["id"], r["status"]) for r in listed] == [(rid, "aborted")]
    code, active, _ = cli(capsys, "rollout", "list", "--active", "--json")
    assert active == []


def test_rollback_of_a_rollout_that_never_ran(capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    rid = _start_without_running(RolloutPlan(model="mlp@1", profiles=("ipc-x86",), waves=(1, "100%")))
    code, _, err = cli(capsys, "rollout", "rollback", str(rid), "--device", "line-a-1", "--wave", "1")
    assert code == 2 and "both given" in err
    code, _, err = cli(capsys, "rollout", "rollback", str(rid), "--wave", "7")
    assert code == 2 and "no wave 7" in err
    code, data, _ = cli(capsys, "rollout", "rollback", str(rid), "--json")
    assert code == 0 and data["status"] == "rolled-back"
    assert {d["state"] for d in data["devices"]} == {"skipped"}
    repo_log = _audit(rid)
    assert ("rollout.rollback", "ok") in [(a.action, a.outcome) for a in repo_log]
    # A rolled-back rollout frees its devices for the next one.
    rid2 = _start_without_running(RolloutPlan(model="mlp@1", devices=(1,), waves=(1,)))
    assert rid2 > rid


def _audit(rid: int) -> list[Any]:
    fleet = Fleet.open()
    try:
        return fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}"))
    finally:
        asyncio.run(fleet.close())


def test_the_lock_keeps_a_second_driver_out(fleet_with_model: str) -> None:
    """While one process drives a rollout (holds its flock), another's run/rollback is refused, not interleaved."""
    import fcntl
    import os

    from fleetdesk.rollout.engine import RolloutBusyError

    rid = _start_without_running(RolloutPlan(model="mlp@1", devices=(1,), waves=(1,)))
    folder = Settings.load().data_dir / "rollout-locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{rid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: flock conflicts as between processes

        async def go() -> None:
            fleet = Fleet.open()
            try:
                engine = RolloutEngine(fleet, ArtifactStore.default())
                with pytest.raises(RolloutBusyError):
                    await engine.run(rid)
                with pytest.raises(RolloutBusyError):
                    await engine.rollback(rid)
                aborted = await engine.abort(rid)  # recorded; the driver settles the devices
                assert aborted.status == "aborted"
                assert {d.state for d in engine.repo.devices(rid)} == {"pending"}
                assert (await engine.db.audit_log(rid))[0].outcome == "requested"
            finally:
                await fleet.close()

        asyncio.run(go())
    finally:
        os.close(fd)


def test_a_rollout_another_laptop_drives_is_refused_until_its_lease_runs_out(fleet_with_model: str) -> None:
    """Another laptop on the same inventory holds the rollout's lease (no file lock of this laptop is held): run and
    rollback are refused naming that laptop; once its lease ran out (it stopped renewing), this one takes over."""
    from fleetdesk.rollout.engine import RolloutBusyError

    rid = _start_without_running(RolloutPlan(model="mlp@1", devices=(1,), waves=(1,)))

    async def go() -> None:
        fleet = Fleet.open()
        try:
            engine = RolloutEngine(fleet, ArtifactStore.default())
            lease = await engine.db.call(engine.repo.take_lease, rid, "laptop-2:4242", 0.6)
            assert lease.driver == "laptop-2:4242"
            with pytest.raises(RolloutBusyError, match="driven by the FleetDesk on laptop-2 \\(process 4242\\)"):
                await engine.run(rid)
            with pytest.raises(RolloutBusyError, match="laptop-2"):
                await engine.rollback(rid)
            await asyncio.sleep(0.8)  # laptop-2 stopped renewing: its lease ran out
            async with engine._try_lock(rid) as mine:
                assert mine
                held = await engine.db.call(engine.repo.take_lease, rid, "laptop-2:4242", 30)
                assert held.driver == engine.driver  # laptop-2 is refused now
            # Given back when this process stopped driving.
            assert (await engine.db.call(engine.repo.take_lease, rid, "laptop-3:1", 30)).driver == "laptop-3:1"
        finally:
            await fleet.close()

    asyncio.run(go())


def test_run_take_over_waits_for_another_laptops_lease_then_finishes_the_rollout_with_json(
        capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    """A plan with takeover "auto" (shown by plan and status); laptop-2 drove it, journaled both devices done and
    stopped. `rollout run ID` alone is refused while its lease is live, naming it and --take-over; `rollout run ID
    --take-over --json` waits for the lease to run out, takes it over and drives it to done (every device was done:
    nothing is sent)."""
    from fleetdesk.inventory import rollout_states as st

    code, resolved, err = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--takeover", "auto", "--json")
    assert code == 0 and resolved["plan"]["takeover"] == "auto", err
    code, text, _ = cli(capsys, "rollout", "plan", "mlp@1", "--group", "line A", "--takeover", "auto")
    assert "takeover (auto): when the FleetDesk driving it stops, a FleetDesk window open on the same inventory" in text
    rid = _start_without_running(RolloutPlan(model="mlp@1", groups=("line A",), waves=(1, "100%"), takeover="auto"))
    fleet = Fleet.open()
    try:
        repo = RolloutRepo(fleet.inventory)
        repo.take_lease(rid, "laptop-2:4242", 30)
        repo.set_status(rid, "running", expect="planned")
        for device in repo.devices(rid):
            for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED, st.CONFIRMED):
                repo.record(rid, device.device_id, event, bytes_sent=2000)
    finally:
        asyncio.run(fleet.close())
    code, status, _ = cli(capsys, "rollout", "status", str(rid), "--json")
    assert (status["takeover"], status["plan"]["takeover"], status["driver"]) == ("auto", "auto", "laptop-2:4242")
    code, text, _ = cli(capsys, "rollout", "status", str(rid))
    assert "driven by laptop-2 (process 4242), lease until " in text and "takeover (auto): " in text

    code, _, err = cli(capsys, "rollout", "run", str(rid), "--json")
    assert code == 2 and "driven by the FleetDesk on laptop-2 (process 4242)" in err and "--take-over" in err, err

    fleet = Fleet.open()
    try:
        RolloutRepo(fleet.inventory).take_lease(rid, "laptop-2:4242", 1.0)  # its last renewal
    finally:
        asyncio.run(fleet.close())
    code, report, err = cli(capsys, "rollout", "run", str(rid), "--take-over", "--json")
    assert code == 0, err
    assert "driven by the FleetDesk on laptop-2 (process 4242)" in err and "waiting for it to stop" in err
    assert report["status"] == "done" and report["driver"] is None, report
    taken = report["takeover"]
    assert (taken["taken"], taken["previous"], taken["policy"]) == (True, "laptop-2:4242", "auto"), taken
    assert [d["bytes_sent"] for d in report["devices"]] == [2000, 2000]
    code, journal, _ = cli(capsys, "rollout", "journal", str(rid), "--json")
    takeovers = [e for e in journal["journal"] if e["event"] == "takeover"]
    assert len(takeovers) == 1 and takeovers[0]["detail"]["previous"] == "laptop-2:4242", takeovers
    assert [a["action"] for a in journal["audit"]].count("rollout.takeover") == 1

    # A rollout saved as planned had no driver that stopped: run does not start it behind the operator's back.
    planned = _start_without_running(RolloutPlan(model="mlp@1", devices=(3,), waves=(1,)))
    code, _, err = cli(capsys, "rollout", "run", str(planned), "--take-over")
    assert code == 2 and f"rollout {planned} is planned, not started" in err and "rollout resume" in err, err

    # Nothing left to take over: said, and the exit status is the rollout's.
    code, out, err = cli(capsys, "rollout", "run", str(rid), "--take-over")
    assert code == 0 and out.count(f"rollout {rid} is done (") == 1 and "): nothing to take over" in out, out + err


class _ThreadRecordingRepo(RolloutRepo):
    """The real repository, noting which thread each of its writes ran on."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.writes: list[tuple[str, int]] = []

    def create(self, *args: Any, **kwargs: Any) -> Any:
        self.writes.append(("create", threading.get_ident()))
        return super().create(*args, **kwargs)

    def set_status(self, *args: Any, **kwargs: Any) -> Any:
        self.writes.append(("set_status", threading.get_ident()))
        return super().set_status(*args, **kwargs)

    def record(self, *args: Any, **kwargs: Any) -> Any:
        self.writes.append(("record", threading.get_ident()))
        return super().record(*args, **kwargs)

    def noting_audit(self, access: Any) -> None:
        """Note the audit trail's appends (the engine's go through the fleet's Access) with the others."""
        append = access.audit.append

        def noted(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(("audit", threading.get_ident()))
            return append(*args, **kwargs)
        access.audit.append = noted


def test_the_engine_writes_the_journal_on_the_inventory_thread_not_the_loop(fleet_with_model: str) -> None:
    """In the window the engine runs on the GUI's loop: a commit there would freeze the window. Start, pause and
    an abort that skips every device each write on the executor given (the window's inventory thread), in order."""
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-inventory")
    inventory_thread = executor.submit(threading.get_ident).result()

    async def go() -> tuple[int, int, _ThreadRecordingRepo]:
        fleet = Fleet.open()
        try:
            repo = _ThreadRecordingRepo(fleet.inventory)
            repo.noting_audit(fleet.access)
            engine = RolloutEngine(fleet, ArtifactStore.default(), repo=repo, executor=executor)
            rid = await engine.start(RolloutPlan(model="mlp@1", profiles=("ipc-x86",), waves=(1, "100%")))
            await engine.pause(rid)
            row = await engine.abort(rid)
            assert row.status == "aborted"
            assert [d.state for d in repo.devices(rid)] == ["skipped"] * len(DEVICES)
            return rid, threading.get_ident(), repo
        finally:
            await fleet.close()

    try:
        rid, loop_thread, repo = asyncio.run(go())
    finally:
        executor.shutdown()
    kinds = [kind for kind, _ in repo.writes]
    assert kinds[:2] == ["create", "audit"] and kinds.count("record") == len(DEVICES)
    assert {thread for _, thread in repo.writes} == {inventory_thread} != {loop_thread}
    journal = repo.journal(rid)
    assert [e.event for e in journal if e.device_id is not None] == ["abort"] * len(DEVICES)


def test_roles_four_eyes_and_scopes_are_enforced_by_the_engine(capsys: pytest.CaptureFixture[str],
                                                               fleet_with_model: str) -> None:
    """A viewer cannot start a rollout, a deployer scoped to line A cannot touch line-b-1, and under four-eyes
    the operator who started a rollout cannot approve its waves: each is refused, nothing changes, and each
    refusal is in the audit trail."""
    for name, role, groups in (("vic", "viewer", None), ("abe", "approver", None), ("dan", "deployer", "line A")):
        scope = ["--groups", groups] if groups else []
        code, _, err = cli(capsys, "operator", "add", name, "--role", role, *scope)
        assert code == 0, err
    code, _, err = cli(capsys, "operator", "set-role", "tester", "deployer", "approver")
    assert code == 0, err

    code, _, err = cli(capsys, "--operator", "vic", "rollout", "start", "mlp@1", "--device", "line-a-1")
    assert code == 2 and "operator vic (viewer) may not push models" in err and "deployer" in err
    code, _, err = cli(capsys, "--operator", "dan", "rollout", "start", "mlp@1", "--device", "line-a-1",
                       "--device", "line-b-1")
    assert code == 2 and "only on devices in line A; not on line-b-1" in err
    code, listed, _ = cli(capsys, "rollout", "list", "--json")
    assert listed == []  # nothing was planned

    rid = _start_without_running(RolloutPlan(model="mlp@1", devices=(1, 2), waves=(1, "100%"),
                                             approval_by_other=True))
    code, _, err = cli(capsys, "--operator", "tester", "rollout", "approve", str(rid))
    assert code == 2 and "approved by another operator than tester" in err
    code, _, err = cli(capsys, "--operator", "ann", "rollout", "approve", str(rid))
    assert code == 2 and "operator ann (deployer) may not approve" in err
    code, _, err = cli(capsys, "--operator", "abe", "rollout", "approve", str(rid))
    assert code == 2 and "nothing waits for approval" in err  # allowed: only the rollout's state says no

    refused = [(e.operator, e.action) for e in reversed(_audit_all()) if e.outcome == "refused"]
    assert refused == [("vic", "rollout.start"), ("dan", "rollout.start"), ("tester", "rollout.approve"),
                       ("ann", "rollout.approve"), ("abe", "rollout.approve")]


def test_an_action_from_an_outdated_version_is_a_clear_error_naming_who_acted(
        capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    """A script read the rollout (version 1), then ann paused it: the script's abort at --seen-version 1 is refused
    naming ann, as one line and in --json, with nothing changed; from the version it reads now, it aborts."""
    rid = _start_without_running(RolloutPlan(model="mlp@1", groups=("line A",), waves=(1, "100%")))
    code, status, _ = cli(capsys, "rollout", "status", str(rid), "--json")
    assert status["version"] == 1
    code, paused, _ = cli(capsys, "--operator", "ann", "rollout", "pause", str(rid), "--seen-version", "1", "--json")
    assert code == 0 and (paused["version"], paused["changed_by"]) == (2, "ann")

    code, refused, err = cli(capsys, "rollout", "abort", str(rid), "--seen-version", "1", "--json")
    assert code == 2 and "Traceback" not in err
    assert refused["error"] == "EditConflictError" and refused["changed_by"] == "ann"
    assert (refused["version"], refused["seen_version"]) == (2, 1)
    assert f"rollout {rid} (mlp@1) was changed by ann at " in refused["message"]
    assert "your change was not made" in refused["message"]
    assert err.startswith(f"error: rollout {rid} (mlp@1) was changed by ann at ")
    code, status, _ = cli(capsys, "rollout", "status", str(rid), "--json")
    assert (status["status"], status["version"]) == ("paused", 2)

    code, aborted, _ = cli(capsys, "rollout", "abort", str(rid), "--seen-version", "2", "--json")
    assert code == 0 and (aborted["status"], aborted["version"]) == ("aborted", 3)


def test_group_edits_from_an_outdated_version_are_clear_errors(capsys: pytest.CaptureFixture[str],
                                                                 fleet_with_model: str) -> None:
    code, listed, _ = cli(capsys, "group", "--json")
    assert [(g["name"], g["version"]) for g in listed] == [("line A", 1)]
    code, added, err = cli(capsys, "--operator", "ann", "group", "line-b-1", "--name", "line A", "--json")
    assert code == 2 and "may not" in err  # ann deploys; groups are an admin's
    code, added, err = cli(capsys, "group", "line-b-1", "--name", "line A", "--seen-version", "1", "--json")
    assert code == 0 and added["version"] == 2, err
    for change in (["line-a-1", "--remove"], ["--rename", "line A north"], ["--delete"]):
        code, refused, err = cli(capsys, "group", *change, "--name", "line A", "--seen-version", "1", "--json")
        assert code == 2 and refused["error"] == "EditConflictError" and "Traceback" not in err
        assert "the group 'line A' was changed by " in refused["message"] and "not made" in refused["message"]
    code, renamed, _ = cli(capsys, "group", "--name", "line A", "--rename", "line A north", "--seen-version", "2",
                           "--json")
    assert code == 0 and (renamed["name"], renamed["version"]) == ("line A north", 3)
    code, refused, err = cli(capsys, "group", "line-a-1", "--name", "line A", "--seen-version", "2", "--json")
    assert code == 2 and "'line A' was deleted or renamed after you read it" in refused["message"]
    code, deleted, _ = cli(capsys, "group", "--name", "line A north", "--delete", "--json")
    assert code == 0 and deleted == {"deleted": "line A north"}
    code, listed, _ = cli(capsys, "group", "--json")
    assert listed == []

def _audit_all() -> list[Any]:
    fleet = Fleet.open()
    try:
        return fleet.access.audit.entries(limit=None)
    finally:
        asyncio.run(fleet.close())
