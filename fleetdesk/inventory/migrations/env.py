"""Alembic's environment for the inventory: runs on the connection fleetdesk.inventory.migrate hands over.

That connection is already inside FleetDesk's write transaction, so a migration commits whole or not at all.
"""

from __future__ import annotations

from alembic import context

from fleetdesk.inventory.models import Base

config = context.config

if context.is_offline_mode():
    # `alembic upgrade --sql`: print the SQL for a database administrator to review.
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes["connection"]
    # render_as_batch: SQLite can only ALTER by copying a table; autogenerate then writes batch operations.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
