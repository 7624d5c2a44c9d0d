"""A chart as drawing primitives (bars, polylines, text) on a plain canvas, y growing upwards from the bottom.

One layout for both vector outputs: render_pdf draws the primitives with reportlab.graphics, render_html writes
them as inline SVG, so a chart looks the same on paper and in the browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fleetdesk.reports.document import Chart

# Colour-blind-safe palette (Okabe–Ito), one per series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
AXIS = "#555555"
GRID = "#DDDDDD"
BAR_ROW = 13.0  # the height a bar and its gap take
MAX_BARS = 24  # a bar chart keeps its largest bars; the rest are summed into "other"
FONT = 7.0


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float
    colour: str


@dataclass(frozen=True)
class Polyline:
    points: tuple[tuple[float, float], ...]
    colour: str
    width: float = 1.0


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    size: float = FONT
    anchor: Literal["start", "middle", "end"] = "start"
    colour: str = "#000000"


Shape = Box | Polyline | Label


def bar_items(chart: Chart) -> list[tuple[str, float]]:
    """The bars to draw: (label, value), largest first, the tail beyond MAX_BARS summed as "other"."""
    values = chart.series[0].values if chart.series else ()
    items = [(label, float(v or 0.0)) for label, v in zip(chart.labels, values, strict=False)]
    items.sort(key=lambda item: (-item[1], item[0]))
    if len(items) > MAX_BARS:
        rest = sum(v for _, v in items[MAX_BARS - 1:])
        items = [*items[:MAX_BARS - 1], (f"other ({len(items) - MAX_BARS + 1})", rest)]
    return items


def height_for(chart: Chart, line_height: float) -> float:
    """How tall a chart wants to be: a bar chart as tall as its bars need, a line chart `line_height`."""
    if chart.kind == "bar":
        return FONT + 8 + max(1, len(bar_items(chart))) * BAR_ROW + 4
    return line_height


def layout(chart: Chart, width: float, height: float) -> list[Shape]:
    """The chart's shapes in a width x height canvas (points in PDF, pixels in SVG)."""
    shapes: list[Shape] = [Label(0, height - FONT - 1, chart.title + (f" ({chart.unit})" if chart.unit else ""),
                                 size=FONT + 1.5)]
    body = height - FONT - 8
    if chart.kind == "bar":
        shapes += _bars(chart, width, body)
    else:
        shapes += _lines(chart, width, body)
    return shapes


def _shorten(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 1] + "…"


def _bars(chart: Chart, width: float, height: float) -> list[Shape]:
    items = bar_items(chart)
    if not items:
        return [Label(0, height / 2, "nothing to show", colour=AXIS)]
    label_width = min(width * 0.45, 6 + 4.2 * max(len(_shorten(label, 32)) for label, _ in items))
    top = max(v for _, v in items) or 1.0
    row = min(BAR_ROW, height / len(items))
    bar = row * 0.7
    shapes: list[Shape] = []
    room = width - label_width - 40
    for n, (label, value) in enumerate(items):
        y = height - (n + 1) * row
        shapes.append(Label(label_width - 4, y + (row - FONT) / 2, _shorten(label, 32), anchor="end"))
        length = room * value / top
        shapes.append(Box(label_width, y + (row - bar) / 2, max(length, 0.5), bar, PALETTE[0]))
        shapes.append(Label(label_width + length + 3, y + (row - FONT) / 2, _number(value)))
    return shapes


def _lines(chart: Chart, width: float, height: float) -> list[Shape]:
    values = [v for s in chart.series for v in s.values if v is not None and math.isfinite(v)]
    if not values or not chart.labels:
        return [Label(0, height / 2, "nothing measured in this period", colour=AXIS)]
    low, high = min(0.0, min(values)), max(values)
    high = high if high > low else low + 1.0
    left, bottom, legend = 34.0, 14.0, 12.0
    plot_w, plot_h = width - left - 4, height - bottom - legend
    shapes: list[Shape] = []
    for step in range(5):  # four grid lines with their values
        value = low + (high - low) * step / 4
        y = bottom + plot_h * step / 4
        shapes.append(Polyline(((left, y), (left + plot_w, y)), GRID if step else AXIS, 0.5))
        shapes.append(Label(left - 3, y - FONT / 3, _number(value), anchor="end"))
    count = len(chart.labels)
    x = left

    def x_of(i: int) -> float:
        return left + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    for i in sorted({0, count // 2, count - 1}):
        shapes.append(Label(x_of(i), bottom - FONT - 3, chart.labels[i], anchor="middle" if 0 < i < count - 1
                            else ("start" if i == 0 else "end")))
    for n, series in enumerate(chart.series):
        colour = PALETTE[n % len(PALETTE)]
        run: list[tuple[float, float]] = []
        for i, v in enumerate(series.values):
            if v is None or not math.isfinite(v):
                if len(run) > 1:
                    shapes.append(Polyline(tuple(run), colour))
                run = []
                continue
            run.append((x_of(i), bottom + plot_h * (v - low) / (high - low)))
        if len(run) > 1:
            shapes.append(Polyline(tuple(run), colour))
        elif len(run) == 1:
            shapes.append(Box(run[0][0] - 1, run[0][1] - 1, 2, 2, colour))
        shapes.append(Box(x, height - legend + 3, 8, 4, colour))
        shapes.append(Label(x + 11, height - legend + 2, _shorten(series.name, 24)))
        x += 11 + len(_shorten(series.name, 24)) * FONT * 0.62 + 10
    return shapes


def _number(value: float) -> str:
    if abs(value) >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"
