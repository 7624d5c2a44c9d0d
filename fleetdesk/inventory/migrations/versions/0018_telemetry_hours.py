"""The telemetry history packed by device and hour (fleetdesk.inventory.telemetry_hours): what the health report
reads instead of every minute of the period. The minutes already kept are packed here; from now on every write
and prune of the minutes keeps the hours in step, in the same transaction.

The packing is fleetdesk.inventory.telemetry_hours.repack, the writer's own code, so the two cannot disagree on
the layout; a later change of the layout comes with a migration that packs again.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleetdesk.inventory.telemetry_hours import epoch_seconds, hour_of, repack

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry_hours",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("minutes", sa.BigInteger(), nullable=False),
        sa.Column("metrics", sa.Integer(), nullable=False),
        sa.Column("averages", sa.LargeBinary(), nullable=False),
        sa.Column("maxima", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "hour", name="pk_telemetry_hours"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_telemetry_hours_device_id_devices"),
    )
    conn = op.get_bind()
    minutes = sa.table("telemetry_minutes", sa.column("device_id"), sa.column("minute"))
    dialect = conn.dialect.name
    first, last = conn.execute(sa.select(epoch_seconds(sa.func.min(minutes.c.minute), dialect),
                                         epoch_seconds(sa.func.max(minutes.c.minute), dialect))).one()
    if first is None:
        return
    devices = list(conn.scalars(sa.select(minutes.c.device_id).distinct()))
    repack(conn, devices, hour_of(first), hour_of(last))


def downgrade() -> None:
    op.drop_table("telemetry_hours")

