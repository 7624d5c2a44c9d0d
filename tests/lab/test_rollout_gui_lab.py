"""The operator's rollout, end to end in the real window on real lab devices: ipc-01 and ipc-02 (x86_64),
provisioned by FleetDesk with this module's own signing key. The wizard opens for the selected devices from the
window's Roll out… action, a canary and then the rest roll out to done while the Rollouts tab follows live; a
second model with approval after the canary waits in the view until the operator presses Approve. What each
device really runs is asked of its agent (`fleetdesk-agent status`), not of the window.

The window is the one `fleetdesk-gui` builds (tests/gui_harness.py: it fails on any loop stall over 100 ms and
on leaked widgets, timers or tasks). It finds the laptop's inventory, artifact store and signing key the way it
does in production: under FLEETDESK_DATA_DIR.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from fleetdesk.gui.rollout_wizard import RolloutWizard
from fleetdesk.gui.wave_policy_table import APPROVE
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.profiles import load_profiles
from tests.gui.test_rollout_gui import edit, override, wave_rows
from tests.gui_harness import GuiSession, gui_session, private_qsettings
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import Laptop, new_laptop, provision_devices, small_model

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

NAMES = ("ipc-01", "ipc-02")  # the dev lab's devices lent to this module; by name, ipc-01 is the canary
ROOT = "/opt/fleetdesk"
FIRST, SECOND = "line-camera@1", "parts-counter@1"
ROLLOUT_S = 300.0  # the bound on a whole rollout of the small CNN to two devices (a few seconds when idle)


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Laptop:
    """Its own data folder: a signing key, a store with two small CNNs signed with golden outputs for ipc-x86, and
    both devices enrolled, trusted from the lab's known_hosts, probed and provisioned with that key."""
    laptop = new_laptop(tmp_path_factory.mktemp("gui-rollout-laptop"), load_profiles())
    work = tmp_path_factory.mktemp("gui-rollout-models")
    for seed, ref in enumerate((FIRST, SECOND), start=11):
        small_model(laptop, work, ref.split("@")[0], seed, ["ipc-x86"])
    provision_devices(fleet, laptop, NAMES, {name: "ipc-x86" for name in NAMES})
    return laptop


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screens")


@pytest.fixture(scope="module")
def session(laptop: Laptop, screens: Path) -> Iterator[GuiSession]:
    """The operator's window over the laptop's inventory, store and key (FLEETDESK_DATA_DIR is its data folder)."""
    import pytestqt.qtbot  # noqa: F401 - the QApplication comes from pytest-qt's plugin

    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLEETDESK_DATA_DIR", str(laptop.data_dir))
        private_qsettings(laptop.data_dir / "qsettings")
        with gui_session(laptop.db_url, screens) as gui:
            gui.wait(lambda: {r.ref for r in gui.window.models_view.records()} == {FIRST, SECOND},
                     "the store's two models in the Models view")
            # As fleetdesk-gui does after start-up (app.py): the heap built so far (onnx, onnxruntime, the
            # fixtures' models) out of the collector's sight, else a full collection holds the loop 120-150 ms.
            gc.collect()
            gc.freeze()
            try:
                yield gui
            finally:
                gc.unfreeze()


@pytest.fixture(autouse=True)
def released(session: GuiSession) -> Iterator[None]:
    """A test that fails halfway leaves its rollout active: it is aborted through the window (the engine rolls
    back a device under verification), so the next test, and the next module, find the devices free."""
    yield
    repo = RolloutRepo(session.bridge.fleet.inventory)
    for row in repo.list(active_only=True):
        abort = session.call(lambda rid=row.id: session.bridge.rollouts.rollout_action("abort", rid))
        session.wait(lambda a=abort: not a.running, f"rollout {row.id} aborted", timeout=180)
        if repo.get(row.id).status not in ("aborted", "done", "failed", "rolled-back"):
            repo.set_status(row.id, "aborted", reason="left active by a failed test")


def device_ids(session: GuiSession) -> dict[str, int]:
    return {v.device.name: v.id for v in session.window.fleet_model.views() if v.device.name in NAMES}


def no_latency_ratio(wizard: RolloutWizard) -> None:
    """Turn the wizard's p95-ratio gate off. These tests are about the window; the ratio of a tiny model's p95 on a
    2-core host shared by every lab device is timer noise (seen: 0.98 ms against 0.19 ms, beyond the gate's 0.5 ms
    slack, in a CI run). The gate itself is proven with a genuinely slower model in test_rollout_controls_lab."""
    ratio, _bound = wizard.gate_rows["p95_ratio_max"]
    ratio.setChecked(False)


def shown_wizard(session: GuiSession) -> RolloutWizard:
    """The rollout wizard on screen (a window of its own, shown on the loop's next pass)."""
    def find() -> RolloutWizard | None:
        found = [w for w in QApplication.topLevelWidgets() if isinstance(w, RolloutWizard) and w.isVisible()]
        return found[-1] if found else None

    session.wait(find, "the rollout wizard on screen")
    wizard = find()
    assert wizard is not None
    return wizard


def type_into(qtbot: Any, widget: Any, text: str) -> None:
    widget.selectAll()
    qtbot.keyClicks(widget, text)


def agent_status(lab: LabFleet, name: str) -> dict[str, Any]:
    """The device agent's own `status` result line (fleetdesk/agent/status.py)."""
    run = lab.ssh(lab.device(name), f"{ROOT}/bin/fleetdesk-agent status")
    assert run.exit_status == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return next(line for line in lines if line.get("type") == "result")


def device_states(session: GuiSession) -> dict[str, str]:
    """Each device row's State cell in the Rollouts tab, by device name."""
    view = session.window.rollouts_view
    assert view.detail is not None
    return {name: view.device_item(device_id).text(2) for device_id, name in view.detail.names.items()}


def wave_heads(session: GuiSession) -> list[tuple[str, str]]:
    waves = session.window.rollouts_view.waves
    return [(waves.topLevelItem(i).text(0), waves.topLevelItem(i).text(2)) for i in range(waves.topLevelItemCount())]


def watch_until(session: GuiSession, rid: int, statuses: set[str], what: str) -> float:
    """Let the window run until the Rollouts tab shows rollout `rid` in one of `statuses`; returns the seconds."""
    view = session.window.rollouts_view
    started = time.monotonic()
    session.wait(lambda: view.detail is not None and view.detail.row.id == rid and view.detail.row.status in statuses,
                 f"{what} (the view shows {view.detail.row.status if view.detail else 'nothing'})", timeout=ROLLOUT_S)
    return time.monotonic() - started


def test_an_operator_rolls_a_model_out_from_the_wizard_and_the_tab_follows_it_to_done(
        session: GuiSession, laptop: Laptop, fleet: LabFleet, qtbot: Any) -> None:
    window = session.window
    artifact = laptop.models[FIRST]
    ids = device_ids(session)
    assert set(ids) == set(NAMES)
    # The operator selects both devices in the fleet table and chooses Rollouts ▸ Roll out… (Ctrl+Shift+R).
    window.fleet_pane.select_devices(list(ids.values()))
    assert sorted(window.fleet_pane.selected_ids()) == sorted(ids.values())
    session.call(lambda: window.rollout_wizard_action.trigger())
    wizard = shown_wizard(session)
    assert sorted(d.id for d in wizard.target_devices()) == sorted(ids.values())  # the selection, checked
    wizard.model_combo.setCurrentIndex(wizard.model_combo.findData(FIRST))
    assert wizard.record() is not None and wizard.record().ref == FIRST
    type_into(qtbot, wizard.waves_edit, "1,100%")
    assert wizard.wave_sizes.text() == "2 devices → 2 waves of 1, 1 (a canary first)"
    wizard.soak_spin.setValue(0)
    golden, _bound = wizard.gate_rows["golden_min_cosine"]
    golden.setChecked(True)
    no_latency_ratio(wizard)
    assert wizard.error is None and wizard.start_button.isEnabled(), wizard.problem.text()
    plan = wizard.resolved.plan
    assert plan.model == FIRST and plan.policy.soak_s == 0 and plan.gates.golden_min_cosine == 0.99
    assert plan.gates.p95_ratio_max is None
    assert [list(wave) for wave in wizard.resolved.waves] == [[ids["ipc-01"]], [ids["ipc-02"]]]
    session.call(lambda: qtbot.mouseClick(wizard.start_button, Qt.MouseButton.LeftButton))

    # Start switches to the Rollouts tab, which follows the rollout live until it is done.
    view = window.rollouts_view
    assert window.tabs.currentWidget() is view
    session.wait(lambda: view.detail is not None and view.detail.row.model_ref == FIRST, "the rollout in the tab")
    rid = view.detail.row.id
    took = watch_until(session, rid, {"done", "paused", "failed", "aborted"}, "the rollout to end")
    print(f"rollout {rid} of {FIRST} to {len(NAMES)} lab devices: done in the view {took:.1f} s after Start")
    assert view.detail.row.status == "done", view.detail.row.paused_reason
    assert view.title.text() == f"Rollout {rid}: {FIRST} — done"
    assert device_states(session) == {name: f"● {st.DONE}" for name in NAMES}
    assert wave_heads(session) == [("Wave 1 (canary)", "1 of 1 done"), ("Wave 2", "1 of 1 done")]
    for device_id in ids.values():
        assert view.device_item(device_id).text(4) == "pass"
    assert {a for a, b in view.buttons.items() if b.isEnabled()} == {"rollback"}
    run = next(a for a in session.bridge.activities.all() if a.title == f"Rollout {rid}: {FIRST}")
    session.wait(lambda: not run.running, "the rollout's activity to end")
    assert run.state == "succeeded", run.summary

    # The golden gate was measured on each device and is plotted against its bound.
    for device_id in ids.values():
        session.call(lambda d=device_id: view.select_device(d))
        cosine, ok = view.gate_plot.shown["golden_cosine"]
        assert ok and cosine >= 100.0, cosine  # a share of the 0.99 bound: at or over the line

    # What the devices run, from their agents: the model's artifact is active, confirmed, and being served.
    for name in NAMES:
        status = agent_status(fleet, name)
        assert status["active"] == artifact, (name, status)
        assert status["pending"] is None and status["last_revert"] is None, (name, status)
        assert (status["serving"]["running"], status["serving"]["model"]) == (True, artifact), (name, status)

    session.call(lambda: view.select_device(ids["ipc-01"]))
    window.resize(1280, 800)
    session.settle(0.3)
    shot = session.screenshot(view, "rollouts-tab-lab-done")
    print(f"screenshot: {shot}")


def test_a_wave_waiting_for_approval_goes_on_when_the_operator_presses_approve(
        session: GuiSession, laptop: Laptop, fleet: LabFleet, qtbot: Any) -> None:
    window = session.window
    artifact = laptop.models[SECOND]
    ids = device_ids(session)
    before = {name: agent_status(fleet, name)["active"] for name in NAMES}
    assert all(active != artifact for active in before.values())
    # This time from the Models view: the model selected there, the devices in the fleet table, Roll out….
    window.tabs.setCurrentWidget(window.models_view)
    window.models_view.select(SECOND)
    assert window.models_view.selected_ref() == SECOND
    window.fleet_pane.select_devices(list(ids.values()))
    session.call(lambda: qtbot.mouseClick(window.models_rollout_button, Qt.MouseButton.LeftButton))
    wizard = shown_wizard(session)
    assert wizard.record() is not None and wizard.record().ref == SECOND
    type_into(qtbot, wizard.waves_edit, "1,100%")
    override(wizard, 0)  # the canary's own policy: the operator approves the next wave
    edit(wizard, 0, APPROVE, True)
    no_latency_ratio(wizard)
    assert wave_rows(wizard) == [["1 · canary · 1 device", "on", "100%", "0", "0", "on"],
                                 ["2 · 1 device", "off", "100%", "0", "0", "off"]]
    assert wizard.error is None and wizard.start_button.isEnabled(), wizard.problem.text()
    assert "then the operator must approve the next wave" in wizard.preview.toPlainText()
    session.call(lambda: qtbot.mouseClick(wizard.start_button, Qt.MouseButton.LeftButton))

    view = window.rollouts_view
    session.wait(lambda: view.detail is not None and view.detail.row.model_ref == SECOND, "the rollout in the tab")
    rid = view.detail.row.id
    assert view.selected_id() == rid  # the list follows the second rollout, not the first one chosen before it
    watch_until(session, rid, {"waiting-approval", "done", "paused", "failed", "aborted"}, "the canary's wave to end")
    assert view.detail.row.status == "waiting-approval", view.detail.row.paused_reason
    assert device_states(session) == {"ipc-01": f"● {st.DONE}", "ipc-02": f"● {st.PENDING}"}
    assert wave_heads(session) == [("Wave 1 (canary)", "1 of 1 done"), ("Wave 2", "0 of 1 done")]
    assert view.buttons["approve"].isEnabled()
    # The canary switched; the second device was not touched while the rollout waited.
    canary, rest = agent_status(fleet, "ipc-01"), agent_status(fleet, "ipc-02")
    assert (canary["active"], canary["pending"]) == (artifact, None)
    assert rest["active"] == before["ipc-02"] and artifact not in rest["artifacts"]
    session.settle(0.3)
    session.screenshot(view, "rollouts-tab-lab-waiting-approval")

    session.call(lambda: qtbot.mouseClick(view.buttons["approve"], Qt.MouseButton.LeftButton))
    watch_until(session, rid, {"done", "paused", "failed", "aborted"}, "the rollout to end after the approval")
    assert view.detail.row.status == "done", view.detail.row.paused_reason
    assert device_states(session) == {name: f"● {st.DONE}" for name in NAMES}
    approval = next(a for a in session.bridge.activities.all() if a.title == f"Approve rollout {rid}")
    session.wait(lambda: not approval.running, "the approval's drive to end")
    assert approval.state == "succeeded", approval.summary
    trail = session.bridge.fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}"))
    audit = [(a.action, a.outcome) for a in trail]
    assert ("rollout.approve", "ok") in audit, audit
    for name in NAMES:
        status = agent_status(fleet, name)
        assert (status["active"], status["pending"], status["previous"]) == (artifact, None, before[name]), status
    session.settle(0.3)
    session.screenshot(view, "rollouts-tab-lab-approved-done")
