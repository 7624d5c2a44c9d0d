"""The inventory's Alembic migrations, run programmatically by fleetdesk.inventory.migrate.

A package (not an alembic.ini folder) so that it ships inside the wheel and the frozen bundle.
"""
