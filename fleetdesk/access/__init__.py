"""Operators, the roles the core operations check, and the signed, hash-chained audit trail."""

from fleetdesk.access.guard import Access, operator_name
from fleetdesk.access.verify import Verification, verify_trail

__all__ = ["Access", "Verification", "operator_name", "verify_trail"]
