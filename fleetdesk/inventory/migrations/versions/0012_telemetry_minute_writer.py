"""Which FleetDesk wrote each minute of telemetry history: on a shared inventory several laptops may stream the same
device, and the minute is kept once, as the first to write it saw it (a later write of the same minute by the
same FleetDesk still merges, as before: a stream stopped and started within the minute).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry_minutes") as batch:
        batch.add_column(sa.Column("writer", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry_minutes") as batch:
        batch.drop_column("writer")
