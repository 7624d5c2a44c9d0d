"""Long audit trails made quickly, for the benchmark and the tests that need one: entries signed by a real operator
key and chained exactly as AuditRepo.append seals them, but written in bulk (5,000 rows per INSERT)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from fleetdesk import chain
from fleetdesk.access.keys import OperatorKey
from fleetdesk.inventory import models as orm
from fleetdesk.inventory.audit import AuditRepo, stamp
from fleetdesk.inventory.database import for_writing

__all__ = ["append_bulk"]


def append_bulk(inventory: Any, key: OperatorKey, entries: int) -> None:
    """`entries` signed entries by `key`'s operator, chained after the inventory's head, written in bulk."""
    seq, prev = AuditRepo(inventory).head()
    start = datetime.now(UTC)
    rows = []
    for n in range(entries):
        seq += 1
        at = start + timedelta(microseconds=n)
        after = chain.canonical_json({"status": "paused", "reason": f"bench {n}"})
        fields = {"seq": seq, "at": stamp(at), "operator": key.name, "action": "rollout.pause",
                  "targets": chain.canonical_json([f"rollout:{n % 97}", "device:1"]),
                  "before": '{"status":"running"}', "after": after,
                  "outcome": "ok", "prev_hash": prev, "key": key.key}
        digest = chain.entry_hash(fields)
        rows.append({"seq": seq, "at": at, "operator": key.name, "action": "rollout.pause",
                     "targets": fields["targets"], "before": fields["before"], "after": after,
                     "outcome": "ok", "prev_hash": prev, "hash": digest, "key": key.key,
                     "signature": key.sign(digest)})
        prev = digest
    with for_writing(inventory.engine).begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(insert(orm.AuditEntryRow.__table__), rows[i:i + 5000])
        conn.execute(orm.AuditHeadRow.__table__.update().values(seq=seq, hash=prev))
