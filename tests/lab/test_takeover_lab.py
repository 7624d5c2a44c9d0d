"""A laptop that dies mid-rollout, on a shared PostgreSQL inventory (issue 23's proof): `fleetdesk rollout start`
drives a rollout on real lab devices and is SIGKILLed in the middle of wave 2; a second `fleetdesk` process on
another host name (its own UTS namespace, hostname laptop-b, its own data folder holding only the fleet's keys)
runs `fleetdesk rollout run ID --take-over --json`, waits for the dead driver's lease to run out and finishes the
rollout from the journal. The model was imported on the first laptop, which shared it as an operator's import does
(the fleet's catalogue in PostgreSQL, the signed files in the shared store folder, FLEETDESK_SHARED_STORE):
laptop-b fetches and verifies them from there when it first stages a device.

The database going away (issue 23 too): PostgreSQL is stopped (pg_ctl stop -m fast) in the middle of wave 2 of
another rollout and started again 10 s later; the driver finishes the steps under way, pauses the rollout with the
outage as its reason and exits paused; `rollout resume` takes it to done, nothing lost or repeated.

Devices: the issue asks for 10, and the session's lab (tests/lab/conftest.py SPEC) has 10, all used here:
gpc-01 (ipc-x86-nvidia), ipc-01 .. ipc-05 (ipc-x86), and the four arm64 ones under qemu, orin-01 (jetson-orin-nano),
rpi4-01, rpi5-01 and xnx-01 (jetson-xavier-nx). Dealt round-robin across profiles into waves 1, 3, 100% (1, 3, 6):
the canary gpc-01, then ipc-01, orin-01 and rpi4-01 (the wave the driver dies in), then rpi5-01, xnx-01 and ipc-02
.. ipc-05.

The lease is the engine's LEASE_S (15 s; no setting shortens it), so the second laptop really waits.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.artifacts.fleet_models import share_model
from fleetdesk.artifacts.shared_store import SETTING as SHARED_SETTING
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.audit import AuditFilter, AuditRepo
from fleetdesk.inventory.model_catalogue import ModelCatalogue
from fleetdesk.inventory.rollouts import TAKEOVER, RolloutRepo
from fleetdesk.profiles import ProfileSet, load_profiles
from fleetdesk.rollout.engine import LEASE_S
from tests.conftest import skip_or_fail
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import Laptop, agent_view, device_shell, new_laptop, provision_devices, small_model
from tests.postgres import ClusterUnavailable, PostgresCluster, running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

PROFILE_OF = {"gpc-01": "ipc-x86-nvidia", **{f"ipc-0{n}": "ipc-x86" for n in range(1, 6)},
              "orin-01": "jetson-orin-nano", "rpi4-01": "rpi4", "rpi5-01": "rpi5", "xnx-01": "jetson-xavier-nx"}
NAMES = tuple(PROFILE_OF)
ARM = ("rpi4", "rpi5", "jetson-orin-nano", "jetson-xavier-nx")
RUNTIME_OF = {n: "rpi4" if p in ARM else "ipc-x86" for n, p in PROFILE_OF.items()}  # the aarch64 CPU runtime
# The lab's Jetsons are Debian bookworm stand-ins with Python 3.11 where a real JetPack has 3.10 or 3.8 (as in
# test_rollout_lab): the laptop knows the jetson profiles with the lab's Python, so the aarch64 CPU runtime fits.
_LOADED = load_profiles()
PROFILES = ProfileSet({**_LOADED.profiles, **{name: replace(_LOADED.get(name), python=_LOADED.get("rpi4").python)
                                              for name in ("jetson-orin-nano", "jetson-xavier-nx")}})
WAVE2_SOAK_S = 30  # the wave the driver dies in soaks this long: a wide window to kill it with every device switched


@dataclass
class SharedLaptop(Laptop):
    """A laptop whose inventory is the shared PostgreSQL database, not a SQLite file in its data folder."""

    url: str = ""

    @property
    def db_url(self) -> str:
        return self.url


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    try:
        with running_cluster() as cluster:
            cluster.admin("CREATE DATABASE takeover")
            yield cluster
    except ClusterUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="module")
def postgres_url(postgres: PostgresCluster) -> str:
    return postgres.url("takeover")


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every laptop of the fleet mounts (FLEETDESK_SHARED_STORE)."""
    return tmp_path_factory.mktemp("shared-store")


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, postgres_url: str, shared_store: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedLaptop]:
    base = new_laptop(tmp_path_factory.mktemp("takeover-laptop-a"), PROFILES)
    laptop = SharedLaptop(base.data_dir, base.key, base.store, PROFILES, url=postgres_url)
    small_model(laptop, tmp_path_factory.mktemp("takeover-models"), "edge", 51, sorted(set(PROFILE_OF.values())))
    with open_inventory(postgres_url) as inventory:  # shared as `fleetdesk model import` shares what it imports
        sharing = ArtifactStore(laptop.data_dir / "artifacts", laptop.key, shared=shared_store,
                                catalogue=ModelCatalogue(inventory))
        assert share_model(sharing, sharing.model("edge@1"), "laptop-a", datetime.now(UTC)) is not None
    provision_devices(fleet, laptop, NAMES, RUNTIME_OF)
    yield laptop


def env_of(data: Path, tmp: Path) -> dict[str, str]:
    return dict(os.environ, FLEETDESK_DATA_DIR=str(data), FLEETDESK_CONFIG_DIR=str(tmp / f"config-{data.name}"))


def second_laptop(laptop: SharedLaptop, tmp: Path) -> Path:
    """laptop-b's data folder: its own, with the fleet's keys and no model (it fetches them from the shared store)."""
    data = tmp / "laptop-b"
    data.mkdir()
    shutil.copytree(laptop.data_dir / "keys", data / "keys")
    return data


def rollout_states(repo: RolloutRepo, model: str) -> tuple[int | None, dict[int, tuple[int, str, int]]]:
    """The running rollout of `model` and each device's (wave, state, bytes sent), as the inventory has them."""
    rows = [r for r in repo.list(active_only=True) if r.model_ref == model and r.status == "running"]
    if not rows:
        return None, {}
    return rows[0].id, {d.device_id: (d.wave, d.state, d.bytes_sent) for d in repo.devices(rows[0].id)}


def agent_history(lab: LabFleet, name: str) -> list[dict[str, Any]]:
    """What the device's agent did, from its own state.json (not the laptop's journal)."""
    state = json.loads(device_shell(lab, name, "cat /opt/fleetdesk/state.json"))
    return list(state.get("history") or [])


def test_a_laptop_sigkilled_in_wave_2_is_taken_over_by_another_laptop_after_its_lease_runs_out(
        fleet: LabFleet, laptop: SharedLaptop, shared_store: Path, tmp_path: Path) -> None:
    # Issue 23 asks for a 10-device rollout: every device of the lab, and the lab has 10.
    assert len(NAMES) == 10 and sorted(d["name"] for d in fleet.devices) == sorted(NAMES), fleet.devices
    artifact = laptop.models["edge@1"]
    targets = [a for n in NAMES for a in ("--device", n)]
    start = [sys.executable, "-m", "fleetdesk", "--db", laptop.url, "rollout", "start", "edge@1", *targets,
             "--waves", "1,3,100%", "--soak", "0", "--wave-policy", f"2:soak={WAVE2_SOAK_S}", "--p95-ratio", "-1",
             "--confirm-within", "240", "--step-timeout", "180"]
    log = open(tmp_path / "laptop-a.log", "wb")  # the child writes to it; closed below
    child = subprocess.Popen(start, env=env_of(laptop.data_dir, tmp_path), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    rid: int | None = None
    at_kill: dict[int, tuple[int, str, int]] = {}
    watching = open_inventory(laptop.url)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and child.poll() is None:
            rid, rows = rollout_states(RolloutRepo(watching), "edge@1")
            wave2 = [state for wave, state, _ in rows.values() if wave == 1]
            # In the middle of wave 2: a device soaks, none is half-way through its switch (an activation whose
            # answer never came is reconciled from the agent, and may rightly be asked again).
            if st.VERIFYING in wave2 and st.ACTIVATING not in wave2:
                os.kill(child.pid, signal.SIGKILL)
                at_kill = rows
                break
            time.sleep(0.3)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        log.close()
        watching.close()
    killed_at = time.monotonic()
    assert at_kill and rid is not None, (tmp_path / "laptop-a.log").read_text()[-3000:]
    dead_driver = f"{socket.gethostname()}:{child.pid}"
    with open_inventory(laptop.url) as inventory:
        left = RolloutRepo(inventory).get(rid)
    assert (left.status, left.driver) == ("running", dead_driver), left  # as the killed process left it

    data_b = second_laptop(laptop, tmp_path)
    take_over = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', "laptop-b",
                 sys.executable, "-m", "fleetdesk", "--db", laptop.url, "rollout", "run", str(rid), "--take-over",
                 "--json"]
    assert not (data_b / "artifacts" / "objects" / artifact).exists()
    proc = subprocess.run(take_over, env={**env_of(data_b, tmp_path), SHARED_SETTING: str(shared_store)},
                          capture_output=True, text=True, timeout=900, check=False)
    took_s = time.monotonic() - killed_at
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    report = json.loads(proc.stdout)
    taken = report["takeover"]
    assert report["status"] == "done" and taken["taken"] and taken["previous"] == dead_driver, taken
    # laptop-b found the dead laptop's lease live, said whose and until when, and waited for it to run out.
    assert f"driven by the FleetDesk on {socket.gethostname()} (process {child.pid})" in proc.stderr, proc.stderr
    assert "waiting for it to stop" in proc.stderr and taken["waited_s"] > 0, taken
    # It staged wave 3 with the signed files it fetched from the shared store, verified into its own store.
    fetched = ArtifactStore(data_b / "artifacts", laptop.key).verify(artifact)
    assert [(r.artifact, r.ok) for r in fetched] == [(artifact, True)], fetched

    with open_inventory(laptop.url) as inventory:
        repo = RolloutRepo(inventory)
        journal = repo.journal(rid)
        after = {d.device_id: d for d in repo.devices(rid)}
        names = {d.id: d.name for d in inventory.devices()}
    # The journal shows the takeover, once: from the killed process to laptop-b.
    takeovers = [e for e in journal if e.device_id is None and e.event == TAKEOVER]
    assert len(takeovers) == 1, takeovers
    assert takeovers[0].detail["previous"] == dead_driver and takeovers[0].detail["why"] == "its lease ran out"
    assert str(takeovers[0].detail["driver"]).startswith("laptop-b:"), takeovers[0].detail
    taken_at = takeovers[0].id
    for device_id, row in after.items():
        name = names[device_id]
        events = [e.event for e in journal if e.device_id == device_id]
        _, state, sent = at_kill[device_id]
        assert row.state == st.DONE, (name, row.state, row.error)
        # 0 bytes sent again to a device staged before the kill: one staging, and its bytes as they were.
        assert events.count(st.STAGED_OK) == 1, (name, events)
        if state not in (st.PENDING, st.STAGING):
            assert row.bytes_sent == sent, (name, sent, row.bytes_sent)
            assert not [e for e in journal if e.device_id == device_id and e.id > taken_at and e.event in
                        (st.STAGE, st.STAGED_OK)], name
        # 0 devices activated twice: one activation in the journal, and on the device one confirmed switch to
        # the artifact, never reverted.
        assert events.count(st.ACTIVATE) == 1, (name, events)
        history = agent_history(fleet, name)
        confirmed = [h for h in history if h.get("event") == "confirmed" and h.get("sha") == artifact]
        reverted = [h for h in history if h.get("event") == "reverted" and h.get("sha") == artifact]
        assert len(confirmed) == 1 and reverted == [], (name, history)
        if state == st.VERIFYING:  # mid-soak at the kill: reconciled from the agent, then measured and confirmed
            assert events[-2:] == [st.PASSED, st.CONFIRMED], (name, events)

    # 0 half-switched: every agent runs the artifact, nothing waits for a confirmation.
    async def views(fleet_: Fleet) -> dict[str, tuple[str | None, Any]]:
        found = {}
        for name in NAMES:
            view = await agent_view(fleet_, laptop, name)
            found[name] = (view.current, view.pending)
        return found

    assert laptop.with_fleet(views) == {name: (artifact, None) for name in NAMES}
    in_wave2 = sorted(names[i] for i, (wave, _, _) in at_kill.items() if wave == 1)
    print(f"\nkilled with wave 2 ({', '.join(in_wave2)}) at "
          f"{', '.join(f'{names[i]}={s}' for i, (w, s, _) in sorted(at_kill.items()) if w == 1)}; laptop-b took "
          f"over after waiting {taken['waited_s']:.1f} s (lease {LEASE_S:g} s) and finished {took_s:.0f} s after "
          "the kill")


OUTAGE_S = 10  # how long PostgreSQL stays stopped in the middle of wave 2
REASON = re.compile(r"^database unreachable from \d\d:\d\d:\d\d to \d\d:\d\d:\d\d UTC$")


def test_postgresql_stopped_mid_wave_pauses_the_rollout_with_the_reason_then_it_resumes_to_done(
        fleet: LabFleet, laptop: SharedLaptop, postgres: PostgresCluster, tmp_path: Path) -> None:
    artifact = small_model(laptop, tmp_path / "models", "edge-db", 52, sorted(set(PROFILE_OF.values())))
    model = "edge-db@1"
    targets = [a for n in NAMES for a in ("--device", n)]
    start = [sys.executable, "-m", "fleetdesk", "--db", laptop.url, "rollout", "start", model, *targets,
             "--waves", "1,3,100%", "--soak", "0", "--wave-policy", "2:soak=15", "--p95-ratio", "-1",
             "--confirm-within", "240", "--step-timeout", "180", "--json"]
    out, err = open(tmp_path / "driver.out", "wb"), open(tmp_path / "driver.err", "wb")
    child = subprocess.Popen(start, env=env_of(laptop.data_dir, tmp_path), stdout=out, stderr=err,
                             start_new_session=True)
    rid: int | None = None
    at_stop: dict[int, tuple[int, str, int]] = {}
    started = time.monotonic()
    try:
        watching = open_inventory(laptop.url)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and child.poll() is None:
                rid, rows = rollout_states(RolloutRepo(watching), model)
                if st.VERIFYING in [state for wave, state, _ in rows.values() if wave == 1]:
                    at_stop = rows
                    break
                time.sleep(0.3)
        finally:
            watching.close()
        assert at_stop and rid is not None, (tmp_path / "driver.err").read_text()[-3000:]
        postgres.stop()  # in the middle of wave 2: a device soaks on its new model
        time.sleep(OUTAGE_S)
        postgres.start()
        code = child.wait(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        out.close()
        err.close()
    told = (tmp_path / "driver.err").read_text()
    # The driver paused at a safe point with the outage as the reason, said so, and exited paused (3).
    assert code == 3, f"{(tmp_path / 'driver.out').read_text()[-2000:]}\n{told[-5000:]}"
    paused = json.loads((tmp_path / "driver.out").read_text())
    assert paused["status"] == "paused" and REASON.match(paused["paused_reason"]), paused
    assert f"rollout {rid}: database unreachable since" in told and "retrying" in told, told[-3000:]
    assert f"rollout {rid} paused: {paused['paused_reason']}" in told, told[-3000:]
    with open_inventory(laptop.url) as inventory:  # the pause is audited as the driver's, with what it kept meanwhile
        pauses = AuditRepo(inventory).entries(AuditFilter(target=f"rollout:{rid}", action="rollout.pause"), limit=None)
    assert len(pauses) == 1 and pauses[0].after["by"] == "fleetdesk", pauses
    assert pauses[0].after["reason"] == paused["paused_reason"]
    # What the soaking devices did while the database was away (passed, confirmed) was kept and written after.
    assert int(pauses[0].after["kept"]) >= 2, pauses[0].after

    resume = [sys.executable, "-m", "fleetdesk", "--db", laptop.url, "rollout", "resume", str(rid), "--json"]
    proc = subprocess.run(resume, env=env_of(laptop.data_dir, tmp_path), capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert json.loads(proc.stdout)["status"] == "done"
    took_s = time.monotonic() - started

    with open_inventory(laptop.url) as inventory:
        repo = RolloutRepo(inventory)
        journal = repo.journal(rid)
        after = {d.device_id: d for d in repo.devices(rid)}
        names = {d.id: d.name for d in inventory.devices()}
    # The rollout's own story: running, paused for the outage, running again (the operator), done.
    statuses = [(e.to_state, e.detail.get("reason", "")) for e in journal
                if e.device_id is None and e.event == "status"]
    assert [s for s, _ in statuses] == ["running", "paused", "running", "done"], statuses
    assert statuses[1][1] == paused["paused_reason"]
    for device_id, row in after.items():
        name = names[device_id]
        events = [e.event for e in journal if e.device_id == device_id]
        _, state, sent = at_stop[device_id]
        assert row.state == st.DONE, (name, row.state, row.error)
        # Nothing repeated: one staging (0 bytes sent again to a device staged before the stop), one activation,
        # one confirmation; nothing lost: every device's journal runs from pending to done without a gap.
        assert events.count(st.STAGED_OK) == 1 and events.count(st.ACTIVATE) == 1, (name, events)
        assert events.count(st.CONFIRMED) == 1, (name, events)
        if state not in (st.PENDING, st.STAGING):
            assert row.bytes_sent == sent, (name, sent, row.bytes_sent)
        mine = [e for e in journal if e.device_id == device_id]
        assert all(a.to_state == b.from_state for a, b in itertools.pairwise(mine)), (name, mine)
        # On the device: one confirmed switch to the artifact, never reverted (the agent's own history).
        history = agent_history(fleet, name)
        confirmed = [h for h in history if h.get("event") == "confirmed" and h.get("sha") == artifact]
        reverted = [h for h in history if h.get("event") == "reverted" and h.get("sha") == artifact]
        assert len(confirmed) == 1 and reverted == [], (name, history)

    async def views(fleet_: Fleet) -> dict[str, tuple[str | None, Any]]:
        return {name: ((view := await agent_view(fleet_, laptop, name)).current, view.pending) for name in NAMES}

    assert laptop.with_fleet(views) == {name: (artifact, None) for name in NAMES}
    in_wave2 = sorted(f"{names[i]}={s}" for i, (w, s, _) in at_stop.items() if w == 1)
    print(f"\nPostgreSQL stopped for {OUTAGE_S} s with wave 2 at {', '.join(in_wave2)}; paused "
          f"({paused['paused_reason']}), {pauses[0].after['kept']} journal entries kept meanwhile; resumed to done "
          f"{took_s:.0f} s after the start")
