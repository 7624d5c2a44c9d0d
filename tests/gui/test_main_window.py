"""The main window over a real SQLite inventory: the table, filters, groups, layout, drops and quitting.

Devices here come from sightings written to the inventory (as discovery writes them); the lab tests in
tests/lab/test_gui_lab.py drive the same window against real devices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QWidget

from fleetdesk.gui.fleet_model import COLUMNS, encode_device_ids
from fleetdesk.gui.model_import import ImportDialog
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from tests.gui_harness import GuiSession, gui_session


def sighting(n: int) -> Sighting:
    return Sighting("mdns", (f"198.18.1.{n}",), host_name=f"cam-{n:02d}.local.", instance_name=f"cam-{n:02d}",
                    service_type="_ssh._tcp.local.")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def session(db_url: str, screens: Path) -> Iterator[GuiSession]:
    with open_inventory(db_url) as inventory:
        inventory.record_sightings([sighting(n) for n in range(10, 16)])
        inventory.add_to_group("line A", [d.id for d in inventory.devices()[:2]])
    with gui_session(db_url, screens) as s:
        yield s


def model_file(folder: Path, name: str = "classifier.onnx") -> Path:
    """A small real CNN classifier, as an exporter would write it."""
    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w")
    fc = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc_w")
    nodes = [helper.make_node("Conv", ["image", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc_w"], ["scores"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])], [weight, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / name
    onnx.save(model, str(path))
    return path


def drop_files(widget: QWidget, paths: list[Path], at: QPoint) -> str:
    """Drag files from a file manager over `widget` and drop them at `at`; returns what the overlay said."""
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    args = (Qt.DropAction.CopyAction, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    enter = QDragEnterEvent(at, *args)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted(), "the window refused the drag: the operator would get no message"
    QApplication.sendEvent(widget, QDragMoveEvent(at, *args))
    overlay = widget.window().drop_overlay
    said = overlay.label.text() if overlay.isVisible() else ""
    QApplication.sendEvent(widget, QDropEvent(at.toPointF(), *args))
    assert not overlay.isVisible()
    return said


def test_the_window_shows_every_device_in_the_inventory_and_the_database(session: GuiSession) -> None:
    window = session.window
    headers = [window.fleet_model.headerData(i, Qt.Orientation.Horizontal) for i in range(len(COLUMNS))]
    assert headers == ["Status", "Hostname", "Address", "Profile", "Architecture", "Runtime", "Active model",
                       "Last seen"]
    assert window.fleet_filter.rowCount() == 6
    names = [window.fleet_filter.index(r, 1).data() for r in range(6)]
    assert names == sorted(names) == [f"cam-{n:02d}" for n in range(10, 16)]
    assert window.database_label.text().startswith("Database: sqlite:///")
    # Seen by mDNS, no host key pinned yet: untrusted, and the status bar counts them as online.
    assert {window.fleet_filter.index(r, 0).data() for r in range(6)} == {"Untrusted"}
    assert window.devices_label.text() == "Devices online: 6 / 6"
    session.screenshot(window, "main-window-inventory")


def test_text_status_and_group_filters_narrow_the_table(session: GuiSession) -> None:
    window = session.window
    window.search.setText("198.18.1.12")
    assert window.fleet_filter.rowCount() == 1
    window.search.clear()
    window.status_filter.setCurrentIndex(window.status_filter.findData("offline"))
    assert window.fleet_filter.rowCount() == 0
    window.status_filter.setCurrentIndex(0)
    window.group_tree.choose("line A")
    assert window.fleet_filter.rowCount() == 2
    assert window.group_tree.topLevelItem(1).text(0) == "line A (2)"


def test_grouping_from_the_selection_updates_the_tree_and_the_inventory(session: GuiSession, db_url: str) -> None:
    window = session.window
    ids = [window.fleet_model.view_at(r).id for r in range(3, 6)]
    window.fleet_pane.select_devices(ids)
    assert sorted(window.fleet_pane.selected_ids()) == sorted(ids)
    activity = session.call(lambda: window.bridge.devices.change_group(window.fleet_pane.selected_ids(), "line B"))
    session.wait(lambda: not activity.running, "grouping to finish")
    assert activity.state == "succeeded", activity.summary
    labels = [window.group_tree.topLevelItem(i).text(0) for i in range(window.group_tree.topLevelItemCount())]
    assert labels == ["All devices (6)", "line A (2)", "line B (3)"]
    with open_inventory(db_url) as inventory:
        assert sorted(inventory.devices(group="line B"), key=lambda d: d.id) == sorted(
            (inventory.device(i) for i in ids), key=lambda d: d.id)


def test_dropping_a_text_file_says_why_not_and_imports_nothing(session: GuiSession, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    window = session.window
    said = session.call(lambda: drop_files(window, [notes], QPoint(50, 50)))
    assert said.startswith("Cannot drop here: notes.txt is not an ONNX model")
    assert "notes.txt is not an ONNX model" in window.statusBar().currentMessage()
    assert window.model_actions.import_dialog is None and window.models_view.records() == []


def test_dropping_an_onnx_file_on_the_window_opens_its_import_dialog(session: GuiSession, tmp_path: Path) -> None:
    path = model_file(tmp_path)
    window = session.window
    said = session.call(lambda: drop_files(window, [path], QPoint(50, 50)))
    assert said == "Drop to import classifier.onnx into Models"
    dialog = window.model_actions.import_dialog
    assert isinstance(dialog, ImportDialog) and dialog.isVisible()
    assert (dialog.path_edit.text(), dialog.name_edit.text()) == (str(path), "classifier")
    # No device has a profile yet: every known profile is checked.
    assert dialog.chosen_profiles() == tuple(sorted(window.bridge.models.profile_names()))
    session.screenshot(dialog, "import-dialog")
    dialog.reject()
    assert window.models_view.records() == []


def test_dropping_a_model_on_an_untrusted_device_says_why_not(session: GuiSession, tmp_path: Path) -> None:
    path = model_file(tmp_path)
    window = session.window
    table = window.fleet_table
    rect = table.visualRect(window.fleet_filter.index(0, 1))
    said = session.call(lambda: drop_files(table.viewport(), [path], rect.center()))
    assert said.startswith("Cannot deploy here: cam-10 is not trusted yet")
    message = window.statusBar().currentMessage()
    assert "Cannot deploy here" in message and "cam-10 is not trusted yet" in message
    assert window.model_actions.import_dialog is None and window.models_view.records() == []


def test_quitting_cancels_running_work_in_order(session: GuiSession) -> None:
    window = session.window
    order: list[str] = []

    async def long(activity: object, name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            order.append(name)

    first = session.call(lambda: window.bridge.activities.start("first", lambda a: long(a, "first")))
    second = session.call(lambda: window.bridge.activities.start("second", lambda a: long(a, "second")))
    session.settle()
    assert window.activity_label.text() == "2 operations running"
    session.run(window.shutdown())
    assert order == ["second", "first"]
    assert (first.state, second.state) == ("cancelled", "cancelled")


def test_window_layout_is_remembered(db_url: str, screens: Path) -> None:
    with gui_session(db_url, screens) as first:
        first.window.resize(780, 580)  # inside the offscreen screen, above the window's minimum size
        first.window.h_splitter.setSizes([150, 400, 210])
        first.window.fleet_table.horizontalHeader().resizeSection(1, 222)
        sizes = first.window.h_splitter.sizes()
        assert (first.window.width(), first.window.height()) == (780, 580)
    with gui_session(db_url, screens) as second:
        assert (second.window.width(), second.window.height()) == (780, 580)
        assert second.window.h_splitter.sizes() == sizes
        assert second.window.fleet_table.horizontalHeader().sectionSize(1) == 222


def test_devices_dragged_onto_a_group_join_it_and_a_move_leaves_the_old_one(session: GuiSession) -> None:
    window = session.window
    tree = window.group_tree
    ids = [window.fleet_model.view_at(r).id for r in range(3, 5)]

    def drag_onto(group_row: int, ids: list[int], action: Qt.DropAction) -> None:
        data = encode_device_ids(ids)
        at = tree.visualItemRect(tree.topLevelItem(group_row)).center()
        args = (action, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
        enter = QDragEnterEvent(at, *args)
        QApplication.sendEvent(tree.viewport(), enter)
        assert enter.isAccepted()
        QApplication.sendEvent(tree.viewport(), QDragMoveEvent(at, *args))
        QApplication.sendEvent(tree.viewport(), QDropEvent(at.toPointF(), *args))

    session.call(lambda: drag_onto(1, ids, Qt.DropAction.CopyAction))  # onto "line A"
    session.wait(lambda: tree.topLevelItem(1).text(0) == "line A (4)", "line A to have 4 devices")
    # Shown "line A", two of its devices dragged onto a new group "line B" move there.
    session.wait(lambda: not window.bridge.activities.running(), "grouping to finish")
    session.call(lambda: window.bridge.devices.change_group([ids[0]], "line B"))
    session.wait(lambda: tree.topLevelItemCount() == 3, "line B in the tree")
    tree.choose("line A")
    session.call(lambda: drag_onto(2, ids, Qt.DropAction.MoveAction))
    session.wait(lambda: tree.topLevelItem(2).text(0) == "line B (2)" and
                 tree.topLevelItem(1).text(0) == "line A (2)", "the move from line A to line B")
    assert {window.fleet_model.view_of(i).device.groups for i in ids} == {("line B",)}


def test_the_ssh_command_for_a_device_is_copied_to_the_clipboard(session: GuiSession) -> None:
    window = session.window
    view = window.fleet_model.view_at(0)
    window.fleet_pane.select_devices([view.id])
    command = window.device_actions.copy_ssh_command()
    assert command == f"ssh root@{view.device.address}"
    assert QApplication.clipboard().text() == command
    assert window.statusBar().currentMessage() == f"Copied: {command}"


def test_the_drop_target_says_what_a_drop_will_do_while_dragging(session: GuiSession, tmp_path: Path) -> None:
    window = session.window
    path = model_file(tmp_path)
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    args = (Qt.DropAction.CopyAction, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    rect = window.fleet_table.visualRect(window.fleet_filter.index(1, 1))
    panes = window.h_splitter.geometry(), window.discovery_panel.geometry()
    QApplication.sendEvent(window.fleet_table.viewport(), QDragEnterEvent(rect.center(), *args))
    QApplication.sendEvent(window.fleet_table.viewport(), QDragMoveEvent(rect.center(), *args))
    QApplication.processEvents()
    assert window.drop_overlay.isVisible()
    # The banner floats over the window's central area; it takes no room from the panes beneath it.
    assert window.v_splitter.indexOf(window.drop_overlay) == -1
    assert (window.h_splitter.geometry(), window.discovery_panel.geometry()) == panes
    assert window.centralWidget().geometry().contains(window.drop_overlay.geometry())
    assert window.drop_overlay.label.text().startswith("Cannot deploy here: cam-11 is not trusted yet")
    session.screenshot(window, "drop-target-refused")
    QApplication.sendEvent(window, QDragEnterEvent(QPoint(40, 40), *args))
    QApplication.sendEvent(window, QDragMoveEvent(QPoint(40, 40), *args))
    assert window.drop_overlay.label.text() == "Drop to import classifier.onnx into Models"
    session.screenshot(window, "drop-target-import")
    QApplication.sendEvent(window, QDragLeaveEvent())
    assert not window.drop_overlay.isVisible()


def test_the_dark_theme_is_remembered_and_redraws_the_icons(db_url: str, screens: Path) -> None:
    with gui_session(db_url, screens) as first:
        light = first.window.probe_action.icon().pixmap(16, 16).toImage()
        first.window.dark_action.trigger()
        dark = first.window.probe_action.icon().pixmap(16, 16).toImage()
        assert light != dark
        first.screenshot(first.window, "main-window-dark")
    with gui_session(db_url, screens) as second:
        assert second.window.dark_action.isChecked()
        second.window.dark_action.trigger()  # back to light for the tests that follow


def test_the_detail_pane_shows_which_ssh_config_lines_reach_the_chosen_device(db_url: str, screens: Path,
                                                                              tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host 198.18.1.11\n  User pi\nHost cam-12.local\n  Port 2200\n")
    with open_inventory(db_url) as inventory:
        inventory.record_sightings([sighting(n) for n in (11, 12, 13)])
    with gui_session(db_url, screens, ssh_config=str(config)) as session:
        window = session.window
        by_name = {window.fleet_model.view_at(row).device.address: window.fleet_model.view_at(row).id
                   for row in range(3)}

        def ssh_config_row(address: str) -> str:
            session.call(lambda: window.fleet_pane.select_devices([by_name[address]]))
            rows = {(section, label): value for section, label, value in window.detail.rows()}
            return rows[("Connection", "SSH config")]

        assert ssh_config_row("198.18.1.11") == f"{config}:2: User pi  (Host 198.18.1.11)"  # by its address
        assert ssh_config_row("198.18.1.12") == f"{config}:4: Port 2200  (Host cam-12.local)"  # by its mDNS name
        assert session.call(window.device_actions.copy_ssh_command) == "ssh -p 2200 root@198.18.1.12"
        assert ssh_config_row("198.18.1.13") == f"No line of {config} applies to this device"
