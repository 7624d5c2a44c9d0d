"""Operators and the hash-chained audit trail; the chain's genesis entry commits to the audit rows before it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from fleetdesk import chain
from fleetdesk.inventory.models import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

GENESIS_ACTION = "audit.genesis"  # fleetdesk.inventory.audit.GENESIS_ACTION, fixed here as this migration wrote it


def _stamp(moment: datetime) -> str:
    # fleetdesk.inventory.audit.stamp, fixed here: the genesis hash must not change if that module does.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operators"),
        sa.UniqueConstraint("name", name="uq_operators_name"),
    )
    entries = op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False,
                  nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("targets", sa.Text(), nullable=False),
        sa.Column("before", sa.Text(), nullable=False),
        sa.Column("after", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_at", "audit_entries", ["at"])
    op.create_index("ix_audit_entries_operator", "audit_entries", ["operator"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )

    # The genesis entry: unsigned (no operator key exists yet), but every later entry's hash covers its hash.
    legacy = sa.table("audit_log", sa.column("id", sa.Integer()), sa.column("at", UTCDateTime()),
                      sa.column("actor", sa.Text()), sa.column("action", sa.Text()),
                      sa.column("rollout_id", sa.Integer()), sa.column("device_ids", sa.Text()),
                      sa.column("outcome", sa.Text()), sa.column("detail", sa.Text()))
    rows = op.get_bind().execute(sa.select(legacy).order_by(legacy.c.id)).all()
    digest = chain.legacy_digest(
        {"id": r.id, "at": _stamp(r.at), "actor": r.actor, "action": r.action, "rollout_id": r.rollout_id,
         "device_ids": r.device_ids, "outcome": r.outcome, "detail": r.detail} for r in rows)
    at = datetime.now(UTC)
    after = chain.canonical_json({"carried": len(rows), "digest": digest})
    fields = {"seq": 1, "at": _stamp(at), "operator": "", "action": GENESIS_ACTION, "targets": "[]",
              "before": "null", "after": after, "outcome": "ok", "prev_hash": chain.GENESIS_PREV, "key": ""}
    genesis_hash = chain.entry_hash(fields)
    bind = op.get_bind()
    at_value = at if bind.dialect.name != "sqlite" else at.replace(tzinfo=None)
    op.bulk_insert(entries, [{"seq": 1, "at": at_value, "operator": "", "action": GENESIS_ACTION, "targets": "[]",
                              "before": "null", "after": after, "outcome": "ok", "prev_hash": chain.GENESIS_PREV,
                              "hash": genesis_hash, "key": "", "signature": ""}])
    op.bulk_insert(head, [{"id": 1, "seq": 1, "hash": genesis_hash}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_index("ix_audit_entries_operator", table_name="audit_entries")
    op.drop_index("ix_audit_entries_at", table_name="audit_entries")
    op.drop_table("audit_entries")
    op.drop_table("operators")
