"""What a device provisioned as root keeps of the fleet's trust, on gpc-01 (ipc-x86-nvidia, x86_64) of the lab.

keys/ and fleet.pub, and every artifact once its manifest is in, end up root-owned and read-only, and staging still
skips a whole copy, resumes a partial one (writable until complete), repairs a damaged one and removes an old one.
A device that trusts another fleet key is refused with both fingerprints and left untouched (core, CLI --json, and
the window, which asks); with --replace-fleet-key, or the operator's yes, it gets this laptop's key. The window's
Deploy lands an artifact sealed as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PySide6.QtCore import Qt

from fleetdesk.artifacts.records import MANIFEST_NAME, SIGNATURE_NAME
from fleetdesk.artifacts.store_records import key_fingerprint
from fleetdesk.errors import FleetKeyMismatchError
from fleetdesk.fleet import Fleet
from fleetdesk.gui.fleet_key_dialog import FleetKeyDialog
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.device_ops import DeviceOps, StageResult
from fleetdesk.runtime.agentfiles import agent_tree
from fleetdesk.runtime.provision import ProvisionOutcome, provision
from fleetdesk.runtime.store import RuntimeStore
from tests.gui_harness import GuiSession, gui_session, private_qsettings
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import Laptop, big_model, new_laptop, provision_devices, small_model

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

GPC = "gpc-01"  # the one lab device these tests touch
ROOT = "/opt/fleetdesk"
PROFILE = "ipc-x86-nvidia"
CAP = 3_000_000  # bytes/s: the 13 MB model takes seconds, long enough to stop it midway


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    laptop = new_laptop(tmp_path_factory.mktemp("fleet-key-laptop"), load_profiles())
    work = tmp_path_factory.mktemp("fleet-key-models")
    small_model(laptop, work, "sealed", 61, [PROFILE])
    big_model(laptop, work, "partial", 62, [PROFILE])
    # The ipc-x86 runtime fits (x86_64, cp311) and spares the lab onnxruntime-gpu's download.
    provision_devices(fleet, laptop, [GPC], {GPC: "ipc-x86"})
    yield laptop


def on_device(lab: LabFleet, command: str) -> str:
    result = lab.ssh(lab.device(GPC), command)
    assert result.exit_status == 0, f"{command}: {result.stderr}"
    return str(result.stdout)


def owners_and_modes(lab: LabFleet, *paths: str) -> dict[str, str]:
    """`uid gid mode` of each path (and of everything under the folders among them), by path."""
    listing = on_device(lab, "find " + " ".join(paths) + " -printf '%p %U %G %m\\n'")
    return {line.rsplit(" ", 3)[0]: " ".join(line.rsplit(" ", 3)[1:]) for line in listing.splitlines()}


def other_pem() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def stage(laptop: Laptop, artifact_id: str, **kwargs: Any) -> StageResult:
    async def work(fleet: Fleet) -> StageResult:
        return await DeviceOps(fleet, laptop.store).stage(fleet.inventory.device(GPC), artifact_id, **kwargs)

    result: StageResult = laptop.with_fleet(work)
    return result


def test_provisioned_as_root_keys_and_a_staged_artifact_are_root_owned_and_read_only(
        fleet: LabFleet, laptop: Laptop) -> None:
    assert on_device(fleet, "id -u").strip() == "0"  # FleetDesk logs in to gpc-01 as root
    keys = owners_and_modes(fleet, f"{ROOT}/keys")
    assert keys == {f"{ROOT}/keys": "0 0 555", f"{ROOT}/keys/fleet.pub": "0 0 444"}
    assert on_device(fleet, f"cat {ROOT}/keys/fleet.pub") == laptop.key.public_pem().decode()

    small = laptop.models["sealed@1"]
    first = stage(laptop, small)
    assert not first.already_there and first.bytes_sent == first.bytes_total > 0
    folder = f"{ROOT}/artifacts/{small}"
    sealed = owners_and_modes(fleet, folder)
    files = {p: m for p, m in sealed.items() if p != folder}
    assert sealed[folder] == "0 0 555" and {"model.onnx", MANIFEST_NAME, SIGNATURE_NAME} <= {
        p.rsplit("/", 1)[1] for p in files}
    assert set(files.values()) == {"0 0 444"}, sealed

    # A whole, sealed copy is skipped; the agent activates and confirms it as it is.
    again = stage(laptop, small)
    assert again.already_there and again.bytes_sent == 0

    async def activate(fleet_: Fleet) -> None:
        ops, device = DeviceOps(fleet_, laptop.store), fleet_.inventory.device(GPC)
        await ops.activate(device, small, 120)
        await ops.confirm(device, small)

    laptop.with_fleet(activate)
    assert on_device(fleet, f"readlink {ROOT}/current").strip() == f"artifacts/{small}"
    assert owners_and_modes(fleet, folder) == sealed


def test_a_partial_artifact_stays_writable_resumes_then_is_sealed_repaired_and_removed(
        fleet: LabFleet, laptop: Laptop) -> None:
    big = laptop.models["partial@1"]
    folder = f"{ROOT}/artifacts/{big}"
    on_device(fleet, f"rm -rf {folder}")
    stopped_at: list[int] = []

    async def cut(fleet_: Fleet) -> None:
        halfway = asyncio.Event()

        def progress(done: int, total: int) -> None:
            if done > total // 3 and not halfway.is_set():
                stopped_at.append(done)
                halfway.set()

        task = asyncio.ensure_future(DeviceOps(fleet_, laptop.store).stage(
            fleet_.inventory.device(GPC), big, bandwidth_bytes_s=CAP, progress=progress))
        await asyncio.wait_for(halfway.wait(), 120)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    laptop.with_fleet(cut)
    assert stopped_at
    partial = owners_and_modes(fleet, folder)
    assert f"{folder}/{MANIFEST_NAME}" not in partial  # not complete: not sealed, still writable
    assert int(partial[folder].split()[2], 8) & 0o200, partial
    assert any(p.endswith(".fleetdesk-partial") for p in partial), partial

    resumed = stage(laptop, big)
    assert not resumed.already_there and 0 < resumed.bytes_sent < resumed.bytes_total - stopped_at[0] // 2
    whole = owners_and_modes(fleet, folder)
    assert whole[folder] == "0 0 555" and {m for p, m in whole.items() if p != folder} == {"0 0 444"}, whole
    assert not any(p.endswith(".fleetdesk-partial") for p in whole)

    # Root still writes through the modes: a damaged sealed copy is repaired by the next staging, and sealed again.
    on_device(fleet, f"printf x >> {folder}/model.weights")
    repaired = stage(laptop, big)
    assert not repaired.already_there and 0 < repaired.bytes_sent < repaired.bytes_total
    assert owners_and_modes(fleet, folder) == whole
    assert stage(laptop, big).already_there

    async def remove(fleet_: Fleet) -> None:
        await DeviceOps(fleet_, laptop.store).remove_artifact(fleet_.inventory.device(GPC), big)

    laptop.with_fleet(remove)
    assert on_device(fleet, f"ls {ROOT}/artifacts").split() == [laptop.models["sealed@1"]]


def snapshot(lab: LabFleet) -> str:
    """Everything provisioning could change on the device, with times and inodes, and the server's pid."""
    return on_device(lab, f"find {ROOT}/keys {ROOT}/agent {ROOT}/bin {ROOT}/artifacts -printf '%p %i %s %T@ %m %U\\n' "
                          f"| sort; readlink {ROOT}/runtimes/current {ROOT}/agent/current; "
                          f"cat {ROOT}/run/supervise.pid; cat /etc/rc.local")


def put_other_key(lab: LabFleet) -> bytes:
    """Another fleet's key on the device, sealed as provisioning leaves it (root writes through the modes)."""
    pem = other_pem()
    on_device(lab, f"printf %s {shlex.quote(pem.decode())} > {ROOT}/keys/fleet.pub")
    assert on_device(lab, f"cat {ROOT}/keys/fleet.pub").encode() == pem
    return pem


def cli(laptop: Laptop, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLEETDESK_DATA_DIR=str(laptop.data_dir))
    return subprocess.run([sys.executable, "-m", "fleetdesk", "provision", GPC, "--json", *args],
                          capture_output=True, text=True, timeout=900, env=env, check=False)


def test_another_fleet_key_is_refused_with_both_fingerprints_and_replaced_only_when_asked(
        fleet: LabFleet, laptop: Laptop) -> None:
    other = put_other_key(fleet)
    old, new = key_fingerprint(other), key_fingerprint(laptop.key.public_pem())
    before = snapshot(fleet)
    runtimes = RuntimeStore(laptop.data_dir / "runtimes")

    async def work(fleet_: Fleet) -> list[ProvisionOutcome]:
        return await provision(fleet_, fleet_.select([GPC]), store=runtimes, signing_key=laptop.key,
                               agent=agent_tree())

    outcome = laptop.with_fleet(work)[0]
    assert outcome.status == "failed" and outcome.bytes_sent == 0 and outcome.changed == ()
    assert isinstance(outcome.error, FleetKeyMismatchError)
    assert (outcome.error.device_key, outcome.error.laptop_key) == (old, new)
    assert old in outcome.error.message and new in outcome.error.message
    assert snapshot(fleet) == before  # nothing changed on the device

    refused = cli(laptop)
    assert refused.returncode == 1, refused.stderr
    error = json.loads(refused.stdout)["outcomes"][0]["error"]
    assert error["code"] == "fleet-key-differs" and (error["device_key"], error["laptop_key"]) == (old, new)
    assert old in error["message"] and new in error["message"]
    assert "--replace-fleet-key" in error["fix"]
    assert snapshot(fleet) == before

    replaced = cli(laptop, "--replace-fleet-key")
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    done = json.loads(replaced.stdout)["outcomes"][0]
    assert done["status"] == "succeeded" and f"replaced the fleet key {old} with {new}" in done["changed"]
    assert on_device(fleet, f"cat {ROOT}/keys/fleet.pub") == laptop.key.public_pem().decode()
    assert owners_and_modes(fleet, f"{ROOT}/keys") == {f"{ROOT}/keys": "0 0 555",
                                                       f"{ROOT}/keys/fleet.pub": "0 0 444"}
    # And then it is this laptop's device like any other: nothing to ask, nothing to send.
    quiet = cli(laptop)
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["outcomes"][0]["changed"] == []


@pytest.fixture
def window(laptop: Laptop, tmp_path: Path) -> Iterator[GuiSession]:
    """The operator's window over this module's laptop: its inventory (gpc-01 trusted and probed), runtimes and
    fleet key."""
    import pytestqt.qtbot  # noqa: F401 - the QApplication comes from pytest-qt's plugin

    before = os.environ.get("FLEETDESK_DATA_DIR")
    os.environ["FLEETDESK_DATA_DIR"] = str(laptop.data_dir)
    private_qsettings(tmp_path / "qsettings")
    try:
        with gui_session(laptop.db_url, tmp_path) as session:
            yield session
    finally:
        if before is None:
            os.environ.pop("FLEETDESK_DATA_DIR", None)
        else:
            os.environ["FLEETDESK_DATA_DIR"] = before


def ask_through_the_window(session: GuiSession) -> FleetKeyDialog:
    window = session.window
    view = next(v for v in window.fleet_model.views() if v.device.name == GPC)
    window.fleet_pane.select_devices([view.id])
    session.call(window.provision_action.trigger)
    activity = session.bridge.activities.all()[-1]
    assert activity.title == f"Provision {GPC}"
    session.wait(lambda: any(isinstance(d, FleetKeyDialog) for d in window._dialogs), "the fleet key question",
                 timeout=180)
    session.wait(lambda: not activity.running, "the refused provisioning to end")
    assert activity.summary.startswith("0 of 1 provisioned") and "trusts another fleet key" in activity.summary
    return next(d for d in window._dialogs if isinstance(d, FleetKeyDialog))


def test_the_window_asks_and_no_leaves_the_device_as_it_is_and_yes_replaces_the_key(
        fleet: LabFleet, laptop: Laptop, window: GuiSession, qtbot: Any) -> None:
    other = put_other_key(fleet)
    old, new = key_fingerprint(other), key_fingerprint(laptop.key.public_pem())
    before = snapshot(fleet)

    dialog = ask_through_the_window(window)
    assert [label.text() for label in dialog.device_key_labels] == [old]
    assert dialog.laptop_key_label.text() == new
    window.screenshot(dialog, "fleet-key-question")
    started = len(window.bridge.activities.all())
    window.call(lambda: qtbot.mouseClick(dialog.keep_button, Qt.MouseButton.LeftButton))
    window.wait(lambda: not any(isinstance(d, FleetKeyDialog) for d in window.window._dialogs), "the dialog to close")
    # A yes starts provisioning in the click itself (the activity exists before the click returns): none did.
    assert len(window.bridge.activities.all()) == started
    assert snapshot(fleet) == before

    dialog = ask_through_the_window(window)
    window.call(lambda: qtbot.mouseClick(dialog.replace_button, Qt.MouseButton.LeftButton))
    activity = window.bridge.activities.all()[-1]
    assert activity.title == f"Provision {GPC}"
    window.wait(lambda: not activity.running, "the provisioning with this laptop's key", timeout=300)
    assert activity.summary.startswith("1 of 1 provisioned"), activity.summary
    assert on_device(fleet, f"cat {ROOT}/keys/fleet.pub") == laptop.key.public_pem().decode()
    assert owners_and_modes(fleet, f"{ROOT}/keys") == {f"{ROOT}/keys": "0 0 555",
                                                       f"{ROOT}/keys/fleet.pub": "0 0 444"}

    # The window's Deploy stages through the same path: the copy lands whole, then sealed.
    big = laptop.models["partial@1"]
    on_device(fleet, f"rm -rf {ROOT}/artifacts/{big}")
    view = next(v for v in window.window.fleet_model.views() if v.device.name == GPC)
    record = laptop.store.model("partial@1")
    push = window.call(lambda: window.bridge.models.push_artifacts(record, [view.id]))
    window.wait(lambda: not push.running, "the deploy", timeout=120)
    assert push.state == "succeeded" and push.summary == "verified on 1 of 1 device(s)", push.summary
    deployed = owners_and_modes(fleet, f"{ROOT}/artifacts/{big}")
    assert deployed.pop(f"{ROOT}/artifacts/{big}") == "0 0 555"
    assert f"{ROOT}/artifacts/{big}/{MANIFEST_NAME}" in deployed and set(deployed.values()) == {"0 0 444"}, deployed
