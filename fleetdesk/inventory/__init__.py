"""The inventory: SQLAlchemy models, Alembic migrations, and a repository that returns dataclasses."""

from fleetdesk.inventory.records import Device, Group, HostKey, ProbeFacts, ServiceRecord, Sighting
from fleetdesk.inventory.repository import Inventory, open_inventory

__all__ = ["Device", "Group", "HostKey", "Inventory", "ProbeFacts", "ServiceRecord", "Sighting", "open_inventory"]
