"""Devices, their addresses, mDNS names and services, and pinned host keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("password_account", sa.Text(), nullable=True),
        sa.Column("profile", sa.Text(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("probed_at", UTC_TIME, nullable=True),
        sa.Column("machine_id", sa.Text(), nullable=False),
        sa.Column("arch", sa.Text(), nullable=False),
        sa.Column("os_name", sa.Text(), nullable=False),
        sa.Column("kernel", sa.Text(), nullable=False),
        sa.Column("python", sa.Text(), nullable=False),
        sa.Column("cpu_model", sa.Text(), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("disk_total_mb", sa.Integer(), nullable=False),
        sa.Column("disk_free_mb", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("tegra_release", sa.Text(), nullable=False),
        sa.Column("dmi_vendor", sa.Text(), nullable=False),
        sa.Column("dmi_product", sa.Text(), nullable=False),
        sa.Column("gpu", sa.Text(), nullable=False),
        sa.Column("gpu_memory_mb", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
    )
    op.create_index("ix_devices_machine_id", "devices", ["machine_id"])

    op.create_table(
        "device_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_addresses"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_device_addresses_device_id_devices"),
        sa.UniqueConstraint("device_id", "address", name="uq_device_addresses_device_id_address"),
    )
    op.create_index("ix_device_addresses_address", "device_addresses", ["address"])

    op.create_table(
        "device_names",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("match_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_names"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_device_names_device_id_devices"),
        sa.UniqueConstraint("device_id", "kind", "name", name="uq_device_names_device_id_kind_name"),
    )
    op.create_index("ix_device_names_match_key", "device_names", ["match_key"])

    op.create_table(
        "device_services",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("service_type", sa.Text(), nullable=False),
        sa.Column("instance_name", sa.Text(), nullable=False),
        sa.Column("host_name", sa.Text(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("txt", sa.LargeBinary(), nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_services"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_device_services_device_id_devices"),
        sa.UniqueConstraint("device_id", "service_type", "instance_name",
                            name="uq_device_services_device_id_service_type_instance_name"),
    )

    op.create_table(
        "host_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key_type", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("pinned_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_host_keys"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE",
                                name="fk_host_keys_device_id_devices"),
        sa.UniqueConstraint("device_id", "fingerprint", name="uq_host_keys_device_id_fingerprint"),
    )


def downgrade() -> None:
    op.drop_table("host_keys")
    op.drop_table("device_services")
    op.drop_index("ix_device_names_match_key", table_name="device_names")
    op.drop_table("device_names")
    op.drop_index("ix_device_addresses_address", table_name="device_addresses")
    op.drop_table("device_addresses")
    op.drop_index("ix_devices_machine_id", table_name="devices")
    op.drop_table("devices")
