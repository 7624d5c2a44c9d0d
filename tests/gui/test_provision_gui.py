"""Runtimes in the window: the Runtime column from what provisioning proved, and the Provision action.

The devices are inventory rows; a provisioning that reaches a device is proven against the lab in
tests/lab/test_provision_lab.py (CLI) — here the window's side: what it shows and how a refusal reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from fleetdesk.artifacts.signing import KEYRING_ACCOUNT
from fleetdesk.gui.fleet_model import COLUMNS
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.transport import credentials
from tests.gui_harness import GuiSession, gui_session
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]

RUNTIME = COLUMNS.index("Runtime")


@pytest.fixture
def session(tmp_path: Path, screens: Path, monkeypatch: pytest.MonkeyPatch,
            keyring_daemon: KeyringDaemon) -> Iterator[GuiSession]:
    # Provisioning installs the fleet's public key: its signing key lives in this test's data folder, with the
    # passphrase in a private gnome-keyring, never the operator's.
    monkeypatch.setenv("FLEETDESK_DATA_DIR", str(tmp_path / "data"))
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_inventory(url) as inventory:
        inventory.record_sightings([
            Sighting("mdns", (f"198.18.1.{n}",), host_name=f"{name}.local.", instance_name=name,
                     service_type="_ssh._tcp.local.") for n, name in ((21, "cam-21"), (22, "cam-22"))])
        cam = next(d for d in inventory.devices() if d.name == "cam-21")
        DeviceRuntimes(inventory).record(cam.id, runtime_id="ab12cd34ef56" * 5, agent_version="0.1.0",
                                         device_root="/opt/fleetdesk", onnxruntime="1.31.1",
                                         providers=("CPUExecutionProvider",), python="3.11.2")
    try:
        with gui_session(url, screens) as s:
            yield s
    finally:
        credentials.delete_secret(KEYRING_ACCOUNT)  # the next test's key is not this one


def cell(session: GuiSession, name: str, column: int, role: int = Qt.ItemDataRole.DisplayRole) -> object:
    model = session.window.fleet_model
    view = next(v for v in model.views() if v.device.name == name)
    return session.window.fleet_pane.index_of(view.id).siblingAtColumn(column).data(role)


def test_the_runtime_column_shows_what_provisioning_proved(session: GuiSession) -> None:
    assert cell(session, "cam-21", RUNTIME) == "onnxruntime 1.31.1"
    tip = str(cell(session, "cam-21", RUNTIME, Qt.ItemDataRole.ToolTipRole))
    assert "Runtime ab12cd34ef56, agent 0.1.0, Python 3.11.2" in tip and "CPUExecutionProvider" in tip
    assert cell(session, "cam-22", RUNTIME) == "—"  # never provisioned: shown as missing


def test_provisioning_an_untrusted_device_fails_with_the_reason_and_the_fix(session: GuiSession) -> None:
    window = session.window
    view = next(v for v in window.fleet_model.views() if v.device.name == "cam-22")
    window.fleet_pane.select_devices([view.id])
    assert window.provision_action.isEnabled() and window.provision_action.shortcut().toString() == "Ctrl+Shift+P"
    session.call(window.provision_action.trigger)
    activity = session.bridge.activities.all()[-1]
    assert activity.title == "Provision cam-22"
    session.wait(lambda: not activity.running, "the provisioning to end")
    # Refused before any connection: the device's host key was never trusted.
    assert activity.summary.startswith("0 of 1 provisioned (0 B sent); cam-22: ") and "not trusted" in activity.summary
    assert cell(session, "cam-22", RUNTIME) == "—"
