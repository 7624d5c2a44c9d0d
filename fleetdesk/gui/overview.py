"""The fleet overview of the telemetry dashboard: one row per device, sparklines painted from its ring buffer.

`OverviewModel` holds the rows (device, stream state) and repaints only the rows whose device got a
sample, coalesced to a few repaints a second; `SparklineDelegate` paints each metric cell straight from
`RingBuffer.values` as one path (no widget, no plot item per cell), so a hundred devices at 1 Hz stay cheap.
Each sparkline's time axis is its device's own clock (the last `SPARK_SECONDS` before its newest sample),
so a device whose clock is off still draws; whether its data is fresh is judged by the laptop's clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from pyqtgraph import arrayToQPath
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QPointF,
    QRect,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QPainter, QPen
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from fleetdesk.telemetry.alerts import AlertMonitor
from fleetdesk.telemetry.buffers import RingBuffer, TelemetryStore
from fleetdesk.telemetry.sample import METRIC_LABELS

from .fleet_model import alert_icon
from .text import tooltip_text, visible_text
from .theme import current_theme

OVERVIEW_METRICS: tuple[str, ...] = ("cpu_pct", "gpu_pct", "temp_c", "latency_p95_ms")
COLUMNS: tuple[str, ...] = ("Device", "Stream", *(METRIC_LABELS[m] for m in OVERVIEW_METRICS))
FIRST_METRIC_COLUMN = 2
SPARK_SECONDS = 300.0  # the last five minutes
FLUSH_MS = 250  # at most four repaints a second, however many samples arrive
STALE_AFTER_S = 5.0  # a streaming device silent this long is shown as such
NONE_YET = "—"
DEVICE_ID_ROLE = Qt.ItemDataRole.UserRole + 11
# (low, high) of the vertical scale; None grows with the data (at least the span given).
_SCALES: dict[str, tuple[float, float, bool]] = {
    "cpu_pct": (0.0, 100.0, False),
    "gpu_pct": (0.0, 100.0, False),
    "temp_c": (30.0, 90.0, True),
    "latency_p95_ms": (0.0, 10.0, True),
}
Index = QModelIndex | QPersistentModelIndex

# The theme colours of ui/themes/*.qss (error, warning, accent, muted), for painting outside the style sheet.
COLOURS: dict[str, dict[str, str | QColor]] = {
    "light": {"line": "#2f6fde", "error": "#c8372d", "warning": "#b87800", "muted": "#7b8591",
              "alert_row": QColor(200, 55, 45, 34), "grid": "#c9d0d8", "ok": "#2e9d50"},
    "dark": {"line": "#6ea8fe", "error": "#ff7b72", "warning": "#e3a008", "muted": "#7d8590",
             "alert_row": QColor(255, 123, 114, 40), "grid": "#3a414a", "ok": "#3fb950"},
}


def colours() -> dict[str, str | QColor]:
    return COLOURS[current_theme()]


def value_text(metric: str, value: float | None) -> str:
    """A latest value as the overview shows it ("—" when the device does not report it)."""
    if value is None or not math.isfinite(value):
        return NONE_YET
    if metric.endswith("_ms"):
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if metric.startswith("drift_"):  # PSI: 0.1 is a moderate shift, 0.25 a large one
        return f"{value:.2f}"
    return f"{value:.0f}"


def age_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class OverviewRow:
    """One device as the overview knows it: identity from the inventory, state from the stream."""

    device_id: int
    name: str
    status: str = "online"  # the fleet table's status (online, offline, untrusted, ...)
    stream: str = ""  # the hub's state in words ("streaming", "reconnecting in 4 s", ...), "" if never started
    live: bool = True  # whether the stream's state says samples are expected
    detail: str = ""  # why the stream is not streaming (its last error), for the tooltip
    arrived: float | None = None  # laptop monotonic time of the last sample


class OverviewModel(QAbstractTableModel):
    """See the module docstring. Rows are kept in the order devices were given (the inventory's, by name)."""

    flushed = Signal()  # a coalesced repaint was asked for

    def __init__(self, store: TelemetryStore, monitor: AlertMonitor, parent: QWidget | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self.store = store
        self.monitor = monitor
        self._clock = clock
        self._rows: list[OverviewRow] = []
        self._row_of: dict[int, int] = {}
        self._dirty: set[int] = set()
        self.flushes = 0  # how many coalesced repaints were asked for (the benchmark reports it)
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self.flush)

    # -- rows ----------------------------------------------------------------------------------------

    def set_devices(self, rows: Sequence[OverviewRow]) -> None:
        old = {r.device_id: r for r in self._rows}
        self.beginResetModel()
        # What the stream said survives an inventory reload.
        self._rows = [replace(r, stream=old[r.device_id].stream, live=old[r.device_id].live,
                              detail=old[r.device_id].detail, arrived=old[r.device_id].arrived)
                      if r.device_id in old else r for r in rows]
        self._row_of = {r.device_id: n for n, r in enumerate(self._rows)}
        self.endResetModel()

    def upsert(self, device_id: int, name: str, status: str) -> None:
        row = self._row_of.get(device_id)
        if row is None:
            # In name order, like the fleet table: a device discovered later does not land at the bottom.
            key = (name.casefold(), name, device_id)
            row = next((n for n, r in enumerate(self._rows) if (r.name.casefold(), r.name, r.device_id) > key),
                       len(self._rows))
            self.beginInsertRows(QModelIndex(), row, row)
            self._rows.insert(row, OverviewRow(device_id, name, status))
            self._row_of = {r.device_id: n for n, r in enumerate(self._rows)}
            self.endInsertRows()
            return
        current = self._rows[row]
        if (current.name, current.status) != (name, status):
            self._rows[row] = replace(current, name=name, status=status)
            self.dataChanged.emit(self.index(row, 0), self.index(row, 1))

    def remove(self, device_id: int) -> None:
        row = self._row_of.get(device_id)
        if row is None:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._rows[row]
        self._row_of = {r.device_id: n for n, r in enumerate(self._rows)}
        self._dirty.discard(device_id)
        self.endRemoveRows()

    def set_stream(self, device_id: int, text: str, live: bool, detail: str = "") -> None:
        row = self._row_of.get(device_id)
        if row is None:
            return
        changed = replace(self._rows[row], stream=text, live=live, detail=detail)
        if changed != self._rows[row]:
            self._rows[row] = changed
            self.dataChanged.emit(self.index(row, 0), self.index(row, 1))

    def row_of(self, device_id: int) -> int | None:
        return self._row_of.get(device_id)

    def row_at(self, row: int) -> OverviewRow:
        return self._rows[row]

    def device_ids(self) -> list[int]:
        return [r.device_id for r in self._rows]

    # -- arrivals -------------------------------------------------------------------------------------

    def mark(self, device_id: int) -> None:
        """A sample of this device was stored: repaint its row with the next coalesced flush."""
        row = self._row_of.get(device_id)
        if row is None:
            return
        self._rows[row] = replace(self._rows[row], arrived=self._clock())
        self._dirty.add(device_id)
        if not self._flush.isActive():
            self._flush.start()

    def flush(self) -> None:
        """Repaint the rows that got samples since the last flush: one dataChanged per run of adjacent rows."""
        self._flush.stop()
        rows = sorted(self._row_of[d] for d in self._dirty if d in self._row_of)
        self._dirty.clear()
        if not rows:
            return
        self.flushes += 1
        last_column = len(COLUMNS) - 1
        start = previous = rows[0]
        for row in (*rows[1:], None):
            if row is not None and row == previous + 1:
                previous = row
                continue
            self.dataChanged.emit(self.index(start, 0), self.index(previous, last_column))
            if row is not None:
                start = previous = row
        self.flushed.emit()

    def refresh_ages(self) -> None:
        """Repaint the Stream column (how old each device's data is), once in a while."""
        if self._rows:
            self.dataChanged.emit(self.index(0, 1), self.index(len(self._rows) - 1, 1))

    def fresh_count(self) -> int:
        """Devices whose last sample arrived within STALE_AFTER_S."""
        now = self._clock()
        return sum(1 for r in self._rows if r.arrived is not None and now - r.arrived <= STALE_AFTER_S)

    def stop(self) -> None:
        self._flush.stop()
        self._dirty.clear()

    # -- what a cell says --------------------------------------------------------------------------------

    def stream_text(self, row: OverviewRow) -> tuple[str, str]:
        """(text, colour key) of the Stream column: what the data says first, then the hub, then the device."""
        if row.arrived is not None and row.live:
            age = self._clock() - row.arrived
            if age > STALE_AFTER_S:
                return f"no data for {age_text(age)}", "warning"
            return (row.stream or "streaming"), "ok"
        if row.stream:
            return row.stream, "muted" if row.stream == "stopped" else "warning"
        if row.status in ("offline", "unreachable", "untrusted"):
            return row.status, "muted"
        return "not streaming", "muted"

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole and \
                section >= FIRST_METRIC_COLUMN:
            return tooltip_text(f"{COLUMNS[section]}: the last {SPARK_SECONDS / 60:.0f} minutes, and the latest value")
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return visible_text(row.name)
            if column == 1:
                return self.stream_text(row)[0]
            return self.latest_text(row.device_id, OVERVIEW_METRICS[column - FIRST_METRIC_COLUMN])
        if role == DEVICE_ID_ROLE:
            return row.device_id
        if role == Qt.ItemDataRole.BackgroundRole:
            return QBrush(colours()["alert_row"]) if self.monitor.active(row.device_id) else None
        if role == Qt.ItemDataRole.ForegroundRole and column == 1:
            return QColor(colours()[self.stream_text(row)[1]]) if self.stream_text(row)[1] != "ok" else None
        if role == Qt.ItemDataRole.DecorationRole and column == 0 and self.monitor.active(row.device_id):
            return alert_icon()
        if role == Qt.ItemDataRole.ToolTipRole:
            return tooltip_text(self.tooltip(row))
        return None

    def latest_text(self, device_id: int, metric: str) -> str:
        buffer = self.store.buffer(device_id)
        latest = buffer.latest if buffer is not None else None
        return value_text(metric, latest.value(metric) if latest is not None else None)

    def tooltip(self, row: OverviewRow) -> str:
        lines = [visible_text(row.name)]
        if row.detail:
            lines.append(visible_text(row.detail))
        alerts = self.monitor.active(row.device_id)
        for event in alerts.values():
            lines.append(f"ALERT: {event.message}")
        buffer = self.store.buffer(row.device_id)
        if buffer is not None and buffer.latest is not None and buffer.latest.throttled:
            lines.append("Throttling now: " + ", ".join(visible_text(f) for f in buffer.latest.throttled))
        lines.append("Double-click or Enter: the device's full plots")
        return "\n".join(lines)

    def flags(self, index: Index) -> Qt.ItemFlag:
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable if index.isValid() else Qt.ItemFlag.NoItemFlags


class SparklineDelegate(QStyledItemDelegate):
    """Paints a metric cell: the last minutes as a line, the latest value at the right, coloured by the alerts."""

    VALUE_WIDTH = 52

    def __init__(self, model: OverviewModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.painted = 0  # metric cells painted (the benchmark's redraw count)

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        return QSize(170, 30)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        if index.column() < FIRST_METRIC_COLUMN:
            super().paint(painter, option, index)
            return
        self.painted += 1
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, opt, painter, widget)

        row = self.model.row_at(index.row())
        metric = OVERVIEW_METRICS[index.column() - FIRST_METRIC_COLUMN]
        buffer = self.model.store.buffer(row.device_id)
        latest = buffer.latest.value(metric) if buffer is not None and buffer.latest is not None else None
        threshold = self.model.monitor.threshold(metric)
        raised = metric in self.model.monitor.active(row.device_id)
        palette = colours()
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        rect: QRect = option.rect
        text_rect = QRect(rect.right() - self.VALUE_WIDTH, rect.top(), self.VALUE_WIDTH - 4, rect.height())
        if raised:
            text_colour = QColor(palette["error"])
        elif latest is not None and threshold is not None and threshold.beyond(latest):
            text_colour = QColor(palette["warning"])
        elif latest is None:
            text_colour = QColor(palette["muted"])
        else:
            text_colour = option.palette.text().color()
        if selected:
            text_colour = option.palette.highlightedText().color()
        painter.save()
        font = painter.font()
        font.setBold(raised)
        painter.setFont(font)
        painter.setPen(text_colour)
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                         value_text(metric, latest))
        spark = QRect(rect.left() + 4, rect.top() + 4, rect.width() - self.VALUE_WIDTH - 8, rect.height() - 8)
        if buffer is not None and spark.width() > 4:
            self._line(painter, spark, buffer, metric, threshold.bound if threshold else None,
                       QColor(palette["error"] if raised else palette["line"]), selected, option)
        painter.restore()

    def _line(self, painter: QPainter, spark: QRect, buffer: RingBuffer, metric: str, bound: float | None,
              colour: QColor, selected: bool, option: QStyleOptionViewItem) -> None:
        # At most 2 samples a second over the window: enough for any agent interval FleetDesk sets.
        last = min(len(buffer), int(SPARK_SECONDS * 2))
        times = buffer.times(last)
        values = buffer.values(metric, last)
        if not len(times) or not np.isfinite(values).any():
            return
        end = times[-1]
        keep = times >= end - SPARK_SECONDS
        times, values = times[keep], values[keep]
        low, high, grows = _SCALES[metric]
        finite = values[np.isfinite(values)]
        if grows and len(finite):
            low = min(low, float(finite.min()))
            high = max(high, float(finite.max()) * 1.1)
        span = high - low or 1.0
        x = spark.left() + (times - (end - SPARK_SECONDS)) / SPARK_SECONDS * spark.width()
        y = spark.bottom() - (np.clip(values, low, high) - low) / span * spark.height()
        if bound is not None and low < bound < high:
            by = spark.bottom() - (bound - low) / span * spark.height()
            pen = QPen(QColor(colours()["grid"] if not selected else option.palette.highlightedText().color()))
            pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawLine(QPointF(spark.left(), by), QPointF(spark.right(), by))
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pen = QPen(option.palette.highlightedText().color() if selected else colour)
        # Width 1 exactly: Qt's raster engine draws thin antialiased lines on a fast path; at 1.3 px the same
        # 300-point line took 2 ms instead of 0.06 ms here, which is most of a 100-row overview's repaint.
        pen.setWidthF(1.0)
        painter.setPen(pen)
        if len(x) == 1 or np.isfinite(values).sum() == 1:
            point = int(np.flatnonzero(np.isfinite(values))[-1])
            painter.drawEllipse(QPointF(float(x[point]), float(y[point])), 1.5, 1.5)
            return
        painter.drawPath(arrayToQPath(x, y, connect="finite"))
