"""File ▸ Reports… (Ctrl+P): the window previews a report's first page and writes it signed, off the loop (the
harness fails any stall), with the export in the audit trail; a role that may not read a report is told why.
On the report tests' small fleet (tests/report_fleet.py: hostile device names, a rollout, a day of telemetry)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.access import Access
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.gui.reports_dialog import ReportsDialog
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.reports.signature import verify_report
from tests.conftest import skip_or_fail
from tests.gui_harness import GuiSession, gui_session
from tests.report_fleet import HOSTILE, ReportFleet, build_report_fleet


@pytest.fixture
def built(tmp_path: Path) -> ReportFleet:
    built = build_report_fleet(f"sqlite:///{tmp_path / 'fleet.db'}")
    with open_inventory(built.url) as inventory:
        Access(inventory).add_operator("vera", ["viewer"])
    return built


@pytest.fixture
def session(built: ReportFleet, screens: Path) -> Iterator[GuiSession]:
    with gui_session(built.url, screens) as s:
        yield s


def _choose(combo: object, data: object) -> None:
    index = combo.findData(data)  # type: ignore[attr-defined]
    assert index >= 0, data
    combo.setCurrentIndex(index)  # type: ignore[attr-defined]


def test_the_window_previews_and_writes_a_signed_report(session: GuiSession, built: ReportFleet,
                                                         tmp_path: Path) -> None:
    window = session.window
    assert window.reports_action.shortcut().toString() == "Ctrl+P" and window.reports_action.isEnabled()
    dialog = session.call(window.open_reports_dialog)
    assert isinstance(dialog, ReportsDialog)
    target = tmp_path / "out" / "fleet.pdf"
    target.parent.mkdir()
    session.call(lambda: (_choose(dialog.kind, "fleet"), dialog.whole.setChecked(True),
                          _choose(dialog.format, "pdf a4"), dialog.path.setText(str(target))))

    session.call(lambda: dialog.preview_button.click())
    session.wait(lambda: dialog.status.text().startswith("preview of the first page"), "the preview")
    shown = dialog.preview.toPlainText()
    assert "Fleet status" in shown and all(name in shown for name in HOSTILE[:4]), shown[:2000]
    assert not target.exists()  # a preview writes nothing
    session.screenshot(dialog, "reports-preview")

    session.call(lambda: dialog.write_button.click())
    session.wait(lambda: dialog.status.text().startswith("wrote "), "the report written", timeout=60)
    assert dialog.open_button.isEnabled() and dialog.write_button.isEnabled()
    verified = verify_report(target, FleetSigningKey.default().public_pem())
    assert verified.kind == "fleet"
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        skip_or_fail("pdftotext is not installed (Debian package poppler-utils)")
    text = subprocess.run([str(pdftotext), "-raw", str(target), "-"], capture_output=True, check=True).stdout.decode()
    assert "".join(HOSTILE[2].split()) in "".join(text.split())
    entry = window.bridge.fleet.access.audit.entries(AuditFilter(action="report.export"))[0]
    assert (entry.outcome, entry.targets, entry.after["type"], entry.after["format"]) == (
        "ok", ("file:fleet.pdf",), "fleet", "pdf")

    # The same data and options give the same bytes, from the window as from the CLI.
    again = tmp_path / "out" / "again.pdf"
    session.call(lambda: dialog.path.setText(str(again)))
    session.call(lambda: dialog.write_button.click())
    session.wait(lambda: dialog.status.text().startswith(f"wrote {again}"), "written again", timeout=60)
    assert again.read_bytes() == target.read_bytes()


def test_a_viewer_is_told_why_the_audit_report_is_not_theirs(session: GuiSession, tmp_path: Path) -> None:
    window = session.window
    session.call(lambda: window.bridge.access.switch("vera"))
    session.wait(lambda: window.operator_label.text() == "Operator: vera (viewer)", "vera named")
    assert window.reports_action.isEnabled()  # a viewer reads reports
    dialog = session.call(window.open_reports_dialog)
    target = tmp_path / "audit.json"
    session.call(lambda: (_choose(dialog.kind, "audit"), _choose(dialog.format, "json a4"),
                          dialog.path.setText(str(target)), dialog.write_button.click()))
    session.wait(lambda: "may not" in dialog.status.text(), "the refusal")
    assert "operator vera (viewer) may not read and verify the audit trail" in dialog.status.text()
    assert dialog.write_button.isEnabled() and not target.exists()
    refused = window.bridge.fleet.access.audit.entries(AuditFilter(action="report.export"))[0]
    assert (refused.operator, refused.outcome) == ("vera", "refused")
    assert json.loads(refused.after_text)["permission"] == "audit"
