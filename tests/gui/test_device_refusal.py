"""A device whose model server refuses an artifact (a file that does not verify against the signed manifest) is shown
in the real window as a device problem that names the file and the fix, for as long as its samples say so.

Samples go into the bridge's own store the way the hub's stream reader puts them there, read by `Sample.from_json`
from the agent's JSON line; the device is an inventory row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from fleetdesk.telemetry.sample import Sample
from tests.gui_harness import GuiSession, gui_session

ARTIFACT = "7" * 64
REFUSED = {"artifact": ARTIFACT, "file": "model.onnx", "code": "bad-artifact",
           "reason": f"artifact {ARTIFACT}: 'model.onnx' has SHA-256 {'1' * 64}, the manifest says {'2' * 64}",
           "fix": "push the artifact again (the copy on the device is damaged)", "at": 1.0}


@pytest.fixture
def session(tmp_path: Path, screens: Path) -> Iterator[GuiSession]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_inventory(url) as inventory:
        inventory.record_sightings([Sighting("mdns", ("198.18.1.30",), host_name="line-7.local.",
                                             instance_name="line-7", service_type="_ssh._tcp.local.")])
    with gui_session(url, screens) as s:
        yield s


def sample(t: float, refused: dict[str, Any] | None) -> Sample:
    return Sample.from_json({"type": "sample", "v": 1, "t": t, "cpu": {"total": 5.0},
                             "inference": {"model": ARTIFACT, "requests": 3, "refused": refused}})


def tooltip(session: GuiSession) -> str:
    model = session.window.fleet_model
    row = next(r for r in range(model.rowCount()) if model.view_at(r).device.name == "line-7")
    return str(model.index(row, 0).data(Qt.ItemDataRole.ToolTipRole))


def test_a_refused_artifact_is_a_device_problem_naming_the_file_and_the_fix_until_it_clears(
        session: GuiSession) -> None:
    bridge = session.bridge
    device_id = next(v.id for v in bridge.devices.views() if v.device.name == "line-7")
    bridge.telemetry.store.add(device_id, sample(100.0, None))
    session.settle(0.05)
    assert "refused" not in tooltip(session)

    bridge.telemetry.store.add(device_id, sample(101.0, REFUSED))
    session.settle(0.05)
    problem = next(v.problem for v in bridge.devices.views() if v.id == device_id)
    assert problem.startswith(f"the model server refused artifact {ARTIFACT[:12]} (model.onnx): ")
    assert problem.endswith(" — push the artifact again (the copy on the device is damaged)")
    assert "(model.onnx)" in tooltip(session) and "push the artifact again" in tooltip(session)

    # Put right on the device: the next sample says nothing was refused, and the problem goes.
    bridge.telemetry.store.add(device_id, sample(102.0, None))
    session.settle(0.05)
    assert next(v.problem for v in bridge.devices.views() if v.id == device_id) == ""
    assert "refused" not in tooltip(session)
