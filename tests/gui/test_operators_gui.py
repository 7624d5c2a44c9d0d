"""Who acts in the window: the status bar names the operator and their roles, "Switch operator…" changes who
acts, what their roles cannot do is disabled with the reason in its tooltip, and the Audit view lists the
trail with filters and verifies it off the loop. On a real SQLite inventory and the test run's real keyring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtWidgets import QInputDialog

from fleetdesk.access import Access
from fleetdesk.gui.audit_dialog import AuditDialog
from fleetdesk.inventory import open_inventory
from tests.gui_harness import GuiSession, gui_session


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    with open_inventory(url) as inventory:
        admin = Access(inventory, "alice")
        admin.record("device.add", targets=("device:1",), after={"name": "press-cam"})  # alice: the first admin
        admin.add_operator("vera", ["viewer"])
    return url


@pytest.fixture
def session(db_url: str, screens: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GuiSession]:
    monkeypatch.setenv("FLEETDESK_OPERATOR", "alice")
    with gui_session(db_url, screens) as s:
        yield s


def test_the_window_says_who_acts_and_switching_disables_what_the_role_cannot_do(session: GuiSession) -> None:
    window = session.window
    session.wait(lambda: window.operator_label.text() == "Operator: alice (admin)", "alice named")
    assert window.add_action.isEnabled() and window.import_action.isEnabled() and window.audit_action.isEnabled()

    session.call(window.open_switch_operator_dialog)
    session.wait(lambda: any(isinstance(d, QInputDialog) for d in window._dialogs), "the operator list")
    dialog = next(d for d in window._dialogs if isinstance(d, QInputDialog))
    assert dialog.comboBoxItems() == ["alice", "vera"]
    session.screenshot(dialog, "switch-operator")
    session.call(lambda: (dialog.setTextValue("vera"), dialog.accept()))
    session.wait(lambda: window.operator_label.text() == "Operator: vera (viewer)", "vera named")
    session.screenshot(window, "window-as-a-viewer")
    for action in (window.add_action, window.import_action, window.rollout_wizard_action, window.audit_action):
        assert not action.isEnabled(), action.text()
    assert not window.discovery_panel.browse_button.isEnabled() and not window.discovery_panel.add_button.isEnabled()
    assert "vera (viewer) may not import, remove and export models" in window.import_action.toolTip()
    assert "release-manager or admin" in window.import_action.toolTip()
    assert window.bridge.fleet.access.name == "vera"  # the core acts as vera now: it checks her roles again

    session.call(lambda: window.bridge.access.switch("alice"))
    session.wait(lambda: window.operator_label.text() == "Operator: alice (admin)", "alice again")
    assert window.import_action.isEnabled() and "Import an .onnx model" in window.import_action.toolTip()


def test_the_audit_view_filters_and_verifies_the_trail(session: GuiSession) -> None:
    window = session.window
    dialog = session.call(window.open_audit_dialog)
    assert isinstance(dialog, AuditDialog)
    session.wait(lambda: dialog.table.rowCount() == 4, "the trail's four entries")
    assert [dialog.table.item(r, 3).text() for r in range(4)] == [
        "operator.add", "device.add", "operator.add", "audit.genesis"]  # newest first

    session.call(lambda: (dialog.operator.setText("alice"), dialog.action.setText("operator."), dialog._refresh()))
    session.wait(lambda: dialog.table.rowCount() == 2, "alice's operator entries")
    assert {dialog.table.item(r, 5).text() for r in range(2)} == {"operator:alice", "operator:vera"}

    session.call(lambda: dialog.verify.click())
    session.wait(lambda: "verifies" in dialog.status.text() or "not verify" in dialog.status.text(), "verify")
    assert dialog.status.text().startswith("the audit trail verifies: ")
    session.screenshot(dialog, "audit-view")
