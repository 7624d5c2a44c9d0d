"""What every report is before it has a format: facts, charts and tables of plain cells, and the period it covers.

Each report type (fleet.py, rollout.py, health.py, models.py, audit.py) gathers the inventory into a `Report`;
each renderer (render_*.py) writes a `Report` and nothing else, so the four formats always carry the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

# A cell as every format can hold it: text (device-supplied text kept verbatim), a number, or nothing.
Cell = str | int | float | None

KINDS = ("fleet", "rollout", "health", "models", "audit")
NOTHING = "—"  # how PDF and HTML show an empty cell (CSV and JSON keep it empty / null)


@dataclass(frozen=True)
class Column:
    key: str  # the JSON key and CSV heading: lower case, no spaces
    title: str  # what PDF and HTML print above the column
    weight: float = 1.0  # how much room a long text of the column may claim in PDF (HTML lets the browser decide)


@dataclass(frozen=True)
class Table:
    name: str  # the CSV file's stem and the JSON table's name ("devices", "waves", ...)
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    empty: str = "nothing to show"  # what is said instead of an empty table


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[float | None, ...]  # one per label of its chart; None where nothing was measured


@dataclass(frozen=True)
class Chart:
    """A bar chart (one series, one bar per label) or a line chart (several series over labels)."""

    name: str
    title: str
    kind: str  # "bar" | "line"
    labels: tuple[str, ...]
    series: tuple[Series, ...]
    unit: str = ""


@dataclass(frozen=True)
class Fact:
    label: str
    value: Cell


@dataclass(frozen=True)
class Report:
    kind: str  # one of KINDS
    title: str
    scope: str  # which devices, in words: "the whole fleet", "group line A", "device cam-01"
    since: datetime  # the period the data covers, UTC; the PDF's creation date is `until`, never the clock
    until: datetime
    facts: tuple[Fact, ...] = ()
    charts: tuple[Chart, ...] = ()
    tables: tuple[Table, ...] = ()
    notes: tuple[str, ...] = ()  # sentences the reader must not miss ("nothing happened in this period")
    filters: dict[str, str] = field(default_factory=dict, hash=False)  # the options given, for the record
    fleet_key: str = ""  # the fingerprint of the fleet key that signs it; set when it is written

    def signed_by(self, fingerprint: str) -> Report:
        return replace(self, fleet_key=fingerprint)


def stamp(moment: datetime | None) -> str:
    """A moment as every report prints it: UTC to the second, "" for none."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def period_text(report: Report) -> str:
    return f"{stamp(report.since)} – {stamp(report.until)}"


def shown(cell: Cell) -> str:
    """A cell as PDF and HTML print it: numbers without noise, NOTHING for an empty cell."""
    if cell is None or cell == "":
        return NOTHING
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, float):
        return f"{cell:.1f}" if abs(cell) >= 10 else f"{cell:.2f}"
    return str(cell)
