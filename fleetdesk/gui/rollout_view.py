"""The Rollouts tab: every rollout, and the chosen one live: waves as rows with each device's state, transfer
progress with bytes/s and ETA, the chosen device's health gates against their bounds, and the operator's buttons.

It only renders what the bridge sends (`set_rollouts`, `show_detail`, `add_event`) and says what the operator
asked for in `action_requested(action, rollout_id, options)`; the bridge turns that into engine calls.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.inventory.rollouts import DeviceRow, JournalEntry, RolloutRow
from fleetdesk.rollout import states as st
from fleetdesk.rollout.engine import RolloutEvent

from .activities import human_bytes, human_duration
from .bridge import RolloutDetail
from .fleet_model import plain
from .overview import colours
from .plots import FixedPlot

SHARE_CAP = 200.0  # bars are drawn up to twice their bound; the caption gives the real value
# The gate plot's least height: its range grows to fit the captions (GatePlot._fit_range), bars stay readable.
GATE_PLOT_MIN_HEIGHT = 130
CHIP_PADDING = 10  # px around a selected state cell's text (StateColourDelegate)
ROLLOUT_ROLE = Qt.ItemDataRole.UserRole + 31
DEVICE_ROLE = Qt.ItemDataRole.UserRole + 32
WAVE_ROLE = Qt.ItemDataRole.UserRole + 33
LIST_COLUMNS = ("ID", "Model", "Status", "Started", "Actor")
WAVE_COLUMNS = ("Wave / device", "Profile", "State", "Sent", "Gates", "Last step")
# Which buttons each rollout status allows (fleetdesk/rollout/engine.py: pause, resume, approve, abort, rollback).
ENABLED: Mapping[str, frozenset[str]] = {
    "planned": frozenset({"pause", "resume", "abort"}),
    "running": frozenset({"pause", "abort"}),
    "paused": frozenset({"resume", "abort", "rollback"}),
    "waiting-approval": frozenset({"approve", "pause", "abort", "rollback"}),
    "aborted": frozenset({"rollback"}),
    "done": frozenset({"rollback"}),
    "failed": frozenset({"rollback"}),
    "rolling-back": frozenset(),
    "rolled-back": frozenset(),
}
# The gates as the plot labels them; `low` bounds are minimums (the value must stay above the line).
GATE_LABELS: Mapping[str, tuple[str, str, bool]] = {
    "p95_ms": ("p95", "ms", False), "p95_ratio": ("p95 / before", "×", False),
    "error_rate": ("errors", "", False), "golden_cosine": ("golden", "", True),
    "temperature_c": ("temp", "°C", False), "memory_free_pct": ("free mem", "%", True),
}


def state_colour(state: str) -> str:
    palette = colours()
    if state == st.DONE:
        return palette["ok"]
    if state in (st.FAILED, st.ROLLING_BACK):
        return palette["error"]
    if state in (st.UNREACHABLE, st.ROLLED_BACK):
        return palette["warning"]
    if state in (st.PENDING, st.SKIPPED):
        return palette["muted"]
    return palette["line"]  # staging .. confirming: under way


def status_colour(status: str) -> str:
    palette = colours()
    return {"done": palette["ok"], "running": palette["line"], "failed": palette["error"],
            "aborted": palette["error"], "paused": palette["warning"], "waiting-approval": palette["warning"],
            "rolling-back": palette["error"], "rolled-back": palette["warning"]}.get(status, palette["muted"])


def gate_value_text(gate: str, value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    unit = GATE_LABELS.get(gate, ("", "", False))[1]
    if gate == "error_rate":
        return f"{float(value) * 100:.2f} %"
    if gate == "golden_cosine":
        return f"{float(value):.4f}"
    return f"{float(value):.3g} {unit}".strip()


def absent_gate_text(entry: Mapping[str, Any]) -> tuple[str, bool]:
    """A gate with no value to draw, as its caption says it, and whether it fails the device: only a gate that
    is on and was not measured does (gates.evaluate records it with ok false); a gate that does not apply (ok,
    no value: the device ran no model before, so no ratio) or is off (no bound) is shown neutrally."""
    if entry.get("bound") is None:
        return "off", False
    if entry.get("ok"):
        return "does not apply", False
    return "not measured", True


def gate_notes_html(notes: Sequence[tuple[str, str, bool]]) -> str:
    """The gates' notes under the plot, one per line: a failing gate's in the error colour, the rest muted."""
    palette = colours()
    return "<br>".join(f"<span style='color:{palette['muted'] if ok else palette['error']}'>"
                       f"<b>{html.escape(label)}</b>: {html.escape(plain(note))}</span>" for label, note, ok in notes)


class StateColourDelegate(QStyledItemDelegate):
    """A state cell keeps its colour on a selected row. The theme's `::item:selected { color }` would paint every
    selected cell's text alike, and green or red on the selection blue is unreadable, so the selected cell's text
    is drawn in its own colour on a chip of the view's base colour."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        brush = index.data(Qt.ItemDataRole.ForegroundRole)
        if not option.state & QStyle.StateFlag.State_Selected or not isinstance(brush, QBrush):  # type: ignore[attr-defined]
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        widget = option.widget  # type: ignore[attr-defined]
        style = widget.style() if widget is not None else QApplication.style()
        area = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, widget)
        text = opt.text  # type: ignore[attr-defined]
        opt.text = ""  # type: ignore[attr-defined]
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)  # selection, no text
        metrics = opt.fontMetrics  # type: ignore[attr-defined]
        chip = QRect(area.left(), area.top() + 2, min(metrics.horizontalAdvance(text) + CHIP_PADDING, area.width()),
                     area.height() - 4)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(opt.palette.base())  # type: ignore[attr-defined]
        painter.drawRoundedRect(chip, 4, 4)
        painter.setPen(brush.color())
        painter.setFont(opt.font)  # type: ignore[attr-defined]
        inner = chip.adjusted(CHIP_PADDING // 2, 0, -CHIP_PADDING // 2, 0)
        fits = metrics.horizontalAdvance(text) <= inner.width()  # a rounded advance: no clipping of a text that fits
        painter.drawText(inner, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
                         | (Qt.TextFlag.TextDontClip if fits else Qt.TextFlag(0)),
                         text if fits else metrics.elidedText(text, Qt.TextElideMode.ElideRight, inner.width()))
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        hint = super().sizeHint(option, index)
        return QSize(hint.width() + CHIP_PADDING, hint.height())  # the chip's padding: no eliding when selected


def gate_summary(gates: Mapping[str, Any]) -> str:
    values = gates.get("values") or {}
    if not values:
        return ""
    failed = [g for g, v in values.items() if not v.get("ok")]
    return "pass" if not failed else "FAIL: " + ", ".join(GATE_LABELS.get(g, (g,))[0] for g in failed)


def journal_text(entry: JournalEntry | None) -> str:
    if entry is None:
        return ""
    when = entry.at.astimezone().strftime("%H:%M:%S")
    detail = {k: v for k, v in entry.detail.items() if k in ("why", "step", "code", "reason")}
    extra = "; ".join(f"{k}: {v}" for k, v in detail.items())
    return f"{when} {entry.from_state} --{entry.event}--> {entry.to_state}" + (f" ({extra})" if extra else "")


@dataclass
class _Transfer:
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta: float | None = None


class GatePlot(FixedPlot):
    """The chosen device's gate values, each as a share of its bound (the dashed line at 100 %): a bar for an
    upper bound must stay below the line, a bar for a lower bound (golden cosine, free memory) above it. A gate with
    no value has a caption instead: red "not measured" when that failed the device, muted when it did not apply;
    what gates.evaluate noted is its tooltip and, through `notes`, the view's line under the plot."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("GatePlot")
        self.setMinimumHeight(GATE_PLOT_MIN_HEIGHT)
        self.getAxis("left").setLabel("% of bound")
        self.getAxis("left").setWidth(52)
        # pyqtgraph sizes the bottom axis from the text it last drew, a few pixels short of the gate names'
        # descenders ("golden") at this font: reserve a line of the widget's font and the tick offset.
        self.getAxis("bottom").setHeight(self.fontMetrics().height() + 10)
        self.getViewBox().sigResized.connect(self._fit_range)
        self.bars: list[pg.BarGraphItem] = []
        self.bound_line: pg.InfiniteLine | None = None
        self.labels: list[pg.TextItem] = []
        self.shown: dict[str, tuple[float, bool]] = {}  # gate -> (share of its bound, ok)
        self.absent: dict[str, tuple[str, str]] = {}  # gate without a bar -> (its caption, why)
        self.captions: dict[str, pg.TextItem] = {}  # gate -> its caption in the plot
        self.notes: list[tuple[str, str, bool]] = []  # (gate label, what gates.evaluate noted, ok) in plot order
        self._values: Mapping[str, Any] = {}
        self._title = ""
        self.refresh_theme()

    def show_gates(self, values: Mapping[str, Any], title: str = "") -> None:
        self._values, self._title = dict(values), title
        plot = self.getPlotItem()
        for item in [*self.bars, *self.labels, *([self.bound_line] if self.bound_line is not None else [])]:
            plot.removeItem(item)
        self.bars, self.labels, self.bound_line, self.shown, self.absent, self.notes = [], [], None, {}, {}, []
        self.captions = {}
        palette = colours()
        text = self.palette().text().color()
        ticks = []
        x = 0
        for gate in GATE_LABELS:
            entry = values.get(gate)
            if not isinstance(entry, Mapping):
                continue
            value, bound, ok = entry.get("value"), entry.get("bound"), bool(entry.get("ok"))
            label = GATE_LABELS[gate][0]
            ticks.append((x, label))
            note = str(entry.get("note") or "")
            if isinstance(value, int | float) and isinstance(bound, int | float) and math.isfinite(value):
                # A bound of 0 (no errors at all): a bar at 0, or over the line as soon as there is one.
                share = float(value) / float(bound) * 100 if bound else (0.0 if value <= 0 else 150.0)
                self.shown[gate] = (share, ok)
                colour = QColor(palette["ok"] if ok else palette["error"])
                height = min(share, SHARE_CAP)  # 420 % free memory would flatten every other bar
                bar = pg.BarGraphItem(x=[x], height=[height], width=0.6, brush=colour,
                                      pen=pg.mkPen(colour.darker(130)))
                self.bars.append(bar)
                caption = pg.TextItem(f"{gate_value_text(gate, value)}\n{'≥' if GATE_LABELS[gate][2] else '≤'} "
                                      f"{gate_value_text(gate, bound)}", color=text, anchor=(0.5, 1.0))
                caption.setPos(x, max(height, 100.0) + 4)  # above the bar and the bound line
            else:
                # No bar: the gate was off, did not apply (gates.evaluate: ok with no value, e.g. no previous model
                # to compare with), or was on and not measured, which fails the device (ok false): only that is red.
                word, fails = absent_gate_text(entry)
                self.absent[gate] = (word, note)
                caption = pg.TextItem(word, color=QColor(palette["error"] if fails else palette["muted"]),
                                      anchor=(0.5, 1.0))
                caption.setPos(x, 10)
            if note:
                self.notes.append((label, note, bool(ok)))
                caption.setToolTip(note)
            self.labels.append(caption)
            self.captions[gate] = caption
            x += 1
        self.bound_line = pg.InfiniteLine(pos=100, angle=0, pen=pg.mkPen(QColor(palette["warning"]), width=1.5,
                                                                          style=Qt.PenStyle.DashLine))
        for item in [*self.bars, *self.labels, self.bound_line]:
            plot.addItem(item)
        self.getAxis("bottom").setTicks([ticks])
        plot.setXRange(-0.6, max(x - 0.4, 0.6), padding=0)
        self._fit_range()
        heading = title or "Health gates (choose a device)"
        self.setTitle(f"<span style='color:{text.name()}'>{html.escape(plain(heading))}: value as a share of its "
                      "bound, dashed line = the bound</span>", size="9pt")
        self.setToolTip("\n".join(f"{label}: {note}" for label, note, _ok in self.notes))

    def _fit_range(self, *_resized: object) -> None:
        """Room above the highest caption: a caption hangs above its point and is sized in pixels, not in % of the
        bound, so the range's top follows the plot's height (a short plot gets a taller range)."""
        height = self.getViewBox().boundingRect().height()
        top = SHARE_CAP * 1.45
        for caption in self.labels:
            need = caption.textItem.boundingRect().height() + 4
            if height > need * 1.25:  # else no range would fit it: the minimum height keeps this from happening
                top = max(top, caption.pos().y() / (1 - need / height))
        self.getPlotItem().setYRange(0, top, padding=0)

    def refresh_theme(self) -> None:
        palette = self.palette()
        self.setBackground(palette.base().color())
        for name in ("left", "bottom"):
            axis = self.getAxis(name)
            axis.setPen(pg.mkPen(colours()["grid"]))
            axis.setTextPen(pg.mkPen(palette.text().color()))
        self.show_gates(self._values, self._title)


class RolloutsView(QWidget):
    """See the module docstring."""

    action_requested = Signal(str, int, object)  # "pause"|"resume"|"approve"|"abort"|"rollback", id, options
    rollout_chosen = Signal(int)  # the rollout to show (the bridge answers with show_detail)
    wizard_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("RolloutsView")
        self._rows: dict[int, RolloutRow] = {}
        self._wanted: int | None = None  # a rollout chosen before its row was listed
        self.detail: RolloutDetail | None = None
        self.transfers: dict[int, dict[int, _Transfer]] = {}  # rollout -> device -> its transfer
        self.events: dict[int, list[str]] = {}  # rollout -> its last event messages

        self.list = QTreeWidget(self)
        self.list.setObjectName("RolloutList")
        self.list.setHeaderLabels(list(LIST_COLUMNS))
        self.list.setRootIsDecorated(False)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.itemSelectionChanged.connect(self._chosen)
        self.list.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.list.setItemDelegateForColumn(2, StateColourDelegate(self.list))
        self.new_button = QPushButton("Roll out…", self)
        self.new_button.setToolTip("Plan a new staged rollout of a model")
        self.new_button.clicked.connect(self.wizard_requested)
        self.hint = QLabel("No rollouts yet. Drop a model on devices or a group, or use Roll out… to plan one.", self)
        self.hint.setObjectName("EmptyHint")
        self.hint.setWordWrap(True)
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.new_button)
        left_layout.addWidget(self.list, 1)
        left_layout.addWidget(self.hint)

        self.title = QLabel("", self)
        self.title.setObjectName("Heading")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.reason = QLabel("", self)
        self.reason.setObjectName("RolloutReason")
        self.reason.setWordWrap(True)
        self.reason.setTextFormat(Qt.TextFormat.PlainText)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("RolloutProgress")
        self.progress.setRange(0, 1000)
        self.progress_label = QLabel("", self)
        self.progress_label.setObjectName("RolloutTransfer")
        self.buttons: dict[str, QPushButton] = {}
        bar = QHBoxLayout()
        for action, text, tip in (
                ("pause", "Pause", "No new step starts; a device mid-step finishes that step"),
                ("resume", "Resume", "Drive the rollout again from where it stopped"),
                ("approve", "Approve next wave", "The wave reached its success threshold: start the next one"),
                ("abort", "Abort", "Devices not yet switched are skipped; a device under verification rolls back"),
                ("rollback", "Roll back ▾", "Put devices back on the model they ran before")):
            button = QPushButton(text, self)
            button.setObjectName(f"Rollout_{action}")
            button.setToolTip(tip)
            button.setStyleSheet("min-width: 0px; padding-left: 10px; padding-right: 10px;")
            self.buttons[action] = button
            bar.addWidget(button)
            if action != "rollback":
                button.clicked.connect(lambda _c=False, a=action: self._act(a, {}))
        bar.addStretch(1)
        self.rollback_menu = QMenu(self)
        self.rollback_device = self.rollback_menu.addAction("This device", lambda: self._rollback("device"))
        self.rollback_wave = self.rollback_menu.addAction("This wave", lambda: self._rollback("wave"))
        self.rollback_menu.addAction("The whole rollout", lambda: self._rollback("rollout"))
        self.buttons["rollback"].setMenu(self.rollback_menu)

        self.waves = QTreeWidget(self)
        self.waves.setObjectName("RolloutWaves")
        self.waves.setHeaderLabels(list(WAVE_COLUMNS))
        self.waves.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.waves.itemSelectionChanged.connect(self._device_chosen)
        self.waves.setItemDelegateForColumn(2, StateColourDelegate(self.waves))
        header = self.waves.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.gate_plot = GatePlot(self)
        self.gate_notes = QLabel("", self)  # why a gate has no bar, or what else its verdict noted
        self.gate_notes.setObjectName("GateNotes")
        self.gate_notes.setWordWrap(True)
        self.gate_notes.setTextFormat(Qt.TextFormat.RichText)
        self.event_log = QLabel("", self)
        self.event_log.setObjectName("RolloutEvents")
        self.event_log.setWordWrap(True)
        self.event_log.setTextFormat(Qt.TextFormat.PlainText)

        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.title)
        right_layout.addWidget(self.reason)
        right_layout.addLayout(bar)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.progress_label, 2)
        right_layout.addLayout(progress_row)
        gates = QWidget(right)
        gates_layout = QVBoxLayout(gates)
        gates_layout.setContentsMargins(0, 0, 0, 0)
        gates_layout.setSpacing(2)
        gates_layout.addWidget(self.gate_plot, 1)
        gates_layout.addWidget(self.gate_notes)
        lower = QSplitter(Qt.Orientation.Vertical, right)
        lower.setObjectName("RolloutLower")
        lower.addWidget(self.waves)
        lower.addWidget(gates)
        lower.setCollapsible(1, False)  # the plot never shrinks below the height its captions need
        lower.setSizes([260, 240])
        right_layout.addWidget(lower, 1)
        right_layout.addWidget(self.event_log)

        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("RolloutSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([400, 880])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.show_detail(None)

    # -- the list ---------------------------------------------------------------------------------------------

    def set_rollouts(self, rows: Sequence[RolloutRow]) -> None:
        before = self.selected_id()
        wanted = self._wanted if any(r.id == self._wanted for r in rows) else None
        chosen = wanted if wanted is not None else before
        self._rows = {r.id: r for r in rows}
        self.list.blockSignals(True)
        self.list.clear()
        for row in sorted(rows, key=lambda r: r.id, reverse=True):
            item = QTreeWidgetItem([str(row.id), plain(row.model_ref), row.status,
                                    row.created_at.astimezone().strftime("%m-%d %H:%M"), plain(row.actor)])
            item.setData(0, ROLLOUT_ROLE, row.id)
            item.setForeground(2, QBrush(QColor(status_colour(row.status))))
            if row.paused_reason:
                item.setToolTip(2, plain(row.paused_reason))
            self.list.addTopLevelItem(item)
            if row.id == chosen:
                item.setSelected(True)
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self.hint.setVisible(not rows)
        if wanted is not None:
            self._wanted = None
            if wanted != before:
                self.rollout_chosen.emit(wanted)
        if chosen is None and rows:
            self.select(max(self._rows))
        elif self.detail is not None and self.detail.row.id in self._rows:
            self._enable(self._rows[self.detail.row.id].status)

    def select(self, rollout_id: int) -> None:
        """Choose this rollout in the list; one not listed yet is chosen when `set_rollouts` brings its row."""
        for i in range(self.list.topLevelItemCount()):
            item = self.list.topLevelItem(i)
            if item.data(0, ROLLOUT_ROLE) == rollout_id:
                self._wanted = None
                self.list.setCurrentItem(item)
                item.setSelected(True)
                return
        self._wanted = rollout_id

    def selected_id(self) -> int | None:
        items = self.list.selectedItems()
        return int(items[0].data(0, ROLLOUT_ROLE)) if items else None

    def _chosen(self) -> None:
        rid = self.selected_id()
        if rid is not None:
            self.rollout_chosen.emit(rid)

    # -- one rollout ------------------------------------------------------------------------------------------

    def show_detail(self, detail: RolloutDetail | None) -> None:
        """Show a rollout's waves and devices (or nothing); keeps the chosen device chosen."""
        previous = self.selected_device()
        self.detail = detail
        self.waves.blockSignals(True)
        self.waves.clear()
        if detail is None:
            self.title.setText("No rollout chosen")
            self.reason.setText("")
            self.reason.setVisible(False)  # an empty line would take the height the gate plot needs
            self._enable("")
            self.waves.blockSignals(False)
            self._show_progress()
            self._show_gates({})
            return
        row = detail.row
        self.title.setText(f"Rollout {row.id}: {plain(row.model_ref)} — {row.status}")
        self.title.setStyleSheet(f"color: {status_colour(row.status)};")
        self.reason.setText(row.paused_reason)
        self.reason.setVisible(bool(row.paused_reason))
        waves: dict[int, list[DeviceRow]] = {}
        for device in detail.devices:
            waves.setdefault(device.wave, []).append(device)
        transfers = self.transfers.get(row.id, {})
        for wave, members in sorted(waves.items()):
            done = sum(1 for d in members if d.state == st.DONE)
            label = f"Wave {wave + 1}" + (" (canary)" if wave == 0 and len(members) == 1 and len(waves) > 1 else "")
            head = QTreeWidgetItem([label, "", f"{done} of {len(members)} done", "", "", ""])
            head.setData(0, WAVE_ROLE, wave)
            font = head.font(0)
            font.setBold(True)
            head.setFont(0, font)
            self.waves.addTopLevelItem(head)
            for device in members:
                name = detail.names.get(device.device_id, f"device {device.device_id}")
                transfer = transfers.get(device.device_id)
                sent = device.bytes_sent
                total = transfer.total if transfer is not None else 0
                if transfer is not None and device.state == st.STAGING:
                    sent = max(sent, transfer.done)
                sent_text = (f"{human_bytes(sent)} of {human_bytes(total)}" if total else
                             human_bytes(sent) if sent else "")
                last = detail.last.get(device.device_id)
                child = QTreeWidgetItem([plain(name), plain(detail.profiles.get(device.device_id, "")),
                                         device.state, sent_text, gate_summary(device.gates),
                                         plain(device.error) or journal_text(last)])
                child.setData(0, DEVICE_ROLE, device.device_id)
                child.setData(0, WAVE_ROLE, device.wave)
                colour = QColor(state_colour(device.state))
                child.setForeground(2, QBrush(colour))
                child.setText(2, f"● {device.state}")
                tip = journal_text(last) + (f"\n{device.error}" if device.error else "")
                for column in range(len(WAVE_COLUMNS)):
                    child.setToolTip(column, plain(tip))
                head.addChild(child)
                if device.device_id == previous:
                    child.setSelected(True)
            head.setExpanded(True)
        self.waves.blockSignals(False)
        self._enable(row.status)
        self._show_progress()
        self._device_chosen()

    def device_item(self, device_id: int) -> QTreeWidgetItem | None:
        for i in range(self.waves.topLevelItemCount()):
            head = self.waves.topLevelItem(i)
            for j in range(head.childCount()):
                if head.child(j).data(0, DEVICE_ROLE) == device_id:
                    return head.child(j)
        return None

    def select_device(self, device_id: int) -> None:
        item = self.device_item(device_id)
        if item is not None:
            self.waves.setCurrentItem(item)
            item.setSelected(True)

    def selected_device(self) -> int | None:
        items = self.waves.selectedItems()
        value = items[0].data(0, DEVICE_ROLE) if items else None
        return int(value) if value is not None else None

    def selected_wave(self) -> int | None:
        items = self.waves.selectedItems()
        value = items[0].data(0, WAVE_ROLE) if items else None
        return int(value) if value is not None else None

    def _device_chosen(self) -> None:
        device_id = self.selected_device()
        wave = self.selected_wave()
        self.rollback_device.setEnabled(device_id is not None)
        self.rollback_wave.setEnabled(wave is not None)
        if self.detail is None or device_id is None:
            self._show_gates({})
            return
        row = next((d for d in self.detail.devices if d.device_id == device_id), None)
        values = (row.gates or {}).get("values") or {} if row is not None else {}
        name = self.detail.names.get(device_id, f"device {device_id}")
        self._show_gates(values, f"Health gates of {name}")

    def _show_gates(self, values: Mapping[str, Any], title: str = "") -> None:
        self.gate_plot.show_gates(values, title)
        self.gate_notes.setText(gate_notes_html(self.gate_plot.notes))
        self.gate_notes.setVisible(bool(self.gate_plot.notes))

    def _enable(self, status: str) -> None:
        allowed = ENABLED.get(status, frozenset())
        for action, button in self.buttons.items():
            button.setEnabled(action in allowed)
        self.buttons["resume"].setText("Start" if status == "planned" else "Resume")

    # -- live events ------------------------------------------------------------------------------------------

    def add_event(self, event: RolloutEvent) -> None:
        """A RolloutEvent from the engine: progress updates the transfer figures at once; every event is logged."""
        if event.kind == "progress" and event.device_id is not None:
            transfer = self.transfers.setdefault(event.rollout_id, {}).setdefault(event.device_id, _Transfer())
            transfer.done, transfer.total = event.bytes_done, event.bytes_total
            transfer.rate, transfer.eta = event.rate_bytes_s, event.eta_s
            if self.detail is not None and self.detail.row.id == event.rollout_id:
                item = self.device_item(event.device_id)
                if item is not None:
                    item.setText(3, f"{human_bytes(event.bytes_done)} of {human_bytes(event.bytes_total)}")
        elif event.kind == "state" and event.device_id is not None and event.state not in (st.STAGING, None):
            transfer = self.transfers.get(event.rollout_id, {}).get(event.device_id)
            if transfer is not None:
                transfer.rate, transfer.eta = 0.0, None  # its copy ended
                transfer.done = transfer.total if event.state != st.FAILED else transfer.done
        if event.kind != "progress":
            log = self.events.setdefault(event.rollout_id, [])
            log.append(plain(event.message))
            del log[:-4]
        if self.detail is not None and self.detail.row.id == event.rollout_id:
            self._show_progress()

    def _show_progress(self) -> None:
        rid = self.detail.row.id if self.detail is not None else None
        transfers = list(self.transfers.get(rid, {}).values()) if rid is not None else []
        if self.detail is not None and not transfers:
            planned = {d["device_id"]: d.get("size_bytes", 0) for d in self.detail.row.resolved.get("devices", [])}
            total = sum(planned.values())
            sent = sum(min(d.bytes_sent, planned.get(d.device_id, 0)) if planned.get(d.device_id) else 0
                       for d in self.detail.devices)
            if total:
                done_devices = sum(1 for d in self.detail.devices if d.state in st.TERMINAL)
                self.progress.setValue(int(sent / total * 1000))
                self.progress_label.setText(f"{human_bytes(sent)} of {human_bytes(total)} sent; "
                                            f"{done_devices} of {len(self.detail.devices)} device(s) finished")
            else:
                self.progress.setValue(0)
                self.progress_label.setText("")
        elif transfers:
            done = sum(t.done for t in transfers)
            total = sum(t.total for t in transfers)
            rate = sum(t.rate for t in transfers if t.eta is not None)
            etas = [t.eta for t in transfers if t.eta is not None]
            self.progress.setValue(int(done / total * 1000) if total else 0)
            text = f"{human_bytes(done)} of {human_bytes(total)}"
            if rate > 0:
                text += f", {human_bytes(rate)}/s"
            if etas:
                text += f", about {human_duration(max(etas))} left"
            self.progress_label.setText(text)
        else:
            self.progress.setValue(0)
            self.progress_label.setText("")
        self.event_log.setText("\n".join(self.events.get(rid, [])) if rid is not None else "")
        self.event_log.setVisible(bool(self.event_log.text()))

    # -- buttons ----------------------------------------------------------------------------------------------

    def _act(self, action: str, options: dict[str, Any]) -> None:
        if self.detail is not None:
            self.action_requested.emit(action, self.detail.row.id, options)

    def _rollback(self, scope: str) -> None:
        if scope == "device" and self.selected_device() is not None:
            self._act("rollback", {"device_id": self.selected_device()})
        elif scope == "wave" and self.selected_wave() is not None:
            self._act("rollback", {"wave": self.selected_wave()})
        elif scope == "rollout":
            self._act("rollback", {})

    def refresh_theme(self) -> None:
        self.gate_plot.refresh_theme()
        if self.detail is not None:
            self.show_detail(self.detail)
