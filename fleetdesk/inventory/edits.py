"""Edits that count: a device, a group or a rollout keeps a version of operators' edits, who made the last and when
(migrations 0009, 0014). An edit made from an older version than the stored one is refused, naming who changed it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from fleetdesk.errors import EditConflictError
from fleetdesk.inventory.records import Edit


class Edited(Protocol):
    """A row that counts operators' edits: a device, a group, a rollout (migrations 0009 and 0014)."""

    version: int
    changed_by: str | None
    changed_at: datetime | None


def count_edit(row: Edited, edit: Edit | None, *, what: str, fix: str, step: str, device: str | None = None,
               now: str = "") -> None:
    """Check `edit` against the row's stored version and count it (inside the write transaction, which holds the
    write lock, so two laptops' edits are checked one after the other). An edit whose seen version is None (a new
    record, a command acting on what it reads this moment) is counted, not checked. See `check_edit`."""
    if edit is None:
        return
    check_edit(row, edit, what=what, fix=fix, step=step, device=device, now=now)
    row.version += 1
    row.changed_by = edit.by
    row.changed_at = _now()


def check_edit(row: Edited, edit: Edit, *, what: str, fix: str, step: str, device: str | None = None,
               now: str = "") -> None:
    """EditConflictError, naming who changed the row and when, if `edit` was made from another version than the
    stored one. `what` names the record in the message ("'press-cam'", "the group 'line A'"); `now` says what it
    is now, when that helps ("paused")."""
    if edit.seen_version is None or row.version == edit.seen_version:
        return
    who = row.changed_by or "another FleetDesk"
    when = row.changed_at.strftime("%Y-%m-%d %H:%M:%S UTC") if row.changed_at else "a moment ago"
    state = f": now {now}" if now else ""
    raise EditConflictError(
        f"{what} was changed by {who} at {when} after you read it (version {row.version}{state}; you saw "
        f"{edit.seen_version}); your change was not made", fix=fix, device=device, step=step,
        changed_by=row.changed_by, version=row.version, seen_version=edit.seen_version)


def _now() -> datetime:
    return datetime.now(UTC)
