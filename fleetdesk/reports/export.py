"""One way to export a report, for the CLI and the window alike: the acting operator's permission is checked
(view; the audit report: audit), the report gathered, rendered, signed and written, and the export audited.

`cancelled` is asked between the steps (gather, then render and write): a cancelled export writes nothing and
appends no entry. `progress` hears each step in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetdesk.access import Access
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import ReportCancelledError, ReportError
from fleetdesk.reports.document import Report
from fleetdesk.reports.gather import PERMISSIONS, make_report
from fleetdesk.reports.output import WrittenReport, write_report
from fleetdesk.reports.selection import Filters

__all__ = ["ReportRequest", "export_report", "gather_report"]


@dataclass(frozen=True)
class ReportRequest:
    """Which report, over what, in which format and where: what `fleetdesk report` and File ▸ Reports… ask."""

    kind: str
    filters: Filters
    format: str
    path: Path
    paper: str = "a4"
    rollout_id: int | None = None


def gather_report(access: Access, request: ReportRequest, *, store: ArtifactStore | None = None) -> Report:
    """The report's data, for a preview or an export (the acting operator may read it, or AccessDeniedError)."""
    access.require(PERMISSIONS.get(request.kind, "view"), "report.export", targets=(f"report:{request.kind}",))
    return make_report(request.kind, access.inventory, request.filters, store=store, rollout_id=request.rollout_id)


def export_report(access: Access, request: ReportRequest, key: FleetSigningKey, *, store: ArtifactStore | None = None,
                  cancelled: Callable[[], bool] = lambda: False,
                  progress: Callable[[str], None] = lambda _: None) -> tuple[Report, WrittenReport]:
    """Gather, render, sign and write the report; one `report.export` audit entry says who wrote what."""
    path = Path(request.path)
    if not path.name or not path.parent.is_dir():
        raise ReportError(f"the folder {path.parent} does not exist", fix="create it, or choose another file name")
    progress(f"gathering the {request.kind} report")
    report = gather_report(access, request, store=store)
    if cancelled():
        raise ReportCancelledError("the report was cancelled before it was written; nothing was written")
    progress(f"rendering {request.format.upper()}, signing and writing {path.name}")
    written = write_report(report, request.format, path, key, paper=request.paper)
    access.record("report.export", targets=(f"file:{path.name}",),
                  after={"type": request.kind, "format": request.format, "paper": request.paper,
                         "since": report.since.isoformat(), "until": report.until.isoformat(),
                         "filters": report.filters, "signature": written.signature.name})
    return report, written
