"""A rollout survives its window closing: the operator closes FleetDesk while the canary soaks; the window pauses
the rollout once the step under way is done (no device is left half-switched); the next window offers to continue
it and, when the operator accepts, finishes it on the real devices without re-sending anything. The operator also
pauses and resumes a rollout with the Rollouts tab's own buttons, then rolls one device back to the model it ran
before with Roll back ▸ This device.

Devices: ipc-01 and ipc-02 (x86_64), provisioned with this module's signing key; ipc-01 is the canary by name.
The windows are the ones `fleetdesk-gui` builds (tests/gui_harness.py), one after the other on one inventory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QMessageBox

from fleetdesk.gui.bridge_rollouts import WINDOW_CLOSED
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.rollout.policy import Gates, WavePolicy
from tests.gui_harness import GuiSession, gui_session, private_qsettings
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import Laptop, new_laptop, provision_devices, small_model
from tests.lab.test_rollout_gui_lab import NAMES, agent_status, device_ids

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

# NAMES (ipc-01, ipc-02) as test_rollout_gui_lab lends them; by name, ipc-01 is the canary
FIRST, SECOND = "press-line@1", "weld-check@1"
ROLLOUT_S = 300.0


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Laptop:
    laptop = new_laptop(tmp_path_factory.mktemp("gui-close-laptop"), load_profiles())
    work = tmp_path_factory.mktemp("gui-close-models")
    for seed, ref in enumerate((FIRST, SECOND), start=51):
        small_model(laptop, work, ref.split("@")[0], seed, ["ipc-x86"])
    provision_devices(fleet, laptop, NAMES, {name: "ipc-x86" for name in NAMES})
    return laptop


@pytest.fixture
def window_env(laptop: Laptop) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLEETDESK_DATA_DIR", str(laptop.data_dir))
        private_qsettings(laptop.data_dir / "qsettings")
        yield


def repo_of(laptop: Laptop) -> tuple[Any, RolloutRepo]:
    inventory = open_inventory(laptop.db_url)
    return inventory, RolloutRepo(inventory)


def states(session: GuiSession, rid: int) -> dict[str, str]:
    repo = RolloutRepo(session.bridge.fleet.inventory)
    names = {v: k for k, v in device_ids(session).items()}
    return {names[d.device_id]: d.state for d in repo.devices(rid)}


def test_closing_the_window_pauses_the_rollout_and_the_next_window_continues_it(
        laptop: Laptop, fleet: LabFleet, window_env: None, tmp_path: Path) -> None:
    screens = tmp_path  # the harness also copies each picture to FLEETDESK_SCREENSHOTS when set
    artifact = laptop.models[FIRST]
    with gui_session(laptop.db_url, screens) as session:
        ids = device_ids(session)
        plan = RolloutPlan(model=FIRST, devices=tuple(ids.values()), waves=(1, "100%"),
                           policy=WavePolicy(soak_s=6.0), gates=Gates(p95_ratio_max=None))
        session.call(lambda: session.bridge.rollouts.start_rollout(plan, list(ids.values())))
        repo = RolloutRepo(session.bridge.fleet.inventory)
        session.wait(lambda: any(r.model_ref == FIRST for r in repo.list()), "the rollout journaled")
        rid = next(r.id for r in repo.list() if r.model_ref == FIRST)
        session.wait(lambda: states(session, rid).get("ipc-01") == st.VERIFYING, "the canary soaking",
                     timeout=ROLLOUT_S)
    # The window is closed (the harness runs the quit path): the rollout paused at the end of the canary's step.
    inventory, repo = repo_of(laptop)
    try:
        row = repo.get(rid)
        assert (row.status, row.paused_reason) == ("paused", WINDOW_CLOSED)
        closed_at = {d.device_id: d.state for d in repo.devices(rid)}
        assert closed_at[ids["ipc-01"]] == st.DONE and closed_at[ids["ipc-02"]] in (st.PENDING, st.STAGED), closed_at
        sent = {d.device_id: d.bytes_sent for d in repo.devices(rid)}
    finally:
        inventory.close()
    canary = agent_status(fleet, "ipc-01")
    assert (canary["active"], canary["pending"]) == (artifact, None), canary  # whole: switched and confirmed

    with gui_session(laptop.db_url, screens) as session:
        window = session.window
        session.wait(lambda: window.model_actions.recovery_box is not None, "the offer to continue")
        box = window.model_actions.recovery_box
        assert box.text() == f"Rollout {rid} ({FIRST}) was paused when FleetDesk's window closed."
        session.screenshot(box, "recover-after-close")
        accept = next(b for b in box.buttons() if box.buttonRole(b) == QMessageBox.ButtonRole.AcceptRole)
        session.call(lambda: accept.click())
        repo = RolloutRepo(session.bridge.fleet.inventory)

        def resumed() -> Any:
            return next((a for a in session.bridge.activities.all() if a.title == f"Resume rollout {rid}"), None)

        session.wait(resumed, "the rollout resumed")
        session.wait(lambda: not resumed().running, "the resumed rollout to end", timeout=ROLLOUT_S)
        assert resumed().state == "succeeded", resumed().summary
        assert repo.get(rid).status == "done", repo.get(rid).paused_reason
        for device in repo.devices(rid):
            assert device.state == st.DONE
            events = [e.event for e in repo.journal(rid, device_id=device.device_id)]
            assert events.count(st.ACTIVATE) == 1 and events.count(st.STAGED_OK) == 1, events
            if device.device_id == ids["ipc-01"]:
                assert device.bytes_sent == sent[device.device_id]  # nothing sent to the canary again
        trail = session.bridge.fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}"))
        audit = [(a.action, a.outcome) for a in trail]
        assert ("rollout.pause", "ok") in audit and ("rollout.resume", "ok") in audit, audit

        session.settle(0.3)


def test_pause_and_resume_from_the_rollouts_tab(laptop: Laptop, fleet: LabFleet, window_env: None,
                                                 tmp_path: Path) -> None:
    screens = tmp_path  # the harness also copies each picture to FLEETDESK_SCREENSHOTS when set
    artifact = laptop.models[SECOND]
    with gui_session(laptop.db_url, screens) as session:
        window = session.window
        ids = device_ids(session)
        plan = RolloutPlan(model=SECOND, devices=tuple(ids.values()), waves=(1, "100%"),
                           policy=WavePolicy(soak_s=8.0), gates=Gates(p95_ratio_max=None))
        session.call(lambda: session.bridge.rollouts.start_rollout(plan, list(ids.values())))
        view = window.rollouts_view
        session.wait(lambda: view.detail is not None and view.detail.row.model_ref == SECOND, "the rollout in the tab")
        rid = view.detail.row.id
        session.wait(lambda: states(session, rid).get("ipc-01") == st.VERIFYING, "the canary soaking",
                     timeout=ROLLOUT_S)
        session.wait(lambda: view.buttons["pause"].isEnabled(), "Pause enabled")
        session.call(lambda: view.buttons["pause"].click())
        session.wait(lambda: view.detail is not None and view.detail.row.status == "paused", "the tab to show paused",
                     timeout=ROLLOUT_S)
        run = next(a for a in session.bridge.activities.all() if a.title == f"Rollout {rid}: {SECOND}")
        session.wait(lambda: not run.running, "the drive to stop at the step's end", timeout=ROLLOUT_S)
        assert states(session, rid) == {"ipc-01": st.DONE, "ipc-02": st.PENDING}
        assert agent_status(fleet, "ipc-02")["active"] != artifact  # not touched while paused
        assert view.buttons["resume"].isEnabled() and not view.buttons["pause"].isEnabled()
        session.call(lambda: view.buttons["resume"].click())
        session.wait(lambda: view.detail is not None and view.detail.row.status == "done", "the tab to show done",
                     timeout=ROLLOUT_S)
        assert states(session, rid) == {"ipc-01": st.DONE, "ipc-02": st.DONE}
        for name in NAMES:
            status = agent_status(fleet, name)
            assert (status["active"], status["pending"]) == (artifact, None), (name, status)

        # Roll back ▸ This device, on ipc-02 chosen in the tab: only it goes back to what it ran before.
        session.call(lambda: view.select_device(ids["ipc-02"]))
        assert view.selected_device() == ids["ipc-02"]
        before = agent_status(fleet, "ipc-02")
        session.call(lambda: view.rollback_device.trigger())

        def rollback() -> Any:
            return next((a for a in session.bridge.activities.all() if a.title.startswith("Rollback device")), None)

        session.wait(rollback, "the rollback started")
        session.wait(lambda: not rollback().running, "the rollback to end", timeout=ROLLOUT_S)
        assert rollback().state == "succeeded", rollback().summary
        assert rollback().title == f"Rollback device {ids['ipc-02']} of rollout {rid}"
        assert states(session, rid) == {"ipc-01": st.DONE, "ipc-02": st.ROLLED_BACK}
        after = agent_status(fleet, "ipc-02")
        assert after["active"] == before["previous"] == laptop.models[FIRST] and after["pending"] is None, after
        assert agent_status(fleet, "ipc-01")["active"] == artifact
        session.settle(0.3)
