"""A device that names itself in markup: every tooltip and rich-text label draws the name as typed, never as HTML.

Qt takes a tooltip for HTML when its first line looks like markup (`Qt.mightBeRichText`), so an mDNS name such as
`<font color=green>trusted</font>` would draw a green "trusted" in a tooltip that quotes it. Each view is given
the name and what Qt draws is read back: the document's text, with the literal `<font`.
"""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PySide6 import QtGui
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import QApplication, QLabel, QToolTip, QWidget
from pytestqt.qtbot import QtBot

import fleetdesk.gui
from fleetdesk.gui.activities import Activity
from fleetdesk.gui.activity_view import OPERATION
from fleetdesk.gui.bridge_views import DeviceView, RolloutDetail
from fleetdesk.gui.fleet_model import FleetTableModel
from fleetdesk.gui.models_view import ModelsView
from fleetdesk.gui.overview import OverviewModel, OverviewRow
from fleetdesk.gui.rollout_display import GatePlot, gate_notes_html
from fleetdesk.gui.rollout_view import RolloutsView
from fleetdesk.gui.text import markup_text, tooltip_text
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.records import Device, ProbeFacts
from fleetdesk.inventory.rollouts import DeviceRow, JournalEntry, RolloutRow
from fleetdesk.telemetry.alerts import AlertMonitor
from fleetdesk.telemetry.buffers import TelemetryStore
from tests.gui.test_models_view import CARD, record
from tests.gui_harness import gui_session, shown_text

HOSTILE = "<font color=green>trusted</font>"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def drawn_as_typed(tooltip: str, expected: str = HOSTILE) -> None:
    """What Qt draws for `tooltip` contains `expected` character for character."""
    assert expected in shown_text(tooltip), (tooltip, shown_text(tooltip))


def hostile_device(n: int = 1) -> Device:
    return Device(id=n, name=HOSTILE, hostname="cam", addresses=(f"198.18.1.{n}",), mdns_names=(HOSTILE,),
                  services=("_ssh._tcp.local.",), port=22, username="root", transport="asyncssh",
                  password_account=None, profile=None, facts=ProbeFacts(), probed_at=None, first_seen=NOW,
                  last_seen=None, online=True, groups=(), source="mdns")


def test_tooltip_text_is_drawn_literally_lines_and_spaces_kept() -> None:
    text = f"{HOSTILE}  & co\nsecond line\x1b[31m"
    tip = tooltip_text(text)
    assert QtGui.Qt.mightBeRichText(tip)  # Qt has nothing left to guess: it is HTML, escaped
    assert shown_text(tip) == f"{HOSTILE}  & co\nsecond line\\x1b[31m"
    assert tooltip_text("") == ""  # no tooltip at all
    document = QTextDocument()
    document.setHtml(f"<b>{markup_text(HOSTILE)}</b>")
    assert document.toPlainText() == HOSTILE
    # The raw name is what the helper exists for: Qt would take it for markup and draw only "trusted".
    assert QtGui.Qt.mightBeRichText(HOSTILE) and shown_text(HOSTILE) == "trusted"


def test_every_set_tooltip_in_the_window_goes_through_tooltip_text() -> None:
    """One rule, checked in the source: a new `setToolTip(...)` that skips the helper fails here."""
    skipped = []
    for path in sorted(Path(fleetdesk.gui.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setToolTip":
                text = node.args[-1]
                helped = isinstance(text, ast.Call) and isinstance(text.func, ast.Name) and \
                    text.func.id == "tooltip_text"
                cleared = isinstance(text, ast.Constant) and text.value == ""
                if not (helped or cleared):
                    skipped.append(f"{path.name}:{node.lineno}")
    assert not skipped, f"tooltips set without tooltip_text: {skipped}"


def test_the_fleet_tables_tooltip_draws_the_name_and_the_problem_as_typed(qtbot: QtBot) -> None:
    model = FleetTableModel()
    model.reset([DeviceView(hostile_device(), "unreachable", True, problem=f"{HOSTILE} refused the key")])
    for column in range(model.columnCount()):
        tip = model.index(0, column).data(Qt.ItemDataRole.ToolTipRole)
        drawn_as_typed(tip)
        drawn_as_typed(tip, f"{HOSTILE} refused the key")


def test_the_overviews_tooltip_draws_the_name_and_the_streams_error_as_typed(qtbot: QtBot) -> None:
    model = OverviewModel(TelemetryStore(), AlertMonitor())
    model.set_devices([OverviewRow(1, HOSTILE, detail=f"<b>{HOSTILE}</b> closed the stream")])
    drawn_as_typed(model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole))
    drawn_as_typed(model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole), f"<b>{HOSTILE}</b> closed the stream")


def test_the_gate_plots_notes_title_and_tooltips_draw_a_hostile_note_as_typed(qtbot: QtBot) -> None:
    plot = GatePlot()
    qtbot.addWidget(plot)
    note = f"{HOSTILE} says all is well"
    plot.show_gates({"golden_cosine": {"value": None, "bound": 0.99, "ok": False, "note": note}},
                    f"Health gates of {HOSTILE}")
    drawn_as_typed(plot.captions["golden_cosine"].toolTip(), note)
    drawn_as_typed(plot.toolTip(), note)
    document = QTextDocument()
    document.setHtml(gate_notes_html(plot.notes))  # the rich-text label under the plot
    assert note in document.toPlainText()
    document.setHtml(plot.getPlotItem().titleLabel.text)
    assert f"Health gates of {HOSTILE}" in document.toPlainText()


def test_the_rollout_views_list_and_device_tooltips_draw_device_text_as_typed(qtbot: QtBot) -> None:
    view = RolloutsView()
    qtbot.addWidget(view)
    row = RolloutRow(7, f"{HOSTILE}@1", {}, {}, "paused", NOW, NOW, "operator", f"paused: {HOSTILE} overheated")
    view.set_rollouts([row])
    listed = view.list.topLevelItem(0)
    assert listed is not None
    drawn_as_typed(listed.toolTip(2), f"paused: {HOSTILE} overheated")
    device = DeviceRow(7, 1, 0, "11" * 32, None, st.FAILED, 1, 0, f"{HOSTILE} lost power", {}, NOW)
    last = JournalEntry(1, 7, 1, st.ACTIVATED, st.GATES_FAILED, st.ROLLING_BACK, NOW, {})
    view.show_detail(RolloutDetail(row, (device,), names={1: HOSTILE}, last={1: last}))
    item = view.device_item(1)
    assert item is not None
    for column in range(item.columnCount()):
        drawn_as_typed(item.toolTip(column), f"{HOSTILE} lost power")
    assert "\n" in shown_text(item.toolTip(0))  # the journal line and the error stay two lines
    assert view.title.textFormat() == Qt.TextFormat.PlainText and view.reason.textFormat() == Qt.TextFormat.PlainText


def test_the_models_views_tooltips_draw_a_hostile_path_as_typed(qtbot: QtBot) -> None:
    view = ModelsView()
    qtbot.addWidget(view)
    path = f"/models/{HOSTILE}.onnx"
    view.set_records([replace(record(), card={**CARD, "path": path})])
    listed = view.model_list.topLevelItem(0)
    assert listed is not None
    view.model_list.setCurrentItem(listed)
    drawn_as_typed(listed.toolTip(0), path)
    drawn_as_typed(view.card_labels["format"].toolTip(), f"Imported from {path}")


@pytest.mark.qt_log_ignore("This plugin does not support raise")  # the offscreen platform's, on any tooltip
def test_a_tooltip_qt_shows_in_the_window_is_the_literal_name(qtbot: QtBot, screens: Path) -> None:
    """The real QToolTip, shown over a widget as hovering does: its label's text is drawn as plain characters."""
    host = QWidget()
    qtbot.addWidget(host)
    host.resize(400, 200)
    host.show()
    model = FleetTableModel()
    model.reset([DeviceView(hostile_device(), "online", True)])
    QToolTip.showText(host.mapToGlobal(QPoint(20, 20)), model.index(0, 1).data(Qt.ItemDataRole.ToolTipRole), host)
    qtbot.waitUntil(QToolTip.isVisible)
    tip = next(w for w in QApplication.topLevelWidgets() if w.inherits("QTipLabel") and w.isVisible())
    assert isinstance(tip, QLabel)
    drawn_as_typed(tip.text())
    assert tip.grab().save(str(screens / "hostile-tooltip.png"))
    QToolTip.hideText()
    qtbot.waitUntil(lambda: not QToolTip.isVisible())


def test_the_status_bar_and_the_activity_log_show_a_hostile_operation_as_typed(tmp_path: Path,
                                                                            screens: Path) -> None:
    with gui_session(f"sqlite:///{tmp_path / 'fleet.db'}", screens) as session:
        release = asyncio.Event()

        async def job(_activity: Activity) -> int:
            await release.wait()
            return 0

        window = session.window
        activity = session.call(lambda: session.bridge.activities.start(f"Probe {HOSTILE}", job))
        session.wait(lambda: window.activity_label.text() != "Idle", "the status bar's running operation")
        assert window.activity_label.textFormat() == Qt.TextFormat.PlainText
        assert window.activity_label.text() == f"Working: Probe {HOSTILE}"
        log = window.activity_view.model
        row = next(r for r in range(log.rowCount()) if log.index(r, OPERATION).data() == f"Probe {HOSTILE}")
        drawn_as_typed(log.index(row, OPERATION).data(Qt.ItemDataRole.ToolTipRole), f"Probe {HOSTILE}")
        release.set()
        session.wait(lambda: not activity.running, "the operation's end")
