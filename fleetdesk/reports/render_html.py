"""A report as one self-contained HTML page: inline CSS, charts as inline SVG, no script, no external resource
(a Content-Security-Policy forbids both, should anything slip through), so it opens offline anywhere.

Every piece of text goes through `esc` (html.escape with quotes): device names are shown, never obeyed.
"""

from __future__ import annotations

import html

from fleetdesk.reports.charts import Box, Label, Polyline, height_for, layout
from fleetdesk.reports.document import NOTHING, Chart, Report, Table, period_text, shown

CHART_WIDTH, CHART_HEIGHT = 330, 160  # the layout's units; shown 1.4 times larger
SCALE = 1.4
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body{font-family:"DejaVu Sans",Verdana,Arial,sans-serif;font-size:13px;color:#111;margin:24px;}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:22px 0 6px;border-bottom:1px solid #ccc}
.meta{color:#444;margin:2px 0}.note{background:#fff4d6;border:1px solid #e6c36a;padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;margin:4px 0 10px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;
vertical-align:top;white-space:pre-wrap;overflow-wrap:break-word}th{background:#eef2f7;white-space:nowrap}
tr:nth-child(even) td{background:#f8f8f8}td.num{text-align:right}.charts{display:flex;flex-wrap:wrap;gap:12px}
.charts svg{border:1px solid #ddd;background:#fff}
.empty{color:#666;font-style:italic}
@media print{body{margin:0}h2{break-after:avoid}}
"""


def esc(text: object) -> str:
    """The one escaping of HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def render_html(report: Report) -> bytes:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{esc(POLICY)}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(report.title)} — {esc(report.scope)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{esc(report.title)}</h1>", f'<p class="meta">{esc(report.scope)} · {esc(period_text(report))}</p>',
             f'<p class="meta">Signed by fleet key {esc(report.fleet_key or "(unsigned)")}</p>']
    parts += [f'<p class="note">{esc(note)}</p>' for note in report.notes]
    if report.facts:
        parts.append("<h2>Summary</h2><table>")
        parts += [f"<tr><th>{esc(f.label)}</th><td{_num(f.value)}>{esc(shown(f.value))}</td></tr>"
                  for f in report.facts]
        parts.append("</table>")
    if report.charts:
        parts.append('<div class="charts">')
        parts += [chart_svg(chart) for chart in report.charts]
        parts.append("</div>")
    for table in report.tables:
        parts.append(_table(table))
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def _num(value: object) -> str:
    return ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _table(table: Table) -> str:
    head = f"<h2>{esc(table.title)}</h2>"
    if not table.rows:
        return head + f'<p class="empty">{esc(table.empty)}</p>'
    rows = ["<tr>" + "".join(f"<th>{esc(c.title)}</th>" for c in table.columns) + "</tr>"]
    for row in table.rows:
        rows.append("<tr>" + "".join(f"<td{_num(v)}>{esc(shown(v))}</td>" for v in row) + "</tr>")
    return head + "<table>" + "".join(rows) + "</table>"


def chart_svg(chart: Chart) -> str:
    """The chart as inline SVG, as the HTML report shows it (the window's preview draws the same)."""
    height = height_for(chart, CHART_HEIGHT)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{(CHART_WIDTH + 8) * SCALE:.0f}" '
           f'height="{(height + 8) * SCALE:.0f}" viewBox="-4 -4 {CHART_WIDTH + 8} {height + 8}" '
           f'role="img" aria-label="{esc(chart.title)}">']
    for shape in layout(chart, CHART_WIDTH, height):
        if isinstance(shape, Box):
            out.append(f'<rect x="{shape.x:.1f}" y="{height - shape.y - shape.height:.1f}" '
                       f'width="{shape.width:.1f}" height="{shape.height:.1f}" fill="{esc(shape.colour)}"/>')
        elif isinstance(shape, Polyline):
            points = " ".join(f"{x:.1f},{height - y:.1f}" for x, y in shape.points)
            out.append(f'<polyline points="{points}" fill="none" stroke="{esc(shape.colour)}" '
                       f'stroke-width="{shape.width:g}"/>')
        elif isinstance(shape, Label):
            out.append(f'<text x="{shape.x:.1f}" y="{height - shape.y:.1f}" font-size="{shape.size:g}" '
                       f'text-anchor="{shape.anchor}" fill="{esc(shape.colour)}">{esc(shape.text)}</text>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["NOTHING", "chart_svg", "esc", "render_html"]
