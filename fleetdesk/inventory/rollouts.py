"""Rollouts in the inventory: each rollout's plan and status, its devices' states and the journal. (What operators
did to a rollout is in the audit trail, fleetdesk.inventory.audit.)

Every change of a device's state goes through `RolloutRepo.record`, which reads the state, applies the transition
table (fleetdesk.inventory.rollout_states) and appends the journal entry in one write transaction: two FleetDesk
processes recording at once queue on the inventory's write lock, and a refused transition writes nothing.

The inventory sits below fleetdesk.rollout and never imports it: `create` takes any `ResolvedRollout`, the shape
of fleetdesk.rollout.plan.ResolvedPlan that it stores.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetdesk.errors import RolloutConflictError, RolloutNotFoundError
from fleetdesk.inventory import models as orm
from fleetdesk.inventory import rollout_states as states
from fleetdesk.inventory.edits import check_edit, count_edit
from fleetdesk.inventory.records import Edit
from fleetdesk.inventory.repository import Inventory

ROLLOUT_STATUSES = ("planned", "running", "paused", "waiting-approval", "aborted", "done", "rolling-back",
                    "rolled-back", "failed")
# A rollout in one of these may still change its devices: a device belongs to one of them at a time.
ACTIVE_STATUSES = ("planned", "running", "paused", "waiting-approval", "rolling-back")
# Fields of a device row that `record` and `update` may set, besides the state.
DEVICE_FIELDS = ("previous_artifact", "attempts", "bytes_sent", "error", "gates")
CREATED = "create"  # the journal's event for a rollout's creation (from_state "")
STATUS = "status"  # the journal's event for a change of the rollout's status
TAKEOVER = "takeover"  # the journal's event for a driver taking the rollout over from one whose lease ran out
_NOT_FOUND_FIX = "`fleetdesk rollout status` lists the rollouts"


class _Stored(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class ResolvedDevice(Protocol):
    """One device of a resolved plan, as `create` stores it (fleetdesk.rollout.plan.PlannedDevice)."""

    @property
    def device_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def wave(self) -> int: ...
    @property
    def artifact(self) -> str: ...


class ResolvedRollout(Protocol):
    """A resolved plan, as `create` stores it (fleetdesk.rollout.plan.ResolvedPlan)."""

    @property
    def plan(self) -> _Stored: ...
    @property
    def model_ref(self) -> str: ...
    @property
    def devices(self) -> Sequence[ResolvedDevice]: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RolloutRow:
    id: int
    model_ref: str
    plan: dict[str, Any] = field(hash=False)  # RolloutPlan.to_dict()
    resolved: dict[str, Any] = field(hash=False)  # ResolvedPlan.to_dict(): ResolvedPlan.from_dict(row.resolved)
    status: str
    created_at: datetime
    updated_at: datetime
    actor: str
    paused_reason: str  # why it was paused (or aborted, failed), "" otherwise
    # Counts operators' actions that changed its status (pause, resume, approve, abort, rollback), never the
    # driver's own progress: an action from an older version is refused (set_status with `edit`).
    version: int = 1
    changed_by: str | None = None  # the operator of the last such action
    changed_at: datetime | None = None
    # The FleetDesk driving it ("host:pid") and until when its lease runs, as last written (None: nobody drives it);
    # a lease in the past is one whose driver stopped renewing it: any FleetDesk may take the rollout over.
    driver: str | None = None
    lease_until: datetime | None = None


@dataclass(frozen=True)
class DeviceRow:
    rollout_id: int
    device_id: int
    wave: int
    artifact: str
    previous_artifact: str | None  # the artifact the device ran before the rollout; None until the engine knows
    state: str  # one of fleetdesk.inventory.rollout_states.STATES
    attempts: int
    bytes_sent: int
    error: str
    gates: dict[str, Any] = field(hash=False)
    updated_at: datetime


@dataclass(frozen=True)
class JournalEntry:
    id: int  # increasing in the order the entries were written
    rollout_id: int
    device_id: int | None  # None for a change of the rollout's status
    from_state: str
    event: str
    to_state: str
    at: datetime
    detail: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class KeptEntry:
    """A device's journal entry (or, with no event, its progress fields) that its driver kept in memory while the
    database could not be reached: what a step under way learned from the device. `write_kept` writes them later,
    in the order they happened, each with the time it happened."""

    device_id: int
    event: str | None  # None: progress only (attempts, gates...), as `update` writes it
    from_state: str
    to_state: str
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict, hash=False)
    fields: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Lease:
    """Who drives a rollout ("host:pid") and until when, as the database saw it at `now`."""

    driver: str
    until: datetime
    now: datetime
    # The driver whose lease this one replaced (its lease ran out, or its process on this host is gone), when the
    # call took the rollout over from another driver; None when it was free, given back, or renewed.
    previous: str | None = None
    previous_until: datetime | None = None

    @property
    def host(self) -> str:
        return self.driver.rpartition(":")[0]

    @property
    def pid(self) -> str:
        return self.driver.rpartition(":")[2]


def _database_now(session: Session) -> datetime:
    if session.get_bind().dialect.name == "postgresql":
        moment = session.execute(select(func.now())).scalar_one()
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return _now()


class RolloutRepo:
    """Reads and writes the rollout tables over the inventory's engine; one short transaction per call."""

    # The annotations say builtins.list: in this class body `list` is the method below.

    def __init__(self, inventory: Inventory) -> None:
        # Same package as the Inventory: its transactions, write lock and error translation are shared.
        self._session = inventory._session

    # -- rollouts --------------------------------------------------------------------------------------

    def create(self, resolved: ResolvedRollout, actor: str) -> RolloutRow:
        """Store a resolved plan as a "planned" rollout with every device "pending".

        Refused (RolloutConflictError, nothing written) when one of its devices is in another active rollout.
        """
        if not resolved.devices:
            raise ValueError("a resolved plan has at least one device")
        ids = [d.device_id for d in resolved.devices]
        with self._session(write=True) as session:
            busy = session.execute(
                select(orm.RolloutDeviceRow.device_id, orm.RolloutRow.id, orm.RolloutRow.status)
                .join(orm.RolloutRow, orm.RolloutRow.id == orm.RolloutDeviceRow.rollout_id)
                .where(orm.RolloutDeviceRow.device_id.in_(ids), orm.RolloutRow.status.in_(ACTIVE_STATUSES))
                .order_by(orm.RolloutRow.id, orm.RolloutDeviceRow.device_id)).all()
            if busy:
                names = {d.device_id: d.name for d in resolved.devices}
                first = busy[0]
                listed = ", ".join(dict.fromkeys(names[device_id] for device_id, _, _ in busy))
                raise RolloutConflictError(
                    f"{listed} {'is' if len({b[0] for b in busy}) == 1 else 'are'} already in rollout {first[1]} "
                    f"({first[2]})", rollout_id=first[1], actual=first[2], step="start rollout",
                    fix=f"let rollout {first[1]} finish, or abort or roll it back (`fleetdesk rollout abort "
                        f"{first[1]}`), or leave these devices out")
            now = _now()
            row = orm.RolloutRow(model_ref=resolved.model_ref, plan=_json(resolved.plan.to_dict()),
                                 resolved=_json(resolved.to_dict()), status="planned", paused_reason="", actor=actor,
                                 created_at=now, updated_at=now, version=1, changed_by=actor, changed_at=now)
            session.add(row)
            session.flush()
            for planned in resolved.devices:
                session.add(orm.RolloutDeviceRow(
                    rollout_id=row.id, device_id=planned.device_id, wave=planned.wave, artifact=planned.artifact,
                    previous_artifact=None, state=states.PENDING, attempts=0, bytes_sent=0, error="", gates="{}",
                    updated_at=now))
            session.add(orm.RolloutJournalRow(rollout_id=row.id, device_id=None, from_state="", event=CREATED,
                                              to_state="planned", at=now, detail=_json({"actor": actor})))
            return _rollout(row)

    def get(self, rollout_id: int) -> RolloutRow:
        with self._session() as session:
            return _rollout(_get_rollout(session, rollout_id))

    def list(self, *, active_only: bool = False) -> builtins.list[RolloutRow]:
        """Every rollout, oldest first; only those that may still change devices with active_only."""
        query = select(orm.RolloutRow).order_by(orm.RolloutRow.id)
        if active_only:
            query = query.where(orm.RolloutRow.status.in_(ACTIVE_STATUSES))
        with self._session() as session:
            return [_rollout(row) for row in session.scalars(query)]

    def set_status(self, rollout_id: int, status: str, *, reason: str = "",
                   expect: str | Collection[str] | None = None, edit: Edit | None = None) -> RolloutRow:
        """Change the rollout's status (journaled); `reason` replaces paused_reason.

        `expect` is a compare-and-set: when the status is not it (or not one of them) the change is refused
        with RolloutConflictError and nothing is written (another process paused or aborted it meanwhile).
        `edit` makes it an operator's action: it is counted in the rollout's version, and one made from an older
        version (another operator acted since) is refused with EditConflictError naming them, before `expect`
        is looked at. The driver's own changes (running, waiting for approval, done) pass no edit.
        """
        if status not in ROLLOUT_STATUSES:
            raise ValueError(f"{status!r} is not a rollout status ({', '.join(ROLLOUT_STATUSES)})")
        expected = (expect,) if isinstance(expect, str) else tuple(expect) if expect is not None else ()
        with self._session(write=True) as session:
            row = _get_rollout(session, rollout_id)
            count_edit(row, edit, **_edit_words(row, f"set {status}"))
            if expect is not None and row.status not in expected:
                raise RolloutConflictError(
                    f"rollout {rollout_id} is {row.status}, not {' or '.join(expected)}: another FleetDesk changed "
                    "it", rollout_id=rollout_id, expected=expected, actual=row.status, step=f"set {status}",
                    fix=f"see `fleetdesk rollout status {rollout_id}` and act on what it says now")
            now = _now()
            session.add(orm.RolloutJournalRow(rollout_id=rollout_id, device_id=None, from_state=row.status,
                                              event=STATUS, to_state=status, at=now,
                                              detail=_json({"reason": reason} if reason else {})))
            row.status = status
            row.paused_reason = reason
            row.updated_at = now
            return _rollout(row)

    def check_edit(self, rollout_id: int, edit: Edit, *, step: str) -> RolloutRow:
        """The rollout as it is, or EditConflictError (naming who acted) when `edit` was made from an older version:
        an operator's action is refused before anything else is decided about it. `set_status` checks again."""
        with self._session() as session:
            row = _get_rollout(session, rollout_id)
            check_edit(row, edit, **_edit_words(row, step))
            return _rollout(row)

    # -- who drives it ---------------------------------------------------------------------------------

    def take_lease(self, rollout_id: int, driver: str, seconds: float, *, stale_host: str | None = None) -> Lease:
        """Take (or renew) the lease on driving the rollout for `seconds`, unless another driver holds a lease
        that has not expired. Returns the lease as it stands: `driver`'s when taken.

        `stale_host`: a lease of another process on this host is taken over too; the caller knows none of them
        drives the rollout any more (it holds the host's lock that every local driver holds). Time is the
        database server's on PostgreSQL, so laptops with different clocks agree on when a lease ends.
        """
        with self._session(write=True) as session:
            row = _get_rollout(session, rollout_id)
            now = _database_now(session)
            expired = row.lease_until is None or row.lease_until <= now
            free = (row.driver in (None, driver) or expired
                    or (stale_host is not None and row.driver.rpartition(":")[0] == stale_host))
            previous: str | None = None
            previous_until = row.lease_until
            if free:
                if row.driver not in (None, driver):
                    previous = row.driver
                    why = "its lease ran out" if expired else "its process on this host is gone"
                    session.add(orm.RolloutJournalRow(
                        rollout_id=rollout_id, device_id=None, from_state=row.status, event=TAKEOVER,
                        to_state=row.status, at=now, detail=_json({
                            "previous": previous, "driver": driver, "why": why,
                            "previous_until": previous_until.isoformat() if previous_until else None})))
                row.driver = driver
                row.lease_until = now + timedelta(seconds=seconds)
            assert row.driver is not None and row.lease_until is not None
            return Lease(row.driver, row.lease_until, now, previous, previous_until if previous else None)

    def release_lease(self, rollout_id: int, driver: str) -> None:
        """Give the lease back (only `driver`'s own: one taken over meanwhile stays its new holder's)."""
        with self._session(write=True) as session:
            row = _get_rollout(session, rollout_id)
            if row.driver == driver:
                row.driver = None
                row.lease_until = None

    # -- devices ---------------------------------------------------------------------------------------

    def devices(self, rollout_id: int) -> builtins.list[DeviceRow]:
        """The rollout's devices by wave, then device id."""
        with self._session() as session:
            _get_rollout(session, rollout_id)
            rows = session.scalars(select(orm.RolloutDeviceRow).where(orm.RolloutDeviceRow.rollout_id == rollout_id)
                                   .order_by(orm.RolloutDeviceRow.wave, orm.RolloutDeviceRow.device_id))
            return [_device(row) for row in rows]

    def device(self, rollout_id: int, device_id: int) -> DeviceRow:
        with self._session() as session:
            return _device(_get_device(session, rollout_id, device_id))

    def record(self, rollout_id: int, device_id: int, event: str, *, detail: Mapping[str, Any] | None = None,
               **fields: Any) -> DeviceRow:
        """Apply `event` to the device's state and journal it, in one transaction; returns the new row.

        `detail` goes to the journal entry; its "reconciled" key is where an unreachable device that answers
        again really is (states.transition). `fields` set any of DEVICE_FIELDS at the same time.
        A pair the table refuses raises states.TransitionError and writes nothing.
        """
        values = _fields(fields)
        detail = dict(detail or {})
        with self._session(write=True) as session:
            row = _get_device(session, rollout_id, device_id)
            before = row.state
            after = states.transition(before, event, reconciled=detail.get("reconciled"))
            now = _now()
            row.state = after
            _apply(row, values)
            row.updated_at = now
            session.add(orm.RolloutJournalRow(rollout_id=rollout_id, device_id=device_id, from_state=before,
                                              event=event, to_state=after, at=now, detail=_json(detail)))
            return _device(row)

    def update(self, rollout_id: int, device_id: int, **fields: Any) -> DeviceRow:
        """Progress (bytes sent, attempts, the last gate values...) without a change of state or a journal entry."""
        values = _fields(fields)
        with self._session(write=True) as session:
            row = _get_device(session, rollout_id, device_id)
            _apply(row, values)
            row.updated_at = _now()
            return _device(row)

    def write_kept(self, rollout_id: int, kept: Sequence[KeptEntry]) -> int:
        """Write what a driver kept while the database was unreachable, in one transaction (all or nothing), and
        return how many journal entries it wrote. An entry the database has already (its write was committed as
        the connection broke: the device is in its to_state and its newest entry is that event) is not written
        twice; a device found anywhere else was changed by someone else meanwhile: RolloutConflictError, nothing
        written."""
        written = 0
        with self._session(write=True) as session:
            for entry in kept:
                row = _get_device(session, rollout_id, entry.device_id)
                values = _fields(entry.fields)
                if entry.event is not None:
                    if row.state != entry.from_state:
                        newest = session.scalars(
                            select(orm.RolloutJournalRow)
                            .where(orm.RolloutJournalRow.rollout_id == rollout_id,
                                   orm.RolloutJournalRow.device_id == entry.device_id)
                            .order_by(orm.RolloutJournalRow.id.desc()).limit(1)).first()
                        if (row.state == entry.to_state and newest is not None and newest.event == entry.event
                                and newest.from_state == entry.from_state):
                            _apply(row, values)
                            continue
                        raise RolloutConflictError(
                            f"device {entry.device_id} of rollout {rollout_id} is {row.state}, not "
                            f"{entry.from_state}: another FleetDesk changed it while the database was unreachable",
                            rollout_id=rollout_id, expected=(entry.from_state,), actual=row.state,
                            step="write kept journal", fix=f"see `fleetdesk rollout status {rollout_id}`")
                    after = states.transition(row.state, entry.event, reconciled=entry.detail.get("reconciled"))
                    row.state = after
                    session.add(orm.RolloutJournalRow(rollout_id=rollout_id, device_id=entry.device_id,
                                                      from_state=entry.from_state, event=entry.event,
                                                      to_state=after, at=entry.at, detail=_json(entry.detail)))
                    written += 1
                _apply(row, values)
                row.updated_at = entry.at
        return written

    def journal(self, rollout_id: int, *, device_id: int | None = None) -> builtins.list[JournalEntry]:
        """The rollout's journal in the order it was written (one device's entries when device_id is given)."""
        query = select(orm.RolloutJournalRow).where(orm.RolloutJournalRow.rollout_id == rollout_id)
        if device_id is not None:
            query = query.where(orm.RolloutJournalRow.device_id == device_id)
        with self._session() as session:
            _get_rollout(session, rollout_id)
            rows = session.scalars(query.order_by(orm.RolloutJournalRow.id))
            return [JournalEntry(r.id, r.rollout_id, r.device_id, r.from_state, r.event, r.to_state, r.at,
                                 json.loads(r.detail)) for r in rows]


def _now() -> datetime:
    return datetime.now(UTC)


def _json(data: object) -> str:
    # ASCII-only JSON: whatever a device put in a message (NUL, lone surrogates) is stored on both backends.
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(DEVICE_FIELDS))
    if unknown:
        raise TypeError(f"not a rollout device field: {', '.join(unknown)} (fields: {', '.join(DEVICE_FIELDS)})")
    values = dict(fields)
    if "gates" in values:
        values["gates"] = _json(dict(values["gates"]))
    for name in ("attempts", "bytes_sent"):
        if name in values:
            values[name] = int(values[name])
    if "error" in values:
        values["error"] = str(values["error"])
    return values


def _apply(row: orm.RolloutDeviceRow, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        setattr(row, name, value)


def _edit_words(row: orm.RolloutRow, step: str) -> dict[str, str]:
    return {"what": f"rollout {row.id} ({row.model_ref})", "now": row.status, "step": step,
            "fix": "look at the rollout as it is now (the window's Rollouts view; `fleetdesk rollout status "
                   f"{row.id}`) and act again if it still applies"}


def _get_rollout(session: Session, rollout_id: int) -> orm.RolloutRow:
    row = session.get(orm.RolloutRow, rollout_id)
    if row is None:
        raise RolloutNotFoundError(f"no rollout {rollout_id} in the inventory", fix=_NOT_FOUND_FIX)
    return row


def _get_device(session: Session, rollout_id: int, device_id: int) -> orm.RolloutDeviceRow:
    row = session.get(orm.RolloutDeviceRow, (rollout_id, device_id))
    if row is None:
        _get_rollout(session, rollout_id)
        raise RolloutNotFoundError(f"device {device_id} is not in rollout {rollout_id}",
                                   fix=f"`fleetdesk rollout status {rollout_id}` lists its devices")
    return row


def _rollout(row: orm.RolloutRow) -> RolloutRow:
    return RolloutRow(id=row.id, model_ref=row.model_ref, plan=json.loads(row.plan), resolved=json.loads(row.resolved),
                      status=row.status, created_at=row.created_at, updated_at=row.updated_at, actor=row.actor,
                      paused_reason=row.paused_reason, version=row.version, changed_by=row.changed_by,
                      changed_at=row.changed_at, driver=row.driver, lease_until=row.lease_until)


def _device(row: orm.RolloutDeviceRow) -> DeviceRow:
    return DeviceRow(rollout_id=row.rollout_id, device_id=row.device_id, wave=row.wave, artifact=row.artifact,
                     previous_artifact=row.previous_artifact, state=row.state, attempts=row.attempts,
                     bytes_sent=row.bytes_sent, error=row.error, gates=json.loads(row.gates),
                     updated_at=row.updated_at)
