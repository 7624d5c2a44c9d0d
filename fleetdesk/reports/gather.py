"""Gathering one report type from the inventory (and the artifact store, for model names) into a `Report`."""

from __future__ import annotations

from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import ReportError
from fleetdesk.inventory import Inventory
from fleetdesk.reports.audit import audit_report
from fleetdesk.reports.document import KINDS, Report
from fleetdesk.reports.fleet import fleet_report
from fleetdesk.reports.health import health_report
from fleetdesk.reports.models import models_report
from fleetdesk.reports.rollout import rollout_report
from fleetdesk.reports.selection import Filters

__all__ = ["PERMISSIONS", "make_report"]

# What reading each report type needs (fleetdesk.access.roles permissions).
PERMISSIONS = {"fleet": "view", "rollout": "view", "health": "view", "models": "view", "audit": "audit"}


def make_report(kind: str, inventory: Inventory, filters: Filters, *, store: ArtifactStore | None = None,
                rollout_id: int | None = None) -> Report:
    """Gather report `kind` (one of KINDS) from the inventory (and the artifact store, for model names)."""
    if kind == "rollout":
        if rollout_id is None:
            raise ReportError("a rollout report needs the rollout's id", fix="`fleetdesk report rollout ID`")
        return rollout_report(inventory, rollout_id, filters)
    if kind == "health":
        return health_report(inventory, filters)
    if kind == "audit":
        return audit_report(inventory, filters)
    store = store or ArtifactStore.default()
    if kind == "fleet":
        return fleet_report(inventory, store.artifacts(), filters)
    if kind == "models":
        return models_report(inventory, store.models(), store.artifacts(), filters)
    raise ReportError(f"there is no report {kind!r}", fix=f"choose one of {', '.join(KINDS)}")
