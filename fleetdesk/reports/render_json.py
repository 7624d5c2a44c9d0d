"""A report as one JSON document (UTF-8, sorted keys, two-space indent), schema "fleetdesk-report" version 1:

    {"schema": "fleetdesk-report", "schema_version": 1,
     "kind": "fleet" | "rollout" | "health" | "models" | "audit", "title": str, "scope": str,
     "period": {"since": ISO 8601 UTC, "until": ISO 8601 UTC}, "filters": {option: value},
     "fleet_key": "SHA256:…" (the key that signs the report),
     "notes": [str],
     "facts": [{"label": str, "value": str | number | null}],
     "charts": [{"name": str, "title": str, "kind": "bar" | "line", "unit": str, "labels": [str],
                 "series": [{"name": str, "values": [number | null]}]}],
     "tables": [{"name": str, "title": str, "columns": [{"key": str, "title": str}],
                 "rows": [{column key: str | number | null}], "empty": str}]}

Text is kept verbatim (device names included); a reader escapes it for wherever it shows it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC
from typing import Any

from fleetdesk.reports.document import Cell, Report

SCHEMA = "fleetdesk-report"
SCHEMA_VERSION = 1


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": report.kind, "title": report.title,
        "scope": report.scope, "filters": dict(report.filters), "fleet_key": report.fleet_key,
        "period": {"since": report.since.astimezone(UTC).isoformat(),
                   "until": report.until.astimezone(UTC).isoformat()},
        "notes": list(report.notes),
        "facts": [{"label": f.label, "value": _value(f.value)} for f in report.facts],
        "charts": [{"name": c.name, "title": c.title, "kind": c.kind, "unit": c.unit, "labels": list(c.labels),
                    "series": [{"name": s.name, "values": [_value(v) for v in s.values]} for s in c.series]}
                   for c in report.charts],
        "tables": [{"name": t.name, "title": t.title, "empty": t.empty,
                    "columns": [{"key": c.key, "title": c.title} for c in t.columns],
                    "rows": [{c.key: _value(v) for c, v in zip(t.columns, row, strict=True)} for row in t.rows]}
                   for t in report.tables],
    }


def render_json(report: Report) -> bytes:
    return (json.dumps(report_dict(report), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
            + "\n").encode("utf-8")


def _value(cell: Cell) -> Cell:
    # JSON has no NaN or infinity: an unmeasurable figure is null.
    if isinstance(cell, float) and not math.isfinite(cell):
        return None
    return cell
