"""What a report covers: the devices the filters (--group, --device) choose, the period (--since/--until, else the
data's own time range), and what each device runs now (from the rollouts that finished on it).

The period's end defaults to the newest moment in the data, not the clock: the same inventory and options give
the same report, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleetdesk.artifacts.records import Artifact
from fleetdesk.errors import ReportError
from fleetdesk.inventory import Device, Inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.rollouts import RolloutRepo, RolloutRow

DEFAULT_DAYS = 7
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the period of a report over no data at all


@dataclass(frozen=True)
class Filters:
    group: str | None = None
    device: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: (v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v)
                for k, v in (("group", self.group), ("device", self.device), ("since", self.since),
                             ("until", self.until)) if v is not None}


@dataclass(frozen=True)
class ActiveModel:
    """The model a device runs, as the last rollout that finished on it left it."""

    artifact: str
    name: str  # "" when this laptop's store does not know the artifact
    version: str
    since: datetime


def chosen_devices(inventory: Inventory, filters: Filters) -> list[Device]:
    """The devices the filters name, by name; an unknown group or device is an error that names it."""
    if filters.device is not None:
        device = inventory.device(filters.device)
        if filters.group is not None and filters.group not in device.groups:
            return []
        return [device]
    return inventory.devices(group=filters.group)


def scope_text(filters: Filters) -> str:
    parts = []
    if filters.group is not None:
        parts.append(f"group {filters.group}")
    if filters.device is not None:
        parts.append(f"device {filters.device}")
    return ", ".join(parts) or "the whole fleet"


def period(filters: Filters, moments: Iterable[datetime | None], *, days: int = DEFAULT_DAYS,
           ) -> tuple[datetime, datetime]:
    """(since, until), until exclusive: as given; else until = just after the newest of `moments` (to the second,
    so that moment is in), and since = `days` before until."""
    known = [m for m in moments if m is not None]
    newest = (max(known) + timedelta(seconds=1)).replace(microsecond=0) if known else None
    until = filters.until
    if until is None:
        if newest is not None and (filters.since is None or newest > filters.since):
            until = newest
        else:
            until = (filters.since or EPOCH) + timedelta(days=days)
    since = filters.since or until - timedelta(days=days)
    if since >= until:
        raise ReportError(f"the period from {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC is empty",
                          fix="give --since earlier than --until (or leave one out)")
    return since, until


def active_models(rollouts: RolloutRepo, artifacts: Sequence[Artifact],
                  rows: Sequence[RolloutRow] | None = None) -> dict[int, ActiveModel]:
    """Device id -> the model it runs: the artifact of its latest finished rollout (its previous artifact when
    that rollout rolled it back)."""
    known = {a.id: a for a in artifacts}
    found: dict[int, ActiveModel] = {}
    for rollout in rows if rows is not None else rollouts.list():
        for row in rollouts.devices(rollout.id):
            if row.state == st.DONE:
                artifact: str | None = row.artifact
            elif row.state == st.ROLLED_BACK:
                artifact = row.previous_artifact
            else:
                continue
            if artifact is None:
                continue
            seen = found.get(row.device_id)
            if seen is not None and seen.since > row.updated_at:
                continue
            stored = known.get(artifact)
            found[row.device_id] = ActiveModel(artifact, stored.name if stored else "",
                                               stored.version if stored else "", row.updated_at)
    return found
