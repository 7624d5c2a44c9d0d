"""How the Rollouts tab shows states and health gates: the colours of device states and rollout statuses, a
delegate that keeps a state cell's colour on a selected row, the texts of the gate and last-step cells, the
plot of one device's gate values against their bounds with the notes under it, and the live plot of a device's
shadow step.

The tab itself, its list, waves and buttons, is fleetdesk/gui/rollout_view.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QPainter
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.rollouts import JournalEntry

from .fleet_model import plain
from .overview import colours
from .plots import FixedPlot
from .text import markup_text, tooltip_text

SHARE_CAP = 200.0  # bars are drawn up to twice their bound; the caption gives the real value
# The gate plot's least height: its range grows to fit the captions (GatePlot._fit_range), bars stay readable.
GATE_PLOT_MIN_HEIGHT = 130
CHIP_PADDING = 10  # px around a selected state cell's text (StateColourDelegate)
# The gates as the plot labels them; `low` bounds are minimums (the value must stay above the line).
GATE_LABELS: Mapping[str, tuple[str, str, bool]] = {
    "p95_ms": ("p95", "ms", False), "p95_ratio": ("p95 / before", "×", False),
    "error_rate": ("errors", "", False), "golden_cosine": ("golden", "", True),
    "temperature_c": ("temp", "°C", False), "memory_free_pct": ("free mem", "%", True),
}


# colours() is typed as a bare dict (its entries are colour names, but "alert_row" is a QColor): str() gives the
# colour-name entries read here their type.
def state_colour(state: str) -> str:
    palette = colours()
    if state == st.DONE:
        return str(palette["ok"])
    if state in (st.FAILED, st.ROLLING_BACK):
        return str(palette["error"])
    if state in (st.UNREACHABLE, st.ROLLED_BACK):
        return str(palette["warning"])
    if state in (st.PENDING, st.SKIPPED):
        return str(palette["muted"])
    return str(palette["line"])  # staging .. confirming: under way


def status_colour(status: str) -> str:
    palette = colours()
    return str({"done": palette["ok"], "running": palette["line"], "failed": palette["error"],
                "aborted": palette["error"], "paused": palette["warning"], "waiting-approval": palette["warning"],
                "rolling-back": palette["error"], "rolled-back": palette["warning"]}.get(status, palette["muted"]))


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
                       f"<b>{markup_text(label)}</b>: {markup_text(note)}</span>" for label, note, ok in notes)


class StateColourDelegate(QStyledItemDelegate):
    """A state cell keeps its colour on a selected row. The theme's `::item:selected { color }` would paint every
    selected cell's text alike, and green or red on the selection blue is unreadable, so the selected cell's text
    is drawn in its own colour on a chip of the view's base colour."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        brush = index.data(Qt.ItemDataRole.ForegroundRole)
        if not option.state & QStyle.StateFlag.State_Selected or not isinstance(brush, QBrush):
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        area = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, widget)
        text = opt.text
        opt.text = ""
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)  # selection, no text
        metrics = opt.fontMetrics
        chip = QRect(area.left(), area.top() + 2, min(metrics.horizontalAdvance(text) + CHIP_PADDING, area.width()),
                     area.height() - 4)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(opt.palette.base())
        painter.drawRoundedRect(chip, 4, 4)
        painter.setPen(brush.color())
        painter.setFont(opt.font)
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
                caption.setToolTip(tooltip_text(plain(note)))
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
        self.setTitle(f"<span style='color:{text.name()}'>{markup_text(heading)}: value as a share of its "
                      "bound, dashed line = the bound</span>", size="9pt")
        self.setToolTip(tooltip_text("\n".join(f"{label}: {plain(note)}" for label, note, _ok in self.notes)))

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
        self.paint_theme(str(colours()["grid"]))
        self.show_gates(self._values, self._title)


class ShadowPlot(FixedPlot):
    """One device's shadow step as it runs: the candidate's agreement with the active model and its p95 over the
    active model's on the same requests, against the requests compared so far; the plan's bounds dashed. Fed from
    the engine's live events (RolloutEvent.figures); the step's final figures are in the journal and the report."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ShadowPlot")
        self.setMinimumHeight(GATE_PLOT_MIN_HEIGHT)
        self.getAxis("bottom").setLabel("requests compared")
        self.legend = self.addLegend(offset=(-6, 6))
        palette = colours()
        self.agreement = self.plot([], [], name="agreement", pen=pg.mkPen(str(palette["ok"]), width=2),
                                   symbol="o", symbolSize=4, connect="finite")
        self.ratio = self.plot([], [], name="p95 / active model's", pen=pg.mkPen(str(palette["warning"]), width=2),
                               symbol="t", symbolSize=5, connect="finite")
        self.bounds: list[pg.InfiniteLine] = []
        self.points: list[tuple[float, float | None, float | None]] = []
        self._bounds: Mapping[str, float | None] = {}
        self._title = ""
        self.refresh_theme()

    def show_points(self, points: Sequence[tuple[float, float | None, float | None]],
                    bounds: Mapping[str, float | None], title: str = "") -> None:
        """`points`: (requests compared, agreement, p95 ratio) in the order they came; `bounds`: the plan's
        min_agreement and p95_ratio_max (None: not judged)."""
        self.points, self._bounds, self._title = list(points), dict(bounds), title
        xs = [p[0] for p in points]
        self.agreement.setData(xs, [math.nan if p[1] is None else p[1] for p in points])
        self.ratio.setData(xs, [math.nan if p[2] is None else p[2] for p in points])
        plot = self.getPlotItem()
        for line in self.bounds:
            plot.removeItem(line)
        palette = colours()
        self.bounds = [pg.InfiniteLine(pos=bound, angle=0, pen=pg.mkPen(QColor(str(palette[colour])), width=1,
                                                                         style=Qt.PenStyle.DashLine))
                       for key, colour in (("min_agreement", "ok"), ("p95_ratio_max", "warning"))
                       if (bound := bounds.get(key)) is not None]
        for line in self.bounds:
            plot.addItem(line)
        text = self.palette().text().color()
        heading = title or "Shadow step (choose a device)"
        self.setTitle(f"<span style='color:{text.name()}'>{markup_text(heading)}; dashed: the plan's bounds</span>",
                      size="9pt")

    def refresh_theme(self) -> None:
        self.paint_theme(str(colours()["grid"]))
        palette = self.palette()
        self.legend.setLabelTextColor(palette.text().color())
        backdrop = QColor(palette.base().color())
        backdrop.setAlpha(220)  # the legend sits over the curves' right end: readable over them
        self.legend.setBrush(pg.mkBrush(backdrop))
        self.agreement.setPen(pg.mkPen(str(colours()["ok"]), width=2))
        self.ratio.setPen(pg.mkPen(str(colours()["warning"]), width=2))
        self.show_points(self.points, self._bounds, self._title)
