"""A cleared alert gets its own event kind, "alert.cleared": earlier releases logged it as "alert", told apart from a
raised one only by its message (fleetdesk.telemetry.alerts.AlertEvent.message: "... back to V (... cleared)").

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("UPDATE events SET kind = 'alert.cleared' "
               "WHERE kind = 'alert' AND message LIKE '% back to % cleared)'")


def downgrade() -> None:
    op.execute("UPDATE events SET kind = 'alert' WHERE kind = 'alert.cleared'")
