"""The runtime provisioned on each device: runtime bundle, agent version, what its selftest proved.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "device_runtimes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("runtime_id", sa.String(64), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("device_root", sa.Text(), nullable=False),
        sa.Column("onnxruntime", sa.Text(), nullable=False),
        sa.Column("providers", sa.Text(), nullable=False),
        sa.Column("python", sa.Text(), nullable=False),
        sa.Column("provisioned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_runtimes"),
        sa.UniqueConstraint("device_id", name="uq_device_runtimes_device_id"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_device_runtimes_device_id_devices"),
    )
    op.create_index("ix_device_runtimes_runtime_id", "device_runtimes", ["runtime_id"])


def downgrade() -> None:
    op.drop_index("ix_device_runtimes_runtime_id", table_name="device_runtimes")
    op.drop_table("device_runtimes")
