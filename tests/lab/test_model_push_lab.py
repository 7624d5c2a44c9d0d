"""`fleetdesk model push` against the lab, as an operator runs it: a model imported with `fleetdesk model import`
reaches an ipc-x86 device as exactly the signed files, a second push sends 0 bytes, and a file of an artifact
damaged on the laptop after signing is refused before any byte of that artifact is sent.

The real command line in a subprocess, on this module's own laptop (data folder, inventory, fleet key, an empty
ssh config); the device is enrolled once, with the lab's key and known hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.access.guard import default_operator
from fleetdesk.fleet import Fleet
from fleetdesk.lab.state import BRIDGE_ADDRESS
from tests.fixtures.models.build import save_cnn
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.laptop import LabLaptop

pytestmark = pytest.mark.lab
__all__ = ["keyring_daemon"]

PROFILE = "ipc-x86"
ROOT = "/opt/fleetdesk"


@dataclass
class Operator(LabLaptop):
    """This module's laptop and the one lab device it pushes to."""

    device: dict[str, Any]
    env: dict[str, str]
    ssh_config: Path
    pushed: list[str] = field(default_factory=list)  # artifact ids, removed from the device afterwards

    @property
    def name(self) -> str:
        return str(self.device["name"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fleetdesk", "--db", self.db_url, "--ssh-config",
                               str(self.ssh_config), *args], capture_output=True, text=True, env=self.env,
                              timeout=600, check=False)

    def import_model(self, name: str, seed: int) -> dict[str, Any]:
        folder = self.data_dir / "sources" / name
        folder.mkdir(parents=True)
        path = save_cnn(folder / f"{name}.onnx", seed=seed)
        proc = self.cli("model", "import", str(path), "--name", name, "--profile", PROFILE, "--no-device-bench",
                        "--json")
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def artifact_folder(self, artifact_id: str) -> Path:
        return self.data_dir / "artifacts" / "objects" / artifact_id


@pytest.fixture(scope="module")
def operator(fleet: LabFleet, keyring_daemon: KeyringDaemon,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    data = tmp_path_factory.mktemp("push-laptop")
    ssh_config = data / "ssh_config"
    ssh_config.write_text("")  # nothing of this machine's ~/.ssh/config
    env = dict(os.environ, FLEETDESK_DATA_DIR=str(data), FLEETDESK_CONFIG_DIR=str(data / "config"))
    env.pop("FLEETDESK_DB", None)
    op = Operator(data, fleet.by_profile(PROFILE), env, ssh_config)

    async def enrol(fleet_: Fleet) -> None:
        device = fleet_.inventory.add_device(op.device["address"], name=op.name)
        await fleet_.set_login(device, identity_file=fleet.state["ssh_key"])
        fleet_.trust_from_known_hosts(device, fleet.state["known_hosts"])
        (outcome,) = await fleet_.probe([fleet_.inventory.device(op.name)])
        assert outcome.status == "succeeded" and outcome.match is not None, outcome.error
        assert outcome.match.profile == PROFILE

    op.with_fleet(enrol)
    yield op
    # The device as it was found: none of this module's artifacts.
    if op.pushed:
        fleet.ssh(op.device, shlex.join(["rm", "-rf", "--", *(f"{ROOT}/artifacts/{i}" for i in op.pushed)]))


def remote_digests(fleet: LabFleet, device: dict[str, Any], artifact_id: str, names: list[str]) -> dict[str, str]:
    """The device's SHA-256 of each named file of ROOT/artifacts/<id>, by name."""
    folder = f"{ROOT}/artifacts/{artifact_id}"
    listing = fleet.ssh(device, f"cd {folder} && sha256sum " + " ".join(shlex.quote(n) for n in names)).stdout
    return {line.split(None, 1)[1].strip(): line.split()[0] for line in listing.splitlines()}


def on_device(fleet: LabFleet, device: dict[str, Any], command: str) -> str:
    result = fleet.ssh(device, command)
    assert result.exit_status == 0, result.stderr
    return str(result.stdout)


def test_an_imported_model_reaches_the_device_as_the_signed_files_and_a_second_push_sends_nothing(
        fleet: LabFleet, operator: Operator) -> None:
    record = operator.import_model("line-camera", seed=11)
    artifact_id = record["artifacts"][PROFILE]
    operator.pushed.append(artifact_id)

    proc = operator.cli("model", "push", "line-camera@1", operator.name, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["summary"] == {"succeeded": 1, "failed": 0, "unreachable": 0}
    (first,) = result["outcomes"]
    assert (first["device"], first["artifact"], first["status"]) == (operator.name, artifact_id, "succeeded")
    assert first["bytes_sent"] == first["bytes_total"] > 0 and not first["already_there"]
    assert "pushing line-camera@1 to 1 device(s)" in proc.stderr  # progress on stderr, the JSON alone on stdout

    local = operator.artifact_folder(artifact_id)
    manifest = json.loads((local / "manifest.json").read_text())
    files = {f["path"]: f["sha256"] for f in manifest["files"]}
    digests = remote_digests(fleet, operator.device, artifact_id, ["manifest.json", "manifest.json.sig", *files])
    assert digests["manifest.json"] == artifact_id  # the artifact's id is its manifest's hash: exactly what was signed
    assert {name: digests[name] for name in files} == files
    assert digests["manifest.json.sig"] == hashlib.sha256((local / "manifest.json.sig").read_bytes()).hexdigest()

    again = operator.cli("model", "push", "line-camera", operator.name)
    assert again.returncode == 0, again.stdout + again.stderr
    line, summary = again.stdout.strip().splitlines()
    # Every file found on the device by its hash (the agent's whole-copy check needs a provisioned device): none sent.
    assert line.startswith(f"{operator.name}: ") and f", artifact {artifact_id[:12]} ({PROFILE}), 0 B sent, " in line
    assert summary == "1 succeeded, 0 failed, 0 unreachable"
    print(f"\nfirst push: {first['bytes_sent']} bytes in {first['seconds']:.2f} s; second push: {line}")


def test_a_file_damaged_on_the_laptop_after_signing_is_refused_before_any_byte_is_sent(
        fleet: LabFleet, operator: Operator) -> None:
    record = operator.import_model("press-line", seed=12)
    artifact_id = record["artifacts"][PROFILE]
    operator.pushed.append(artifact_id)
    folder = operator.artifact_folder(artifact_id)
    # The last file the push would send before the signature and manifest: a check made file by file, just before
    # each, would have sent the others already.
    damaged = folder / json.loads((folder / "manifest.json").read_text())["files"][-1]["path"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, another hash
    damaged.chmod(0o644)
    damaged.write_bytes(bytes(data))

    proc = operator.cli("model", "push", "press-line@1", operator.name, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["summary"] == {"succeeded": 0, "failed": 1, "unreachable": 0}
    (outcome,) = result["outcomes"]
    error = outcome["error"]
    assert (outcome["status"], error["code"], error["step"]) == ("failed", "bad-artifact", "stage")
    assert repr(damaged.name) in error["message"] and "nothing of it was sent" in error["message"]
    assert "fleetdesk model verify" in error["fix"]
    listing = on_device(fleet, operator.device, f"ls -A {ROOT}/artifacts 2>/dev/null || true").split()
    assert artifact_id not in listing  # not a folder, not a partial file of it

    text = operator.cli("model", "push", "press-line@1", operator.name)
    assert text.returncode == 1
    line = text.stdout.strip().splitlines()[0]
    assert line.startswith(f"{operator.name}: failed: stage: ") and " — run `fleetdesk model verify`" in line


def test_every_change_of_this_module_is_one_signed_entry_and_the_trail_verifies(
        fleet: LabFleet, operator: Operator, tmp_path: Path) -> None:
    """The audit trail as this module's laptop left it (enrolment, imports, pushes), then each remaining kind of
    change once through the CLI: each one entry, in order, by the operator who made it; a viewer's probe is
    refused and audited; `audit verify` passes. (Removing a device is the window's: tests/unit/test_fleet_access.py;
    provisioning's entry is checked in tests/lab/test_provision_lab.py,
    the runtimes' in tests/unit/test_runtime_wheelhouse.py, the rollout actions' in tests/lab/test_rollout_*.)"""
    def trail() -> list[tuple[str, str, str]]:
        proc = operator.cli("audit", "list", "--limit", "1000", "--json")
        assert proc.returncode == 0, proc.stderr
        return [(e["operator"], e["action"], e["outcome"]) for e in reversed(json.loads(proc.stdout))]

    me = default_operator()
    so_far = trail()
    assert so_far[:5] == [("", "audit.genesis", "ok"), (me, "operator.add", "ok"), (me, "device.login", "ok"),
                          (me, "device.trust", "ok"), (me, "device.profile", "ok")], so_far
    imports = [a for a in so_far if a[1] == "model.import"]
    pushes = [a for a in so_far if a[1] == "model.push"]
    assert len(imports) == 2 and pushes, so_far  # two models; the damaged file's push failed and is audited too

    def step(*args: str) -> subprocess.CompletedProcess[str]:
        proc = operator.cli(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    step("run", operator.name, "--", "true")
    step("group", operator.name, "--name", "line audit")
    step("model", "export", "line-camera@1", str(tmp_path))
    step("model", "export-key", str(tmp_path / "fleet.pub"))
    step("model", "remove", "press-line@1", "--yes")
    step("operator", "add", "vic", "--role", "viewer")
    refused = operator.cli("--operator", "vic", "probe", operator.name)
    assert refused.returncode == 2 and "operator vic (viewer) may not discover and probe devices" in refused.stderr
    step("operator", "remove", "vic")
    step("add", "198.18.77.77", "--name", "spare-cam")
    step("rename", "spare-cam", "Prüfstand Linie 4 — Kamera ✓")
    step("discover", "--interface", BRIDGE_ADDRESS, "--timeout", "3")  # the lab's other devices are new here
    step("report", "fleet", "--format", "json", "-o", str(tmp_path / "fleet.json"))
    step("audit", "export", str(tmp_path / "trail.jsonl"))
    raw = trail()[len(so_far):]
    # A browse writes what it hears in batches: one device.discover entry per batch that found a new device.
    added = [a for n, a in enumerate(raw) if not (a[1] == "device.discover" and raw[n - 1][1] == "device.discover")]
    assert added == [(me, "device.run", "ok"), (me, "group.add", "ok"), (me, "model.export", "ok"),
                     (me, "fleet-key.export", "ok"), (me, "model.remove", "ok"), (me, "operator.add", "ok"),
                     ("vic", "device.probe", "refused"), (me, "operator.remove", "ok"), (me, "device.add", "ok"),
                     (me, "device.rename", "ok"), (me, "device.discover", "ok"), (me, "report.export", "ok"),
                     (me, "audit.export", "ok")], added
    verified = step("audit", "verify", "--json")
    assert json.loads(verified.stdout)["ok"] is True
