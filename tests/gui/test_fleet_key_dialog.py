"""The question the window asks when provisioning met devices that trust another fleet key.

It shows the key each device trusts and this laptop's, exactly; only a click on the replace button emits the
devices to provision again with this laptop's key; Keep, Escape and Enter change nothing. In the window, the
bridge's refusal opens the dialog and the operator's yes provisions exactly those devices again with
replace_fleet_key (the real path against a device is tests/lab/test_fleet_key_lab.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QLabel
from pytestqt.qtbot import QtBot

from fleetdesk.artifacts.signing import KEYRING_ACCOUNT
from fleetdesk.gui.bridge_views import FleetKeyRequest
from fleetdesk.gui.fleet_key_dialog import FleetKeyDialog
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from fleetdesk.transport import credentials
from tests.gui.test_dialogs import HOSTILE, collect, shown
from tests.gui_harness import GuiSession, gui_session
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]

LAPTOP = "SHA256:" + "1" * 64
OLD = "SHA256:" + "a" * 64
OTHER = "SHA256:" + "b" * 64


def test_the_dialog_shows_both_fingerprints_exactly_and_keep_changes_nothing(qtbot: QtBot, screens: Path) -> None:
    dialog = shown(qtbot, FleetKeyDialog(FleetKeyRequest(LAPTOP, ((7, "gpc-01", OLD),))))
    assert dialog.windowTitle() == "gpc-01 trusts another fleet key"
    assert [label.text() for label in dialog.device_key_labels] == [OLD]
    assert dialog.laptop_key_label.text() == LAPTOP
    assert dialog.keep_button.isDefault() and not dialog.replace_button.autoDefault()
    assert dialog.grab().save(str(screens / "fleet-key-dialog.png"))
    replaced = collect(dialog.replace_confirmed)
    qtbot.mouseClick(dialog.keep_button, Qt.MouseButton.LeftButton)
    assert replaced == [] and dialog.result() == QDialog.DialogCode.Rejected


def test_enter_and_escape_never_replace(qtbot: QtBot) -> None:
    for key in (Qt.Key.Key_Return, Qt.Key.Key_Escape):
        dialog = shown(qtbot, FleetKeyDialog(FleetKeyRequest(LAPTOP, ((7, "gpc-01", OLD),))))
        replaced = collect(dialog.replace_confirmed)
        qtbot.keyClick(dialog, key)
        assert replaced == [] and dialog.result() == QDialog.DialogCode.Rejected


def test_replace_emits_every_refused_device_once(qtbot: QtBot) -> None:
    request = FleetKeyRequest(LAPTOP, ((7, "gpc-01", OLD), (9, HOSTILE, OTHER)))
    dialog = shown(qtbot, FleetKeyDialog(request))
    assert dialog.windowTitle() == "2 devices trust another fleet key"
    assert [label.text() for label in dialog.device_key_labels] == [OLD, OTHER]
    names = [label.text() for label in dialog.findChildren(QLabel, "DeviceName")]
    assert names[0] == "gpc-01" and "<b>" in names[1] and "\x1b" not in names[1]  # spelled out, as plain text
    assert all(label.textFormat() == Qt.TextFormat.PlainText for label in dialog.findChildren(QLabel))
    replaced = collect(dialog.replace_confirmed)
    qtbot.mouseClick(dialog.replace_button, Qt.MouseButton.LeftButton)
    assert replaced == [([7, 9],)] and dialog.result() == QDialog.DialogCode.Accepted


@pytest.fixture
def session(tmp_path: Path, screens: Path, monkeypatch: pytest.MonkeyPatch,
            keyring_daemon: KeyringDaemon) -> Iterator[GuiSession]:
    # Provisioning opens the fleet's signing key first: this test's data folder and a private gnome-keyring.
    monkeypatch.setenv("FLEETDESK_DATA_DIR", str(tmp_path / "data"))
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_inventory(url) as inventory:
        inventory.record_sightings([Sighting("mdns", ("198.18.1.21",), host_name="cam-21.local.",
                                             instance_name="cam-21", service_type="_ssh._tcp.local.")])
    try:
        with gui_session(url, screens) as s:
            yield s
    finally:
        credentials.delete_secret(KEYRING_ACCOUNT)


def test_the_window_asks_and_only_yes_provisions_those_devices_again_with_replace(session: GuiSession,
                                                                                   qtbot: QtBot) -> None:
    window, bridge = session.window, session.bridge
    cam = next(v for v in window.fleet_model.views() if v.device.name == "cam-21")
    asked: list[tuple[list[int], bool]] = []
    real_provision = bridge.devices.provision

    def provision(ids: list[int], *, replace_fleet_key: bool = False) -> object:
        asked.append((list(ids), replace_fleet_key))
        return real_provision(ids, replace_fleet_key=replace_fleet_key)

    bridge.devices.provision = provision  # records the call and runs it as it is
    request = FleetKeyRequest(LAPTOP, ((cam.id, "cam-21", OLD),))

    session.call(lambda: bridge.devices.fleet_key_differs.emit(request))
    dialog = next(d for d in window._dialogs if isinstance(d, FleetKeyDialog))
    assert dialog.isVisible() and dialog.device_key_labels[0].text() == OLD
    session.call(lambda: qtbot.mouseClick(dialog.keep_button, Qt.MouseButton.LeftButton))
    session.wait(lambda: not any(isinstance(d, FleetKeyDialog) for d in window._dialogs), "the dialog to close")
    assert asked == []  # No: nothing is provisioned

    session.call(lambda: bridge.devices.fleet_key_differs.emit(request))
    dialog = next(d for d in window._dialogs if isinstance(d, FleetKeyDialog))
    session.call(lambda: qtbot.mouseClick(dialog.replace_button, Qt.MouseButton.LeftButton))
    assert asked == [([cam.id], True)]
    activity = bridge.activities.all()[-1]
    assert activity.title == "Provision cam-21"
    # cam-21 was never trusted: this provisioning is refused before any connection (the lab test goes further).
    session.wait(lambda: not activity.running, "the provisioning to end")
    assert "cam-21: " in activity.summary and "not trusted" in activity.summary
