"""The inventory's telemetry tables as records: minute summaries of each device's telemetry, and the event log.

Written in batches by fleetdesk.telemetry.history from its own thread; read by reports, the CLI and the GUI.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import BindParameter, CursorResult, Engine, bindparam, delete, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fleetdesk.errors import InventoryError
from fleetdesk.inventory.database import for_writing
from fleetdesk.inventory.models import HISTORY_METRICS, DeviceRow, EventRow, TelemetryHourRow, TelemetryMinuteRow
from fleetdesk.inventory.repository import Inventory
from fleetdesk.inventory.telemetry_hours import HOUR, Unpacked, hour_of, repack, utc_moment

__all__ = ["ALERT_CLEARED", "ALERT_RAISED", "HISTORY_METRICS", "DeviceHistory", "Event", "MinuteSummary",
           "TelemetryRepo"]

DEFAULT_EVENT_LIMIT = 200
# The event log's kinds for the two ends of an alert: a threshold crossed, and the value back within it.
ALERT_RAISED = "alert"
ALERT_CLEARED = "alert.cleared"


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
class DeviceHistory:
    """One device's minutes over a period as arrays (TelemetryRepo.histories), oldest first."""

    device_id: int
    minutes: np.ndarray[Any, Any]  # each minute's start in Unix seconds (float64: exact for any real date)
    averages: dict[str, np.ndarray[Any, Any]]  # metric -> the minutes' averages, NaN where not measured; only
    # the metrics measured at least once in the period
    maxima: dict[str, float | None]  # metric -> the highest value any sample reached; None where none did


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

    def __init__(self, engine: Engine, *, writer: str | None = None) -> None:
        self.writer = writer or f"{socket.gethostname()}:{os.getpid()}"  # this FleetDesk, in the minutes it writes
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(for_writing(engine), expire_on_commit=False)

    @classmethod
    def of(cls, inventory: Inventory) -> TelemetryRepo:
        """The telemetry tables of an open inventory (same database, same connection pool)."""
        # Same package: the inventory shares its engine (Inventory has no public accessor for it yet).
        return cls(inventory.engine)

    # -- minutes -------------------------------------------------------------------------------------

    def write_minutes(self, summaries: Sequence[MinuteSummary]) -> int:
        """Store summaries in one transaction, merging with a row this FleetDesk already wrote for the same minute.

        A minute another FleetDesk wrote (a shared inventory, two laptops streaming the same device) is kept as it
        is: each device's minute is written once, by whichever laptop wrote it first. Summaries of devices no
        longer in the inventory are dropped (the operator removed the device while it streamed). Returns how
        many were stored. The packed hours of the minutes written are built anew in the same transaction.
        """
        if not summaries:
            return 0
        with self._session(write=True) as session:
            wanted = {s.device_id for s in summaries}
            known = set(session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(wanted))))
            stored = 0
            touched: set[tuple[int, int]] = set()  # (device, hour) whose packed hour is built anew
            for summary in summaries:
                if summary.device_id not in known:
                    continue
                minute = _utc_minute(summary.minute)
                row = session.get(TelemetryMinuteRow, (summary.device_id, minute))
                if row is None:
                    row = TelemetryMinuteRow(device_id=summary.device_id, minute=minute, writer=self.writer)
                    session.add(row)
                    merged = summary
                elif row.writer not in (None, self.writer):
                    continue  # another laptop's minute
                else:
                    merged = _summary(row).merged(summary)
                _fill(row, merged)
                stored += 1
                touched.add((summary.device_id, hour_of(minute.timestamp())))
            if touched:
                session.flush()
                repack(session.connection(), {device for device, _ in touched}, min(h for _, h in touched),
                       max(h for _, h in touched))
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

    def histories(self, device_ids: Sequence[int], metrics: Sequence[str], since: datetime, until: datetime,
                  ) -> Iterator[DeviceHistory]:
        """Each device's minutes from `since` (inclusive) to `until` (exclusive) as arrays, one device at a time
        and in the order given, read in one transaction: what a report reads weeks of a whole fleet at once.

        Read from the packed hours (fleetdesk.inventory.telemetry_hours): per device one query of its hours in
        the period, whose arrays numpy takes as they are. An hour the period only partly covers (at most the
        first and the last) gives its minutes from its arrays too, and its maxima from its minutes' rows.
        """
        wanted = _known(metrics)
        since_s, until_s = _aware(since).timestamp(), _aware(until).timestamp()
        hours = TelemetryHourRow.__table__
        device: BindParameter[int] = bindparam("device_id")
        packed = (select(hours.c.hour, hours.c.minutes, hours.c.metrics, hours.c.averages, hours.c.maxima)
                  .where(hours.c.device_id == device, hours.c.hour >= hour_of(since_s),
                         hours.c.hour < math.ceil(until_s)).order_by(hours.c.hour))
        table = TelemetryMinuteRow.__table__
        minute = table.c.minute
        # The minutes of the partly covered hours: before the first whole hour, and from the end of the last.
        edges = (select(*(func.max(table.c[f"{m}_max"]) for m in wanted))
                 .where(table.c.device_id == device, minute >= _aware(since), minute < _aware(until),
                        or_(minute < utc_moment(hour_of(since_s - 1) + HOUR),
                            minute >= utc_moment(hour_of(until_s)))))
        with self._session() as session:
            for device_id in device_ids:
                found = Unpacked(session.execute(packed, {"device_id": device_id}).all(), wanted)
                whole = (found.hours >= since_s) & (found.hours + HOUR <= until_s)
                highs = {m: np.fmax.reduce(found.maxima[m][whole]) if whole.any() else np.nan for m in wanted}
                if not whole.all():
                    edge = session.execute(edges, {"device_id": device_id}).one()
                    highs = {m: np.fmax(highs[m], np.nan if v is None else float(v))
                             for m, v in zip(wanted, edge, strict=True)}
                maxima = {m: None if np.isnan(v) else float(v) for m, v in highs.items()}
                inside = found.kept & (found.at >= since_s) & (found.at < until_s)
                yield DeviceHistory(device_id, found.at[inside],
                                    {m: found.averages[m][inside] for m in wanted if maxima[m] is not None}, maxima)

    def prune(self, before: datetime) -> tuple[int, int]:
        """Delete minutes and events older than `before`: (minutes, events) deleted."""
        before = _aware(before)
        with self._session(write=True) as session:
            # Session.execute is typed to return a Result; a DELETE's is a CursorResult, which has the rowcount.
            minutes = cast(CursorResult[Any],
                           session.execute(delete(TelemetryMinuteRow).where(TelemetryMinuteRow.minute < before)))
            cut = hour_of(before.timestamp())  # hours before it are gone; the hour it falls in loses minutes
            session.execute(delete(TelemetryHourRow).where(TelemetryHourRow.hour < cut))
            if cut < before.timestamp():
                split = session.scalars(select(TelemetryHourRow.device_id).where(TelemetryHourRow.hour == cut))
                repack(session.connection(), list(split), cut, cut)
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
