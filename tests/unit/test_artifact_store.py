"""The signed, content-addressed artifact store, with a real signing key (a private gnome-keyring holds its
passphrase) and real ONNX files: round trip, every changed byte found by verify, a name clash writing nothing,
removal, export as a device root that the agent's own check accepts, a full disk leaving nothing behind."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk.agent import state
from fleetdesk.agent.protocol import AgentError
from fleetdesk.artifacts.records import MANIFEST_FORMAT
from fleetdesk.artifacts.signing import KEYRING_ACCOUNT, FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore, key_fingerprint
from fleetdesk.errors import InvalidModelNameError, ModelNameClashError, StoreEntryNotFoundError, StoreFullError
from fleetdesk.models.card import ModelCard
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.report import (
    ACCEPTED,
    BASELINE,
    BASELINE_STATUS,
    CHOSEN,
    REJECTED,
    Accuracy,
    OptimizationReport,
    ProfileResult,
    Tolerance,
    Variant,
)
from fleetdesk.transport import credentials
from tests.fixtures.models.build import save_cnn, save_mlp_external
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.small_disk import small_disk as tmpfs

__all__ = ["keyring_daemon"]


@pytest.fixture(scope="module")
def signer(keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSigningKey]:
    credentials.delete_secret(KEYRING_ACCOUNT)
    key = FleetSigningKey(tmp_path_factory.mktemp("keys"))
    key.public_pem()  # made once for the module: key generation is not what these tests are about
    yield key
    credentials.delete_secret(KEYRING_ACCOUNT)


def variant(recipe: str, status: str, folder: Path | None = None, *, device_ms: dict[str, float] | None = None,
            local_ms: float = 1.0) -> Variant:
    files = ("model.onnx",) if folder is not None else ()
    size = (folder / "model.onnx").stat().st_size if folder is not None else 0
    accuracy = None if recipe == BASELINE else Accuracy(0.001, 0.9999, 1.0, 16, True)
    return Variant(recipe, status, f"{recipe} {status}", files, str(folder or ""), size, "", accuracy, local_ms,
                   device_ms or {}, {"onnxruntime": "test"})


@pytest.fixture
def model(tmp_path: Path) -> tuple[ModelCard, OptimizationReport]:
    """The MLP with external data, imported; an optimization report where ipc-x86 and rpi4 chose the same
    int8-static bytes, jetson-orin-nano an fp16 variant, and rpi5 the model as imported."""
    int8, fp16 = tmp_path / "work" / "int8", tmp_path / "work" / "fp16"
    for folder in (tmp_path / "src", int8, fp16):
        folder.mkdir(parents=True)
    card = inspect_model(save_mlp_external(tmp_path / "src" / "mlp.onnx"), name="mlp")
    save_cnn(int8 / "model.onnx", seed=1)
    save_cnn(fp16 / "model.onnx", seed=2)

    def result(profile: str, chosen: str, folder: Path | None, ms: dict[str, float]) -> ProfileResult:
        variants = [variant(BASELINE, BASELINE_STATUS, local_ms=2.0)]
        if chosen != BASELINE:
            variants.append(variant(chosen, CHOSEN, folder, device_ms=ms))
            variants.append(variant("int8-dynamic", REJECTED))
        else:
            variants[0] = replace(variants[0], status=CHOSEN)
            variants.append(variant("graph", ACCEPTED))
        return ProfileResult(profile, ("graph", chosen), tuple(variants), chosen)

    report = OptimizationReport(card.sha256, 16, True, "generated from the declared input shapes", Tolerance(), (
        result("ipc-x86", "int8-static", int8, {"ipc-01": 0.5}),
        result("rpi4", "int8-static", int8, {"rpi4-01": 3.0}),
        result("jetson-orin-nano", "fp16", fp16, {}),
        result("rpi5", BASELINE, None, {}),
    ))
    return card, report


def tree_digest(root: Path) -> str:
    """Every path and byte under root, as one digest (the lock file's existence aside)."""
    digest = hashlib.sha256()
    if root.exists():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if rel == ".lock":
                continue
            digest.update(rel.encode() + b"\0")
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def add(store: ArtifactStore, model: tuple[ModelCard, OptimizationReport], **kw: str | None) -> object:
    card, report = model
    return store.add_model(card, report, name=kw.pop("name", None) or "mlp", source_folder=Path(card.path).parent,
                           **kw)  # type: ignore[arg-type]


def test_round_trip_dedup_manifest_signature_and_a_no_op_re_import(tmp_path: Path, signer: FleetSigningKey,
                                                                   model: tuple[ModelCard, OptimizationReport]) -> None:
    card, report = model
    store = ArtifactStore(tmp_path / "store", signer)
    record = store.add_model(card, report, name="mlp", source_folder=Path(card.path).parent)
    assert (record.name, record.version, record.source_sha256) == ("mlp", "1", card.sha256)
    assert store.model("mlp") == record and store.model("mlp@1") == record and store.models() == [record]

    # One artifact for the two profiles that chose the same bytes; rpi5 gets the baseline.
    assert record.artifacts["ipc-x86"] == record.artifacts["rpi4"] != record.artifacts["jetson-orin-nano"]
    assert record.artifacts["rpi5"] == record.baseline
    assert len(store.artifacts()) == 3
    int8 = store.artifact(record.artifacts["rpi4"][:10])
    assert (int8.recipe, int8.profiles, int8.model_file) == ("int8-static", ("ipc-x86", "rpi4"), "model.onnx")
    assert int8.manifest["latency"]["device_ms"] == {"ipc-01": 0.5, "rpi4-01": 3.0}
    base = store.artifact(record.baseline)
    assert (base.recipe, base.profiles, base.model_file) == ("fp32", ("rpi5",), "mlp.onnx")
    assert [f.path for f in base.files] == ["mlp.onnx", "mlp.weights"]
    assert base.size_bytes == card.size_bytes

    folder = Path(base.folder)
    data = (folder / "manifest.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == base.id
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    manifest = json.loads(data)
    assert set(manifest) == {"format", "name", "version", "source_sha256", "recipe", "profiles", "model", "files",
                             "inputs", "outputs", "accuracy", "latency", "tolerance", "samples", "created", "tools",
                             "key"}
    assert manifest["format"] == MANIFEST_FORMAT and manifest["source_sha256"] == card.sha256
    assert manifest["inputs"] == [s.to_dict() for s in card.inputs]
    assert manifest["samples"] == {"count": 16, "synthetic": True, "source": "generated from the declared input shapes"}
    assert manifest["key"] == key_fingerprint(signer.public_pem()) and "onnxruntime" in manifest["tools"]
    for f in manifest["files"]:
        assert hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    public = serialization.load_pem_public_key(store.public_key_pem())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(base64.b64decode((folder / "manifest.json.sig").read_bytes()), data)  # raises when wrong

    assert all(r.ok for r in store.verify()) and len(store.verify()) == 3
    # Each result names the record, the recipe and the profiles it serves (from the record, not the manifest).
    assert sorted(r.ref for r in store.verify("mlp@1")) == [
        "mlp@1 fp16 (jetson-orin-nano)", "mlp@1 fp32", "mlp@1 int8-static (ipc-x86, rpi4)"]
    # The report points at the stored copies, not the (deleted) work folders.
    assert record.report is not None
    assert record.report.profile("rpi4").chosen_variant.folder == int8.folder  # type: ignore[union-attr]

    before = tree_digest(store.root)
    assert store.add_model(card, report, name="mlp", source_folder=Path(card.path).parent) == record
    assert store.add_model(card, report, name="mlp", version="1", source_folder=Path(card.path).parent) == record
    assert tree_digest(store.root) == before  # an unchanged re-import writes nothing

    again = ArtifactStore(tmp_path / "store", signer)  # another process opening the same store
    assert again.model("mlp@1") == record


MUTATIONS = {
    "a byte of the .onnx": lambda f: flip(f / "mlp.onnx", 100),
    "a byte of the external data": lambda f: flip(f / "mlp.weights", 7),
    "a byte of the manifest": lambda f: flip(f / "manifest.json", 40),
    "a byte of the signature": lambda f: flip(f / "manifest.json.sig", 5),
    "an added file": lambda f: (f / "extra.bin").write_bytes(b"x"),
    "an added folder": lambda f: (f / "sub").mkdir(),
    "a removed file": lambda f: (f / "mlp.weights").unlink(),
    "a removed signature": lambda f: (f / "manifest.json.sig").unlink(),
    "a file swapped for a symlink": lambda f: swap_for_link(f / "mlp.weights"),
}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def swap_for_link(path: Path) -> None:
    """Same bytes, but reached through a link out of the artifact (store root/elsewhere)."""
    outside = path.parents[2] / "elsewhere"
    path.rename(outside)
    path.symlink_to(outside)


@pytest.mark.parametrize("what", list(MUTATIONS))
def test_verify_detects_every_change(tmp_path: Path, signer: FleetSigningKey,
                                     model: tuple[ModelCard, OptimizationReport], what: str) -> None:
    store = ArtifactStore(tmp_path / "store", signer)
    record = add(store, model)
    baseline = store.model("mlp").baseline
    MUTATIONS[what](store.objects / baseline)
    results = {r.artifact: r for r in store.verify("mlp@1")}
    assert not results[baseline].ok and results[baseline].problems, what
    assert all(r.ok for i, r in results.items() if i != baseline)
    assert not {r.artifact: r for r in store.verify()}[baseline].ok
    assert not store.verify(baseline[:8])[0].ok
    assert record is not None


def test_verify_reports_a_missing_artifact_folder(tmp_path: Path, signer: FleetSigningKey,
                                                  model: tuple[ModelCard, OptimizationReport]) -> None:
    store = ArtifactStore(tmp_path / "store", signer)
    add(store, model)
    baseline = store.model("mlp").baseline
    shutil.rmtree(store.objects / baseline)
    problem = {r.artifact: r for r in store.verify("mlp")}[baseline]
    assert not problem.ok and "missing" in problem.problems[0]


def test_a_name_clash_writes_nothing_and_names_both_hashes_and_the_fix(
        tmp_path: Path, signer: FleetSigningKey, model: tuple[ModelCard, OptimizationReport]) -> None:
    store = ArtifactStore(tmp_path / "store", signer)
    add(store, model, version="1")
    (tmp_path / "other").mkdir()
    other = inspect_model(save_cnn(tmp_path / "other" / "cnn.onnx"))
    report = replace(model[1], model_sha256=other.sha256)
    before = tree_digest(store.root)
    with pytest.raises(ModelNameClashError) as caught:
        store.add_model(other, report, name="mlp", version="1", source_folder=tmp_path / "other")
    assert model[0].sha256 in caught.value.message and other.sha256 in caught.value.message
    assert "--version 2" in (caught.value.fix or "") and "--name" in (caught.value.fix or "")
    assert tree_digest(store.root) == before
    with pytest.raises(InvalidModelNameError):
        store.add_model(other, report, name="../etc", source_folder=tmp_path / "other")
    assert tree_digest(store.root) == before
    # Without --version the other bytes become the next version.
    second = store.add_model(other, report, name="mlp", source_folder=tmp_path / "other")
    assert second.version == "2" and store.model("mlp").version == "2"


def test_remove_drops_unshared_artifacts_and_keeps_shared_ones(tmp_path: Path, signer: FleetSigningKey,
                                                               model: tuple[ModelCard, OptimizationReport]) -> None:
    store = ArtifactStore(tmp_path / "store", signer)
    first = add(store, model, version="1")
    (tmp_path / "other").mkdir()
    other = inspect_model(save_cnn(tmp_path / "other" / "cnn.onnx"))
    second = store.add_model(other, replace(model[1], model_sha256=other.sha256), name="mlp",
                             source_folder=tmp_path / "other")
    # A record that shares v1's baseline (as an alias of v1 would): removing v1 must keep that artifact.
    store._write_record(replace(first, version="alias", artifacts={}))  # type: ignore[arg-type, attr-defined]
    with pytest.raises(StoreEntryNotFoundError, match="several versions"):
        store.remove("mlp")
    gone = store.remove("mlp@1")
    v1_ids = {first.baseline, *first.artifacts.values()}  # type: ignore[attr-defined]
    assert set(gone) == v1_ids - {first.baseline}  # type: ignore[attr-defined]
    assert (store.objects / first.baseline).is_dir()  # type: ignore[attr-defined]
    assert all(not (store.objects / i).exists() for i in gone)
    assert all(r.ok for r in store.verify()) and store.model("mlp@2") == second
    with pytest.raises(StoreEntryNotFoundError):
        store.model("mlp@1")


def test_export_is_a_device_root_the_agent_accepts_and_a_tampered_copy_is_refused(
        tmp_path: Path, signer: FleetSigningKey, model: tuple[ModelCard, OptimizationReport]) -> None:
    store = ArtifactStore(tmp_path / "store", signer)
    record = add(store, model)
    (tmp_path / "out").mkdir()
    tar_path = store.export("mlp@1", tmp_path / "out", profile="rpi4")
    assert tar_path.name == "mlp-1-rpi4.tar"
    artifact_id = record.artifacts["rpi4"]  # type: ignore[attr-defined]
    with tarfile.open(tar_path) as tar:
        names = sorted(m.name for m in tar.getmembers())
        assert names == ["artifacts/" + artifact_id, f"artifacts/{artifact_id}/manifest.json",
                         f"artifacts/{artifact_id}/manifest.json.sig", f"artifacts/{artifact_id}/model.onnx",
                         "keys", "keys/fleet.pub"]
        root = tmp_path / "device-root"
        tar.extractall(root, filter="data")
    assert (root / "keys" / "fleet.pub").read_bytes() == signer.public_pem()
    assert state.verify_artifact(str(root), artifact_id) == {"manifest": True, "files_checked": 1,
                                                             "signature": "valid"}

    everything = store.export("mlp", tmp_path / "out" / "all.tar")
    with tarfile.open(everything) as tar:
        tar.extractall(tmp_path / "all", filter="data")
    for artifact_id in {record.baseline, *record.artifacts.values()}:  # type: ignore[attr-defined]
        assert state.verify_artifact(str(tmp_path / "all"), artifact_id)["signature"] == "valid"
    baseline = tmp_path / "all" / "artifacts" / record.baseline  # type: ignore[attr-defined]
    flip(baseline / "mlp.weights", 3)
    with pytest.raises(AgentError) as caught:
        state.verify_artifact(str(tmp_path / "all"), record.baseline)  # type: ignore[attr-defined]
    assert caught.value.code == "bad-artifact" and "mlp.weights" in caught.value.message
    with pytest.raises(StoreEntryNotFoundError, match="no variant for profile"):
        store.export("mlp", tmp_path / "out", profile="xavier")


def test_stale_staging_from_a_crash_is_cleaned_when_the_store_opens(tmp_path: Path, signer: FleetSigningKey) -> None:
    half = tmp_path / "store" / "tmp" / "artifact-crashed"
    half.mkdir(parents=True)
    (half / "model.onnx").write_bytes(b"half")
    store = ArtifactStore(tmp_path / "store", signer)
    assert not half.exists() and store.models() == [] and store.artifacts() == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB filesystem (tmpfs) for the store: writing a larger model hits ENOSPC for real."""
    with tmpfs(tmp_path / "small", "256k") as folder:
        yield folder


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path: Path, small_disk: Path, signer: FleetSigningKey,
                                                         model: tuple[ModelCard, OptimizationReport]) -> None:
    card, report = model
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.onnx").write_bytes(os.urandom(120_000))  # the variants fit alone, not with the baseline
    (big / "other.onnx").write_bytes(os.urandom(120_000))
    profiles = tuple(replace(p, variants=tuple(replace(v, folder=str(big), files=(f,)) if v.status == CHOSEN and
                                                       v.recipe != BASELINE else v for v in p.variants))
                     for p, f in zip(report.profiles, ("model.onnx", "model.onnx", "other.onnx", ""), strict=True))
    store = ArtifactStore(small_disk / "store", signer)
    with pytest.raises(StoreFullError) as caught:
        store.add_model(card, replace(report, profiles=profiles), name="mlp", source_folder=Path(card.path).parent)
    assert "disk filled" in caught.value.message and "free space" in (caught.value.fix or "")
    leftovers = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*"))
    assert [p for p in leftovers if p not in (".lock", "objects", "tmp")] == []
    assert store.models() == [] and store.artifacts() == []
