"""Runtimes an installed package ships (/usr/share/fleetdesk/runtimes, read-only) are listed, found and chosen beside
the operator's own; the operator's store is the only one written. Real wheels from the package index."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetdesk.config import Settings
from fleetdesk.runtime.store import RuntimeStore
from fleetdesk.runtime.wheelhouse import import_wheel
from tests.unit.test_runtime_wheelhouse import PI, fetch


def _shipped(folder: Path) -> str:
    """A runtime made the way packaging/runtimes.py makes the package's, in `folder`; its id."""
    runtime, created = import_wheel(fetch("packaging==24.1", "aarch64", "cp311"), PI, RuntimeStore(folder))
    assert created
    return str(runtime.id)


def test_a_shipped_runtime_is_listed_found_and_chosen_but_never_written(tmp_path: Path) -> None:
    shipped = tmp_path / "usr-share-runtimes"
    rid = _shipped(shipped)
    files_before = sorted(p.relative_to(shipped) for p in shipped.rglob("*"))
    store = RuntimeStore(tmp_path / "mine", shipped=(shipped,))

    [listed] = store.list()
    assert listed.id == rid and listed.shipped and listed.path == shipped / rid
    assert listed.to_json()["shipped"] is True
    assert store.get(rid).shipped and store.get(rid[:6]).id == rid
    newest = store.newest_for("aarch64", "cp311", "rpi4")
    assert newest is not None and newest.id == rid
    assert store.newest_for("x86_64", "cp311") is None

    # The operator imports the same wheel: the shipped runtime serves, nothing is copied, its folder is untouched.
    again, created = import_wheel(fetch("packaging==24.1", "aarch64", "cp311"), PI, store)
    assert (again.id, again.shipped, created) == (rid, True, False)
    assert not any((tmp_path / "mine").glob("[!.]*"))
    # A runtime of the operator's own is written to their store and listed beside the shipped one.
    own, created = import_wheel(fetch("markupsafe==3.0.3", "aarch64", "cp311"), PI, store, base=listed)
    assert created and not own.shipped and own.path.parent == tmp_path / "mine"
    assert {(r.id, r.shipped) for r in store.list()} == {(rid, True), (own.id, False)}
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*")) == files_before


def test_the_same_runtime_in_both_is_listed_once_as_the_operators(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    rid = _shipped(shipped)
    _shipped(tmp_path / "mine")
    store = RuntimeStore(tmp_path / "mine", shipped=(shipped,))
    [listed] = store.list()
    assert listed.id == rid and not listed.shipped and store.get(rid).path == tmp_path / "mine" / rid


def test_the_default_store_reads_the_package_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "pkg"
    rid = _shipped(folder)
    monkeypatch.setenv("FLEETDESK_SHIPPED_RUNTIMES_DIR", str(folder))
    assert Settings.load().shipped_runtimes_dir == folder
    assert [r.id for r in RuntimeStore.default().list()] == [rid]
