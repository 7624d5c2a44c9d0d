"""Models across laptops (issue 23): a model imported on laptop A is in the inventory's catalogue (migration 0017)
and its signed files on the shared store path; laptop B, with its own artifact store, the same inventory and the
same fleet key, lists it and fetches its files when it needs them, verified before use. A tampered or missing
shared copy, or a laptop without a shared store, is a clear error that leaves B's store as it was.
Real parts: SQLite and the real PostgreSQL the tests start, a real ONNX import, a real signing key."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fleetdesk.artifacts.fleet_models import NO_SHARED, NOT_SHARED, ON_LAPTOP, ON_SHARED, fleet_models
from fleetdesk.artifacts.signing import KEYRING_ACCOUNT, FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.cli import main
from fleetdesk.errors import ArtifactStoreError, ModelNameClashError, StoreEntryNotFoundError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.changes import Change, ChangeFeed
from fleetdesk.inventory.model_catalogue import ModelCatalogue
from fleetdesk.model_import import import_model
from fleetdesk.profiles import load_profiles
from fleetdesk.transport import credentials
from tests.fixtures.models.build import save_cnn
from tests.keyring_daemon import KeyringDaemon

PROFILE = "ipc-x86"


@pytest.fixture(scope="module")
def fleet_key(keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSigningKey]:
    """The fleet's signing key, which every laptop of the fleet carries (the same keys/ folder and passphrase)."""
    credentials.delete_secret(KEYRING_ACCOUNT)
    key = FleetSigningKey(tmp_path_factory.mktemp("keys"))
    key.public_pem()
    yield key
    credentials.delete_secret(KEYRING_ACCOUNT)


def store_of(root: Path, key: FleetSigningKey, fleet: Fleet, shared: Path | None) -> ArtifactStore:
    return ArtifactStore(root, key, shared=shared, catalogue=ModelCatalogue(fleet.inventory))


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def imported(laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, tmp_path: Path
             ) -> tuple[ArtifactStore, Path]:
    """Laptop A (alice) imports the small CNN with a shared store folder set; returns A's store and the folder."""
    alice, _ = laptops
    shared = tmp_path / "shared"
    shared.mkdir()  # the mounted share
    store_a = store_of(tmp_path / "a", fleet_key, alice, shared)
    (tmp_path / "src").mkdir()
    import_model(save_cnn(tmp_path / "src" / "cnn.onnx"), access=alice.access, name="cnn", profiles=[PROFILE],
                 store=store_a, catalog=alice.profiles)
    return store_a, shared


def test_a_model_imported_on_one_laptop_is_listed_and_fetched_verified_on_another(
        laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, imported: tuple[ArtifactStore, Path],
        tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    store_a, shared = imported
    _, bob = laptops
    record_a = store_a.model("cnn@1")
    ids = sorted({record_a.baseline, *record_a.artifacts.values()})
    assert all((shared / "objects" / i).is_dir() for i in ids)  # import copied them there
    assert not list((shared / "tmp").iterdir())  # nothing half-written left behind

    store_b = store_of(tmp_path / "b", fleet_key, bob, shared)
    [listed] = fleet_models(store_b)
    assert (listed.record.ref, listed.where, listed.imported_by, listed.available) == ("cnn@1", ON_SHARED, "alice",
                                                                                       True)
    assert listed.size_bytes == sum(store_a.artifact(i).size_bytes for i in ids)
    assert not (tmp_path / "b" / "objects").exists()  # listing fetches nothing

    # What push and rollout staging ask the store for: the record, then each artifact by id.
    record_b = store_b.model("cnn")
    assert (record_b.ref, dict(record_b.artifacts), record_b.source_sha256) == (
        "cnn@1", dict(record_a.artifacts), record_a.source_sha256)
    for artifact_id in ids:
        fetched = store_b.artifact(artifact_id)
        assert fetched.folder == str(tmp_path / "b" / "objects" / artifact_id)
        assert files_of(Path(fetched.folder)) == files_of(store_a.objects / artifact_id)  # byte for byte
    assert all(r.ok for r in store_b.verify("cnn@1"))
    assert fleet_models(store_b)[0].where == ON_LAPTOP

    # The command line lists it from the catalogue, saying where its files are for that laptop.
    monkeypatch.setenv("FLEETDESK_SHARED_STORE", str(shared))
    assert main(["--db", db_url, "model", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["ref"], row["files"], row["available"], row["imported_by"]) == ("cnn@1", ON_SHARED, True, "alice")
    monkeypatch.delenv("FLEETDESK_SHARED_STORE")
    assert main(["--db", db_url, "model", "list"]) == 0
    assert NO_SHARED in capsys.readouterr().out


def test_a_tampered_shared_copy_is_refused_and_nothing_enters_the_laptops_store(
        laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, imported: tuple[ArtifactStore, Path],
        tmp_path: Path) -> None:
    store_a, shared = imported
    _, bob = laptops
    artifact_id = store_a.model("cnn@1").artifacts[PROFILE]
    copy = shared / "objects" / artifact_id
    # A laptop with another fleet key refuses even an intact copy: the signature is not its fleet's.
    other = FleetSigningKey(tmp_path / "other-keys")
    store_x = ArtifactStore(tmp_path / "x", other, shared=shared)
    with pytest.raises(ArtifactStoreError) as foreign:
        store_x.artifact(artifact_id)
    assert "does not match manifest.json and this laptop's fleet key" in foreign.value.message
    assert foreign.value.fix and "give this laptop the fleet's key" in foreign.value.fix
    assert not (store_x.objects / artifact_id).exists()

    model_file = next(p for p in copy.iterdir() if p.suffix == ".onnx")
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))

    store_b = store_of(tmp_path / "b", fleet_key, bob, shared)
    with pytest.raises(ArtifactStoreError) as caught:
        store_b.artifact(artifact_id)
    exc = caught.value
    assert str(copy) in exc.message and "fails verification" in exc.message and model_file.name in exc.message
    assert exc.fix and str(copy) in exc.fix and "model import" in exc.fix
    assert not (store_b.objects / artifact_id).exists()
    assert not list((store_b.root / "tmp").iterdir())
    [result] = store_b.verify(artifact_id)  # `model verify` says the same, and takes nothing either
    assert not result.ok and "fails verification" in result.problems[0]
    assert not (store_b.objects / artifact_id).exists()

    # A shared copy that is gone names the folder it looked in.
    baseline = store_a.model("cnn@1").baseline
    gone = shared / "objects" / baseline
    for path in sorted(gone.rglob("*"), reverse=True):
        path.unlink()
    gone.rmdir()
    assert fleet_models(store_b)[0].where == NOT_SHARED
    with pytest.raises(ArtifactStoreError, match="is not on the shared store") as missing:
        store_b.artifact(baseline)
    assert str(gone) in missing.value.message


def test_a_laptop_without_a_shared_store_lists_the_model_and_says_why_it_cannot_fetch_it(
        laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, imported: tuple[ArtifactStore, Path],
        tmp_path: Path) -> None:
    store_a, _ = imported
    _, bob = laptops
    store_b = store_of(tmp_path / "b", fleet_key, bob, None)
    [listed] = fleet_models(store_b)
    assert (listed.where, listed.available) == (NO_SHARED, False)
    with pytest.raises(StoreEntryNotFoundError) as caught:
        store_b.artifact(store_a.model("cnn@1").baseline)
    assert "no shared store is set" in caught.value.message
    assert caught.value.fix and "FLEETDESK_SHARED_STORE" in caught.value.fix
    assert not (store_b.root / "objects").exists()


def test_another_laptop_importing_other_bytes_under_the_name_gets_the_next_fleet_version(
        laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, imported: tuple[ArtifactStore, Path],
        tmp_path: Path) -> None:
    _, shared = imported
    _, bob = laptops
    store_b = store_of(tmp_path / "b", fleet_key, bob, shared)
    other = save_cnn(tmp_path / "other.onnx", seed=5)
    with pytest.raises(ModelNameClashError, match="the fleet already has cnn@1"):
        import_model(other, access=bob.access, name="cnn", version="1", profiles=[PROFILE], store=store_b,
                     catalog=bob.profiles)
    assert not (store_b.root / "models").exists()  # refused before any work: nothing written
    record = import_model(other, access=bob.access, name="cnn", profiles=[PROFILE], store=store_b,
                          catalog=bob.profiles)
    assert record.ref == "cnn@2"
    assert [(m.ref, m.imported_by) for m in ModelCatalogue(bob.inventory).models()] == [("cnn@2", "bob"),
                                                                                       ("cnn@1", "alice")]


class Heard:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.lock = threading.Lock()

    def on_changes(self, burst: Sequence[Change]) -> None:
        with self.lock:
            self.changes += burst


def test_a_window_on_postgresql_hears_a_model_imported_on_another_laptop(
        postgres_url: str, fleet_key: FleetSigningKey, tmp_path: Path) -> None:
    open_inventory(postgres_url).close()
    heard = Heard()
    feed = ChangeFeed.for_url(postgres_url, heard.on_changes, lambda _up, _why: None)
    assert feed is not None
    feed.start()
    try:
        assert feed.connected.wait(10), "the feed never connected"
        alice = Fleet(open_inventory(postgres_url), load_profiles(), operator="alice")
        try:
            store = store_of(tmp_path / "a", fleet_key, alice, None)
            import_model(save_cnn(tmp_path / "cnn.onnx"), access=alice.access, name="cnn", profiles=[PROFILE],
                         store=store, catalog=alice.profiles)
        finally:
            asyncio.run(alice.close())
        deadline = time.monotonic() + 10
        while not any(c.table == "models" and c.op == "INSERT" for c in heard.changes):
            assert time.monotonic() < deadline, f"the model insert was not heard: {heard.changes}"
            time.sleep(0.01)
    finally:
        feed.stop()


def test_removing_a_model_takes_it_out_of_the_fleets_list_and_keeps_what_other_laptops_hold(
        laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, imported: tuple[ArtifactStore, Path],
        tmp_path: Path) -> None:
    from fleetdesk.model_import import remove_model

    store_a, shared = imported
    _, bob = laptops
    store_b = store_of(tmp_path / "b", fleet_key, bob, shared)
    record, gone = remove_model(store_b, bob.access, "cnn@1")  # never fetched on B: nothing of it there to delete
    assert (record.ref, gone) == ("cnn@1", [])
    assert fleet_models(store_b) == []
    assert [m.where for m in fleet_models(store_a)] == [ON_LAPTOP]  # A's own copy stays, listed as this laptop's
    assert {p.name for p in (shared / "objects").iterdir()} == set(store_a.model("cnn@1").artifacts.values()) | {
        store_a.model("cnn@1").baseline}


def test_an_unmounted_shared_store_is_said_and_the_same_import_again_shares_the_model(
        laptops: tuple[Fleet, Fleet], fleet_key: FleetSigningKey, tmp_path: Path) -> None:
    alice, bob = laptops
    shared = tmp_path / "not-mounted"
    store_a = store_of(tmp_path / "a", fleet_key, alice, shared)
    model = save_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(ArtifactStoreError) as caught:
        import_model(model, access=alice.access, name="cnn", profiles=[PROFILE], store=store_a, catalog=alice.profiles)
    assert str(shared) in caught.value.message and "does not exist" in caught.value.message
    assert caught.value.fix and "model import" in caught.value.fix
    assert not shared.exists()  # not made on this laptop's disk
    assert [r.ref for r in store_a.models()] == ["cnn@1"]  # what was imported is kept on this laptop
    assert ModelCatalogue(alice.inventory).models() == []  # and the fleet is not told of files it cannot fetch

    shared.mkdir()  # mounted now
    again = import_model(model, access=alice.access, name="cnn", profiles=[PROFILE], store=store_a,
                         catalog=alice.profiles)
    assert again.ref == "cnn@1" and [m.ref for m in ModelCatalogue(alice.inventory).models()] == ["cnn@1"]
    assert {p.name for p in (shared / "objects").iterdir()} == {again.baseline, *again.artifacts.values()}

    # Laptop B importing the same bytes gets the fleet's model: nothing optimized or stored again.
    store_b = store_of(tmp_path / "b", fleet_key, bob, shared)
    same = import_model(model, access=bob.access, name="cnn", profiles=[PROFILE], store=store_b,
                        catalog=bob.profiles)
    assert (same.ref, dict(same.artifacts)) == ("cnn@1", dict(again.artifacts))
    assert not store_b.objects.exists() and store_b.models() == []
