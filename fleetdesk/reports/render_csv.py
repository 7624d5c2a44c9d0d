"""A report as CSV files: one per table, plus summary.csv (the facts), UTF-8 with a BOM so that spreadsheet
programs read the text right, RFC 4180 quoting and CRLF line ends.

Text cells that a spreadsheet would take for a formula (starting with =, +, -, @, tab or carriage return) are
neutralised as OWASP advises, by a leading single quote; numbers stay numbers.
"""

from __future__ import annotations

import csv
import io
import math

from fleetdesk.reports.document import Cell, Report, Table

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SUMMARY = "summary"


def csv_cell(cell: Cell) -> str:
    """The one escaping of a CSV cell (the csv module does the quoting)."""
    if cell is None or (isinstance(cell, float) and not math.isfinite(cell)):
        return ""
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, int | float):
        return repr(cell) if isinstance(cell, float) else str(cell)
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def table_csv(table: Table) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.key for c in table.columns])
    writer.writerows([csv_cell(v) for v in row] for row in table.rows)
    return out.getvalue().encode("utf-8-sig")


def render_csv(report: Report) -> dict[str, bytes]:
    """File name -> bytes, one file per table and summary.csv first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["label", "value"])
    writer.writerows([csv_cell(label), csv_cell(value)] for label, value in (
        ("report", report.title), ("scope", report.scope), ("since", report.since.isoformat()),
        ("until", report.until.isoformat()), ("fleet key", report.fleet_key),
        *((f.label, f.value) for f in report.facts), *(("note", n) for n in report.notes)))
    files = {f"{SUMMARY}.csv": out.getvalue().encode("utf-8-sig")}
    for table in report.tables:
        files[f"{table.name}.csv"] = table_csv(table)
    return files
