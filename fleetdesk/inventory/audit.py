"""The audit trail and the operators in the inventory.

`AuditRepo.append` seals an entry into the hash chain in one write transaction: it locks the chain's head row
(`SELECT … FOR UPDATE` on PostgreSQL, the write lock on SQLite), so two processes, or two laptops on one
PostgreSQL, append one after the other and never fork the chain. The signature is made by a callback inside
that transaction, once the entry's hash is known; the inventory never holds a private key.

Nothing here decides whether an entry is genuine: fleetdesk.access.verify reads the chain back and checks it.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetdesk import chain
from fleetdesk.errors import AccessError, FleetDeskError, InventoryError
from fleetdesk.inventory import models as orm
from fleetdesk.inventory.repository import Inventory

__all__ = ["AuditCheckpoint", "AuditDraft", "AuditEntry", "AuditFilter", "AuditRepo", "Operator", "OperatorRepo",
           "Signer", "add_operator", "legacy_fields", "stamp", "update_operator"]

GENESIS_ACTION = "audit.genesis"
HEAD_ID = 1


class Signer(Protocol):
    """An operator's key: its base64 public half, and a signature (base64) of an entry hash."""

    @property
    def key(self) -> str: ...

    def sign(self, digest: str) -> str: ...


@dataclass(frozen=True)
class AuditDraft:
    """What an entry says before it is sealed: who, what, to what, the compact before/after, and the outcome."""

    operator: str
    action: str
    outcome: str
    targets: tuple[str, ...] = ()
    before: Any = None  # a JSON value
    after: Any = None  # a JSON value


@dataclass(frozen=True)
class AuditCheckpoint:
    """The fleet key's signature (base64) of entry `seq`'s hash (fleetdesk.chain.checkpoint_message)."""

    seq: int
    hash: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "signature": self.signature}


@dataclass(frozen=True)
class AuditEntry:
    """One sealed entry. Targets, before and after are kept as stored (canonical JSON text: what the hash covers)
    and parsed when read."""

    seq: int
    at: datetime
    operator: str
    action: str
    targets_text: str
    before_text: str
    after_text: str
    outcome: str
    prev_hash: str
    hash: str
    key: str
    signature: str

    @functools.cached_property
    def targets(self) -> tuple[str, ...]:
        return tuple(json.loads(self.targets_text))

    @functools.cached_property
    def before(self) -> Any:
        return json.loads(self.before_text)

    @functools.cached_property
    def after(self) -> Any:
        return json.loads(self.after_text)

    def hashed_fields(self) -> dict[str, Any]:
        """The fields the entry's hash covers, as stored."""
        return {"seq": self.seq, "at": stamp(self.at), "operator": self.operator, "action": self.action,
                "targets": self.targets_text, "before": self.before_text, "after": self.after_text,
                "outcome": self.outcome, "prev_hash": self.prev_hash, "key": self.key}

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": stamp(self.at), "operator": self.operator, "action": self.action,
                "targets": list(self.targets), "before": self.before, "after": self.after,
                "outcome": self.outcome, "prev_hash": self.prev_hash, "hash": self.hash, "key": self.key,
                "signature": self.signature}


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None
    operator: str | None = None
    target: str | None = None  # e.g. "device:3": entries whose targets include it
    action: str | None = None  # an action, or a prefix ending in "." ("rollout.")


@dataclass(frozen=True)
class Operator:
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]  # () = the whole fleet
    public_key: str
    created_at: datetime
    removed_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.removed_at is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "roles": list(self.roles), "groups": list(self.groups),
                "public_key": self.public_key, "created_at": stamp(self.created_at),
                "removed_at": stamp(self.removed_at) if self.removed_at else None}


def stamp(moment: datetime) -> str:
    """The one text form of an entry's time (UTC, microseconds): what its hash covers."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def legacy_fields(row_id: int, at: datetime, actor: str, action: str, rollout_id: int | None, device_ids: str,
                  outcome: str, detail: str) -> dict[str, Any]:
    """One audit_log row written before the chain, as the genesis entry's digest covers it."""
    return {"id": row_id, "at": stamp(at), "actor": actor, "action": action, "rollout_id": rollout_id,
            "device_ids": device_ids, "outcome": outcome, "detail": detail}


class AuditRepo:
    """Appends to and reads the audit trail; one short transaction per call."""

    def __init__(self, inventory: Inventory) -> None:
        self._session = inventory._session  # same package: the inventory's transactions and errors

    def append(self, draft: AuditDraft, signer: Signer,
               change: Callable[[Session], object] | None = None) -> AuditEntry:
        """Seal `draft` as the chain's next entry and return it; `signer` signs inside the transaction.

        `change`, when given, makes the change the entry records in that same transaction: both or neither.
        """
        if not draft.action or not draft.outcome:
            raise ValueError("an audit entry names its action and its outcome")
        targets = chain.canonical_json(list(draft.targets))
        before, after = chain.canonical_json(draft.before), chain.canonical_json(draft.after)
        with self._session(write=True) as session:
            head = session.scalars(select(orm.AuditHeadRow).where(orm.AuditHeadRow.id == HEAD_ID)
                                   .with_for_update()).one_or_none()
            if head is None:
                raise _no_chain()
            if change is not None:
                change(session)
            at = datetime.now(UTC)
            seq = head.seq + 1
            fields = {"seq": seq, "at": stamp(at), "operator": draft.operator, "action": draft.action,
                      "targets": targets, "before": before, "after": after,
                      "outcome": draft.outcome, "prev_hash": head.hash}
            key = fields["key"] = signer.key  # which key signs is part of what is hashed
            digest = chain.entry_hash(fields)
            signature = signer.sign(digest)
            row = orm.AuditEntryRow(seq=seq, at=at, operator=draft.operator, action=draft.action,
                                    targets=targets, before=before, after=after,
                                    outcome=draft.outcome, prev_hash=head.hash, hash=digest, key=key,
                                    signature=signature)
            session.add(row)
            head.seq, head.hash = seq, digest
            session.flush()
            return _entry(row)

    def entries(self, query: AuditFilter | None = None, *, limit: int | None = 200,
                newest_first: bool = True) -> builtins.list[AuditEntry]:
        """Entries matching `query`, newest first, at most `limit` (None: all)."""
        q = query or AuditFilter()
        stmt = select(orm.AuditEntryRow)
        if q.since is not None:
            stmt = stmt.where(orm.AuditEntryRow.at >= q.since)
        if q.operator:
            stmt = stmt.where(orm.AuditEntryRow.operator == q.operator)
        if q.action:
            if q.action.endswith("."):
                stmt = stmt.where(orm.AuditEntryRow.action.startswith(q.action, autoescape=True))
            else:
                stmt = stmt.where(orm.AuditEntryRow.action == q.action)
        if q.target:
            # Targets are stored as a JSON list of strings: match the quoted item, then check it exactly.
            stmt = stmt.where(orm.AuditEntryRow.targets.contains(json.dumps(q.target), autoescape=True))
        order = orm.AuditEntryRow.seq.desc() if newest_first else orm.AuditEntryRow.seq
        stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(max(0, limit))
        with self._session() as session:
            found = [_entry(row) for row in session.scalars(stmt)]
        return [e for e in found if not q.target or q.target in e.targets]

    def entry(self, seq: int) -> AuditEntry:
        with self._session() as session:
            row = session.get(orm.AuditEntryRow, int(seq))
            if row is None:
                raise FleetDeskError(f"the audit trail has no entry {seq}",
                                     fix="`fleetdesk audit list` shows the entries and their numbers")
            return _entry(row)

    def entries_at(self, seqs: Sequence[int]) -> dict[int, AuditEntry]:
        """The entries with these numbers that exist (a missing one is simply absent)."""
        with self._session() as session:
            rows = session.scalars(select(orm.AuditEntryRow).where(orm.AuditEntryRow.seq.in_(list(seqs))))
            return {row.seq: _entry(row) for row in rows}

    def walk(self, batch: int = 5000) -> Iterator[builtins.list[AuditEntry]]:
        """Every entry in sequence order, `batch` at a time (each batch its own read transaction)."""
        table = orm.AuditEntryRow.__table__
        columns = [table.c[name] for name in _COLUMNS]
        after = 0
        while True:
            with self._session() as session:
                # Plain rows, not ORM objects: a long chain is read several times faster.
                rows = session.execute(select(*columns).where(table.c.seq > after)
                                       .order_by(table.c.seq).limit(batch)).all()
                found = [AuditEntry(*row) for row in rows]
            if not found:
                return
            yield found
            after = found[-1].seq

    def head(self) -> tuple[int, str]:
        """The head row's (seq, hash): where the next entry chains on (not evidence: verification ignores it)."""
        with self._session() as session:
            head = session.get(orm.AuditHeadRow, HEAD_ID)
            if head is None:
                raise _no_chain()
            return head.seq, head.hash

    def count(self) -> int:
        with self._session() as session:
            return int(session.scalar(select(func.count()).select_from(orm.AuditEntryRow)) or 0)

    def keep_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        """Keep a checkpoint the fleet key signed (one per entry: a second of the same entry changes nothing)."""
        with self._session(write=True) as session:
            if session.get(orm.AuditCheckpointRow, checkpoint.seq) is None:
                session.add(orm.AuditCheckpointRow(seq=checkpoint.seq, hash=checkpoint.hash,
                                                   signature=checkpoint.signature, made_at=datetime.now(UTC)))

    def checkpoints(self) -> builtins.list[AuditCheckpoint]:
        """Every checkpoint kept in the inventory, lowest entry first."""
        with self._session() as session:
            rows = session.scalars(select(orm.AuditCheckpointRow).order_by(orm.AuditCheckpointRow.seq))
            return [AuditCheckpoint(r.seq, r.hash, r.signature) for r in rows]

    def legacy_rows(self) -> builtins.list[dict[str, Any]]:
        """The audit rows written before the chain, as the genesis entry's digest covers them."""
        with self._session() as session:
            return [legacy_fields(r.id, r.at, r.actor, r.action, r.rollout_id, r.device_ids, r.outcome, r.detail)
                    for r in session.scalars(select(orm.AuditLogRow).order_by(orm.AuditLogRow.id))]


class OperatorRepo:
    """Reads the operators table (changes go through add_operator/update_operator, inside an audit append)."""

    def __init__(self, inventory: Inventory) -> None:
        self._session = inventory._session

    def list(self, *, include_removed: bool = False) -> builtins.list[Operator]:
        stmt = select(orm.OperatorRow).order_by(orm.OperatorRow.name)
        if not include_removed:
            stmt = stmt.where(orm.OperatorRow.removed_at.is_(None))
        with self._session() as session:
            return [_operator(row) for row in session.scalars(stmt)]

    def get(self, name: str) -> Operator | None:
        with self._session() as session:
            row = session.scalars(select(orm.OperatorRow).where(orm.OperatorRow.name == name)).one_or_none()
            return _operator(row) if row is not None else None


# Operator changes run inside the transaction that appends their audit entry (AuditRepo.append's `change`):
# the operators table and the chain never disagree.

def add_operator(session: Session, name: str, roles: Sequence[str], groups: Sequence[str],
                 public_key: str) -> Operator:
    row = session.scalars(select(orm.OperatorRow).where(orm.OperatorRow.name == name)).one_or_none()
    if row is not None and row.removed_at is None:
        raise AccessError(f"there is already an operator {name}",
                          fix="choose another name, or change theirs with `fleetdesk operator set-role`")
    if row is None:
        row = orm.OperatorRow(name=name, created_at=datetime.now(UTC))
        session.add(row)
    row.roles, row.groups = _list(roles), _list(groups)
    row.public_key, row.removed_at = public_key, None
    session.flush()
    return _operator(row)


def update_operator(session: Session, name: str, *, roles: Sequence[str] | None = None,
                    groups: Sequence[str] | None = None, public_key: str | None = None,
                    removed: bool | None = None) -> Operator:
    row = session.scalars(select(orm.OperatorRow).where(orm.OperatorRow.name == name)).one_or_none()
    if row is None or (row.removed_at is not None and removed is not False):
        raise AccessError(f"there is no operator {name}", fix="`fleetdesk operator list` names them")
    if roles is not None:
        row.roles = _list(roles)
    if groups is not None:
        row.groups = _list(groups)
    if public_key is not None:
        row.public_key = public_key
    if removed is not None:
        row.removed_at = datetime.now(UTC) if removed else None
    session.flush()
    return _operator(row)


def _list(items: Sequence[str]) -> str:
    return chain.canonical_json(sorted(set(items)))


def _no_chain() -> InventoryError:
    return InventoryError("the inventory has no audit trail", fix="run FleetDesk once so it upgrades the inventory")


# audit_entries' columns in AuditEntry's field order
_COLUMNS = ("seq", "at", "operator", "action", "targets", "before", "after", "outcome", "prev_hash", "hash", "key",
            "signature")


def _entry(row: orm.AuditEntryRow) -> AuditEntry:
    return AuditEntry(*(getattr(row, name) for name in _COLUMNS))


def _operator(row: orm.OperatorRow) -> Operator:
    return Operator(name=row.name, roles=tuple(json.loads(row.roles)), groups=tuple(json.loads(row.groups)),
                    public_key=row.public_key, created_at=row.created_at, removed_at=row.removed_at)
