"""A report as PDF with ReportLab's platypus: A4 or Letter (landscape: the inventory table is wide), tables that
split across pages with their header row repeated, charts as vector drawings (reportlab.graphics), and DejaVu
Sans embedded (Latin with diacritics, dashes, ✓ and more: what device names hold). No CJK: a font that has it
would add some 16 MB to every installer, so a CJK character prints as an empty box and is missing from the PDF's
text (the HTML, CSV and JSON carry it whole).

Deterministic: ReportLab's invariant mode (no random document id, no clock), and the creation date is the end of
the report's period, so the same report gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from reportlab.graphics.shapes import Drawing, PolyLine, Rect, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4, LETTER, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    LongTable,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from fleetdesk.reports import charts
from fleetdesk.reports.document import Chart, Report, period_text, shown
from fleetdesk.reports.document import Table as ReportTable
from fleetdesk.resources import data_file

PAGE_SIZES = {"a4": A4, "letter": LETTER}  # one per formats.PAPERS
FONT, BOLD = "DejaVuSans", "DejaVuSans-Bold"
MARGIN = 12 * mm
PAD = 2.5  # a table cell's left and right padding
CHART_WIDTH, CHART_HEIGHT = 240.0, 140.0  # a line chart's height; a bar chart is as tall as its bars
HEADER_BG = colors.HexColor("#E8EEF6")
STRIPE = colors.HexColor("#F6F6F6")
RULE = colors.HexColor("#BBBBBB")

_TITLE = ParagraphStyle("title", fontName=BOLD, fontSize=16, leading=20, spaceAfter=2)
_META = ParagraphStyle("meta", fontName=FONT, fontSize=8.5, leading=11, textColor=colors.HexColor("#444444"))
_HEADING = ParagraphStyle("heading", fontName=BOLD, fontSize=11.5, leading=15, spaceBefore=10, spaceAfter=4,
                          keepWithNext=1)
_NOTE = ParagraphStyle("note", fontName=FONT, fontSize=9, leading=12, backColor=colors.HexColor("#FFF4D6"),
                       borderPadding=4, spaceBefore=4, spaceAfter=6)
_CELL = ParagraphStyle("cell", fontName=FONT, fontSize=6.8, leading=8.2)
_NUMBER = ParagraphStyle("number", parent=_CELL, alignment=TA_RIGHT)
_HEAD = ParagraphStyle("head", fontName=BOLD, fontSize=6.8, leading=8.2)
_EMPTY = ParagraphStyle("empty", fontName=FONT, fontSize=8.5, leading=11, textColor=colors.HexColor("#666666"))


def register_fonts() -> None:
    """Register the shipped DejaVu fonts with ReportLab once (the registry is process-wide)."""
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    pdfmetrics.registerFont(TTFont(FONT, str(data_file("resources", "fonts/DejaVuSans.ttf"))))
    pdfmetrics.registerFont(TTFont(BOLD, str(data_file("resources", "fonts/DejaVuSans-Bold.ttf"))))
    pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=BOLD, italic=FONT, boldItalic=BOLD)


def pdf_text(text: object) -> str:
    """The one escaping of text for a platypus Paragraph (its markup is XML-like): shown verbatim, never parsed."""
    return xml_escape(str(text)).replace("\n", "<br/>")


def render_pdf(report: Report, paper: str = "a4") -> bytes:
    register_fonts()
    out = io.BytesIO()
    page = landscape(PAGE_SIZES[paper])
    created = report.until.strftime("D:%Y%m%d%H%M%S+00'00'")
    doc = SimpleDocTemplate(out, pagesize=page, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN + 4 * mm, invariant=1, title=f"{report.title} — {report.scope}",
                            author="FleetDesk", subject=period_text(report), creator="FleetDesk",
                            producer="FleetDesk (ReportLab)")
    width = page[0] - 2 * MARGIN

    def decorate(canvas: Any, document: Any) -> None:
        canvas.setDateFormatter(lambda *_: created)  # the data's time, never the clock
        canvas.saveState()
        canvas.setFont(FONT, 7)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(MARGIN, MARGIN - 2, f"{report.title} — {report.scope} — {period_text(report)}"[:160])
        canvas.drawRightString(page[0] - MARGIN, MARGIN - 2, f"page {document.page}")
        canvas.restoreState()

    doc.build(_story(report, width), onFirstPage=decorate, onLaterPages=decorate)
    return out.getvalue()


def _story(report: Report, width: float) -> list[Flowable]:
    story: list[Flowable] = [Paragraph(pdf_text(report.title), _TITLE),
                             Paragraph(pdf_text(f"{report.scope} · {period_text(report)}"), _META),
                             Paragraph(pdf_text(f"Signed by fleet key {report.fleet_key or '(unsigned)'}"), _META)]
    story += [Paragraph(pdf_text(note), _NOTE) for note in report.notes]
    if report.facts:
        rows = [[Paragraph(pdf_text(f.label), _CELL), Paragraph(pdf_text(shown(f.value)), _CELL)]
                for f in report.facts]
        facts = Table(rows, colWidths=[180, 200], hAlign="LEFT")
        facts.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.4, RULE),
                                   ("BACKGROUND", (0, 0), (0, -1), HEADER_BG)]))
        story += [Paragraph("Summary", _HEADING), facts]
    story += _chart_grid(report.charts, width)
    for table in report.tables:
        story += _table(table, width)
    return story


def _chart_grid(found: Sequence[Chart], width: float) -> list[Flowable]:
    if not found:
        return []
    per_row = max(1, int(width // (CHART_WIDTH + 10)))
    drawings: list[Flowable | Drawing] = [_drawing(chart) for chart in found]
    rows = [drawings[i:i + per_row] for i in range(0, len(drawings), per_row)]
    rows[-1] += [Spacer(1, 1)] * (per_row - len(rows[-1]))
    grid = Table(rows, colWidths=[CHART_WIDTH + 10] * per_row, hAlign="LEFT")
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                              ("BOTTOMPADDING", (0, 0), (-1, -1), 8)]))
    return [Spacer(1, 8), grid]


def _drawing(chart: Chart) -> Drawing:
    height = charts.height_for(chart, CHART_HEIGHT)
    drawing = Drawing(CHART_WIDTH, height)
    for shape in charts.layout(chart, CHART_WIDTH, height):
        if isinstance(shape, charts.Box):
            box = Rect(shape.x, shape.y, shape.width, shape.height)
            box.fillColor, box.strokeColor = colors.HexColor(shape.colour), None
            drawing.add(box)
        elif isinstance(shape, charts.Polyline):
            drawing.add(PolyLine([c for point in shape.points for c in point], strokeColor=colors.HexColor(
                shape.colour), strokeWidth=shape.width))
        else:
            drawing.add(String(shape.x, shape.y, shape.text, fontName=BOLD if shape.size > charts.FONT else FONT,
                               fontSize=shape.size, fillColor=colors.HexColor(shape.colour),
                               textAnchor=shape.anchor))
    return drawing


def column_widths(table: ReportTable, width: float) -> list[float]:
    """Each column at least as wide as its widest word (so "untrusted" never breaks), the room left shared in
    proportion to how much more each column's longest text wants (capped: a long cell wraps instead)."""
    pad = 6.0
    least, most = [], []
    for n, column in enumerate(table.columns):
        texts = [column.title, *(shown(row[n]) for row in table.rows)]
        longest_word = max(_width(word, BOLD if i == 0 else FONT) for i, text in enumerate(texts)
                           for word in text.split() or [""])
        longest = max(_width(text, FONT) for text in texts[1:]) if len(texts) > 1 else 0.0
        least.append(min(longest_word, 70.0) + pad)
        most.append(max(least[-1], min(longest, 230.0) * column.weight + pad))
    if sum(least) >= width:
        return [width * w / sum(least) for w in least]
    extra = [m - w for w, m in zip(least, most, strict=True)]
    room = width - sum(least)
    if sum(extra) <= room:
        return [m + (room - sum(extra)) / len(most) for m in most]
    return [w + room * e / sum(extra) for w, e in zip(least, extra, strict=True)]


def _width(text: str, font: str) -> float:
    return float(pdfmetrics.stringWidth(text, font, _CELL.fontSize))


def _table(table: ReportTable, width: float) -> list[Flowable]:
    heading = Paragraph(pdf_text(table.title), _HEADING)
    if not table.rows:
        return [KeepTogether([heading, Paragraph(pdf_text(table.empty), _EMPTY)])]
    widths = column_widths(table, width)
    numeric = [all(_is_number(row[n]) or row[n] is None for row in table.rows) for n in range(len(table.columns))]
    rows: list[list[Flowable | str]] = [[Paragraph(pdf_text(c.title), _HEAD) for c in table.columns]]
    for row in table.rows:
        cells: list[Flowable | str] = []
        for n, value in enumerate(row):
            text = shown(value)
            # A Paragraph parses, wraps and draws word by word: a cell that fits on one line is drawn as a plain
            # string, a tenth of the work (most cells of a fleet's tables). Right-aligned as a whole column only.
            if (numeric[n] or not _is_number(value)) and text.isprintable() and "  " not in text and _width(
                    text, FONT) <= widths[n] - 2 * PAD:
                cells.append(text)
            else:
                cells.append(Paragraph(pdf_text(text), _NUMBER if _is_number(value) else _CELL))
        rows.append(cells)
    body = LongTable(rows, colWidths=widths, repeatRows=1, hAlign="LEFT", splitByRow=1)
    body.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.3, RULE), ("BACKGROUND", (0, 0), (-1, 0), HEADER_BG),
        ("VALIGN", (0, 0), (-1, -1), "TOP"), ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, STRIPE]),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ("LEFTPADDING", (0, 0), (-1, -1), PAD), ("RIGHTPADDING", (0, 0), (-1, -1), PAD),
        ("FONTNAME", (0, 1), (-1, -1), FONT), ("FONTSIZE", (0, 1), (-1, -1), _CELL.fontSize),
        ("LEADING", (0, 1), (-1, -1), _CELL.leading),
        *(("ALIGN", (n, 1), (n, -1), "RIGHT") for n, is_numeric in enumerate(numeric) if is_numeric)]))
    return [heading, body]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
