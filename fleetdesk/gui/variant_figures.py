"""How a model's variants read in the Models view: the text of their figures, each variant's row in the table (its
cells and the numbers they sort by), the status colours, and the plot of latency per variant. Kept apart from
models_view.py, which lays these out beside the model list and card and holds the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QWidget

from fleetdesk.models.report import (
    ACCEPTED,
    BASELINE,
    BASELINE_STATUS,
    CHOSEN,
    FAILED,
    REJECTED,
    ProfileResult,
    Variant,
)

from .activities import human_bytes
from .fleet_model import plain
from .overview import colours
from .plots import FixedPlot

NOT_MEASURED = "not measured"
NONE = "—"

# The order a profile's rows read in when sorted by status: the chosen one first, the failures last.
STATUS_ORDER = {CHOSEN: 0, ACCEPTED: 1, BASELINE_STATUS: 2, REJECTED: 3, FAILED: 4}
STATUS_TEXT = {CHOSEN: "chosen", ACCEPTED: "accepted", BASELINE_STATUS: "baseline", REJECTED: "rejected",
               FAILED: "failed"}
RECIPE_TEXT = {BASELINE: "FP32", "graph": "graph opt.", "int8-dynamic": "INT8 dynamic", "int8-static": "INT8 static",
               "fp16": "FP16"}
RECIPE_SHORT = {BASELINE: "FP32", "graph": "graph opt.", "int8-dynamic": "INT8 dyn.", "int8-static": "INT8 static",
                "fp16": "FP16"}
# Bar colours by status (the theme's ok/accent/muted/warning colours), drawn in the plot title as a legend.
BAR_STATUSES = (CHOSEN, ACCEPTED, BASELINE_STATUS, REJECTED)


def status_colour(status: str) -> str:
    palette = colours()
    # These are all colour names (only the row tint alert_row is a QColor): str() returns each unchanged.
    return str({CHOSEN: palette["ok"], ACCEPTED: palette["line"], BASELINE_STATUS: palette["muted"],
                REJECTED: palette["warning"], FAILED: palette["error"]}.get(status, palette["muted"]))


# -- text of the figures --------------------------------------------------------------------------------------

def ms_text(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return NONE
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def error_text(value: float) -> str:
    return "0" if value == 0 else f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def device_text(latencies: Mapping[str, float]) -> str:
    if not latencies:
        return NOT_MEASURED
    return ", ".join(f"{plain(name)} {ms_text(ms)}" for name, ms in sorted(latencies.items()))


def baseline_of(result: ProfileResult) -> Variant | None:
    return result.variant(BASELINE)


def variant_cells(result: ProfileResult, variant: Variant) -> tuple[list[str], list[float | None]]:
    """The texts of a variant's row and the numbers they sort by."""
    base = baseline_of(result)
    share = (variant.size_bytes / base.size_bytes) if base is not None and base.size_bytes else None
    ratio = (variant.local_latency_ms / base.local_latency_ms
             if base is not None and base.local_latency_ms and variant.local_latency_ms is not None else None)
    accuracy = variant.accuracy
    texts = [
        plain(result.profile),
        RECIPE_TEXT.get(variant.recipe, plain(variant.recipe)),
        STATUS_TEXT.get(variant.status, plain(variant.status)),
        human_bytes(variant.size_bytes) if variant.size_bytes else NONE,
        f"{share * 100:.0f} %" if share is not None and variant.size_bytes else NONE,
        error_text(accuracy.max_abs_error) if accuracy else NONE,
        f"{accuracy.cosine:.4f}" if accuracy else NONE,
        f"{accuracy.top1_agreement * 100:.0f} %" if accuracy and accuracy.top1_agreement is not None else NONE,
        ms_text(variant.local_latency_ms),
        f"×{ratio:.2f}" if ratio is not None else NONE,
        device_text(variant.device_latency_ms),
        plain(variant.reason),
    ]
    device = max(variant.device_latency_ms.values()) if variant.device_latency_ms else None
    numbers: list[float | None] = [
        None, None, STATUS_ORDER.get(variant.status, 9),
        float(variant.size_bytes) if variant.size_bytes else None,
        share if variant.size_bytes else None,
        accuracy.max_abs_error if accuracy else None,
        accuracy.cosine if accuracy else None,
        accuracy.top1_agreement if accuracy else None,
        variant.local_latency_ms, ratio, device, None,
    ]
    return texts, numbers


def measured_ms(variant: Variant) -> float | None:
    return variant.measured_latency_ms


class LatencyPlot(FixedPlot):
    """Latency per variant, grouped by profile: device p50 (slowest device) where measured, else this laptop's.

    One bar per variant that has a latency, coloured by status; a dashed line over each profile's group at
    its FP32 latency (what a variant must not be slower than); recipes along the bottom, profiles on top.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("LatencyPlot")
        self.setMinimumHeight(200)
        self.showAxis("top")
        self.getAxis("left").setLabel("ms")
        self.getAxis("left").setWidth(48)
        self.bars: dict[str, pg.BarGraphItem] = {}
        self.fp32_lines: list[pg.PlotDataItem] = []
        self.labels: list[pg.TextItem] = []
        self.bar_count = 0
        self._results: tuple[ProfileResult, ...] = ()
        self.refresh_theme()

    def show_results(self, results: Sequence[ProfileResult]) -> None:
        self._results = tuple(results)
        plot = self.getPlotItem()
        for item in [*self.bars.values(), *self.fp32_lines, *self.labels]:
            plot.removeItem(item)
        self.bars, self.fp32_lines, self.labels = {}, [], []
        by_status: dict[str, tuple[list[float], list[float]]] = {}
        bottom: list[tuple[float, str]] = []
        top: list[tuple[float, str]] = []
        x = 0.0
        tallest = 0.0
        text = self.palette().text().color()
        many = sum(len(r.variants) for r in results) > 18
        device_measured = False
        for result in results:
            start = x
            for variant in result.variants:
                value = measured_ms(variant)
                if value is None or not math.isfinite(value):
                    continue
                device_measured |= bool(variant.device_latency_ms)
                xs, heights = by_status.setdefault(variant.status, ([], []))
                xs.append(x)
                heights.append(value)
                tallest = max(tallest, value)
                bottom.append((x, RECIPE_SHORT.get(variant.recipe, variant.recipe)))
                if not many:
                    label = pg.TextItem(ms_text(value), color=text, anchor=(0.5, 1.0))
                    label.setPos(x, value)
                    self.labels.append(label)
                x += 1.0
            if x == start:
                continue
            top.append(((start + x - 1.0) / 2, plain(result.profile)))
            base = baseline_of(result)
            fp32 = measured_ms(base) if base is not None else None
            if fp32 is not None:
                line = pg.PlotDataItem([start - 0.45, x - 0.55], [fp32, fp32],
                                       pen=pg.mkPen(QColor(status_colour(BASELINE_STATUS)), width=1.5,
                                                    style=Qt.PenStyle.DashLine))
                self.fp32_lines.append(line)
            x += 0.6  # a gap between profiles
        for status in (*BAR_STATUSES, FAILED):
            if status not in by_status:
                continue
            xs, heights = by_status[status]
            colour = QColor(status_colour(status))
            bars = pg.BarGraphItem(x=xs, height=heights, width=0.75, brush=colour, pen=pg.mkPen(colour.darker(130)))
            self.bars[status] = bars
        for item in [*self.bars.values(), *self.fp32_lines, *self.labels]:
            plot.addItem(item)
        self.bar_count = sum(len(b.opts["x"]) for b in self.bars.values())
        self.getAxis("bottom").setTicks([bottom])
        self.getAxis("top").setTicks([top])
        plot.setXRange(-0.7, max(x - 0.6, 0.3) + 0.1, padding=0)
        plot.setYRange(0, tallest * 1.18 if tallest > 0 else 1.0, padding=0)
        self._set_title(device_measured)

    def _set_title(self, device_measured: bool) -> None:
        text = self.palette().text().color().name()
        where = "device p50 (slowest device) where measured, else this laptop" if device_measured \
            else "median on this laptop's CPU, batch 1"
        legend = "".join(f"&nbsp;&nbsp;<span style='color:{status_colour(s)}'>&#9632;</span>"
                         f"<span style='color:{text}'>&nbsp;{STATUS_TEXT[s]}</span>" for s in BAR_STATUSES)
        fp32 = (f"&nbsp;&nbsp;<span style='color:{status_colour(BASELINE_STATUS)}'>- - -</span>"
                f"<span style='color:{text}'>&nbsp;FP32 latency</span>")
        self.setTitle(f"<span style='color:{text}'>Latency per variant, ms ({where})</span><br>{legend}{fp32}",
                      size="9pt")

    def refresh_theme(self) -> None:
        self.paint_theme(str(colours()["grid"]), ("left", "bottom", "top"))
        self.show_results(self._results)
