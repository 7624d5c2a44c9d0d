"""The telemetry of one device in full: CPU, GPU, memory, temperature and latency plots against time.

Live, the plots follow the device's newest sample over the chosen window (1 min to 1 h), redrawn at
most twice a second. Pause (or a drag on a plot) freezes what is shown while samples keep arriving;
while paused the operator pans back through everything the ring buffer holds; Live catches up.
The header says where each value comes from (`Sample.sources`) and which throttling flags are set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from pyqtgraph.graphicsItems.DateAxisItem import (
    DAY_SPACING,
    HOUR_MINUTE_ZOOM_LEVEL,
    MINUTE_SPACING,
    TickSpec,
    ZoomLevel,
    makeSStepper,
)
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.telemetry.alerts import AlertMonitor
from fleetdesk.telemetry.buffers import TelemetryStore
from fleetdesk.telemetry.sample import METRIC_LABELS, Sample

from .overview import colours, value_text
from .plots import adopting_menus
from .text import tooltip_text, visible_text

WINDOWS: tuple[tuple[str, float], ...] = (("1 min", 60.0), ("5 min", 300.0), ("15 min", 900.0), ("1 h", 3600.0))
REDRAW_MS = 500  # live plots are redrawn at most twice a second


@dataclass(frozen=True)
class Panel:
    """One plot: its title, the series it draws (metric, legend name, colour index) and its vertical scale."""

    title: str
    series: tuple[tuple[str, str, int], ...]
    percent: bool = False


PANELS: tuple[Panel, ...] = (
    Panel("CPU %", (("cpu_pct", "total", 0),), percent=True),
    Panel("GPU %", (("gpu_pct", "utilisation", 0), ("gpu_mem_pct", "memory", 1)), percent=True),
    Panel("Memory %", (("mem_pct", "RAM", 0), ("swap_pct", "swap", 1), ("disk_pct", "disk", 2)), percent=True),
    Panel("Temperature °C", (("temp_c", "hottest zone", 3), ("gpu_temp_c", "GPU", 1))),
    Panel("Latency ms", (("latency_p50_ms", "p50", 0), ("latency_p95_ms", "p95", 1), ("latency_p99_ms", "p99", 3))),
    Panel("Input drift", (("drift_psi", "PSI", 4), ("drift_shift_sd", "mean shift (ref. std)", 1))),
)
SERIES_COLOURS = ("#2f6fde", "#d08a00", "#2e9d50", "#c8372d", "#7b4bb8")
# pyqtgraph's minute level skips from every minute to every 5 minutes, which leaves a 5-minute window on a
# narrow plot with one label or none; this one also steps by 2 and 10 minutes, and sizes labels as "HH:MM".
_MINUTES = ZoomLevel([TickSpec(DAY_SPACING, makeSStepper(DAY_SPACING), "%a %d"),
                      TickSpec(MINUTE_SPACING, makeSStepper(MINUTE_SPACING), "%H:%M", autoSkip=[1, 2, 5, 10, 15, 30])],
                     "99:99")


class TimeAxis(pg.DateAxisItem):
    """Local clock time along the bottom, with a label every 1, 2, 5, 10... minutes as the width allows."""

    def __init__(self) -> None:
        super().__init__(orientation="bottom")
        self.zoomLevels: dict[float, ZoomLevel] = type(self.zoomLevels)(
            (spacing, _MINUTES if level is HOUR_MINUTE_ZOOM_LEVEL else level)
            for spacing, level in self.zoomLevels.items())


def title_html(panel: Panel, text_colour: str, reported: bool = True) -> str:
    """A plot's title with its series named in their line colours (a legend inside would hide the data)."""
    if not reported:
        return f"<span style='color:{text_colour}'>{panel.title}: not reported by this device</span>"
    names = "".join(f"&nbsp;&nbsp;<span style='color:{SERIES_COLOURS[c]}'>&#9632; {n}</span>"
                    for _m, n, c in panel.series) if len(panel.series) > 1 else ""
    return f"<span style='color:{text_colour}'>{panel.title}</span>{names}"


SOURCE_NAMES = {"cpu": "CPU", "mem": "memory", "temps": "temperatures", "gpu": "GPU", "throttled": "throttling",
                "inference": "inference", "disk": "disk", "load": "load"}


class DevicePlots(QWidget):
    """See the module docstring. `show_device(id, name)` chooses the device; `mark()` says it got a sample."""

    closed = Signal()
    paused_changed = Signal(bool)

    def __init__(self, store: TelemetryStore, monitor: AlertMonitor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("DevicePlots")
        self.store = store
        self.monitor = monitor
        self.device_id: int | None = None
        self.window_s = 300.0
        self.paused = False
        self.redraws = 0  # how many times the plots were redrawn (the benchmark reports it)
        self._reported: tuple[bool, ...] = ()  # per panel: whether the device reports any of its series

        self.title = QLabel(self)
        self.title.setObjectName("Heading")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.window_box = QComboBox(self)
        self.window_box.setObjectName("TelemetryWindow")
        for label, seconds in WINDOWS:
            self.window_box.addItem(label, seconds)
        self.window_box.setCurrentIndex(1)
        self.window_box.setToolTip(tooltip_text("How much time the plots show"))
        self.window_box.currentIndexChanged.connect(lambda _n: self.set_window(float(self.window_box.currentData())))
        self.pause_button = QPushButton("Pause", self)
        self.pause_button.setObjectName("PauseButton")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip(tooltip_text("Freeze the plots (data keeps arriving); drag a plot to look back"))
        self.pause_button.toggled.connect(lambda on: self.set_paused(on))
        self.live_button = QPushButton("Live", self)
        self.live_button.setObjectName("LiveButton")
        self.live_button.setToolTip(tooltip_text("Follow the newest samples again"))
        self.live_button.clicked.connect(lambda: self.set_paused(False))
        self.close_button = QPushButton("Close", self)
        self.close_button.setToolTip(tooltip_text("Back to the fleet overview only"))
        self.close_button.clicked.connect(self.closed.emit)
        self.values = QLabel(self)
        self.values.setObjectName("TelemetryValues")
        self.values.setTextFormat(Qt.TextFormat.PlainText)
        # One line that never changes height: a wrapped label that grew would re-lay out the plots each redraw.
        self.values.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.values.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sources = QLabel(self)
        self.sources.setObjectName("TelemetrySources")
        self.sources.setTextFormat(Qt.TextFormat.PlainText)
        self.sources.setWordWrap(True)
        self.sources.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.throttle = QLabel(self)
        self.throttle.setObjectName("ErrorText")
        self.throttle.setTextFormat(Qt.TextFormat.PlainText)

        with adopting_menus(self):  # the plots' context menus die with this view
            self.graphics = pg.GraphicsLayoutWidget(self)
            self.graphics.setObjectName("TelemetryPlots")
            self.graphics.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            self.plots: list[pg.PlotItem] = []
            self.curves: dict[str, pg.PlotDataItem] = {}
            self.bounds: dict[str, pg.InfiniteLine] = {}
            for n, panel in enumerate(PANELS):
                plot = self.graphics.addPlot(row=n // 3, col=n % 3, title=panel.title,
                                             axisItems={"bottom": TimeAxis()})
                plot.setMenuEnabled(False)
                plot.hideButtons()
                plot.setMouseEnabled(x=True, y=False)
                if panel.percent:
                    plot.setYRange(0, 100, padding=0.02)
                    plot.enableAutoRange(axis="y", enable=False)
                plot.enableAutoRange(axis="x", enable=False)
                for metric, name, colour in panel.series:
                    curve = plot.plot([], [], name=name, pen=pg.mkPen(SERIES_COLOURS[colour], width=1.5),
                                      connect="finite")
                    # No clipToView / auto-downsampling: both re-process the data on every range change (each
                    # live redraw), which cost more than drawing the at most 3600 points of the buffer.
                    self.curves[metric] = curve
                if self.plots:
                    plot.setXLink(self.plots[0])
                plot.getViewBox().sigRangeChangedManually.connect(self._dragged)
                self.plots.append(plot)
            # The sixth place: each core's load in the sample shown (the ring buffers keep only the total over time).

        bar = QHBoxLayout()
        bar.addWidget(self.title, 1)
        bar.addWidget(QLabel("Window:", self))
        bar.addWidget(self.window_box)
        bar.addWidget(self.pause_button)
        bar.addWidget(self.live_button)
        bar.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        layout.addLayout(bar)
        layout.addWidget(self.values)
        notes = QHBoxLayout()
        notes.addWidget(self.throttle)
        notes.addWidget(self.sources, 1)
        layout.addLayout(notes)
        layout.addWidget(self.graphics, 1)

        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(REDRAW_MS)
        self._redraw.timeout.connect(self.refresh)
        self._last_redraw = 0.0
        self.refresh_theme()
        self._update_buttons()

    # -- what the operator chooses -------------------------------------------------------------------

    def show_device(self, device_id: int, name: str) -> None:
        self.device_id = device_id
        self.title.setText(visible_text(name))
        self.set_paused(False)
        self.refresh()

    def set_window(self, seconds: float) -> None:
        self.window_s = seconds
        index = self.window_box.findData(seconds)
        if index >= 0 and index != self.window_box.currentIndex():
            self.window_box.setCurrentIndex(index)
        if self.paused:
            # Paused, the view keeps its right edge and shows the new width of time before it.
            right = self.plots[0].getViewBox().viewRange()[0][1]
            self._set_x(right - seconds, right)
        else:
            self.refresh()

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            self._update_buttons()
            return
        self.paused = paused
        self._update_buttons()
        if paused:
            self._redraw.stop()
            self._draw(everything=True)  # the whole buffer, frozen: the operator pans back through it
        else:
            self.refresh()
        self.paused_changed.emit(paused)

    def _dragged(self, *_args: object) -> None:
        if not self.paused:
            dragged_to = self.plots[0].getViewBox().viewRange()[0]
            self.set_paused(True)
            self._set_x(*dragged_to)

    def _update_buttons(self) -> None:
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(self.paused)
        self.pause_button.blockSignals(False)
        self.live_button.setEnabled(self.paused)

    # -- samples ------------------------------------------------------------------------------------------

    def mark(self) -> None:
        """The device got a sample: redraw soon (at most every REDRAW_MS), unless paused."""
        if self.paused or self.device_id is None or self._redraw.isActive():
            return
        wait = REDRAW_MS - (time.monotonic() - self._last_redraw) * 1000
        if wait <= 0:
            self.refresh()
        else:
            self._redraw.start(int(wait))

    def refresh(self) -> None:
        self._redraw.stop()
        if not self.paused:
            self._draw(everything=False)

    def _draw(self, *, everything: bool) -> None:
        self._last_redraw = time.monotonic()
        buffer = self.store.buffer(self.device_id) if self.device_id is not None else None
        if buffer is None or not len(buffer):
            for curve in self.curves.values():
                curve.setData([], [])
            self._describe(None)
            return
        self.redraws += 1
        times = buffer.times()
        end = float(times[-1])
        first = 0 if everything else int(np.searchsorted(times, end - self.window_s, side="left"))
        shown = len(times) - first
        # Copies of just the window: a slice of the whole buffer's copy would keep all of it alive in the plot.
        times = times[first:].copy()
        reported: set[str] = set()
        for metric, curve in self.curves.items():
            values = buffer.values(metric, shown)
            if np.isfinite(values).any():
                curve.setData(times, values, connect="finite")
                reported.add(metric)
            else:
                curve.setData([], [])
        self._set_titles(tuple(any(m in reported for m, _n, _c in panel.series) for panel in PANELS))
        self._set_x(end - self.window_s, end)
        self._describe(buffer.latest)

    def _set_x(self, left: float, right: float) -> None:
        # The other plots follow the first by their X link; a programmatic range is not a "drag".
        self.plots[0].setXRange(left, right, padding=0)

    def shown_series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The data the plot of `metric` holds now (all of it, not only the part in view)."""
        curve = self.curves[metric]
        x, y = curve.xData, curve.yData
        return (np.empty(0) if x is None else np.asarray(x)), (np.empty(0) if y is None else np.asarray(y))

    def x_range(self) -> tuple[float, float]:
        left, right = self.plots[0].getViewBox().viewRange()[0]
        return float(left), float(right)

    # -- the header ----------------------------------------------------------------------------------------

    def _describe(self, sample: Sample | None) -> None:
        if sample is None:
            self.values.setText("No samples yet: start streaming this device.")
            self.sources.setText("")
            self.throttle.setText("")
            return
        parts = []
        for metric in ("cpu_pct", "gpu_pct", "mem_pct", "temp_c", "latency_p95_ms", "infer_rate", "drift_psi"):
            value = sample.value(metric)
            if value is not None:
                parts.append(f"{METRIC_LABELS[metric]} {value_text(metric, value)}")
                if metric == "cpu_pct" and sample.cpu_per_core:  # each core now: the sixth panel is input drift
                    parts[-1] += " (cores " + " ".join(f"{core:.0f}" for core in sample.cpu_per_core) + ")"
        moment = time.strftime("%H:%M:%S", time.localtime(sample.t))
        paused = " (paused)" if self.paused else ""
        self.values.setText(f"At {moment}{paused}: " + " · ".join(parts))
        sources = [f"{SOURCE_NAMES.get(k, visible_text(k))} from {visible_text(v)}"
                   for k, v in sorted(sample.sources.items())]
        self.sources.setText("Sources: " + ("; ".join(sources) if sources else "not stated by the device"))
        self.throttle.setText("Throttling now: " + ", ".join(visible_text(f) for f in sample.throttled)
                              if sample.throttled else "")
        self.throttle.setVisible(bool(sample.throttled))

    # -- thresholds and theme ----------------------------------------------------------------------------

    def set_thresholds(self) -> None:
        """Draw the alert bounds as dashed lines on the plots of their metrics."""
        for line in self.bounds.values():
            line.getViewBox().removeItem(line) if line.getViewBox() is not None else None
        self.bounds.clear()
        colour = QColor(colours()["error"])
        for threshold in self.monitor.thresholds:
            if not threshold.enabled:
                continue
            plot = self._plot_of(threshold.metric)
            if plot is None:
                continue
            line = pg.InfiniteLine(threshold.bound, angle=0, movable=False,
                                   pen=pg.mkPen(colour, width=1, style=Qt.PenStyle.DashLine))
            line.setToolTip(tooltip_text(threshold.describe()))
            plot.addItem(line, ignoreBounds=True)
            self.bounds[f"{threshold.metric}:{threshold.above}"] = line

    def _plot_of(self, metric: str) -> pg.PlotItem | None:
        for panel, plot in zip(PANELS, self.plots, strict=True):
            if any(m == metric for m, _n, _c in panel.series):
                return plot
        return None

    def refresh_theme(self) -> None:
        palette = self.palette()
        background = palette.base().color()
        text = palette.text().color()
        self.graphics.setBackground(background)
        for plot in self.plots:
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(pg.mkPen(colours()["grid"]))
                axis.setTextPen(pg.mkPen(text))
        self._reported = ()
        self._set_titles(tuple(True for _p in PANELS))
        self.set_thresholds()

    def _set_titles(self, reported: tuple[bool, ...]) -> None:
        if reported == self._reported:  # titles are rich text: set only when what they say changes
            return
        self._reported = reported
        text = self.palette().text().color().name()
        for panel, plot, shown in zip(PANELS, self.plots, reported, strict=True):
            plot.setTitle(title_html(panel, text, shown), size="9pt")

    def stop(self) -> None:
        self._redraw.stop()

