"""The bridge's part for File ▸ Reports…: a report gathered for the preview, and a report written, each an Activity.

Gathering reads weeks of telemetry and rendering a PDF is CPU work, so both run on a thread of their own (not the
inventory's: the window's other reads do not queue behind a report). Cancel stops the export before it writes:
the thread is told, and a cancelled export writes nothing and appends no audit entry.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable

from PySide6.QtCore import QObject

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.config import Settings
from fleetdesk.reports.document import Report
from fleetdesk.reports.export import ReportRequest, export_report, gather_report
from fleetdesk.reports.output import WrittenReport

from .activities import Activity
from .bridge_context import BridgeContext
from .bridge_models import ModelsPart


class ReportsPart(QObject):
    def __init__(self, context: BridgeContext, models: ModelsPart) -> None:
        super().__init__()
        self._context = context
        self._models = models
        self.fleet = context.fleet
        self.activities = context.activities

    def preview(self, request: ReportRequest, then: Callable[[Report], object]) -> Activity:
        async def job(activity: Activity) -> str:
            activity.report(None, f"gathering the {request.kind} report")
            report = await asyncio.to_thread(functools.partial(
                gather_report, self.fleet.access, request, store=self._models.artifact_store()))
            then(report)
            return report.title

        return self.activities.start(f"Preview the {request.kind} report", job, summarize=lambda title: title)

    def write(self, request: ReportRequest, then: Callable[[Report, WrittenReport], object]) -> Activity:
        """Write the report (Cancel in the Activity view or the dialog stops it before anything is written)."""
        async def job(activity: Activity) -> str:
            stop = threading.Event()
            loop = asyncio.get_running_loop()

            def said(text: str) -> None:  # from the report's thread: the activity is changed on the loop
                loop.call_soon_threadsafe(activity.report, None, text)

            export = functools.partial(export_report, self.fleet.access, request,
                                       FleetSigningKey.default(Settings.load()), store=self._models.artifact_store(),
                                       cancelled=stop.is_set, progress=said)
            try:
                report, written = await asyncio.to_thread(export)
            except asyncio.CancelledError:
                stop.set()
                raise
            then(report, written)
            return f"wrote {written.path.name} ({written.bytes:,} bytes), signed"

        return self.activities.start(f"Write the {request.kind} report", job, summarize=lambda text: text)
