"""`fleetdesk model ...` end to end through the real command line (main()), with --json, a temporary
FLEETDESK_DATA_DIR (tests/conftest.py) and a real signing key whose passphrase sits in a private gnome-keyring."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk.agent import state
from fleetdesk.cli import main
from fleetdesk.config import Settings
from tests.fixtures.models.build import save_cnn, save_mlp_external
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    try:
        data = json.loads(out) if "--json" in args and out.strip() else out
    except ValueError:
        data = out
    return code, data, err


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "mlp").mkdir()
    (tmp_path / "cnn").mkdir()
    return {"mlp": save_mlp_external(tmp_path / "mlp" / "mlp.onnx"), "cnn": save_cnn(tmp_path / "cnn" / "mlp.onnx")}


def test_import_list_show_verify_export_remove(capsys: pytest.CaptureFixture[str], keyring_daemon: KeyringDaemon,
                                               models: dict[str, Path], tmp_path: Path) -> None:
    code, record, err = cli(capsys, "model", "import", str(models["mlp"]), "--profile", "ipc-x86",
                            "--no-device-bench", "--json")
    assert code == 0, err
    assert (record["ref"], record["source_sha256"]) == ("mlp@1", record["card"]["sha256"])
    assert set(record["artifacts"]) == {"ipc-x86"} and record["report"]["synthetic"] is True
    assert "validate:" in err and "store: stored as mlp@1 (1/1)" in err  # progress on stderr, JSON on stdout
    report = record["report"]["profiles"][0]
    assert report["profile"] == "ipc-x86" and report["variants"][0]["recipe"] == "fp32"

    code, again, _ = cli(capsys, "model", "import", str(models["mlp"]), "--no-device-bench", "--profile", "ipc-x86",
                         "--json")
    assert code == 0 and again["ref"] == "mlp@1" and again["imported_at"] == record["imported_at"]  # a no-op

    code, listed, _ = cli(capsys, "model", "list", "--json")
    assert code == 0 and [r["ref"] for r in listed] == ["mlp@1"]

    code, text, _ = cli(capsys, "model", "show", "mlp")
    assert code == 0 and "profile ipc-x86: chosen" in text and "MAX ABS ERR" in text
    assert "accuracy checked on synthetic data only" in text
    code, shown, _ = cli(capsys, "model", "show", "mlp@1", "--json")
    assert set(shown["artifact_details"]) == {record["baseline"], record["artifacts"]["ipc-x86"]}

    code, verified, _ = cli(capsys, "model", "verify", "--json")
    assert code == 0 and verified["ok"] is True and len(verified["results"]) == len(shown["artifact_details"])

    code, exported, _ = cli(capsys, "model", "export", "mlp@1", str(tmp_path), "--profile", "ipc-x86", "--json")
    assert code == 0 and exported["path"] == str(tmp_path / "mlp-1-ipc-x86.tar")
    with tarfile.open(exported["path"]) as tar:
        tar.extractall(tmp_path / "device", filter="data")
    artifact_id = record["artifacts"]["ipc-x86"]
    assert state.verify_artifact(str(tmp_path / "device"), artifact_id)["signature"] == "valid"
    # The imported model's answers travel signed in the artifact, and the device's agent checks its variant on them.
    manifest = json.loads((tmp_path / "device" / "artifacts" / artifact_id / "manifest.json").read_text())
    assert manifest["golden"] == "golden.npz" and "golden.npz" in {f["path"] for f in manifest["files"]}
    assert "input_reference" not in manifest  # generated samples say nothing of the floor's inputs: no drift reference
    from tests.unit.test_agent_cli import agent

    status, lines, agent_err = agent(tmp_path / "device", "check", artifact_id)
    assert status == 0, agent_err
    assert lines[-1]["samples"] == 8 and lines[-1]["min_cosine"] > 0.99  # the chosen variant, within tolerance

    code, pem, _ = cli(capsys, "model", "export-key")
    assert code == 0 and isinstance(serialization.load_pem_public_key(pem.encode()), Ed25519PublicKey)
    assert (tmp_path / "device" / "keys" / "fleet.pub").read_text() == pem

    # One changed byte anywhere: verify says which file and exits 1.
    stored = Settings.load().data_dir / "artifacts" / "objects" / record["baseline"] / "mlp.weights"
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF
    stored.write_bytes(bytes(data))
    code, verified, _ = cli(capsys, "model", "verify", "mlp", "--json")
    assert code == 1 and verified["ok"] is False
    bad = next(r for r in verified["results"] if not r["ok"])
    assert bad["artifact"] == record["baseline"] and any("mlp.weights" in p for p in bad["problems"])

    code, _, err = cli(capsys, "model", "remove", "mlp@1", "--json")
    assert code == 2 and "--yes" in err  # no silent removal without confirmation
    code, removed, _ = cli(capsys, "model", "remove", "mlp@1", "--yes", "--json")
    assert code == 0 and set(removed["artifacts_removed"]) == set(shown["artifact_details"])
    code, listed, _ = cli(capsys, "model", "list", "--json")
    assert listed == []


def test_bad_input_is_an_error_with_a_fix_and_writes_nothing(capsys: pytest.CaptureFixture[str],
                                                             keyring_daemon: KeyringDaemon, models: dict[str, Path],
                                                             tmp_path: Path) -> None:
    code, error, err = cli(capsys, "model", "import", str(models["mlp"]), "--profile", "no-such-board",
                           "--no-device-bench", "--json")
    assert code == 2 and error["error"] == "ProfileError" and "rpi4" in error["fix"]
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    code, error, _ = cli(capsys, "model", "import", str(not_onnx), "--profile", "rpi4", "--no-device-bench", "--json")
    assert code == 2 and error["error"] == "NotOnnxError"
    store = Settings.load().data_dir / "artifacts"
    assert not (store / "objects").exists() and not (store / "models").exists()

    code, _, err = cli(capsys, "model", "import", str(models["mlp"]), "--name", "m", "--version", "1", "--profile",
                       "rpi4", "--no-device-bench", "--json")
    assert code == 0, err
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    code, error, err = cli(capsys, "model", "import", str(models["cnn"]), "--name", "m", "--version", "1",
                           "--profile", "rpi4", "--no-device-bench", "--json")
    assert code == 2 and error["error"] == "ModelNameClashError" and "--version 2" in error["fix"]
    assert "optimize" not in err and "build" not in err  # refused before any optimization
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before
    code, error, _ = cli(capsys, "model", "show", "nothing-here", "--json")
    assert code == 2 and error["error"] == "StoreEntryNotFoundError" and "m@1" in error["fix"]


def test_an_import_with_sample_inputs_carries_their_statistics_signed_for_the_devices_drift_watch(
        capsys: pytest.CaptureFixture[str], keyring_daemon: KeyringDaemon, models: dict[str, Path],
        tmp_path: Path) -> None:
    """The operator's samples become the artifact's input reference (per feature: mean, std, quantiles, histogram),
    listed and signed in its manifest, and what the device's model server loads to score live inputs' drift."""
    import numpy as np

    from fleetdesk.agent.drift import load_reference
    from fleetdesk.agent.shadowstats import reference_statistics

    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(7)
    arrays = [rng.normal(3.0, 2.0, size=(1, 64)).astype(np.float32) for _ in range(12)]
    for n, array in enumerate(arrays):
        np.save(samples / f"s{n:02d}.npy", array)
    code, record, err = cli(capsys, "model", "import", str(models["mlp"]), "--samples", str(samples), "--profile",
                            "ipc-x86", "--no-device-bench", "--json")
    assert code == 0, err
    assert record["report"]["synthetic"] is False
    code, exported, _ = cli(capsys, "model", "export", "mlp@1", str(tmp_path), "--profile", "ipc-x86", "--json")
    assert code == 0
    with tarfile.open(exported["path"]) as tar:
        tar.extractall(tmp_path / "device", filter="data")
    artifact_id = record["artifacts"]["ipc-x86"]
    folder = tmp_path / "device" / "artifacts" / artifact_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input_reference"] == "input_reference.json"
    assert "input_reference.json" in {f["path"] for f in manifest["files"]}
    assert state.verify_artifact(str(tmp_path / "device"), artifact_id)["signature"] == "valid"
    stored = json.loads((folder / "input_reference.json").read_text())["inputs"]
    assert set(stored) == {"features"} and len(stored["features"]) == 64  # one entry per feature (axis 1)
    assert stored["features"] == reference_statistics(np.concatenate(arrays, axis=0))
    assert abs(stored["features"][0]["mean"] - float(np.concatenate(arrays)[:, 0].astype(np.float64).mean())) < 1e-9
    # The device reads it only as a file the signature verification read.
    listed = {str((folder / f["path"]).resolve()): f for f in manifest["files"]}
    assert load_reference(str(folder), listed) == stored
