"""Operators, the roles the core operations check, and the signed, hash-chained audit trail."""

from fleetdesk.access.guard import Access, FleetKey, operator_name
from fleetdesk.access.verify import Verification, against_checkpoints, fleet_key_b64, verify_trail

__all__ = ["Access", "FleetKey", "Verification", "against_checkpoints", "fleet_key_b64", "operator_name",
           "verify_trail"]
