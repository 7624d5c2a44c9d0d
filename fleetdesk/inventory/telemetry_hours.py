"""The telemetry history packed by device and hour: what a report reads when it reads weeks of a whole fleet.

The minutes (telemetry_minutes) stay the record; the hours are built from them, in the same transaction as every
write and prune of the minutes (TelemetryRepo), and for the minutes of earlier releases by migration 0018. Read row
by row, a week of 500 devices is five million minutes, and turning each into numbers cost more than the whole
report may take (issue 21: 11 of the health report's 12 s); packed, it is 84 000 rows whose values numpy reads
as they are.

One row per device and hour with at least one minute:
- `hour`: the hour's start in Unix seconds (UTC);
- `minutes`: bit n set when minute n of the hour has a row;
- `metrics`: bit k set when HISTORY_METRICS[k] has a value (average or maximum) in one of those minutes. Bits
  follow HISTORY_METRICS, which only ever grows at its end;
- `averages`: float64, little-endian, one run of 60 per metric set in `metrics` (in HISTORY_METRICS order),
  indexed by minute of the hour; NaN where the minute has no row or no value;
- `maxima`: float64, one per metric set: the highest maximum of the hour (NaN when only averages came).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, delete, extract, func, insert, select
from sqlalchemy import cast as sql_cast

from fleetdesk.inventory.models import HISTORY_METRICS, TelemetryHourRow, TelemetryMinuteRow

HOUR = 3600
MINUTES = 60
LITTLE = np.dtype("<f8")
# Hours packed at once (devices × hours): two float grids of this many × metrics × 60 values, about 38 MB each.
GROUPS_AT_ONCE = 8000


def epoch_seconds(minute: Any, dialect: str) -> Any:
    """SQL for a stored minute in Unix seconds (an integer) on each backend; both count from 1970 in UTC."""
    if dialect == "sqlite":
        # unixepoch() (SQLite 3.38) reads the stored text a third faster than STRFTIME('%s').
        if sqlite3.sqlite_version_info >= (3, 38):
            return func.unixepoch(minute)
        return sql_cast(func.strftime("%s", minute), BigInteger)
    return sql_cast(extract("epoch", minute), BigInteger)


def hour_of(seconds: float) -> int:
    """The start of the hour that holds a moment given in Unix seconds."""
    return int(seconds // HOUR * HOUR)


def repack(conn: Connection, device_ids: Iterable[int], first_hour: int, last_hour: int) -> int:
    """Build the packed hours from `first_hour` to `last_hour` (hour starts in Unix seconds, both included) of
    these devices anew from their minutes, in the caller's transaction; an hour left without minutes loses its
    row. Returns how many rows were written.

    The transaction must be a writing one (fleetdesk.inventory.database.for_writing): writers take turns, so the
    minutes read here include every other laptop's committed ones, and no other laptop packs the same hours now.
    """
    devices = sorted(set(device_ids))
    if not devices or last_hour < first_hour:
        return 0
    hours = TelemetryHourRow.hour
    conn.execute(delete(TelemetryHourRow).where(TelemetryHourRow.device_id.in_(devices), hours >= first_hour,
                                                hours <= last_hour))
    span = (last_hour - first_hour) // HOUR + 1
    chunk = max(1, GROUPS_AT_ONCE // span)
    written = 0
    for start in range(0, len(devices), chunk):
        rows = _packed(conn, devices[start:start + chunk], first_hour, last_hour + HOUR)
        if rows:
            conn.execute(insert(TelemetryHourRow), rows)
            written += len(rows)
    return written


def _packed(conn: Connection, devices: Sequence[int], since: int, until: int) -> list[dict[str, Any]]:
    """The rows of the hours in [since, until) of these devices, from their minutes."""
    table = TelemetryMinuteRow.__table__
    minute = table.c.minute
    query = (select(table.c.device_id, epoch_seconds(minute, conn.dialect.name),
                    *(table.c[f"{m}_avg"] for m in HISTORY_METRICS), *(table.c[f"{m}_max"] for m in HISTORY_METRICS))
             .where(table.c.device_id.in_(devices), minute >= utc_moment(since), minute < utc_moment(until))
             .order_by(table.c.device_id, minute))
    # The driver's own tuples: numpy takes a Row object apart slowly (it probes each for array attributes).
    found = conn.execute(query).cursor.fetchall()
    if not found:
        return []
    values = np.array(found, dtype=np.float64)  # NULL becomes NaN
    device, at = values[:, 0].astype(np.int64), values[:, 1].astype(np.int64)
    hour = at // HOUR * HOUR
    offset = (at - hour) // MINUTES
    # Rows come by device and minute, so each (device, hour) is a run: number the runs.
    new_run = np.empty(len(values), dtype=bool)
    new_run[0] = True
    new_run[1:] = (device[1:] != device[:-1]) | (hour[1:] != hour[:-1])
    run = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    count, width = len(starts), len(HISTORY_METRICS)
    averages = np.full((count, width, MINUTES), np.nan)
    highs = np.full((count, width, MINUTES), np.nan)
    averages[run, :, offset] = values[:, 2:2 + width]
    highs[run, :, offset] = values[:, 2 + width:]
    minute_bits = np.bitwise_or.reduceat(np.left_shift(np.int64(1), offset), starts)
    present = ~np.isnan(averages).all(axis=2) | ~np.isnan(highs).all(axis=2)
    maxima = np.fmax.reduce(highs, axis=2)  # NaN only where the hour has no maximum of the metric
    weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
    metric_bits = (present * weights).sum(axis=1)
    return [{"device_id": int(device[s]), "hour": int(hour[s]), "minutes": int(minute_bits[n]),
             "metrics": int(metric_bits[n]),
             "averages": averages[n][present[n]].astype(LITTLE, copy=False).tobytes(),
             "maxima": maxima[n][present[n]].astype(LITTLE, copy=False).tobytes()}
            for n, s in enumerate(starts)]


def utc_moment(seconds: float) -> datetime:
    """A moment given in Unix seconds as an aware UTC datetime (what the minutes' column takes)."""
    return datetime.fromtimestamp(seconds, UTC)


class Unpacked:
    """One device's packed hours as arrays: every minute of them (`at`, Unix seconds, oldest first; `kept`, the
    minutes with a row), each metric's averages on the same minutes and each hour's maxima."""

    def __init__(self, rows: Sequence[Any], metrics: Sequence[str]) -> None:
        n = len(rows)
        self.hours = np.fromiter((r[0] for r in rows), np.int64, n)
        bits = np.fromiter((r[1] for r in rows), np.int64, n)
        self.at = (self.hours[:, None] + MINUTES * np.arange(MINUTES, dtype=np.int64)).astype(np.float64)
        self.kept = (np.right_shift(bits[:, None], np.arange(MINUTES, dtype=np.int64)) & 1).astype(bool)
        index = {m: k for k, m in enumerate(HISTORY_METRICS)}
        self.averages = {m: np.full((n, MINUTES), np.nan) for m in metrics}
        self.maxima = {m: np.full(n, np.nan) for m in metrics}
        layouts: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            layouts.setdefault(int(row[2]), []).append(i)
        for layout, chosen in layouts.items():  # a device usually measures the same metrics every hour: one layout
            stored = [m for m in HISTORY_METRICS if layout >> index[m] & 1]
            picked = np.asarray(chosen)
            averages = np.frombuffer(b"".join(rows[i][3] for i in chosen), LITTLE).reshape(len(chosen), -1, MINUTES)
            highs = np.frombuffer(b"".join(rows[i][4] for i in chosen), LITTLE).reshape(len(chosen), -1)
            for k, m in enumerate(stored):
                if m in self.averages:
                    self.averages[m][picked] = averages[:, k]
                    self.maxima[m][picked] = highs[:, k]
