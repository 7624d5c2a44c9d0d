"""The fleet table's rules without a window: what status a device shows, filtering, drops, device text."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetdesk.gui.bridge_views import DeviceView, device_status
from fleetdesk.gui.dropping import plan_drop
from fleetdesk.gui.fleet_model import FleetFilter, FleetTableModel, decode_device_ids, encode_device_ids, plain
from fleetdesk.inventory.records import Device, ProbeFacts


def device(n: int, *, online: bool = True, groups: tuple[str, ...] = (), name: str = "") -> Device:
    return Device(id=n, name=name or f"cam-{n:02d}", hostname=f"cam-{n:02d}", addresses=(f"198.18.1.{n}",),
                  mdns_names=(), services=("_ssh._tcp.local.",), port=22, username="root", transport="asyncssh",
                  password_account=None, profile=None, facts=ProbeFacts(), probed_at=None,
                  first_seen=datetime(2026, 1, 1, tzinfo=UTC), last_seen=None, online=online,
                  groups=groups, source="mdns")


@pytest.mark.parametrize(("online", "trusted", "busy", "unreachable", "shown"), [
    (True, True, False, False, "online"),
    (True, False, False, False, "untrusted"),
    (False, True, False, False, "offline"),
    (False, False, False, False, "offline"),
    (True, True, False, True, "unreachable"),
    (False, True, False, True, "unreachable"),  # SSH failed: say so, not just "offline"
    (True, False, True, True, "busy"),  # work in progress outranks everything
])
def test_the_most_urgent_status_is_shown(online: bool, trusted: bool, busy: bool, unreachable: bool,
                                         shown: str) -> None:
    assert device_status(device(1, online=online), trusted=trusted, busy=busy, unreachable=unreachable) == shown


def test_an_update_changes_one_row_and_a_new_device_appends_one(qtbot: object) -> None:
    model = FleetTableModel()
    model.reset([DeviceView(device(1), "online", True), DeviceView(device(2), "online", True)])
    changed: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda top, bottom: changed.append((top.row(), bottom.row())))
    model.upsert(DeviceView(device(2, online=False), "offline", True))
    assert changed == [(1, 1)] and model.index(1, 0).data() == "Offline"
    model.upsert(DeviceView(device(2, online=False), "offline", True))  # the same again repaints nothing
    assert changed == [(1, 1)]
    model.upsert(DeviceView(device(3), "untrusted", False))
    assert model.rowCount() == 3 and model.counts() == (2, 3)
    model.remove(1)
    assert [v.id for v in model.views()] == [2, 3] and model.view_of(3) is not None


def test_the_filter_matches_every_word_in_name_address_and_groups_and_narrows_by_status(qtbot: object) -> None:
    model = FleetTableModel()
    model.reset([DeviceView(device(1, groups=("line A",)), "online", True),
                 DeviceView(device(2, groups=("line B",)), "untrusted", False),
                 DeviceView(device(3, online=False, groups=("line A",)), "offline", True)])
    view = FleetFilter()
    view.setSourceModel(model)
    view.set_text("line a")
    assert view.rowCount() == 2
    view.set_text("line a 198.18.1.3")
    assert view.rowCount() == 1
    view.set_text("")
    view.set_status("untrusted")
    assert view.rowCount() == 1
    view.set_status(None)
    view.set_group("line A")
    assert view.rowCount() == 2
    view.sort(0)
    assert [view.index(r, 0).data() for r in range(2)] == ["Online", "Offline"]


def test_device_text_in_a_cell_is_shown_escaped() -> None:
    assert plain("cam\x1b[31m-01\u202e") == "cam\\x1b[31m-01\\u202e"
    assert plain("Kamera Süd ✓") == "Kamera Süd ✓"


def test_dragged_device_ids_round_trip_and_junk_is_ignored(qtbot: object) -> None:
    assert decode_device_ids(encode_device_ids([3, 1, 3])) == [1, 3]
    from PySide6.QtCore import QMimeData

    junk = QMimeData()
    junk.setData("application/x-fleetdesk-device-ids", b"{not json")
    assert decode_device_ids(junk) == []


def test_a_drop_takes_only_onnx_files_and_only_deployable_targets(tmp_path: Path) -> None:
    model = tmp_path / "model.ONNX"
    model.write_bytes(b"checked later, on import")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    plan = plan_drop([str(model), str(notes), str(tmp_path)])
    assert plan.models == (str(model),) and plan.accepted
    assert plan.refused == ("notes.txt is not an ONNX model (only .onnx files can be imported)",
                            f"{tmp_path.name} is a folder; drop the .onnx file inside it")
    online = DeviceView(device(1), "online", True)
    busy = DeviceView(device(2), "busy", True)
    refused = plan_drop([str(model)], [online, busy])
    assert not refused.accepted and refused.message == "Cannot deploy here: cam-02 is busy with another operation"
    ok = plan_drop([str(model)], [online])
    assert ok.accepted and ok.targets == (1,) and ok.message == "Drop to deploy model.ONNX to 1 device(s)"
    assert plan_drop([str(notes)]).message.startswith("Cannot drop here: notes.txt")
    on_group = plan_drop([str(model)], [online], "press line")
    assert on_group.accepted and (on_group.targets, on_group.group) == ((1,), "press line")
    assert on_group.message == "Drop to deploy model.ONNX to group “press line” (1 device(s))"
