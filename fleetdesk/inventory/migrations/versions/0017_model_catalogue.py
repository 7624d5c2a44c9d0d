"""The fleet's model catalogue: each model version `model import` stored, on any laptop of the inventory (name,
version, the artifact ids per profile, sizes, the model record, who imported it and when). The artifact ids are
SHA-256 of the signed manifests, so a laptop that fetches the files from the shared store checks them against
what this table says. On PostgreSQL the table is announced like the others (migration 0010's trigger function).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("baseline", sa.String(64), nullable=False),
        sa.Column("artifacts", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("imported_by", sa.String(64), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    if op.get_context().dialect.name == "postgresql":
        # The function of migration 0010: the row's id, no device, rollout or group.
        op.execute("CREATE TRIGGER fleetdesk_notify_change AFTER INSERT OR UPDATE OR DELETE ON models "
                   "FOR EACH ROW EXECUTE FUNCTION fleetdesk_notify_change()")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS fleetdesk_notify_change ON models")
    op.drop_table("models")
