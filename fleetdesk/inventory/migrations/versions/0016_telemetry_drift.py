"""Input drift in the telemetry history: the average and maximum per minute of the worst input's population
stability index and of its mean's shift in reference standard deviations (fleetdesk.telemetry.sample), for the
health report. NULL where the device's model server did not score drift (no reference, or no requests).

Plain ADD / DROP COLUMN on both dialects: a batch operation would rebuild the SQLite table and lose the WITHOUT
ROWID layout of migration 0015 (SQLite drops columns itself since 3.35).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = tuple(f"{metric}_{kind}" for metric in ("drift_psi", "drift_shift_sd") for kind in ("avg", "max"))


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("telemetry_minutes", sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    for name in COLUMNS:
        op.execute(f"ALTER TABLE telemetry_minutes DROP COLUMN {name}")
