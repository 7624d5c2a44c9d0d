"""On SQLite, the telemetry history is kept in the order of its primary key (device, minute): a WITHOUT ROWID
table, its rows copied in that order.

The live writer adds every device's minute together, so in a table ordered by rowid a device's week lies one row
per page across the whole file, and reading it reads a page per minute. Clustered, a device's minutes share pages,
and the separate primary-key index is gone. Measured (benchmarks/history_layout.py on the 2-core development
machine, 200 devices with 7 days written minute by minute, reading each device's history as the health report
does): 19.8 s in the rowid table, 5.6 s clustered; the migration of that history took 22 s. The file keeps the
old table's pages as free pages (SQLite reuses them) until a VACUUM.

PostgreSQL keeps its heap table: nothing changes there.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None

METRICS = ("cpu_pct", "mem_pct", "temp_c", "gpu_pct", "gpu_temp_c", "latency_p95_ms", "infer_rate", "infer_errors")
COLUMNS = ("device_id", "minute", "samples", *(f"{m}_{kind}" for m in METRICS for kind in ("avg", "max")), "writer")


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)


def _rebuild(*, with_rowid: bool) -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.create_table(
        "_telemetry_minutes_new",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        *(sa.Column(f"{metric}_{kind}", sa.Double(), nullable=True) for metric in METRICS for kind in ("avg", "max")),
        sa.Column("writer", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", "minute", name="pk_telemetry_minutes"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_telemetry_minutes_device_id_devices"),
        sqlite_with_rowid=with_rowid,
    )
    # In key order: each device's minutes are appended one after the other, so pages are filled, not split.
    source = sa.table("telemetry_minutes", *(sa.column(c) for c in COLUMNS))
    target = sa.table("_telemetry_minutes_new", *(sa.column(c) for c in COLUMNS))
    op.execute(target.insert().from_select(COLUMNS, sa.select(*source.c).order_by(source.c.device_id,
                                                                                   source.c.minute)))
    op.drop_index("ix_telemetry_minutes_minute", table_name="telemetry_minutes")
    op.drop_table("telemetry_minutes")
    op.rename_table("_telemetry_minutes_new", "telemetry_minutes")
    op.create_index("ix_telemetry_minutes_minute", "telemetry_minutes", ["minute"])
