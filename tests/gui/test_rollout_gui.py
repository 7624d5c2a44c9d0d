"""The rollout wizard and the live Rollouts view, in the real window over a real SQLite inventory and a real
signed artifact store (test keyring). No device is contacted: the devices are inventory rows only, and every
rollout here is planned, paused, aborted or blocked before its first step, or written with RolloutRepo directly.
"""

from __future__ import annotations

import fcntl
import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QGroupBox

from fleetdesk.artifacts.signing import KEYRING_ACCOUNT
from fleetdesk.artifacts.store import ArtifactStore, write_golden
from fleetdesk.config import Settings
from fleetdesk.gui.activities import SUCCEEDED
from fleetdesk.gui.bridge_rollouts import WINDOW_CLOSED
from fleetdesk.gui.overview import colours
from fleetdesk.gui.rollout_display import GATE_PLOT_MIN_HEIGHT, GatePlot, gate_notes_html
from fleetdesk.gui.rollout_view import ROLLOUT_ROLE
from fleetdesk.gui.rollout_wizard import RolloutWizard, section_of
from fleetdesk.gui.wave_policy_table import APPROVE, ERRORS, OVERRIDE, SOAK, SUCCESS
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.records import ProbeFacts
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.report import (
    BASELINE,
    BASELINE_STATUS,
    CHOSEN,
    Accuracy,
    OptimizationReport,
    ProfileResult,
    Tolerance,
    Variant,
)
from fleetdesk.rollout.engine import RolloutEvent
from fleetdesk.rollout.gates import GateSample, evaluate
from fleetdesk.rollout.plan import RolloutPlan, database_loss_text, plan_text, resolve, takeover_text
from fleetdesk.rollout.policy import DATABASE_LOSS_POLICIES, TAKEOVER_POLICIES, Gates, ShadowPolicy, WavePolicy
from fleetdesk.transport import credentials
from tests.fixtures.models.build import save_cnn
from tests.gui_harness import GuiSession, gui_session, shown_text
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]

SHOTS = Path(os.environ.get("FLEETDESK_SHOTS7", "/tmp/shots7"))
IPC = [f"line1-ipc-{i:02d}" for i in range(1, 9)]
PIS = ["line1-pi-01", "line1-pi-02"]
NO_BASELINE = "the device ran no model before: nothing to compare with"  # gates.evaluate's note
NOTHING_BEFORE = GateSample(0.0, False, None, None, 0, 0, None, None, None)  # a baseline with no model running


def shot(widget: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(SHOTS / f"{name}.png"))  # type: ignore[attr-defined]


def add_model(store: ArtifactStore, work: Path, name: str = "line-camera", seed: int = 3) -> str:
    """A small CNN signed into the store: a "graph" variant chosen for ipc-x86 (with figures), FP32 elsewhere."""
    folder = work / f"{name}-src"
    folder.mkdir(parents=True)
    path = save_cnn(folder / "model.onnx", seed=seed)
    card = inspect_model(path, name=name)
    rng = np.random.default_rng(seed)
    feeds = [{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    golden = write_golden(path, feeds, work / f"{name}-golden.npz")
    graph = work / f"{name}-graph"
    graph.mkdir()
    shutil.copy(path, graph / "model.onnx")
    size = path.stat().st_size
    base = Variant(BASELINE, BASELINE_STATUS, "the model as imported", size_bytes=size, local_latency_ms=2.0)
    chosen = Variant("graph", CHOSEN, "fastest variant within the tolerance", ("model.onnx",), str(graph),
                     size * 9 // 10, accuracy=Accuracy(1e-6, 0.9999, 1.0, 4, False), local_latency_ms=1.5)
    report = OptimizationReport(card.sha256, len(feeds), False, "test feeds", Tolerance(),
                                (ProfileResult("ipc-x86", ("graph",), (base, chosen), "graph"),))
    return store.add_model(card, report, name=name, version="1", source_folder=folder, golden=golden).ref


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyring_daemon: KeyringDaemon) -> Iterator[Path]:
    """Ten probed devices (eight ipc-x86, two rpi4; documentation addresses, never contacted), the group
    "line 1" of the Pis and two ipc, and a signed model in the store under FLEETDESK_DATA_DIR."""
    monkeypatch.setenv("FLEETDESK_DATA_DIR", str(tmp_path / "data"))
    credentials.delete_secret(KEYRING_ACCOUNT)
    inventory = open_inventory(f"sqlite:///{tmp_path / 'fleet.db'}")
    ids = {}
    for i, name in enumerate(IPC + PIS, start=1):
        device = inventory.add_device(f"192.0.2.{i}", name=name)
        arch, profile = ("aarch64", "rpi4") if name in PIS else ("x86_64", "ipc-x86")
        ids[name] = inventory.save_probe(device.id, ProbeFacts(hostname=name, machine_id=f"m-{i:02d}", arch=arch),
                                         profile=profile).id
    inventory.add_to_group("line 1", [ids[n] for n in (*PIS, IPC[0], IPC[1])])
    inventory.close()
    store = ArtifactStore.default(Settings.load())
    add_model(store, tmp_path / "work")
    try:
        yield tmp_path
    finally:
        gc.unfreeze()
        credentials.delete_secret(KEYRING_ACCOUNT)


@pytest.fixture
def session(world: Path, screens: Path) -> Iterator[GuiSession]:
    with gui_session(f"sqlite:///{world / 'fleet.db'}", screens) as gui:
        gui.wait(lambda: gui.window.models_view.records(), "the store's model in the Models view")
        yield gui


def all_ids(session: GuiSession) -> list[int]:
    return sorted(d.id for d in session.window.bridge.fleet.inventory.devices())


def open_wizard(session: GuiSession, ids: list[int]) -> RolloutWizard:
    wizard = session.call(lambda: session.window.model_actions.open_rollout_wizard("line-camera@1", ids))
    assert isinstance(wizard, RolloutWizard)
    session.wait(wizard.isVisible, "the wizard on screen")
    return wizard


def test_the_wizard_defaults_live_wave_sizes_variants_and_plan_preview(session: GuiSession) -> None:
    window = session.window
    wizard = open_wizard(session, all_ids(session))
    assert not wizard.isModal() or wizard.windowModality().name == "WindowModal"  # open(), never exec()
    assert wizard.waves_edit.text() == "1, 10%, 50%, 100%"
    assert (wizard.success_edit.text(), wizard.errors_edit.text()) == ("100%", "0")
    assert wizard.soak_spin.value() == 0 and wizard.confirm_spin.value() == 300
    assert wizard.prestage_box.isChecked() and wizard.unreachable_combo.currentData() == "wait"
    # Ansible serial over 10 devices: 1, 10% -> 1, 50% -> 5, then 100% takes the 3 left.
    assert wizard.wave_sizes.text() == "10 devices → 4 waves of 1, 1, 5, 3 (a canary first)"
    assert wizard.start_button.isEnabled() and wizard.error is None
    variants = {wizard.variants.topLevelItem(i).text(0): [wizard.variants.topLevelItem(i).text(c) for c in range(6)]
                for i in range(wizard.variants.topLevelItemCount())}
    assert variants["ipc-x86"][1:] == ["8", "graph", variants["ipc-x86"][3], "cosine 0.9999, top-1 100 %",
                                       "1.50 ms (laptop, ×0.75 FP32)"]
    assert variants["ipc-x86"][3].startswith("90 % (")
    assert variants["rpi4"][1:3] == ["2", "FP32 as imported"]
    # The preview is exactly what `fleetdesk rollout plan` prints for this plan on the real inventory.
    store = window.bridge.models.artifact_store()
    expected = plan_text(resolve(wizard.plan(), window.bridge.fleet.inventory, store))
    assert wizard.preview.toPlainText() == expected
    assert "the next wave starts when at least 1 of 1 is done (success 100%, reached: >=)" in expected
    # Live: the sizes and the plan follow every edit.
    wizard.waves_edit.setText("2, 50%")
    assert wizard.wave_sizes.text() == "10 devices → 3 waves of 2, 5, 3"
    assert "in 3 waves" in wizard.preview.toPlainText()
    wizard.errors_edit.setText("20%")
    assert "failure number 2 pauses the rollout (errors 20%: more than 1 of 5)" in wizard.preview.toPlainText()
    wizard.waves_edit.setText("1, 10%, 50%, 100%")
    wizard.errors_edit.setText("0")
    shot(wizard, "rollout-wizard")
    size = wizard.size()
    wizard.resize(size.width(), 1700)  # every section at once, for the record
    shot(wizard, "rollout-wizard-tall")
    wizard.resize(size)
    wizard.reject()


def test_the_wizards_shadow_section_makes_the_plans_shadow_step(session: GuiSession) -> None:
    """Off by default; switched on, its fields make the plan's ShadowPolicy (and the preview says it), a judged
    figure unticked is not judged, and it goes off again with the box."""
    window = session.window
    wizard = open_wizard(session, all_ids(session))
    assert not wizard.shadow_box.isChecked() and not wizard.shadow_share_spin.isEnabled()
    assert wizard.plan().shadow is None
    assert "none: each device activates the new model as soon as it is staged" in wizard.preview.toPlainText()
    wizard.shadow_box.setChecked(True)
    assert wizard.shadow_share_spin.isEnabled() and wizard.plan().shadow == ShadowPolicy()  # the same defaults
    wizard.shadow_share_spin.setValue(50)
    wizard.shadow_min_spin.setValue(300)
    wizard.shadow_wait_spin.setValue(120)
    wizard.shadow_judged["p95_ratio_max"][0].setChecked(False)
    assert not wizard.shadow_judged["p95_ratio_max"][1].isEnabled()
    wizard.shadow_judged["min_agreement"][1].setValue(0.95)
    wizard.shadow_waves_combo.setCurrentIndex(wizard.shadow_waves_combo.findData("canary"))
    wizard.shadow_skip_combo.setCurrentIndex(wizard.shadow_skip_combo.findData("pass"))
    assert wizard.plan().shadow == ShadowPolicy(share=0.5, min_requests=300, min_agreement=0.95,
                                                p95_ratio_max=None, max_wait_s=120.0, waves="canary", on_skip="pass")
    preview = wizard.preview.toPlainText()
    assert preview == plan_text(resolve(wizard.plan(), window.bridge.fleet.inventory,
                                        window.bridge.models.artifact_store()))
    assert "the devices of wave 1 (the canary's) only" in preview and "latency: not judged" in preview
    assert wizard.start_button.isEnabled()
    size = wizard.size()
    wizard.resize(size.width(), 1900)
    shot(wizard, "rollout-wizard-shadow")
    wizard.resize(size)
    wizard.shadow_box.setChecked(False)
    assert wizard.plan().shadow is None and not wizard.shadow_min_spin.isEnabled()
    wizard.reject()


def test_the_wizard_opened_for_a_group_targets_the_group(session: GuiSession) -> None:
    """A model dropped on a group: the plan names the group (its members are resolved when it starts), not the
    devices that happen to be in it now."""
    members = sorted(d.id for d in session.window.bridge.fleet.inventory.devices(group="line 1"))
    wizard = session.call(lambda: session.window.model_actions.open_rollout_wizard("line-camera@1", group="line 1"))
    assert isinstance(wizard, RolloutWizard)
    session.wait(wizard.isVisible, "the wizard on screen")
    plan = wizard.plan()
    assert (plan.groups, plan.devices) == (("line 1",), ())
    assert sorted(d.id for d in wizard.target_devices()) == members and len(members) == 4
    assert wizard.start_button.isEnabled(), wizard.problem.text()
    wizard.reject()


def test_the_wizard_names_the_field_and_the_fix_and_holds_start(session: GuiSession) -> None:
    wizard = open_wizard(session, all_ids(session))
    wizard.waves_edit.setText("1, 0%")
    assert not wizard.start_button.isEnabled() and not wizard.plan_button.isEnabled()
    assert wizard.error is not None and wizard.error.field == "waves[1]"
    assert wizard.errors["waves"].isVisibleTo(wizard)
    assert wizard.errors["waves"].text().startswith("'0%' is not a share from 1% to 100% — fix: write waves as")
    assert "border" in wizard.waves_edit.styleSheet()
    assert wizard.preview.toPlainText() == ""
    assert wizard.problem.text().startswith("Not ready: waves[1]: ")
    wizard.waves_edit.setText("1, 50%")
    assert wizard.start_button.isEnabled() and wizard.waves_edit.styleSheet() == ""
    assert not wizard.errors["waves"].isVisibleTo(wizard)

    wizard.errors_edit.setText("a few")
    assert not wizard.start_button.isEnabled() and wizard.error.field == "policy.errors"
    assert "'a few' is not a threshold" in wizard.errors["thresholds"].text()
    assert "a count of devices such as 2" in wizard.errors["thresholds"].text()
    wizard.errors_edit.setText("1")

    wizard.soak_spin.setValue(400)  # longer than the 300 s the device waits for its confirmation
    assert not wizard.start_button.isEnabled() and wizard.error.field == "confirm_within_s"
    assert "every device would go back to its old model" in wizard.errors["soak"].text()
    wizard.confirm_spin.setValue(900)
    assert wizard.start_button.isEnabled()

    for i in range(wizard.device_list.count()):
        wizard.device_list.item(i).setCheckState(wizard.device_list.item(i).checkState().Unchecked)
    assert not wizard.start_button.isEnabled()
    assert wizard.errors["targets"].text().startswith("the plan targets no device — fix:")
    assert wizard.wave_sizes.text() == "No device chosen yet: the waves are sized when targets are chosen."
    wizard.group_list.item(0).setCheckState(wizard.group_list.item(0).checkState().Checked)  # "line 1"
    assert wizard.start_button.isEnabled()
    assert wizard.wave_sizes.text() == "4 devices → 3 waves of 1, 2, 1 (a canary first)"
    assert wizard.resolved is not None and wizard.resolved.plan.groups == ("line 1",)
    wizard.reject()


def test_a_planned_rollout_from_the_wizard_is_paused_and_aborted_through_the_engine(session: GuiSession) -> None:
    window = session.window
    # Every device (10): the engine writes each device's journal entry on the window's inventory thread, one
    # SQLite commit each, so aborting them all never holds the loop past the harness's 100 ms bar.
    ids = all_ids(session)
    wizard = open_wizard(session, ids)
    wizard.approve_box.setChecked(True)
    session.call(lambda: wizard.plan_button.click())  # Save as planned: engine.start, no device touched
    view = window.rollouts_view
    session.wait(lambda: view.detail is not None and view.detail.row.status == "planned", "the planned rollout")
    assert window.tabs.currentWidget() is view
    rid = view.detail.row.id
    assert view.list.topLevelItemCount() == 1 and view.list.topLevelItem(0).text(2) == "planned"
    heads = [view.waves.topLevelItem(i) for i in range(view.waves.topLevelItemCount())]
    assert [h.text(0) for h in heads] == ["Wave 1 (canary)", "Wave 2", "Wave 3", "Wave 4"]
    assert [h.childCount() for h in heads] == [1, 1, 5, 3]  # 1, 10% of 10, 50% of 10, the 3 left
    assert heads[0].child(0).text(0) == "line1-ipc-01" and heads[0].child(0).text(2) == "● pending"
    enabled = {a for a, b in view.buttons.items() if b.isEnabled()}
    assert enabled == {"pause", "resume", "abort"} and view.buttons["resume"].text() == "Start"

    repo = RolloutRepo(window.bridge.fleet.inventory)
    session.call(lambda: view.buttons["pause"].click())
    session.wait(lambda: view.detail.row.status == "paused", "paused")
    assert repo.get(rid).paused_reason == "paused by the operator"
    assert {a for a, b in view.buttons.items() if b.isEnabled()} == {"resume", "abort", "rollback"}
    session.call(lambda: view.buttons["abort"].click())
    session.wait(lambda: view.detail.row.status == "aborted", "aborted")
    session.wait(lambda: all(d.state == st.SKIPPED for d in view.detail.devices), "every device skipped")
    assert {a for a, b in view.buttons.items() if b.isEnabled()} == {"rollback"}
    trail = window.bridge.fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}"))
    audit = [(a.action, a.outcome) for a in reversed(trail)]
    assert audit == [("rollout.start", "planned"), ("rollout.pause", "ok"), ("rollout.abort", "ok")]
    statuses = [(e.from_state, e.to_state) for e in repo.journal(rid) if e.device_id is None]
    assert statuses == [("", "planned"), ("planned", "paused"), ("paused", "aborted")]


def test_the_shadow_step_is_plotted_live_per_device_against_the_plans_bounds(session: GuiSession) -> None:
    """A rollout whose plan shadows: the engine's shadow events (through the bridge's own handler) draw the chosen
    device's agreement and p95 ratio against the requests compared, with the plan's bounds; another device's
    events do not enter its curve; a plan without a shadow step shows no such plot."""
    window = session.window
    wizard = open_wizard(session, all_ids(session))
    wizard.shadow_box.setChecked(True)
    wizard.shadow_judged["min_agreement"][1].setValue(0.97)
    session.call(lambda: wizard.plan_button.click())
    view = window.rollouts_view
    session.wait(lambda: view.detail is not None and view.detail.row.status == "planned", "the planned rollout")
    rid = view.detail.row.id
    canary, other = (d.device_id for d in sorted(view.detail.devices, key=lambda d: d.wave)[:2])
    session.call(lambda: view.select_device(canary))
    assert view.plot_tabs.isTabVisible(1) and view.shadow_plot.points == []
    session.call(lambda: view.plot_tabs.setCurrentWidget(view.shadow_plot))
    for compared, agreement, ratio in ((20, 1.0, 0.9), (60, 0.99, 1.05), (120, 0.985, 1.1)):
        window.bridge.rollouts._rollout_event(RolloutEvent(
            rid, "gates", canary, st.STAGED, f"shadow {compared}/200 requests compared",
            figures={"compared": float(compared), "agreement": agreement, "p95_ratio": ratio}))
    window.bridge.rollouts._rollout_event(RolloutEvent(
        rid, "gates", other, st.STAGED, "shadow 10/200", figures={"compared": 10.0, "agreement": None,
                                                                  "p95_ratio": None}))
    session.call(lambda: view.select_device(canary))
    assert view.shadow_plot.points == [(20.0, 1.0, 0.9), (60.0, 0.99, 1.05), (120.0, 0.985, 1.1)]
    xs, ys = view.shadow_plot.agreement.getData()
    assert list(xs) == [20.0, 60.0, 120.0] and list(ys) == [1.0, 0.99, 0.985]
    assert sorted(line.value() for line in view.shadow_plot.bounds) == [0.97, 1.2]  # the plan's two bounds
    assert "Shadow step of line1-ipc-01" in view.shadow_plot.getPlotItem().titleLabel.text
    session.settle(0.2)
    shot(view, "rollouts-shadow-plot")
    session.call(lambda: view.select_device(other))
    assert view.shadow_plot.points == [(10.0, None, None)]  # not measured yet: no point drawn, none invented
    session.call(lambda: view.buttons["abort"].click())
    session.wait(lambda: view.detail.row.status == "aborted", "aborted")

    wizard = open_wizard(session, all_ids(session))
    session.call(lambda: wizard.plan_button.click())
    session.wait(lambda: view.detail is not None and view.detail.row.id != rid, "the rollout without a shadow")
    assert not view.plot_tabs.isTabVisible(1) and not view.plot_tabs.tabBar().isVisible()
    assert view.plot_tabs.currentWidget() is not view.shadow_plot


def test_the_wizards_driver_and_database_choices_reach_the_stored_plan(session: GuiSession) -> None:
    """"If its driver or the database goes away": one choice per plan policy, the plan's defaults first, each item
    told by the plan module's text; the chosen ones are in the plan the wizard starts and in the stored rollout."""
    window = session.window
    wizard = open_wizard(session, all_ids(session))
    box = wizard.findChild(QGroupBox, "Section_takeover")
    assert box is not None and box.title() == "If its driver or the database goes away"
    defaults = RolloutPlan(model="line-camera@1")
    for combo, policies, text, default in (
            (wizard.takeover_combo, TAKEOVER_POLICIES, takeover_text, defaults.takeover),
            (wizard.database_loss_combo, DATABASE_LOSS_POLICIES, database_loss_text, defaults.on_database_loss)):
        assert [combo.itemData(i) for i in range(combo.count())] == list(policies)
        assert [shown_text(combo.itemData(i, Qt.ItemDataRole.ToolTipRole)) for i in range(combo.count())] == [
            text(p) for p in policies]
        assert combo.currentData() == default and shown_text(combo.toolTip()) == text(default)
    plan = wizard.plan()
    assert (plan.takeover, plan.on_database_loss) == (defaults.takeover, defaults.on_database_loss) == ("ask", "pause")
    assert f"takeover (ask): {takeover_text('ask')}" in wizard.preview.toPlainText()

    wizard.takeover_combo.setCurrentIndex(wizard.takeover_combo.findData("auto"))
    wizard.database_loss_combo.setCurrentIndex(wizard.database_loss_combo.findData("resume"))
    assert shown_text(wizard.takeover_combo.toolTip()) == takeover_text("auto")
    assert shown_text(wizard.database_loss_combo.toolTip()) == database_loss_text("resume")
    preview = wizard.preview.toPlainText()  # re-planned on each change
    assert f"takeover (auto): {takeover_text('auto')}" in preview
    assert f"database unreachable (resume): {database_loss_text('resume')}" in preview
    assert wizard.start_button.isEnabled(), wizard.problem.text()
    session.call(lambda: wizard.plan_button.click())  # Save as planned: engine.start, no device touched
    view = window.rollouts_view
    session.wait(lambda: view.detail is not None and view.detail.row.status == "planned", "the planned rollout")
    rid = view.detail.row.id
    stored = RolloutRepo(window.bridge.fleet.inventory).get(rid).plan
    assert (stored["takeover"], stored["on_database_loss"]) == ("auto", "resume")
    assert RolloutPlan.from_dict(stored).takeover == "auto"
    session.call(lambda: view.buttons["abort"].click())
    session.wait(lambda: view.detail.row.status == "aborted", "aborted")


def test_an_action_on_a_rollout_another_operator_acted_on_since_is_refused_naming_them(
        session: GuiSession, world: Path) -> None:
    """Another laptop (bob) pauses the rollout this window shows as planned: the window's Abort, clicked on that
    view, is refused naming bob, nothing of it is written, and the view shows the rollout paused; clicked again
    on that view, it aborts."""
    from fleetdesk.fleet import Fleet
    from fleetdesk.profiles import load_profiles
    from fleetdesk.rollout.engine import RolloutEngine

    window = session.window
    wizard = open_wizard(session, all_ids(session)[:2])
    session.call(lambda: wizard.plan_button.click())
    view = window.rollouts_view
    session.wait(lambda: view.detail is not None and view.detail.row.status == "planned", "the planned rollout")
    rid = view.detail.row.id
    assert view.detail.row.version == 1
    rollouts = window.bridge.rollouts
    # The view's own reads after the start are done: from here on it shows what it read, until it reads again.
    session.wait(lambda: rollouts._refreshing is None or rollouts._refreshing.done(), "the view's reads done")
    window.bridge.fleet.access.add_operator("bob", ["deployer"])
    other_laptop = Fleet(open_inventory(f"sqlite:///{world / 'fleet.db'}"), load_profiles(), operator="bob")
    try:
        session.run(RolloutEngine(other_laptop, ArtifactStore.default()).pause(rid, "bob looks at line 1"),
                    watch=False)
    finally:
        session.run(other_laptop.close(), watch=False)
    assert view.detail.row.status == "planned"  # this window has not read it since

    session.call(lambda: view.buttons["abort"].click())
    session.wait(lambda: view.detail.row.status == "paused", "the view shows bob's pause")
    activities = window.bridge.activities.all()
    refused = next(a for a in activities if a.title == f"Abort rollout {rid}" and a.error is not None)
    assert f"rollout {rid} (line-camera@1) was changed by bob at " in str(refused.error)
    assert "now paused; you saw 1" in str(refused.error) and "your change was not made" in str(refused.error)
    repo = RolloutRepo(window.bridge.fleet.inventory)
    assert (repo.get(rid).status, repo.get(rid).version) == ("paused", 2)

    session.call(lambda: view.buttons["abort"].click())
    session.wait(lambda: view.detail.row.status == "aborted", "aborted from the view as it is now")
    audit = [(a.operator, a.action, a.outcome) for a in reversed(
        window.bridge.fleet.access.audit.entries(AuditFilter(target=f"rollout:{rid}")))]
    assert [a[1:] for a in audit] == [("rollout.start", "planned"), ("rollout.pause", "ok"),
                                      ("rollout.abort", "refused"), ("rollout.abort", "ok")]
    assert audit[1][0] == "bob"

def test_start_journals_the_rollout_then_drives_it_as_an_activity(session: GuiSession, world: Path) -> None:
    """Start = engine.start + engine.run in one activity. The run is refused here because the test holds the
    rollout's lock (as another FleetDesk process would), so no device is contacted."""
    window = session.window
    locks = world / "data" / "rollout-locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / "1.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        wizard = open_wizard(session, all_ids(session)[:3])
        session.call(lambda: wizard.start_button.click())
        session.wait(lambda: any(a.title.startswith("Rollout 1: ") and not a.running
                                 for a in window.bridge.activities.all()), "the rollout's activity to end")
        activity = next(a for a in window.bridge.activities.all() if a.title.startswith("Rollout 1: "))
        assert activity.state == "failed" and "being driven by another FleetDesk process" in activity.summary
        assert set(activity.devices) == set(all_ids(session)[:3])
        assert RolloutRepo(window.bridge.fleet.inventory).get(1).status == "planned"
    finally:
        os.close(fd)


def test_a_second_rollout_started_is_the_one_chosen_in_the_list_and_shown(session: GuiSession) -> None:
    """The list's selection follows the rollout just started, not the one chosen before it (the window selects
    the new rollout when it is announced, so its row must be in the list by then)."""
    window = session.window
    view = window.rollouts_view
    ids = all_ids(session)
    rids = []
    for devices in (ids[:2], ids[2:4]):
        activity = session.call(lambda d=devices: window.model_actions.start_rollout(
            RolloutPlan("line-camera@1", devices=tuple(d)), run=False, device_ids=d))
        session.wait(lambda a=activity: not a.running, "the rollout planned")
        assert activity.state == "succeeded", activity.summary
        rid = RolloutRepo(window.bridge.fleet.inventory).list()[-1].id
        rids.append(rid)
        session.wait(lambda r=rid: view.detail is not None and view.detail.row.id == r, f"rollout {rid} shown")
        session.settle(0.1)  # what the selection asked of the bridge (watch_rollout) has answered
        assert view.selected_id() == rid, (view.selected_id(), rid)
        assert view.detail.row.id == rid
        assert [view.list.topLevelItem(i).data(0, ROLLOUT_ROLE)
                for i in range(view.list.topLevelItemCount())] == sorted(rids, reverse=True)
    assert rids[1] > rids[0]
    assert [item.text(0) for item in view.list.selectedItems()] == [str(rids[1])]


def make_running_rollout(world: Path) -> int:
    """A rollout written as the engine writes one, mid-way: the canary done with its gates, one device copying,
    one failed on a gate, the rest pending; status running (as a crash leaves it)."""
    inventory = open_inventory(f"sqlite:///{world / 'fleet.db'}")
    store = ArtifactStore.default(Settings.load())
    try:
        names = {d.name: d.id for d in inventory.devices()}
        plan = RolloutPlan("line-camera@1", devices=tuple(names[n] for n in IPC[:4] + PIS[:1]), waves=(1, 2, "100%"),
                           policy=WavePolicy(errors="1"))
        resolved = resolve(plan, inventory, store)
        repo = RolloutRepo(inventory)
        rid = repo.create(resolved, "operator").id
        repo.set_status(rid, "running")
        canary, second, third = resolved.waves[0][0], resolved.waves[1][0], resolved.waves[1][1]
        ok = {"passed": True, "reason": "", "samples": 3, "values": {
            "serving": {"value": True, "bound": True, "ok": True},
            "p95_ms": {"value": 12.5, "bound": 50.0, "ok": True},
            "p95_ratio": {"value": 0.8, "bound": 1.5, "ok": True},
            "error_rate": {"value": 0.0, "bound": 0.01, "ok": True},
            "golden_cosine": {"value": 0.9999, "bound": 0.99, "ok": True},
            "temperature_c": {"value": 61.0, "bound": 85.0, "ok": True},
            "memory_free_pct": {"value": 42.0, "bound": 10.0, "ok": True}}}
        hot = {**ok, "passed": False, "reason": "temperature 91 °C is above 85 °C",
               "values": {**ok["values"], "temperature_c": {"value": 91.0, "bound": 85.0, "ok": False}}}
        # The canary ran no model before: its ratio gate does not apply (the real verdict over one measurement).
        first = {**evaluate(Gates(), NOTHING_BEFORE, [GateSample(0.0, True, "sha", 12.5, 100, 0, 61.0, 42.0, 0.9999)])
                 .to_dict(), "samples": 1}
        assert first["values"]["p95_ratio"] == {"value": None, "bound": 1.5, "ok": True, "note": NO_BASELINE}
        for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED):
            repo.record(rid, canary, event)
        repo.record(rid, canary, st.CONFIRMED, gates=first, bytes_sent=resolved.device(canary).size_bytes)
        repo.record(rid, second, st.STAGE)
        for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED):
            repo.record(rid, third, event)
        repo.record(rid, third, st.GATES_FAILED, gates=hot, error=hot["reason"], detail={"step": "verify"})
        return rid
    finally:
        inventory.close()


def test_the_live_view_shows_waves_states_progress_and_gates(world: Path, screens: Path) -> None:
    rid = make_running_rollout(world)
    with gui_session(f"sqlite:///{world / 'fleet.db'}", screens) as session:
        window = session.window
        # Left running with no process driving it: recovery is offered at start (declined here: no lab).
        session.wait(lambda: window.model_actions.recovery_box is not None, "the recovery offer")
        assert f"Rollout {rid} (line-camera@1) was still running" in window.model_actions.recovery_box.text()
        window.model_actions.recovery_box.reject()
        view = window.rollouts_view
        session.call(lambda: window.tabs.setCurrentWidget(view))
        session.wait(lambda: view.detail is not None and view.detail.row.id == rid, "the rollout's detail")
        names = {v: k for k, v in view.detail.names.items()}
        heads = [view.waves.topLevelItem(i) for i in range(view.waves.topLevelItemCount())]
        assert [h.text(2) for h in heads] == ["1 of 1 done", "0 of 2 done", "0 of 2 done"]
        canary = view.device_item(names["line1-ipc-01"])
        assert canary is not None and canary.text(2) == "● done" and canary.text(4) == "pass"
        assert canary.foreground(2).color() == QColor(window.rollouts_view.gate_plot.palette().text().color()) or \
            canary.foreground(2).color().name() == "#2e9d50"
        hot_id = next(d.device_id for d in view.detail.devices if d.state == st.ROLLING_BACK)
        hot = view.device_item(hot_id)
        assert hot.text(4) == "FAIL: temp" and hot.text(5) == "temperature 91 °C is above 85 °C"
        assert "--gates-failed--> rolling-back" in shown_text(hot.toolTip(2))
        # Running and driven by no process of this window: it may be taken over (after its driver's lease).
        assert {a for a, b in view.buttons.items() if b.isEnabled()} == {"pause", "abort", "take-over"}

        # Progress through the bridge's real engine handler: bytes, bytes/s and the time left.
        copying = next(d.device_id for d in view.detail.devices if d.state == st.STAGING)
        window.bridge.rollouts._rollout_event(RolloutEvent(rid, "progress", copying, st.STAGING, "copying",
                                                           bytes_done=2_000_000, bytes_total=5_000_000,
                                                           rate_bytes_s=1_000_000.0, eta_s=3.0))
        assert view.progress_label.text() == "2.0 MB of 5.0 MB, 1.0 MB/s, about 3 s left"
        assert view.progress.value() == 400
        assert view.device_item(copying).text(3) == "2.0 MB of 5.0 MB"
        session.call(lambda: view.select_device(hot_id))
        session.settle(0.3)
        shot(window, "rollouts-live-window")
        shot(view, "rollouts-live-view")
        session.call(lambda: view.select_device(hot_id))
        window.bridge.rollouts._rollout_event(
            RolloutEvent(rid, "state", copying, st.STAGED, "line1-ipc-02: staged -> staged"))
        assert "line1-ipc-02: staged -> staged" in view.event_log.text()

        # The gate plot: one bar per measured gate, as a share of its bound, coloured by its verdict.
        session.call(lambda: view.select_device(hot_id))
        shown = view.gate_plot.shown
        assert set(shown) == {"p95_ms", "p95_ratio", "error_rate", "golden_cosine", "temperature_c",
                              "memory_free_pct"}
        assert shown["p95_ms"] == (25.0, True) and shown["temperature_c"][1] is False
        assert shown["temperature_c"][0] == pytest.approx(91 / 85 * 100)
        assert len(view.gate_plot.bars) == 6 and view.gate_plot.bound_line.value() == 100
        session.settle(0.1)


def test_a_rollout_paused_by_its_window_closing_is_offered_to_continue_and_an_operators_pause_is_not(
        world: Path, screens: Path) -> None:
    rid = make_running_rollout(world)
    url = f"sqlite:///{world / 'fleet.db'}"

    def paused(reason: str) -> None:
        inventory = open_inventory(url)
        try:
            RolloutRepo(inventory).set_status(rid, "paused", reason=reason)
        finally:
            inventory.close()

    paused("paused by the operator")
    with gui_session(url, screens) as session:
        window = session.window
        read = next(a for a in session.bridge.activities.all() if a.title == "Read the rollouts")
        # The positive event first: the read finished with this rollout in it, and the window shows it paused.
        # offer_recovery runs on those rows inside the read (before it finishes), so its answer is in by now.
        session.wait(lambda: read.state == SUCCEEDED and read.summary == "1 rollout(s)", "the rollouts read at start")
        session.wait(lambda: [window.rollouts_view.list.topLevelItem(i).text(2)
                              for i in range(window.rollouts_view.list.topLevelItemCount())] == ["paused"],
                     "the paused rollout in the Rollouts tab")
        assert window.model_actions.recovery_box is None  # the operator's own pause is theirs to resume
    paused(WINDOW_CLOSED)
    with gui_session(url, screens) as session:
        window = session.window
        session.wait(lambda: window.model_actions.recovery_box is not None, "the offer to continue")
        assert window.model_actions.recovery_box.text() == (
            f"Rollout {rid} (line-camera@1) was paused when FleetDesk's window closed.")
        assert [b.text() for b in window.model_actions.recovery_box.buttons()] == ["Recover and continue", "Later"]
        window.model_actions.recovery_box.reject()


def colour_pixels(image: QImage, rect: QRect, colour: str, within: int = 40) -> int:
    """How many pixels of `rect` in `image` are close to `colour` (text is antialiased: near, not equal)."""
    target = QColor(colour)
    found = 0
    for y in range(max(rect.top(), 0), min(rect.bottom(), image.height() - 1) + 1):
        for x in range(max(rect.left(), 0), min(rect.right(), image.width() - 1) + 1):
            pixel = image.pixelColor(x, y)
            if (abs(pixel.red() - target.red()) + abs(pixel.green() - target.green())
                    + abs(pixel.blue() - target.blue())) <= within:
                found += 1
    return found


def test_at_1280x800_every_gate_caption_shows_and_the_chosen_device_keeps_its_state_colour(
        world: Path, screens: Path) -> None:
    rid = make_running_rollout(world)
    with gui_session(f"sqlite:///{world / 'fleet.db'}", screens) as session:
        window = session.window
        session.wait(lambda: window.model_actions.recovery_box is not None, "the recovery offer")
        window.model_actions.recovery_box.reject()
        view = window.rollouts_view
        window.resize(1280, 800)
        session.call(lambda: window.tabs.setCurrentWidget(view))
        session.wait(lambda: view.detail is not None and view.detail.row.id == rid, "the rollout's detail")
        canary_id = next(d.device_id for d in view.detail.devices if d.state == st.DONE)
        session.call(lambda: view.select_device(canary_id))
        session.settle(0.3)
        shot(window, "rollouts-1280x800")
        plot = view.gate_plot
        assert plot.absent == {"p95_ratio": ("does not apply", NO_BASELINE)}
        assert plot.captions["p95_ratio"].color.name() == QColor(colours()["muted"]).name()
        assert view.gate_notes.isVisible() and f"<b>p95 / before</b>: {NO_BASELINE}" in view.gate_notes.text()
        assert plot.height() >= GATE_PLOT_MIN_HEIGHT, plot.height()
        # Every caption lies inside the plot's drawing area (the view box clips what reaches past it).
        box = plot.getViewBox().sceneBoundingRect()
        assert plot.labels and all(box.contains(label.sceneBoundingRect()) for label in plot.labels), \
            (box, [(label.toPlainText(), label.sceneBoundingRect()) for label in plot.labels])

        # The chosen device's "● done" stays green on its selected row.
        item = view.device_item(canary_id)
        assert item is not None and item.isSelected() and item.text(2) == "● done"
        header = view.waves.header()
        row = view.waves.visualItemRect(item)
        cell = QRect(header.sectionViewportPosition(2), row.top(), header.sectionSize(2), row.height())
        image = view.waves.viewport().grab().toImage()
        assert colour_pixels(image, cell, colours()["ok"]) >= 12, "the selected row's state lost its colour"


def test_a_gate_that_does_not_apply_is_neutral_and_only_a_missing_required_one_is_red(qtbot: object) -> None:
    """The plot draws the verdict of gates.evaluate: the ratio gate with no previous model passes without a value
    (muted, with the reason), the golden gate left unmeasured fails the device (red), an off gate is not drawn."""
    sample = GateSample(0.0, True, "sha", 80.0, 50, 0, 70.0, 5.0, None,
                        notes={"golden_cosine": "the golden check found no sample inputs"})
    verdict = evaluate(Gates(temperature_c_max=None), NOTHING_BEFORE, [sample])
    assert not verdict.passed and "golden" in verdict.reason
    values = verdict.to_dict()["values"]
    assert values["p95_ratio"]["ok"] and values["golden_cosine"]["ok"] is False and "temperature_c" not in values
    plot = GatePlot()
    qtbot.addWidget(plot)  # type: ignore[attr-defined]
    plot.resize(560, GATE_PLOT_MIN_HEIGHT)
    plot.show()
    plot.show_gates(values, "Health gates of line1-ipc-01")
    palette = colours()
    assert plot.absent == {"p95_ratio": ("does not apply", NO_BASELINE),
                           "golden_cosine": ("not measured", "the golden check found no sample inputs")}
    assert plot.captions["p95_ratio"].color.name() == QColor(palette["muted"]).name()
    assert shown_text(plot.captions["p95_ratio"].toolTip()) == NO_BASELINE
    assert plot.captions["golden_cosine"].color.name() == QColor(palette["error"]).name()
    assert plot.shown == {"error_rate": (0.0, True), "memory_free_pct": (50.0, False)}
    assert "temperature_c" not in plot.captions  # switched off: not a gate of this rollout
    assert plot.notes == [("p95 / before", NO_BASELINE, True),
                          ("golden", "the golden check found no sample inputs", False)]
    notes = gate_notes_html(plot.notes)
    assert f"color:{palette['muted']}'><b>p95 / before</b>: {NO_BASELINE}" in notes
    assert f"color:{palette['error']}'><b>golden</b>: the golden check found no sample inputs" in notes
    # A gate recorded as off (no bound) is neutral too.
    plot.show_gates({"p95_ms": {"value": None, "bound": None, "ok": True}})
    assert plot.absent == {"p95_ms": ("off", "")}
    assert plot.captions["p95_ms"].color.name() == QColor(palette["muted"]).name()

    # At its minimum height, the tallest caption (a bar drawn at its cap: 4200 % free memory) is inside the plot.
    plot.show_gates({"memory_free_pct": {"value": 42.0, "bound": 1.0, "ok": True},
                     "golden_cosine": {"value": None, "bound": 0.99, "ok": False}})
    qtbot.wait(50)  # type: ignore[attr-defined]
    assert plot.height() == GATE_PLOT_MIN_HEIGHT
    box = plot.getViewBox().sceneBoundingRect()
    assert all(box.contains(label.sceneBoundingRect()) for label in plot.labels), \
        (box, [label.sceneBoundingRect() for label in plot.labels])


def wave_rows(wizard: RolloutWizard) -> list[list[str]]:
    """The per-wave table as the operator reads it: the visible rows' texts, check boxes as "on"/"off"."""
    table = wizard.wave_table
    out = []
    for row in range(table.rowCount()):
        if table.isRowHidden(row):
            continue
        cells = []
        for column in range(table.columnCount()):
            item = table.item(row, column)
            cells.append(("on" if item.checkState() == Qt.CheckState.Checked else "off")
                         if column in (OVERRIDE, APPROVE) else item.text())
        out.append(cells)
    return out


def editable(wizard: RolloutWizard, row: int, column: int) -> bool:
    return bool(wizard.wave_table.item(row, column).flags() & Qt.ItemFlag.ItemIsEnabled)


def override(wizard: RolloutWizard, row: int, on: bool = True) -> None:
    wizard.wave_table.item(row, OVERRIDE).setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)


def edit(wizard: RolloutWizard, row: int, column: int, value: str | bool) -> None:
    item = wizard.wave_table.item(row, column)
    if isinstance(value, bool):
        item.setCheckState(Qt.CheckState.Checked if value else Qt.CheckState.Unchecked)
    else:
        item.setText(value)


def test_per_wave_overrides_retries_and_step_timeout_reach_the_plan(session: GuiSession) -> None:
    window = session.window
    wizard = open_wizard(session, all_ids(session))
    assert wizard.retries_spin.value() == 3 and wizard.step_timeout_spin.value() == 600
    # One row per wave of the live sizes (10 devices: 1, 1, 5, 3); unchecked rows show the common policy, greyed.
    assert wave_rows(wizard) == [["1 · canary · 1 device", "off", "100%", "0", "0", "off"],
                                 ["2 · 1 device", "off", "100%", "0", "0", "off"],
                                 ["3 · 5 devices", "off", "100%", "0", "0", "off"],
                                 ["4 · 3 devices", "off", "100%", "0", "0", "off"]]
    assert not any(editable(wizard, r, c) for r in range(4) for c in (SUCCESS, ERRORS, SOAK, APPROVE))
    assert all(editable(wizard, r, OVERRIDE) for r in range(4))
    wizard.errors_edit.setText("1")  # the greyed rows follow the common fields
    assert [row[3] for row in wave_rows(wizard)] == ["1"] * 4
    assert wizard.resolved is not None and wizard.resolved.plan.wave_policies == ()

    # Checking Override copies the common values in for editing; the canary soaks and waits for approval, the
    # third wave tolerates 20% errors.
    override(wizard, 0)
    assert wave_rows(wizard)[0] == ["1 · canary · 1 device", "on", "100%", "1", "0", "off"]
    assert all(editable(wizard, 0, c) for c in (SUCCESS, ERRORS, SOAK, APPROVE))
    edit(wizard, 0, ERRORS, "0")
    edit(wizard, 0, SOAK, "120")
    edit(wizard, 0, APPROVE, True)
    override(wizard, 2)
    edit(wizard, 2, ERRORS, "20%")
    wizard.retries_spin.setValue(7)
    wizard.step_timeout_spin.setValue(120)
    assert wizard.error is None and wizard.start_button.isEnabled()
    canary = WavePolicy(success="100%", errors="0", soak_s=120, approve=True)
    third = WavePolicy(success="100%", errors="20%", soak_s=0)
    plan = wizard.resolved.plan
    assert plan.wave_policies == (canary, None, third)
    assert plan.policy == WavePolicy(success="100%", errors="1")
    assert plan.transfer.retries == 7 and plan.step_timeout_s == 120
    # The preview (plan_text) states each wave's own rules, and the retries and step timeout.
    text = wizard.preview.toPlainText()
    assert text == plan_text(resolve(plan, window.bridge.fleet.inventory, window.bridge.models.artifact_store()))
    waves = text.split("  wave ")[1:]
    assert "gates re-measured for 120 s after activation" in waves[0]
    assert "then the operator must approve the next wave" in waves[0]
    assert [" (own thresholds): " in w.split("\n")[0] for w in waves] == [True, False, True, False]
    assert "the first failure pauses the rollout (errors 0, exceeded: >)" in waves[0]
    assert "failures never pause it (errors 1 of 1)" in waves[1]  # the common policy
    assert "failure number 2 pauses the rollout (errors 20%: more than 1 of 5)" in waves[2]
    assert "7 retries per transfer" in text and "every step on a device times out after 120 s" in text
    hint = wizard.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 800, hint  # fits a 1280x800 laptop screen
    wizard.resize(1280, 800)
    shot(wizard, "rollout-wizard-waves")
    wizard.resize(1280, 1900)
    shot(wizard, "rollout-wizard-waves-tall")

    # Unchecking an override removes it; the row shows the common values again, greyed.
    override(wizard, 0, False)
    assert wave_rows(wizard)[0] == ["1 · canary · 1 device", "off", "100%", "1", "0", "off"]
    assert not editable(wizard, 0, SOAK)
    assert wizard.resolved.plan.wave_policies == (None, None, third)

    # Fewer waves: the overrides of rows past them are left out of the plan (kept while the text changes).
    wizard.waves_edit.setText("2, 100%")
    assert [row[0] for row in wave_rows(wizard)] == ["1 · 2 devices", "2 · 8 devices"]
    assert wizard.resolved is not None and wizard.resolved.plan.wave_policies == ()
    assert "errors 20%" not in wizard.preview.toPlainText()
    wizard.waves_edit.setText("1, 10%, 50%, 100%")
    assert wizard.resolved.plan.wave_policies == (None, None, third)
    wizard.reject()


def test_an_invalid_wave_override_names_the_cell_and_holds_start(session: GuiSession) -> None:
    wizard = open_wizard(session, all_ids(session))
    assert section_of("wave_policies[2].soak_s") == "waves" and section_of("transfer.retries") == "transfer"
    assert section_of("takeover") == section_of("on_database_loss") == "takeover"
    override(wizard, 1)
    cell = wizard.wave_table.item(1, ERRORS)
    edit(wizard, 1, ERRORS, "lots")
    assert not wizard.start_button.isEnabled() and not wizard.plan_button.isEnabled()
    assert wizard.error is not None and wizard.error.field == "wave_policies[1].errors"
    assert wizard.errors["waves"].isVisibleTo(wizard)
    assert wizard.errors["waves"].text().startswith("'lots' is not a threshold — fix: write a count of devices")
    assert wizard.problem.text().startswith("Not ready: wave_policies[1].errors: ")
    assert wizard.preview.toPlainText() == ""
    assert cell.background().color().name() == QColor(colours()["error"]).name()
    edit(wizard, 1, ERRORS, "1")
    assert wizard.start_button.isEnabled() and cell.background().style() == Qt.BrushStyle.NoBrush
    assert not wizard.errors["waves"].isVisibleTo(wizard)

    edit(wizard, 1, SUCCESS, "0")
    assert wizard.error.field == "wave_policies[1].success" and not wizard.start_button.isEnabled()
    assert "would start the next wave with no device done" in wizard.errors["waves"].text()
    edit(wizard, 1, SUCCESS, "90%")
    edit(wizard, 1, SOAK, "a while")
    assert wizard.error.field == "wave_policies[1].soak_s" and not wizard.start_button.isEnabled()
    assert wizard.errors["waves"].text() == ("'a while' is not a number of seconds — fix: give the soak time in "
                                             "seconds (0 or more)")
    edit(wizard, 1, SOAK, "-5")
    assert wizard.error.field == "wave_policies[1].soak_s"
    # A wave's soak longer than the devices wait for their confirmation: the confirmation field is the one to fix.
    edit(wizard, 1, SOAK, "400")
    assert wizard.error.field == "confirm_within_s" and not wizard.start_button.isEnabled()
    assert "wave_policies[1].soak_s (400 s)" in wizard.errors["soak"].text()
    assert "border" in wizard.confirm_spin.styleSheet()
    wizard.confirm_spin.setValue(900)
    assert wizard.start_button.isEnabled()
    assert wizard.resolved.plan.wave_policies == (None, WavePolicy(success="90%", errors="1", soak_s=400))

    # Unchecking the override of a bad row clears its error: the wave follows the common policy again.
    edit(wizard, 1, ERRORS, "many")
    assert not wizard.start_button.isEnabled()
    override(wizard, 1, False)
    assert wizard.start_button.isEnabled() and wizard.resolved.plan.wave_policies == ()

    # No target yet: a row per entry of the waves text, named by it.
    for i in range(wizard.device_list.count()):
        wizard.device_list.item(i).setCheckState(Qt.CheckState.Unchecked)
    assert [row[0] for row in wave_rows(wizard)] == ["1 · 1", "2 · 10%", "3 · 50%", "4 · 100%"]
    wizard.reject()
