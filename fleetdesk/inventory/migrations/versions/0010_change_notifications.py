"""On PostgreSQL, every committed change to what the window shows is announced to every other FleetDesk on the same
inventory (LISTEN/NOTIFY on the channel `fleetdesk_changes`; fleetdesk.inventory.changes listens). Triggers, so
nothing that writes these tables (any repository, any statement, another tool) can forget to announce. SQLite (one
laptop) gets nothing: it has no other laptop to tell.

Each notification is a small JSON object: the table, the operation, and the ids it touches (the row's own id, and
its device, rollout and group when it has them). PostgreSQL delivers notifications at commit, and only once per
identical payload in a transaction (PostgreSQL docs, NOTIFY), so a discovery that rewrites a device's addresses
announces that device once.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

CHANNEL = "fleetdesk_changes"
# What the window shows of the inventory; not the per-minute telemetry, journal and audit rows, which are many and
# read by their own views.
TABLES = ("devices", "device_addresses", "device_names", "device_services", "host_keys", "groups", "group_members",
          "device_runtimes", "rollouts", "rollout_devices", "operators")

FUNCTION = f"""
CREATE OR REPLACE FUNCTION fleetdesk_notify_change() RETURNS trigger AS $$
DECLARE
  r jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN r := to_jsonb(OLD); ELSE r := to_jsonb(NEW); END IF;
  PERFORM pg_notify('{CHANNEL}', json_build_object(
    'table', TG_TABLE_NAME, 'op', TG_OP, 'id', r->>'id', 'device', r->>'device_id',
    'rollout', r->>'rollout_id', 'group', r->>'group_id')::text);
  RETURN NULL;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for table in TABLES:
        op.execute(f"CREATE TRIGGER fleetdesk_notify_change AFTER INSERT OR UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION fleetdesk_notify_change()")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS fleetdesk_notify_change ON {table}")
    op.execute("DROP FUNCTION IF EXISTS fleetdesk_notify_change()")
