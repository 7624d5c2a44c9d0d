"""Telemetry history (one row per device per minute, avg and max of the metrics reports use) and the event log.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# The same list as models.HISTORY_METRICS, written out: a migration never changes with the code after it.
_METRICS = ("cpu_pct", "mem_pct", "temp_c", "gpu_pct", "gpu_temp_c", "latency_p95_ms", "infer_rate", "infer_errors")


def upgrade() -> None:
    op.create_table(
        "telemetry_minutes",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        *(sa.Column(f"{metric}_{kind}", sa.Double(), nullable=True) for metric in _METRICS for kind in ("avg", "max")),
        sa.PrimaryKeyConstraint("device_id", "minute", name="pk_telemetry_minutes"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_telemetry_minutes_device_id_devices"),
    )
    op.create_index("ix_telemetry_minutes_minute", "telemetry_minutes", ["minute"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=True),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("bound", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE", name="fk_events_device_id_devices"),
    )
    op.create_index("ix_events_device_id_at", "events", ["device_id", "at"])
    op.create_index("ix_events_at", "events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_events_at", table_name="events")
    op.drop_index("ix_events_device_id_at", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_telemetry_minutes_minute", table_name="telemetry_minutes")
    op.drop_table("telemetry_minutes")
