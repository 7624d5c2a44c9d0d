"""The first page of a report as the Reports dialog previews it: title, scope and period, notes, the summary, the
charts (the HTML report's own SVG, drawn by QtSvg) and the start of the first table.

Made from the same `Report` every format renders, so what the preview says is what the file will say; the PDF's
exact layout is ReportLab's and is not imitated here.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QUrl
from PySide6.QtGui import QImage, QPainter, QTextDocument
from PySide6.QtSvg import QSvgRenderer

from fleetdesk.reports.document import Report, Table, period_text, shown
from fleetdesk.reports.render_html import chart_svg, esc

PREVIEW_ROWS = 12  # rows of the first table the preview shows; the file has them all


def preview_document(report: Report, document: QTextDocument) -> None:
    """Fill `document` (a QTextBrowser's) with the report's first page."""
    document.clear()
    parts = [f"<h2>{esc(report.title)}</h2>", f"<p>{esc(report.scope)} · {esc(period_text(report))}</p>"]
    parts += [f'<p style="background:#fff4d6">{esc(note)}</p>' for note in report.notes]
    if report.facts:
        parts.append('<h3>Summary</h3><table border="1" cellspacing="0" cellpadding="3">')
        parts += [f"<tr><th align=left>{esc(f.label)}</th><td>{esc(shown(f.value))}</td></tr>" for f in report.facts]
        parts.append("</table>")
    for n, chart in enumerate(report.charts):
        url = QUrl(f"chart:{n}")
        document.addResource(QTextDocument.ResourceType.ImageResource, url, _picture(chart_svg(chart)))
        parts.append(f'<img src="{url.toString()}"> ')
    if report.tables:
        parts.append(_first_rows(report.tables[0]))
    document.setHtml("".join(parts))


def _picture(svg: str) -> QImage:
    renderer = QSvgRenderer(QByteArray(svg.encode("utf-8")))
    size = renderer.defaultSize()
    image = QImage(size, QImage.Format.Format_ARGB32)
    image.fill(0xFFFFFFFF)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    return image


def _first_rows(table: Table) -> str:
    head = f"<h3>{esc(table.title)}</h3>"
    if not table.rows:
        return head + f"<p><i>{esc(table.empty)}</i></p>"
    rows = ["<tr>" + "".join(f"<th>{esc(c.title)}</th>" for c in table.columns) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{esc(shown(v))}</td>" for v in row) + "</tr>"
             for row in table.rows[:PREVIEW_ROWS]]
    more = len(table.rows) - PREVIEW_ROWS
    tail = f"<p>… and {more} more row(s) in the report</p>" if more > 0 else ""
    return head + '<table border="1" cellspacing="0" cellpadding="3">' + "".join(rows) + "</table>" + tail
