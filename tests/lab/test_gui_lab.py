"""The operator's window against the real lab: devices appear by themselves, trust and credentials go
through the dialogs, a changed host key is flagged, a dropped model reaches a device, and a device that
leaves the network turns offline without a refresh.

The window is the real MainWindow on a qasync loop (tests/gui_harness.py: it fails on any loop stall
over 100 ms and on leaked widgets, timers or tasks). mDNS is bound to the lab bridge only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from fleetdesk.gui.bridge_views import Login
from fleetdesk.gui.dialogs import AddDeviceDialog, SweepDialog
from fleetdesk.gui.model_import import ImportDialog
from fleetdesk.gui.overview import FIRST_METRIC_COLUMN, value_text
from fleetdesk.gui.rollout_wizard import RolloutWizard
from fleetdesk.gui.side_panel import GROUP_ROLE
from fleetdesk.gui.sign_in_dialogs import CredentialsDialog, TrustDialog
from fleetdesk.lab.rootfs import LAB_PASSWORD, LAB_USER
from fleetdesk.transport import credentials
from tests.fixtures.models.build import save_cnn, save_mlp_external
from tests.gui.test_main_window import drop_files, model_file
from tests.gui_harness import GuiSession, gui_session, private_qsettings
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab
__all__ = ["keyring_daemon"]

LAB_BRIDGE = "198.18.0.1"


def host_key_fingerprint(device: dict[str, Any]) -> str:
    pub = Path(device["root"]) / "etc/ssh/ssh_host_ed25519_key.pub"
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screens")


@pytest.fixture(scope="module")
def session(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory, screens: Path,
            keyring_daemon: KeyringDaemon) -> Iterator[GuiSession]:
    """One operator's window for the whole module, on a fresh inventory, browsing the lab bridge."""
    import pytestqt.qtbot  # noqa: F401 - the QApplication comes from pytest-qt's plugin

    home = tmp_path_factory.mktemp("operator")
    config = home / "ssh_config"
    config.write_text(f"Host *\n  IdentityFile {fleet.state['ssh_key']}\n  IdentitiesOnly yes\n")
    # The artifact store (and its signing key) of this operator only, not the user's data folder.
    before = os.environ.get("FLEETDESK_DATA_DIR")
    os.environ["FLEETDESK_DATA_DIR"] = str(home / "data")
    private_qsettings(home / "qsettings")
    try:
        with gui_session(f"sqlite:///{home / 'fleet.db'}", screens, ssh_config=str(config),
                         interfaces=[LAB_BRIDGE]) as s:
            yield s
    finally:
        if before is None:
            os.environ.pop("FLEETDESK_DATA_DIR", None)
        else:
            os.environ["FLEETDESK_DATA_DIR"] = before


def row_of(session: GuiSession, name: str) -> Any:
    for view in session.window.fleet_model.views():
        if view.device.name == name:
            return view
    return None


def status_of(session: GuiSession, name: str) -> str:
    view = row_of(session, name)
    return view.status if view is not None else "absent"


def last_dialog(session: GuiSession, kind: type) -> Any:
    dialogs = [d for d in session.window._dialogs if isinstance(d, kind)]
    return dialogs[-1] if dialogs else None


def test_lab_devices_appear_in_the_table_by_themselves(session: GuiSession, fleet: Fleet, qtbot: Any) -> None:
    window = session.window
    assert window.discovery_panel.chosen_interfaces() == [LAB_BRIDGE]
    started = time.monotonic()
    session.call(lambda: qtbot.mouseClick(window.discovery_panel.browse_button, Qt.MouseButton.LeftButton))
    names = {d["name"] for d in fleet.devices}
    first_seen: list[float] = []
    session.wait(lambda: (first_seen or (row_of(session, sorted(names)[0]) and first_seen.append(
        time.monotonic() - started))) and all(row_of(session, n) for n in names),
        "every lab device in the fleet table", timeout=30)
    for device in fleet.devices:
        view = row_of(session, device["name"])
        assert view.device.address == device["address"]
        assert view.status == "untrusted"  # seen, never trusted
    assert window.discovery_panel.browse_button.text() == "Stop discovery"
    assert window.devices_label.text().startswith(f"Devices online: {len(names)} / ")
    print(f"first lab device in the table {first_seen[0]:.2f} s after Start discovery")
    window.resize(1280, 800)
    session.settle(0.3)
    session.screenshot(window, "main-window-lab-fleet")


def trust_through_the_dialog(session: GuiSession, qtbot: Any, name: str, *, changed: bool) -> TrustDialog:
    window = session.window
    view = row_of(session, name)
    window.fleet_pane.select_devices([view.id])
    session.call(lambda: window.trust_action.trigger())
    session.wait(lambda: last_dialog(session, TrustDialog) is not None, "the trust dialog")
    dialog = last_dialog(session, TrustDialog)
    assert dialog.isVisible() and dialog.key_changed is changed
    return dialog


def test_trusting_a_device_through_the_dialog_pins_the_fingerprint_it_shows(
        session: GuiSession, fleet: Fleet, qtbot: Any) -> None:
    device = fleet.by_profile("ipc-x86")
    dialog = trust_through_the_dialog(session, qtbot, device["name"], changed=False)
    assert dialog.fingerprint_label.text() == host_key_fingerprint(device)
    session.screenshot(dialog, "trust-dialog-new-key")
    session.call(lambda: qtbot.mouseClick(dialog.trust_button, Qt.MouseButton.LeftButton))
    session.wait(lambda: status_of(session, device["name"]) == "online", "the device to be trusted")
    keys = session.bridge.devices.host_keys(row_of(session, device["name"]).id)
    assert [k.fingerprint for k in keys] == [host_key_fingerprint(device)]


def test_probing_from_the_window_fills_profile_and_architecture(session: GuiSession, fleet: Fleet) -> None:
    device = fleet.by_profile("ipc-x86")
    window = session.window
    view = row_of(session, device["name"])
    window.fleet_pane.select_devices([view.id])
    session.call(lambda: window.probe_action.trigger())
    session.wait(lambda: row_of(session, device["name"]).device.probed_at is not None, "the probe")
    view = row_of(session, device["name"])
    assert (view.device.profile, view.device.facts.arch, view.status) == ("ipc-x86", "x86_64", "online")
    index = window.fleet_pane.index_of(view.id)
    assert window.fleet_filter.index(index.row(), 3).data() == "ipc-x86"
    session.settle(0.2)
    session.screenshot(window.detail, "device-detail-probed")


def test_streaming_a_trusted_lab_device_fills_its_overview_row_from_the_device(
        session: GuiSession, fleet: Fleet) -> None:
    device = fleet.by_profile("ipc-x86")  # trusted and probed by the tests above
    window = session.window
    view = row_of(session, device["name"])
    window.fleet_pane.select_devices([view.id])
    session.call(lambda: window.stream_action.trigger())
    assert window.tabs.currentWidget() is window.dashboard
    store = session.bridge.telemetry.store
    session.wait(lambda: store.buffer(view.id) is not None and len(store.buffer(view.id)) >= 2,
                 "two samples from the device", timeout=30)
    latest = store.buffer(view.id).latest
    # The lab device's own /proc and its CPU's thermal zone (fleetdesk/lab/sensors.py), read over SSH.
    assert latest.cpu_pct is not None and 0 <= latest.cpu_pct <= 100
    assert latest.temp_c is not None
    model = window.dashboard.model
    model.flush()
    row = model.row_of(view.id)
    # The agent where the device has one installed (an earlier lab module may have provisioned it), else the
    # agentless reader: the Stream column says which one runs.
    has_agent = fleet.ssh(device, "test -x /opt/fleetdesk/bin/fleetdesk-agent && echo yes || echo no").stdout.strip()
    assert model.index(row, 1).data() == ("streaming" if has_agent == "yes" else "streaming (agentless)")
    assert model.index(row, FIRST_METRIC_COLUMN).data() == value_text("cpu_pct", latest.cpu_pct)
    session.screenshot(window.dashboard, "dashboard-lab-device")
    session.call(lambda: window.unstream_action.trigger())
    session.wait(lambda: model.index(model.row_of(view.id), 1).data() == "stopped", "the stream to stop")
    window.tabs.setCurrentIndex(0)


def test_credentials_round_trip_through_the_keyring_daemon(session: GuiSession, fleet: Fleet, qtbot: Any) -> None:
    device = fleet.by_profile("ipc-x86")
    window = session.window
    view = row_of(session, device["name"])
    window.fleet_pane.select_devices([view.id])
    session.call(lambda: window.login_action.trigger())
    session.wait(lambda: last_dialog(session, CredentialsDialog) is not None, "the credentials dialog")
    dialog = last_dialog(session, CredentialsDialog)
    dialog.username_edit.setText(LAB_USER)
    dialog.password_radio.setChecked(True)
    qtbot.keyClicks(dialog.password_edit, LAB_PASSWORD)
    assert dialog.save_button.isEnabled(), dialog.reason.text()
    session.call(lambda: qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton))
    session.wait(lambda: row_of(session, device["name"]).device.password_account is not None, "the login saved")
    stored = row_of(session, device["name"]).device
    assert stored.username == LAB_USER
    # The secret is in the real Secret Service, not in the inventory.
    assert credentials.get_secret(stored.password_account) == LAB_PASSWORD
    # ... and it works: a probe logs in as the lab user with that password (the lab key is root's only).
    activity = session.call(lambda: session.bridge.devices.probe([stored.id]))
    session.wait(lambda: not activity.running, "the probe as the lab user")
    assert activity.state == "succeeded" and activity.summary.startswith("1 of 1 identified"), activity.summary
    back = session.call(lambda: session.bridge.devices.set_login([stored.id], Login("root")))
    session.wait(lambda: not back.running, "root login restored")


def test_a_changed_host_key_shows_the_warning_with_both_fingerprints(
        session: GuiSession, fleet: Fleet, qtbot: Any) -> None:
    device = fleet.by_profile("ipc-x86")
    old = host_key_fingerprint(device)
    fleet.fault(device["name"], "rekey")
    fleet.refresh()  # later lab tests read the device's key from the lab state
    new = host_key_fingerprint(device)
    assert new != old
    view = row_of(session, device["name"])
    activity = session.call(lambda: session.bridge.devices.probe([view.id]))
    session.wait(lambda: not activity.running, "the probe to meet the new key")
    assert "changed" in activity.summary.lower() or "host key" in activity.summary.lower(), activity.summary
    assert status_of(session, device["name"]) == "untrusted"
    dialog = trust_through_the_dialog(session, qtbot, device["name"], changed=True)
    assert dialog.warning.isVisible()
    shown = " ".join(label.text() for label in dialog.findChildren(type(dialog.fingerprint_label)))
    assert old in shown and new in shown
    assert not dialog.trust_button.isEnabled()
    session.screenshot(dialog, "trust-dialog-changed-key")
    dialog.checked_box.setChecked(True)
    session.call(lambda: qtbot.mouseClick(dialog.trust_button, Qt.MouseButton.LeftButton))
    session.wait(lambda: status_of(session, device["name"]) == "online", "the new key to be trusted")
    assert [k.fingerprint for k in session.bridge.devices.host_keys(view.id)] == [new]


def wizard_after_import(session: GuiSession, qtbot: Any, profile: str) -> Any:
    """After a drop on devices: the import dialog (the targets' profile checked by default) imports the model
    without timing it, then the rollout wizard opens for that model."""
    session.wait(lambda: last_dialog(session, ImportDialog) is not None, "the import dialog")
    importing = last_dialog(session, ImportDialog)
    assert importing.chosen_profiles() == (profile,)
    importing.time_box.setChecked(False)
    session.call(lambda: qtbot.mouseClick(importing.import_button, Qt.MouseButton.LeftButton))
    session.wait(lambda: last_dialog(session, RolloutWizard) is not None, "the rollout wizard", timeout=240)
    wizard = last_dialog(session, RolloutWizard)
    record = session.window.models_view.selected()
    assert record is not None and wizard.record() == record
    return wizard


def drop_import_and_deploy(session: GuiSession, qtbot: Any, model: Path, view: Any) -> tuple[Any, Any]:
    """Drop `model` on the device's row, import it through the dialog, push through the wizard's Push only;
    returns the push activity and the artifact the device's profile got."""
    window = session.window
    window.fleet_pane.select_devices([view.id])
    rect = window.fleet_table.visualRect(window.fleet_pane.index_of(view.id).siblingAtColumn(1))
    said = session.call(lambda: drop_files(window.fleet_table.viewport(), [model], rect.center()))
    assert said == f"Drop to deploy {model.name} to 1 device(s)"
    # A drop on devices opens the rollout wizard for them; "Push only…" is the plain push (no waves, no gates).
    dialog = wizard_after_import(session, qtbot, view.device.profile)
    record = dialog.record()
    assert [d.id for d in dialog.target_devices()] == [view.id]
    row = dialog.variants.topLevelItem(0)
    assert (row.text(0), row.text(1)) == (view.device.profile, "1")
    assert dialog.push_button.isEnabled(), dialog.problem.text()
    session.screenshot(dialog, "rollout-wizard")
    session.call(lambda: qtbot.mouseClick(dialog.push_button, Qt.MouseButton.LeftButton))
    push = session.bridge.activities.all()[-1]
    assert push.title == f"Deploy {record.ref}"
    session.wait(lambda: not push.running, "the push", timeout=60)
    store = session.bridge.models.artifact_store()
    artifact = store.artifact(record.artifacts.get(view.device.profile, record.baseline))
    return push, artifact


def remote_digests(fleet: Fleet, device: dict[str, Any], artifact: Any) -> dict[str, str]:
    folder = f"/opt/fleetdesk/artifacts/{artifact.id}"
    names = ["manifest.json", "manifest.json.sig", *(f.path for f in artifact.files)]
    listing = fleet.ssh(device, f"cd {folder} && sha256sum " + " ".join(shlex.quote(n) for n in names)).stdout
    return {line.split(None, 1)[1].strip(): line.split()[0] for line in listing.splitlines()}


def test_a_model_dropped_on_a_trusted_device_reaches_it_signed_and_verified(
        session: GuiSession, fleet: Fleet, tmp_path: Path, qtbot: Any) -> None:
    device = fleet.by_profile("ipc-x86")
    path = model_file(tmp_path, "line-camera classifier.onnx")
    push, artifact = drop_import_and_deploy(session, qtbot, path, row_of(session, device["name"]))
    assert push.state == "succeeded", push.summary
    digests = remote_digests(fleet, device, artifact)
    local = Path(artifact.folder)
    assert digests["manifest.json"] == hashlib.sha256((local / "manifest.json").read_bytes()).hexdigest() \
        == artifact.id  # the artifact's id is its manifest's hash: the device holds exactly what was signed
    for f in artifact.files:
        assert digests[f.path] == f.sha256


def test_a_model_dropped_on_a_group_opens_the_rollout_wizard_for_the_group(
        session: GuiSession, fleet: Fleet, tmp_path: Path, qtbot: Any) -> None:
    window = session.window
    view = row_of(session, fleet.by_profile("ipc-x86")["name"])
    change = session.call(lambda: session.bridge.devices.change_group([view.id], "press line"))
    session.wait(lambda: not change.running, "the device added to the group")

    def group_item() -> Any:
        items = [window.group_tree.topLevelItem(i) for i in range(window.group_tree.topLevelItemCount())]
        return next((i for i in items if i.data(0, GROUP_ROLE) == "press line"), None)

    session.wait(group_item, "the group in the side panel")
    rect = window.group_tree.visualItemRect(group_item())
    path = save_cnn(tmp_path / "press line detector.onnx", seed=77)  # a model no other test imported
    said = session.call(lambda: drop_files(window.group_tree.viewport(), [path], rect.center()))
    assert said == f"Drop to deploy {path.name} to group “press line” (1 device(s))"  # the group's one member
    wizard = wizard_after_import(session, qtbot, view.device.profile)
    assert (wizard.plan().groups, wizard.plan().devices) == (("press line",), ())  # the group, not a copy of it
    assert [d.id for d in wizard.target_devices()] == [view.id]
    assert wizard.start_button.isEnabled(), wizard.problem.text()
    session.call(lambda: wizard.reject())
    removed = session.call(lambda: session.bridge.devices.change_group([view.id], "press line", remove=True))
    session.wait(lambda: not removed.running, "the group emptied again")


def test_a_model_with_external_weights_arrives_with_them(
        session: GuiSession, fleet: Fleet, tmp_path: Path, qtbot: Any) -> None:
    device = fleet.by_profile("ipc-x86")
    model = save_mlp_external(tmp_path / "mlp.onnx")
    push, artifact = drop_import_and_deploy(session, qtbot, model, row_of(session, device["name"]))
    assert push.state == "succeeded", push.summary
    digests = remote_digests(fleet, device, artifact)
    assert {f.path for f in artifact.files} <= set(digests)
    for f in artifact.files:
        assert digests[f.path] == f.sha256


def test_a_removed_device_comes_back_by_address_through_the_add_dialog(
        session: GuiSession, fleet: Fleet, qtbot: Any) -> None:
    device = fleet.by_profile("ipc-x86-nvidia") if any(
        d["profile"] == "ipc-x86-nvidia" for d in fleet.devices) else fleet.devices[-1]
    window = session.window
    gone = row_of(session, device["name"])
    window.fleet_pane.select_devices([gone.id])
    session.call(lambda: window.remove_action.trigger())
    session.wait(lambda: row_of(session, device["name"]) is None, "the device removed from the table")
    session.call(lambda: window.add_action.trigger())
    session.wait(lambda: last_dialog(session, AddDeviceDialog) is not None, "the add dialog")
    dialog = last_dialog(session, AddDeviceDialog)
    qtbot.keyClicks(dialog.host_edit, device["address"])
    qtbot.keyClicks(dialog.name_edit, device["name"])
    session.call(lambda: qtbot.mouseClick(dialog.add_button, Qt.MouseButton.LeftButton))
    session.wait(lambda: row_of(session, device["name"]) is not None, "the device added back")
    back = row_of(session, device["name"])
    assert (back.device.address, back.device.source) == (device["address"], "manual")


def test_a_sweep_typed_in_the_dialog_finds_the_lab_devices(session: GuiSession, fleet: Fleet, qtbot: Any) -> None:
    window = session.window
    session.call(lambda: window.sweep_action.trigger())
    session.wait(lambda: last_dialog(session, SweepDialog) is not None, "the sweep dialog")
    dialog = last_dialog(session, SweepDialog)
    qtbot.keyClicks(dialog.cidr_edit, "198.18.1.0/28")
    assert dialog.sweep_button.text() == "Sweep 14 addresses"
    session.screenshot(dialog, "sweep-dialog")
    session.call(lambda: qtbot.mouseClick(dialog.sweep_button, Qt.MouseButton.LeftButton))
    sweep = session.bridge.activities.all()[-1]
    assert sweep.title == "Sweep 198.18.1.0/28"
    session.wait(lambda: not sweep.running, "the sweep", timeout=60)
    in_range = [d for d in fleet.devices if int(d["address"].rsplit(".", 1)[1]) < 15]
    assert sweep.summary == f"{len(in_range)} SSH server(s) answered"
    for device in in_range:  # already known by mDNS: found again, not doubled
        assert sum(v.device.address == device["address"] for v in window.fleet_model.views()) == 1


def test_a_device_that_leaves_turns_offline_and_comes_back(session: GuiSession, fleet: Fleet) -> None:
    device = [d for d in fleet.devices if d["profile"] == "ipc-x86"][-1]
    seen: list[str] = []
    session.bridge.devices.device_changed.connect(
        lambda view: seen.append(view.status) if view.device.name == device["name"] else None)
    # It leaves as a device shut down by its operator does: avahi says goodbye on SIGTERM. (The lab's
    # reboot fault may have to SIGKILL a slow avahi on a loaded machine; then only the 120 s record
    # lifetime would tell, which is the honest clock for a device that lost power.)
    avahi = int((Path(device["root"]) / "run/avahi-daemon/pid").read_text().split()[0])
    assert Path(f"/proc/{avahi}/comm").read_text().strip() == "avahi-daemon"  # never signal anything else
    os.kill(avahi, signal.SIGTERM)
    # Watched as transitions, not polled: if the device's init restarts avahi at once, "offline" and
    # "online" can arrive in one batch of the recorder, and the table shows both in turn.
    # The goodbye normally lands within a second; should it be lost on a loaded machine, the device's SRV
    # record (120 s from avahi) expires unanswered and says the same, so the wait covers that clock too.
    session.wait(lambda: "offline" in seen, f"the device to turn offline (statuses seen: {seen})", timeout=150)
    reboot = asyncio.ensure_future(asyncio.to_thread(fleet.fault, device["name"], "reboot", "1"),
                                   loop=session.loop)
    session.run(reboot, timeout=120)
    session.wait(lambda: status_of(session, device["name"]) != "offline", "the device to be back", timeout=30)
    assert "offline" in seen
