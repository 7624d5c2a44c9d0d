"""The models report and the fleet report's active model on a real signed artifact store: a model imported through
`fleetdesk model import`, rolled out (journaled through the inventory) to a device, and then read back from the
report: each variant per profile with its size, accuracy and why it was chosen, and the device that runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.cli import main
from fleetdesk.inventory import ProbeFacts, Sighting, open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.rollout.plan import PlannedDevice, ResolvedPlan, RolloutPlan
from tests.fixtures.models.build import save_mlp_external

NAME = "Prüfstand Linie 4 — Kamera ✓"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out) if "--json" in args and out.strip() else out, err


def test_models_report_shows_variants_and_where_each_version_runs(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    (tmp_path / "mlp").mkdir()
    model = save_mlp_external(tmp_path / "mlp" / "mlp.onnx")
    code, record, err = cli(capsys, "--db", url, "model", "import", str(model), "--profile", "ipc-x86",
                            "--no-device-bench", "--json")
    assert code == 0, err
    artifact = str(record["artifacts"]["ipc-x86"])
    inventory = open_inventory(url)
    try:
        device = inventory.record_sighting(Sighting("mdns", ("192.0.2.40",), instance_name=NAME))
        inventory.save_probe(device.id, ProbeFacts(arch="x86_64"), profile="ipc-x86")
        repo = RolloutRepo(inventory)
        plan = RolloutPlan("mlp@1", devices=(device.id,))
        rollout = repo.create(ResolvedPlan(plan, "mlp@1", (PlannedDevice(device.id, NAME, "ipc-x86", artifact,
                                                                          "graph", 0, 1),), ((device.id,),)), "op")
        for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED, st.CONFIRMED):
            repo.record(rollout.id, device.id, event)
    finally:
        inventory.close()

    assert main(["--db", url, "report", "models", "--format", "json", "-o", str(tmp_path / "m.json")]) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    tables = {t["name"]: t["rows"] for t in data["tables"]}
    assert [(m["model"], m["version"], m["devices"]) for m in tables["models"]] == [("mlp", "1", 1)]
    variants = [v for v in tables["variants"] if v["profile"] == "ipc-x86"]
    chosen = [v for v in variants if v["chosen"] == "yes"]
    assert len(chosen) == 1 and chosen[0]["artifact"] == artifact[:12] and chosen[0]["reason"]
    assert any(v["recipe"] == "fp32" and v["size_pct"] == 100.0 for v in variants)
    assert any("Only a rollout activates a model" in note for note in data["notes"])
    assert tables["running"] == [{"device": NAME, "profile": "ipc-x86", "model": "mlp", "version": "1",
                                  "artifact": artifact[:12], "since": tables["running"][0]["since"]}]

    assert main(["--db", url, "report", "fleet", "--format", "json", "-o", str(tmp_path / "f.json")]) == 0
    fleet = json.loads((tmp_path / "f.json").read_text())
    row = next(t for t in fleet["tables"] if t["name"] == "devices")["rows"][0]
    assert (row["name"], row["model"], row["model_version"], row["artifact"]) == (NAME, "mlp", "1", artifact[:12])

    assert main(["--db", url, "report", "models", "--format", "pdf", "-o", str(tmp_path / "m.pdf")]) == 0
    import shutil
    import subprocess

    from tests.conftest import skip_or_fail
    if shutil.which("pdftotext") is None:
        skip_or_fail("pdftotext is not installed (Debian package poppler-utils)")
    text = subprocess.run(["pdftotext", "-raw", str(tmp_path / "m.pdf"), "-"], capture_output=True, check=True,
                          text=True).stdout
    assert "Variants per profile" in text and "mlp" in text and "".join(NAME.split()) in "".join(text.split())
