"""The rollout report shows the shadow step: the plan's shadow policy, each device's verdict with the candidate's
figures beside the active model's, and the shadow gate's values against their bounds, read from what DeviceSteps
keeps in a device's gates and journal (a real SQLite inventory, the real transition table)."""

from __future__ import annotations

from pathlib import Path

from fleetdesk.inventory import ProbeFacts, open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.reports.rollout import rollout_report
from fleetdesk.reports.selection import Filters
from fleetdesk.rollout.gates import evaluate_shadow
from fleetdesk.rollout.plan import PlannedDevice, ResolvedPlan, RolloutPlan
from fleetdesk.rollout.policy import ShadowPolicy
from tests.unit.test_rollout_gates import figures

NEW = "a" * 64


def test_the_rollout_report_shows_each_devices_shadow_verdict_and_figures(tmp_path: Path) -> None:
    inventory = open_inventory(f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        devices = [inventory.add_device(f"192.0.2.{i}", name=name) for i, name in enumerate(("cam-1", "cam-2"), 1)]
        for d in devices:
            inventory.save_probe(d.id, ProbeFacts(arch="x86_64"), profile="ipc-x86")
        shadow = ShadowPolicy(share=0.5, min_requests=100, min_agreement=0.98, p95_ratio_max=1.2, waves="all")
        plan = RolloutPlan("cnn@2", devices=tuple(d.id for d in devices), shadow=shadow)
        planned = tuple(PlannedDevice(d.id, d.name, "ipc-x86", NEW, "graph", 0) for d in devices)
        repo = RolloutRepo(inventory)
        rollout = repo.create(ResolvedPlan(plan, "cnn@2", planned, (tuple(d.id for d in devices),)), "op")
        passed, failed = figures(), figures(top1_agreement=0.41)
        for device, answer, event in ((devices[0], passed, st.SHADOW_PASSED), (devices[1], failed, st.SHADOW_FAILED)):
            verdict = evaluate_shadow(shadow, answer, seconds=30.0)
            found = {**verdict.to_dict(), "judged": True, "seconds": 30.0, "figures": answer}
            for step in (st.STAGE, st.STAGED_OK, st.SHADOW):
                repo.record(rollout.id, device.id, step)
            repo.record(rollout.id, device.id, event, gates={"shadow": found}, detail=found,
                        **({} if verdict.passed else {"error": f"shadow: {verdict.reason}"}))
        report = rollout_report(inventory, rollout.id, Filters())
    finally:
        inventory.close()
    tables = {t.name: t for t in report.tables}
    columns = [c.key for c in tables["shadow"].columns]
    rows = {r[0]: dict(zip(columns, r, strict=True)) for r in tables["shadow"].rows}
    assert rows["cam-1"]["verdict"] == "pass" and rows["cam-2"]["verdict"] == "fail"
    assert rows["cam-2"]["agreement"] == 0.41 and rows["cam-1"]["agreement"] == 0.99
    assert (rows["cam-1"]["compared"], rows["cam-1"]["dropped"], rows["cam-1"]["failed"]) == (120, 10, 0)
    assert (rows["cam-1"]["active_p95"], rows["cam-1"]["candidate_p95"], rows["cam-1"]["ratio"]) == (10.0, 11.0, 1.1)
    assert rows["cam-1"]["cosine"] == 0.999
    assert "top-1 agreement with the active model is 0.4100" in str(rows["cam-2"]["reason"])
    gate_columns = [c.key for c in tables["gates"].columns]
    gates = [dict(zip(gate_columns, r, strict=True)) for r in tables["gates"].rows]
    assert {"device": "cam-2", "gate": "shadow_agreement", "value": 0.41, "bound": 0.98, "ok": "no"}.items() <= \
        next(g for g in gates if g["device"] == "cam-2" and g["gate"] == "shadow_agreement").items()
    facts = {f.label: f.value for f in report.facts}
    assert facts["Shadow step"] == ("every device: share 0.5, 100 requests within 600.0 s, agreement >= 0.98, p95 "
                                    "ratio <= 1.2; skipped (memory) counts as fail")
    timeline = [r[3] for r in tables["timeline"].rows]
    assert timeline.count(st.SHADOW) == 2 and st.SHADOW_PASSED in timeline and st.SHADOW_FAILED in timeline
