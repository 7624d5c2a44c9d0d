"""Offline fleet reports in PDF, HTML, CSV and JSON, signed by the fleet key.

`export_report(access, ReportRequest(...), key)` is what the CLI and the window call: the permission checked, the
report gathered, written and signed, the export audited (export.py). `make_report(kind, …)` (gather.py) gathers one
report type from the inventory (fleet.py, rollout.py, health.py, models.py, audit.py) into a format-free `Report`
(document.py); `write_report` renders it (render_*.py), signs it (signature.py) and writes it atomically
(output.py); `verify_report` checks a written one with the public key. Rendering is CPU work: callers on an event
loop run it in a thread.
"""

from __future__ import annotations

from fleetdesk.reports.document import KINDS, Report
from fleetdesk.reports.export import ReportRequest, export_report, gather_report
from fleetdesk.reports.gather import PERMISSIONS, make_report
from fleetdesk.reports.output import FORMATS, WrittenReport, render, write_report
from fleetdesk.reports.render_pdf import PAPERS
from fleetdesk.reports.selection import Filters
from fleetdesk.reports.signature import VerifiedReport, signature_path, verify_report

__all__ = ["FORMATS", "KINDS", "PAPERS", "PERMISSIONS", "Filters", "Report", "ReportRequest", "VerifiedReport",
           "WrittenReport", "export_report", "gather_report", "make_report", "render", "signature_path",
           "verify_report", "write_report"]
