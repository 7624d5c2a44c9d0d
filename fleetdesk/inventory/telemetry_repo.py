"""The inventory's telemetry tables as records: minute summaries of each device's telemetry, and the event log.

Written in batches by fleetdesk.telemetry.history from its own thread; read by reports, the CLI and the GUI.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Integer, delete, extract, func, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fleetdesk.errors import InventoryError
from fleetdesk.inventory.database import for_writing
from fleetdesk.inventory.models import HISTORY_METRICS, DeviceRow, EventRow, TelemetryMinuteRow
from fleetdesk.inventory.repository import Inventory

__all__ = ["HISTORY_METRICS", "Event", "MinuteSummary", "TelemetryRepo"]

DEFAULT_EVENT_LIMIT = 200
FETCH_CHUNK = 2000  # rows per fetch when reading history in bulk


@dataclass(frozen=True)
class MinuteSummary:
    """One device over one minute: how many samples came, and the average and maximum of each HISTORY_METRICS
    metric (None where no sample of the minute had it)."""

    device_id: int
    minute: datetime  # the minute's start, UTC
    samples: int
    avg: Mapping[str, float | None] = field(default_factory=dict)
    max: Mapping[str, float | None] = field(default_factory=dict)

    def merged(self, other: MinuteSummary) -> MinuteSummary:
        """Two summaries of the same minute (a stream restarted within it) as one; averages weighted by samples.

        Exact when each metric was in every sample; otherwise the closest figure the stored row allows.
        """
        total = self.samples + other.samples
        avg: dict[str, float | None] = {}
        high: dict[str, float | None] = {}
        for m in HISTORY_METRICS:
            a, b = self.avg.get(m), other.avg.get(m)
            if a is None or b is None:
                avg[m] = a if b is None else b
            else:
                avg[m] = (a * self.samples + b * other.samples) / total if total else None
            ma, mb = self.max.get(m), other.max.get(m)
            high[m] = ma if mb is None else mb if ma is None else max(ma, mb)
        return MinuteSummary(self.device_id, self.minute, total, avg, high)


@dataclass(frozen=True)
class Event:
    """One entry of the event log: an alert (metric, value and the bound it crossed) or a stream incident."""

    id: int
    device_id: int | None
    at: datetime
    kind: str
    message: str
    metric: str | None = None
    value: float | None = None
    bound: float | None = None


class TelemetryRepo:
    """Every read and write of the telemetry tables; one short transaction per call, safe from any thread."""

    def __init__(self, engine: Engine) -> None:
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(for_writing(engine), expire_on_commit=False)

    @classmethod
    def of(cls, inventory: Inventory) -> TelemetryRepo:
        """The telemetry tables of an open inventory (same database, same connection pool)."""
        # Same package: the inventory shares its engine (Inventory has no public accessor for it yet).
        return cls(inventory.engine)

    # -- minutes -------------------------------------------------------------------------------------

    def write_minutes(self, summaries: Sequence[MinuteSummary]) -> int:
        """Store summaries in one transaction, merging with a row already there for the same minute.

        Summaries of devices no longer in the inventory are dropped (the operator removed the device while
        it streamed). Returns how many were stored.
        """
        if not summaries:
            return 0
        with self._session(write=True) as session:
            wanted = {s.device_id for s in summaries}
            known = set(session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(wanted))))
            stored = 0
            for summary in summaries:
                if summary.device_id not in known:
                    continue
                minute = _utc_minute(summary.minute)
                row = session.get(TelemetryMinuteRow, (summary.device_id, minute))
                if row is None:
                    row = TelemetryMinuteRow(device_id=summary.device_id, minute=minute)
                    session.add(row)
                    merged = summary
                else:
                    merged = _summary(row).merged(summary)
                _fill(row, merged)
                stored += 1
            return stored

    def minutes(self, device_id: int, since: datetime | None = None, until: datetime | None = None,
                ) -> list[MinuteSummary]:
        """The device's minutes from `since` (inclusive) to `until` (exclusive), oldest first."""
        query = select(TelemetryMinuteRow).where(TelemetryMinuteRow.device_id == device_id)
        if since is not None:
            query = query.where(TelemetryMinuteRow.minute >= _aware(since))
        if until is not None:
            query = query.where(TelemetryMinuteRow.minute < _aware(until))
        with self._session() as session:
            return [_summary(row) for row in session.scalars(query.order_by(TelemetryMinuteRow.minute))]

    def averages(self, device_id: int, metrics: Sequence[str], since: datetime, until: datetime,
                 ) -> list[tuple[Any, ...]]:
        """The device's minutes from `since` (inclusive) to `until` (exclusive), oldest first, as plain rows: the
        minute's start in Unix seconds, then the average of each of `metrics` (None where not measured).

        What a report reads weeks of at once: numbers only, no datetime or object per minute (`minutes` gives
        whole summaries)."""
        table = TelemetryMinuteRow.__table__
        # EXTRACT(epoch) on PostgreSQL, STRFTIME('%s') on SQLite (which keeps UTC): both count from 1970 in UTC.
        columns = [sql_cast(extract("epoch", table.c.minute), Integer), *(table.c[f"{m}_avg"] for m in _known(metrics))]
        query = (select(*columns).where(table.c.device_id == device_id, table.c.minute >= _aware(since),
                                        table.c.minute < _aware(until)).order_by(table.c.minute))
        with self._session() as session:
            result = cast(CursorResult[Any], session.execute(query))
            # Every column is a plain number: the driver's own tuples, without a Row object per minute (a week of
            # a large fleet is millions of rows), fetched in chunks so that a thread reading them lets the event
            # loop run between two.
            rows: list[tuple[Any, ...]] = []
            while result.cursor is not None and (chunk := result.cursor.fetchmany(FETCH_CHUNK)):
                rows.extend(chunk)
            return rows

    def maxima(self, device_id: int, metrics: Sequence[str], since: datetime, until: datetime,
               ) -> dict[str, float | None]:
        """The highest value of each of `metrics` any sample of the device reached from `since` to `until`.

        One device at a time: that reads the device's own rows by the primary key, where one query grouped by
        device would visit the whole fleet's rows through the minute index, twice as slow."""
        table = TelemetryMinuteRow.__table__
        wanted = _known(metrics)
        query = select(*(func.max(table.c[f"{m}_max"]) for m in wanted)).where(
            table.c.device_id == device_id, table.c.minute >= _aware(since), table.c.minute < _aware(until))
        with self._session() as session:
            highs = session.execute(query).one()
        return {m: None if v is None else float(v) for m, v in zip(wanted, highs, strict=True)}

    def prune(self, before: datetime) -> tuple[int, int]:
        """Delete minutes and events older than `before`: (minutes, events) deleted."""
        before = _aware(before)
        with self._session(write=True) as session:
            # Session.execute is typed to return a Result; a DELETE's is a CursorResult, which has the rowcount.
            minutes = cast(CursorResult[Any],
                           session.execute(delete(TelemetryMinuteRow).where(TelemetryMinuteRow.minute < before)))
            events = cast(CursorResult[Any], session.execute(delete(EventRow).where(EventRow.at < before)))
            return int(minutes.rowcount or 0), int(events.rowcount or 0)

    # -- events --------------------------------------------------------------------------------------

    def log_event(self, device_id: int | None, kind: str, message: str, *, metric: str | None = None,
                  value: float | None = None, bound: float | None = None, at: datetime | None = None) -> int:
        """Add one event; returns its id. Text is stored exactly as given, whatever a device put in it."""
        return self.log_events([(device_id, kind, message, metric, value, bound, at)])[0]

    def log_events(self, events: Sequence[tuple[int | None, str, str, str | None, float | None, float | None,
                                                 datetime | None]]) -> list[int]:
        """log_event for many, in one transaction; events of devices no longer in the inventory are dropped
        (their id is -1)."""
        if not events:
            return []
        if any(not kind for _, kind, *_ in events):
            raise InventoryError("an event without a kind", fix="give a kind such as 'alert' or 'stream'",
                                 step="log event")
        with self._session(write=True) as session:
            wanted = {e[0] for e in events if e[0] is not None}
            known = set(session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(wanted)))) if wanted else set()
            rows: list[EventRow | None] = []
            for device_id, kind, message, metric, value, bound, at in events:
                if device_id is not None and device_id not in known:
                    rows.append(None)
                    continue
                row = EventRow(device_id=device_id, at=_aware(at) if at else datetime.now(UTC), kind=kind,
                               message=message, metric=metric, value=value, bound=bound)
                session.add(row)
                rows.append(row)
            session.flush()
            return [row.id if row is not None else -1 for row in rows]

    def events(self, device_id: int | None = None, since: datetime | None = None,
               limit: int = DEFAULT_EVENT_LIMIT) -> list[Event]:
        """The newest events first (of one device when given), from `since` on, at most `limit`."""
        query = select(EventRow)
        if device_id is not None:
            query = query.where(EventRow.device_id == device_id)
        if since is not None:
            query = query.where(EventRow.at >= _aware(since))
        query = query.order_by(EventRow.at.desc(), EventRow.id.desc()).limit(max(0, limit))
        with self._session() as session:
            return [Event(r.id, r.device_id, r.at, r.kind, r.message, r.metric, r.value, r.bound)
                    for r in session.scalars(query)]

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        factory = self._writes if write else self._reads
        try:
            with factory() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise InventoryError(f"the telemetry history could not be {'written' if write else 'read'} "
                                 f"({exc.__class__.__name__}: {exc})", cause=exc, step="telemetry history",
                                 fix="check that the inventory database is reachable and writable") from None


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are not accepted: give a timezone-aware one")
    return moment.astimezone(UTC)


def _known(metrics: Sequence[str]) -> list[str]:
    unknown = [m for m in metrics if m not in HISTORY_METRICS]
    if unknown:
        raise ValueError(f"no history is kept of {', '.join(unknown)}")
    return list(metrics)


def _utc_minute(moment: datetime) -> datetime:
    return _aware(moment).replace(second=0, microsecond=0)


def _summary(row: TelemetryMinuteRow) -> MinuteSummary:
    return MinuteSummary(row.device_id, row.minute, row.samples,
                         {m: getattr(row, f"{m}_avg") for m in HISTORY_METRICS},
                         {m: getattr(row, f"{m}_max") for m in HISTORY_METRICS})


def _fill(row: TelemetryMinuteRow, summary: MinuteSummary) -> None:
    row.samples = summary.samples
    for m in HISTORY_METRICS:
        setattr(row, f"{m}_avg", summary.avg.get(m))
        setattr(row, f"{m}_max", summary.max.get(m))
