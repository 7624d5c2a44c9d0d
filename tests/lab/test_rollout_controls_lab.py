"""The rollout controls an operator relies on, proven through the engine and the CLI on real lab devices: at most
`max_parallel` transfers at once; pre-staging (every device of a wave copied and verified before any activates)
and its absence; the p95-ratio gate against the same device's previous model, failed by a genuinely slower model and
passed by faster ones; rollback of one wave and then of one device; a step that outlives the plan's step
timeout (the device unreachable, not failed, and reconciled); and `fleetdesk rollout start|pause|resume|approve`
with --json, pausing a rollout that another process is driving.

Devices: gpc-01 (x86_64, ipc-x86-nvidia), ipc-01 and ipc-02 (x86_64, ipc-x86), provisioned with this module's
signing key. By name gpc-01 is every rollout's canary. The tests run in file order and build on each other's end
state (which model each device runs), as an operator's day would.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from sqlalchemy import text

from fleetdesk.access.guard import default_operator
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.database import for_writing
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.rollout.policy import Gates, TransferPolicy
from tests.fixtures.models.build import slow_mlp
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import (
    Laptop,
    add_model,
    agent_view,
    big_model,
    devices_in,
    lab_plan,
    new_laptop,
    provision_devices,
    quick,
    rollout_audit,
    small_model,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

CANARY, X1, X2 = "gpc-01", "ipc-01", "ipc-02"  # lent to this module; by name, gpc-01 is every canary
PROFILE_OF = {CANARY: "ipc-x86-nvidia", X1: "ipc-x86", X2: "ipc-x86"}
NAMES = tuple(PROFILE_OF)
# The ratio gate on, the absolute latency bound off. 3x: benches of the 12.7 MB MLP on the loaded lab swing from
# 0.9 to 3.3 ms (one measured 3.08x the same device's previous bench, passed by the gate's 0.5 ms slack); the slow
# model (about 2.8 GFLOP a row, 45 ms here) takes tens of milliseconds, so it fails the gate whatever the noise.
GATES = Gates(p95_ratio_max=3.0)
NO_RATIO = Gates(p95_ratio_max=None)  # where a test is about something else: one gate less to measure
RATIO_WITH_PAUSE = 20.0  # the CLI test's p95 ratio bound (see there)
CAP = 6_000_000  # bytes/s per transfer: the 12.7 MB models take about 2 s each, long enough to see overlap


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    laptop = new_laptop(tmp_path_factory.mktemp("controls-laptop"), load_profiles())
    work = tmp_path_factory.mktemp("controls-models")
    profiles = sorted(set(PROFILE_OF.values()))
    big_model(laptop, work, "base", 41, profiles)
    big_model(laptop, work, "next", 42, profiles)
    folder = work / "slow"
    folder.mkdir()
    onnx.save_model(slow_mlp(layers=600), folder / "model.onnx")
    add_model(laptop, folder / "model.onnx", "slow", profiles)
    small_model(laptop, work, "late", 43, profiles)
    small_model(laptop, work, "cli", 44, profiles)
    provision_devices(fleet, laptop, NAMES, PROFILE_OF)
    yield laptop


def plan(fleet: Fleet, model: str, names: tuple[str, ...] = NAMES, **kwargs: Any) -> RolloutPlan:
    return lab_plan(fleet, model, names, gates=kwargs.pop("gates", GATES), **kwargs)


class Transfers:
    """Each device's transfer window as the engine's progress events show it: (first event, last event)."""

    def __init__(self) -> None:
        self.windows: dict[int, list[float]] = {}

    def __call__(self, event: RolloutEvent) -> None:
        if event.kind == "progress" and event.device_id is not None and event.bytes_total:
            window = self.windows.setdefault(event.device_id, [time.monotonic(), 0.0])
            window[1] = time.monotonic()

    def overlaps(self) -> list[tuple[int, int]]:
        spans = sorted(self.windows.items(), key=lambda item: item[1][0])
        return [(a, b) for (a, (_, end)), (b, (start, _)) in itertools.pairwise(spans) if start < end]


def journal_events(engine: RolloutEngine, rid: int) -> list[tuple[int, str]]:
    """(device id, event) of every device entry, in the order they were journaled."""
    return [(e.device_id, e.event) for e in engine.repo.journal(rid) if e.device_id is not None]


def names_of(fleet: Fleet) -> dict[int, str]:
    return {fleet.inventory.device(n).id: n for n in NAMES}


async def actives(fleet: Fleet, laptop: Laptop) -> dict[str, tuple[str | None, str | None]]:
    """What each device's agent says it runs: (current, pending)."""
    found = {}
    for name in NAMES:
        view = await agent_view(fleet, laptop, name)
        found[name] = (view.current, view.pending)
    return found


def test_at_most_max_parallel_transfers_and_the_whole_wave_is_staged_before_any_device_activates(
        laptop: Laptop) -> None:
    transfers = Transfers()

    async def work(fleet: Fleet) -> Any:
        engine = quick(laptop.engine(fleet, transfers))
        rid = await engine.start(plan(fleet, "base@1", transfer=TransferPolicy(
            max_parallel=1, bandwidth_bytes_s=CAP, prestage=True)))
        row = await engine.run(rid)
        return engine, rid, row, await actives(fleet, laptop), names_of(fleet)

    engine, rid, row, now, names = laptop.with_fleet(work)
    assert row.status == "done", row.paused_reason
    assert set(transfers.windows) == set(names), transfers.windows  # every device was sent the model
    assert transfers.overlaps() == [], f"max_parallel=1, yet transfers ran at once: {transfers.windows}"
    events = journal_events(engine, rid)
    staged = [i for i, (_, event) in enumerate(events) if event == st.STAGED_OK]
    activated = [i for i, (_, event) in enumerate(events) if event == st.ACTIVATE]
    assert len(staged) == len(activated) == 3
    assert max(staged) < min(activated), [(names[d], e) for d, e in events]  # pre-staged: all copies first
    for device in engine.repo.devices(rid):
        ratio = device.gates["values"]["p95_ratio"]
        # The devices ran no model before: the ratio gate has nothing to compare with, and says so.
        assert (ratio["value"], ratio["ok"]) == (None, True) and "no model before" in ratio["note"], ratio
    base = laptop.models["base@1"]
    assert now == {name: (base, None) for name in NAMES}
    first = min(start for start, _ in transfers.windows.values())
    spans = {names[d]: f"{start - first:.1f}-{end - first:.1f}" for d, (start, end) in transfers.windows.items()}
    print(f"\ntransfer windows (s, from the first byte; max_parallel=1): {spans}")


def test_without_prestaging_a_device_activates_while_the_others_still_copy(laptop: Laptop) -> None:
    transfers = Transfers()

    async def work(fleet: Fleet) -> Any:
        engine = quick(laptop.engine(fleet, transfers))
        rid = await engine.start(plan(fleet, "next@1", waves=(1, "100%"), gates=NO_RATIO, transfer=TransferPolicy(
            max_parallel=1, bandwidth_bytes_s=CAP, prestage=False)))
        row = await engine.run(rid)
        return engine, rid, row, await actives(fleet, laptop), names_of(fleet)

    engine, rid, row, now, names = laptop.with_fleet(work)
    assert row.status == "done", row.paused_reason
    assert transfers.overlaps() == [], transfers.windows
    second = {d.device_id for d in engine.repo.devices(rid) if d.wave == 1}
    assert {names[d] for d in second} == {X2, X1}
    events = [(d, e) for d, e in journal_events(engine, rid) if d in second]
    first_activation = min(i for i, (_, e) in enumerate(events) if e == st.ACTIVATE)
    last_staged = max(i for i, (_, e) in enumerate(events) if e == st.STAGED_OK)
    # One transfer at a time and no pre-staging: the first device of wave 2 switches while the other still copies.
    assert first_activation < last_staged, [(names[d], e) for d, e in events]
    base, new = laptop.models["base@1"], laptop.models["next@1"]
    assert {d.previous_artifact for d in engine.repo.devices(rid)} == {base}  # from the agents' answers
    assert now == {name: (new, None) for name in NAMES}


def test_rollback_of_the_second_wave_then_of_the_canary_alone(laptop: Laptop) -> None:
    async def work(fleet: Fleet) -> Any:
        engine = quick(laptop.engine(fleet))
        (rid,) = [r.id for r in engine.repo.list() if r.model_ref == "next@1"]
        ids = names_of(fleet)
        wave = await engine.rollback(rid, wave=1)
        after_wave = await actives(fleet, laptop)
        states_after_wave = {ids[d.device_id]: d.state for d in engine.repo.devices(rid)}
        one = await engine.rollback(rid, device_id=fleet.inventory.device(CANARY).id)
        return engine, rid, wave, after_wave, states_after_wave, one, await actives(fleet, laptop), ids

    engine, rid, wave, after_wave, states_after_wave, one, now, ids = laptop.with_fleet(work)
    base, new = laptop.models["base@1"], laptop.models["next@1"]
    # Wave 2 went back to the model it ran before; the canary, in wave 1, was not touched.
    assert states_after_wave == {CANARY: st.DONE, X2: st.ROLLED_BACK, X1: st.ROLLED_BACK}
    assert after_wave == {CANARY: (new, None), X2: (base, None), X1: (base, None)}
    # Then the canary alone.
    assert {ids[d.device_id]: d.state for d in engine.repo.devices(rid)} == {name: st.ROLLED_BACK for name in NAMES}
    assert now == {name: (base, None) for name in NAMES}
    # Parts rolled back after the rollout ended: it stays done, its devices say where each one is.
    assert wave.status == one.status == "done"
    # Each rollback is journaled per device and written to the audit log with the devices it touched.
    for device_id, name in ids.items():
        events = [e.event for e in engine.repo.journal(rid, device_id=device_id)]
        assert events[-2:] == [st.ROLLBACK, st.ROLLED_BACK_OK], (name, events)
    audit = [(a.action, a.outcome, sorted(ids[d] for d in devices_in(a)))
             for a in rollout_audit(engine, rid) if a.action == "rollout.rollback"]
    assert sorted(audit) == [("rollout.rollback", "ok", [CANARY]), ("rollout.rollback", "ok", sorted([X2, X1]))], \
        audit


def test_a_model_slower_than_the_one_it_replaces_fails_the_ratio_gate_on_the_canary(laptop: Laptop) -> None:
    async def work(fleet: Fleet) -> Any:
        engine = quick(laptop.engine(fleet))
        rid = await engine.start(plan(fleet, "slow@1", waves=(1, "100%")))
        row = await engine.run(rid)
        result = row, engine.repo.devices(rid), await actives(fleet, laptop), names_of(fleet)
        await engine.abort(rid)  # frees the other two for the next tests
        return result

    row, rows, now, ids = laptop.with_fleet(work)
    base = laptop.models["base@1"]
    assert row.status == "paused", row.status  # after the canary: one error exceeds the threshold of 0
    devices = {ids[d.device_id]: d for d in rows}
    canary = devices[CANARY]
    ratio = canary.gates["values"]["p95_ratio"]
    assert canary.state == st.ROLLED_BACK and ratio["ok"] is False and ratio["value"] > 3.0, ratio
    assert "the previous model's" in canary.error and "above the bound of 3x" in canary.error, canary.error
    assert canary.gates["baseline"]["model"] == base
    assert (devices[X2].state, devices[X1].state) == (st.PENDING, st.PENDING)
    assert now == {name: (base, None) for name in NAMES}  # the canary back on it, the rest never left it
    print(f"\n{CANARY}: the slow model's p95 is {ratio['value']:.1f}x the previous model's "
          f"{canary.gates['baseline']['p95_ms']:.3f} ms (bound 3x): rolled back, rollout paused")


def test_a_step_past_the_step_timeout_leaves_the_device_unreachable_not_failed_then_reconciled(
        fleet: LabFleet, laptop: Laptop) -> None:
    """The canary's link is cut once its copy is verified: activation hangs on a dead link, the plan's 4 s step
    timeout ends it, the device counts as unreachable (its state is unknown, not failed), and when the link is
    back the engine asks the agent what it runs and carries on to done."""
    cut: list[str] = []
    restored: list[threading.Thread] = []
    unreachable: list[str] = []

    def on_event(event: RolloutEvent) -> None:
        if event.kind == "state" and event.state == st.STAGED and not cut:
            cut.append(CANARY)
            fleet.fault(CANARY, "cut")
        if event.kind == "state" and event.state == st.UNREACHABLE and not restored:
            unreachable.append(event.message)
            thread = threading.Thread(target=fleet.fault, args=(CANARY, "restore"), daemon=True)
            thread.start()
            restored.append(thread)

    async def work(fleet_: Fleet) -> Any:
        engine = quick(laptop.engine(fleet_, on_event))
        rid = await engine.start(plan(fleet_, "late@1", (CANARY,), gates=NO_RATIO, step_timeout_s=4.0,
                                      unreachable="wait", unreachable_wait_s=300))
        row = await engine.run(rid)
        return engine, rid, row, await agent_view(fleet_, laptop, CANARY)

    try:
        engine, rid, row, view = laptop.with_fleet(work)
    finally:
        for thread in restored:
            thread.join(timeout=60)
        fleet.fault(CANARY, "restore")
    assert cut and restored, "the link was never cut, or the device never went unreachable"
    assert row.status == "done", row.paused_reason
    entries = engine.repo.journal(rid, device_id=engine.repo.devices(rid)[0].device_id)
    lost = [e for e in entries if e.event == st.LOST]
    assert len(lost) == 1 and lost[0].detail.get("step") == st.ACTIVATING, [(e.event, e.detail) for e in entries]
    assert st.STEP_FAILED not in [e.event for e in entries]
    assert "step timeout" in unreachable[0], unreachable
    assert [e.event for e in entries].count(st.STAGED_OK) == 1  # nothing was sent again after the cut
    assert (view.current, view.pending) == (laptop.models["late@1"], None)


def cli(laptop: Laptop, *args: str) -> list[str]:
    return [sys.executable, "-m", "fleetdesk", "--db", laptop.db_url, "rollout", *args]


def cli_env(laptop: Laptop, tmp: Path) -> dict[str, str]:
    return dict(os.environ, FLEETDESK_DATA_DIR=str(laptop.data_dir), FLEETDESK_CONFIG_DIR=str(tmp / "config"))


def run_cli(laptop: Laptop, tmp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(cli(laptop, *args, "--json"), env=cli_env(laptop, tmp), capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.stdout.strip(), f"{args}: no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(proc.stdout)


def test_the_cli_pauses_a_rollout_another_process_drives_then_resumes_and_approves_it_with_json(
        laptop: Laptop, tmp_path: Path) -> None:
    # A 15 s soak: long enough for a second `fleetdesk` process to start on a loaded machine and pause the rollout
    # while the canary still soaks. The ratio bound is loose: the pause hands the canary the audit checkpoint (an
    # SSH session and the agent starting on it) inside its soak, next to that second process, and CI once rolled
    # the canary back here (stop 29; the reason was not printed then, the assertion below prints the gates now).
    # The canary's previous model benches about 0.12 ms, so 3x and the 0.5 ms slack leave 0.86 ms; what this test
    # proves is the controls and that the gate compared with the previous model, the slow-model test proves it bites.
    argv = cli(laptop, "start", "cli@1", "--device", CANARY, "--device", X2, "--waves", "1,100%",
               "--soak", "15", "--approve", "--p95-ratio", str(RATIO_WITH_PAUSE), "--json")
    started = subprocess.Popen(argv, env=cli_env(laptop, tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = laptop.data_dir / "fleetdesk.db"
    rid = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and started.poll() is None:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
                rows = con.execute("SELECT r.id, d.state FROM rollout_devices d JOIN rollouts r ON r.id = "
                                   "d.rollout_id WHERE r.model_ref = 'cli@1' AND d.wave = 0").fetchall()
            if rows and rows[0][1] == st.VERIFYING:  # the canary soaks
                rid = rows[0][0]
                break
            time.sleep(0.3)
        assert rid is not None, "the canary never reached verifying"
        code, paused = run_cli(laptop, tmp_path, "pause", str(rid), "--reason", "shift change")
        assert code == 0 and paused["status"] == "paused" and paused["paused_reason"] == "shift change", paused
        out, err = started.communicate(timeout=300)
    finally:
        if started.poll() is None:
            started.kill()
            started.communicate()
    try:
        # The driving process finished the step under way (the canary's soak and confirmation), then stopped.
        assert started.returncode == 3, err[-3000:]
        report = json.loads(out)
        states = {d["wave"]: d["state"] for d in report["devices"]}
        assert report["status"] == "paused" and states == {0: st.DONE, 1: st.PENDING}, json.dumps(
            [report["status"], [(d["device_id"], d["state"], d["gates"], d["error"]) for d in report["devices"]]])

        code, resumed = run_cli(laptop, tmp_path, "resume", str(rid))
        # The canary's wave is complete and needs the operator's approval: resume stops there, 3 again.
        assert code == 3 and resumed["status"] == "waiting-approval", resumed
        code, approved = run_cli(laptop, tmp_path, "approve", str(rid))
        assert code == 0 and approved["status"] == "done", approved
    except BaseException:
        run_cli(laptop, tmp_path, "abort", str(rid))  # the next test starts a rollout on these devices
        raise
    assert [d["state"] for d in approved["devices"]] == [st.DONE, st.DONE]
    # The ratio gate measured each device against the model it ran before: the canary the small "late" CNN
    # (both far under the gate's 0.5 ms slack), ipc-02 the 12.7 MB MLP, which the small CNN beats.
    previous = {0: laptop.models["late@1"], 1: laptop.models["base@1"]}
    for device in approved["devices"]:
        ratio, baseline = device["gates"]["values"]["p95_ratio"], device["gates"]["baseline"]
        assert baseline["model"] == previous[device["wave"]] and baseline["p95_ms"] > 0, baseline
        assert ratio["ok"] is True and ratio["value"] is not None and ratio["bound"] == RATIO_WITH_PAUSE, ratio
        print(f"wave {device['wave'] + 1}: p95 {ratio['value']:.2f}x the previous model's {baseline['p95_ms']:.3f} ms")
    code, journal = run_cli(laptop, tmp_path, "journal", str(rid))
    actions = [(a["action"], a["operator"]) for a in journal["audit"]]
    for action in ("start", "pause", "resume", "approve"):  # each by the one operator every process runs as
        assert (f"rollout.{action}", default_operator()) in actions, actions

    async def now(fleet: Fleet) -> Any:
        return await actives(fleet, laptop)

    found = laptop.with_fleet(now)
    artifact = laptop.models["cli@1"]
    assert (found[CANARY], found[X2]) == ((artifact, None), (artifact, None))


def test_the_devices_witness_the_audit_trail_so_a_deleted_tail_is_caught(laptop: Laptop, tmp_path: Path) -> None:
    """After a rollout action each of its devices holds the trail's newest checkpoint (signed by the fleet key).
    Someone with the database and the keys who deletes the tail (and the inventory's checkpoints of it) and moves
    the head back by hand leaves a trail that verifies on its own; `audit verify --with-devices` catches it
    against a device's checkpoint. (Last in this module: it rewrites the laptop's trail.)"""
    async def work(fleet: Fleet) -> Any:
        engine = laptop.engine(fleet)
        before = fleet.access.audit.entries(limit=1)[0]
        rid = await engine.start(plan(fleet, "late@1", gates=NO_RATIO))
        await engine.abort(rid)  # nothing staged yet: every device is skipped, the trail gets two entries
        newest = fleet.access.audit.entries(limit=1)[0]
        held = {n: await engine.ops.checkpoints(fleet.inventory.device(n)) for n in NAMES}
        return before, newest, held

    before, newest, held = laptop.with_fleet(work)
    assert newest.action == "rollout.abort"
    for name in NAMES:
        assert held[name] and held[name][-1]["seq"] == newest.seq and held[name][-1]["hash"] == newest.hash, name

    code, alone = run_audit(laptop, tmp_path, "verify")
    assert code == 0 and alone["ok"], alone
    # The tail goes: the rollout's two entries (and anything after `before`), and the head row points back.
    with open_inventory(laptop.db_url) as inventory:
        with for_writing(inventory.engine).begin() as conn:
            conn.execute(text("DELETE FROM audit_entries WHERE seq > :s"), {"s": before.seq})
            conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": before.seq, "h": before.hash})
    # The inventory's own checkpoints (migration 0008) still name the deleted entries...
    code, kept = run_audit(laptop, tmp_path, "verify")
    assert code == 1 and "the inventory's checkpoint holds a checkpoint of entry" in kept["reason"], kept
    # ...so whoever rewrites the trail deletes them too: then the laptop alone cannot tell.
    with open_inventory(laptop.db_url) as inventory:
        with for_writing(inventory.engine).begin() as conn:
            conn.execute(text("DELETE FROM audit_checkpoints WHERE seq > :s"), {"s": before.seq})
    code, alone = run_audit(laptop, tmp_path, "verify")
    assert code == 0 and alone["ok"] and alone["head_seq"] == before.seq, alone
    code, witnessed = run_audit(laptop, tmp_path, "verify", "--with-devices")
    assert code == 1 and not witnessed["ok"] and witnessed["seq"] == before.seq + 1, witnessed
    named = re.search(r"holds a checkpoint of entry (\d+), but the trail ends at entry (\d+): its tail was deleted",
                      witnessed["reason"])
    assert named and before.seq < int(named[1]) <= newest.seq and int(named[2]) == before.seq, witnessed
    assert {d["device"] for d in witnessed["devices"] if d["newest"] == newest.seq} >= set(NAMES), witnessed


def run_audit(laptop: Laptop, tmp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "fleetdesk", "--db", laptop.db_url, "audit", *args, "--json"]
    proc = subprocess.run(argv, env=cli_env(laptop, tmp), capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout.strip(), f"{args}: no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(proc.stdout)
