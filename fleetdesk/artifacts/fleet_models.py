"""The fleet's models across laptops: `model import` puts each model version in the inventory's catalogue and its
signed files on the shared store (`share_model`); every laptop lists the catalogue with where each model's files
are (`fleet_models`). Fetching the files is the store's (ArtifactStore.artifact / fetch), when they are needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.artifacts.store_records import newest_first, next_version, record_document, record_ids
from fleetdesk.errors import ModelNameClashError
from fleetdesk.inventory.model_catalogue import CataloguedModel

ON_LAPTOP = "on this laptop"
ON_SHARED = "on the shared store"
NO_SHARED = "not available: no shared store set"
NOT_SHARED = "not available: not on the shared store"


@dataclass(frozen=True)
class FleetModel:
    """A model version the operator can use, and where its signed files are for this laptop."""

    record: ModelRecord
    where: str  # ON_LAPTOP, ON_SHARED, NO_SHARED or NOT_SHARED
    imported_by: str  # "" for a model only this laptop's store knows (imported before the catalogue, or on SQLite)
    size_bytes: int

    @property
    def available(self) -> bool:
        return self.where in (ON_LAPTOP, ON_SHARED)


def fleet_version(store: ArtifactStore, name: str, version: str | None, source_sha256: str) -> str | None:
    """The version an import of these bytes takes in the fleet, decided before any work: the one the catalogue
    has for the same bytes, else the next after every version of the name on this laptop and in the catalogue
    (None: this laptop's store decides, as without a catalogue). A given version the fleet holds from other bytes
    is a ModelNameClashError; nothing is written."""
    if store.catalogue is None:
        return version
    records = store.catalogued(name)
    if version is not None:
        taken = next((r for r in records if r.version == version), None)
        if taken is not None and taken.source_sha256 != source_sha256:
            raise ModelNameClashError(
                f"the fleet already has {name}@{version} from other bytes (source SHA-256 {taken.source_sha256}); "
                "nothing was written", step="store model",
                fix=f"import it as a new version (--version {_next(store, name)}, or leave --version out)")
        return version
    same = next((r for r in records if r.source_sha256 == source_sha256), None)
    if same is not None:
        return same.version
    if not records or any(r.source_sha256 == source_sha256 for r in store.models() if r.name == name):
        return None
    return _next(store, name)


def _next(store: ArtifactStore, name: str) -> str:
    local = [r for r in store.models() if r.name == name]
    here = {r.ref for r in local}
    return next_version([*local, *(r for r in store.catalogued(name) if r.ref not in here)])


def share_model(store: ArtifactStore, record: ModelRecord, imported_by: str, at: datetime) -> CataloguedModel | None:
    """Copy the record's artifacts to the shared store (when one is set), then put it in the fleet's catalogue (when
    the store has one): a laptop that lists it finds its files there. Doing it again is harmless (a failed share is
    finished this way)."""
    if store.catalogue is None:
        return None
    store.share(record)
    size = sum(store.artifact(i).size_bytes for i in sorted(set(record_ids(record))))
    return store.catalogue.add(CataloguedModel(
        name=record.name, version=record.version, source_sha256=record.source_sha256, baseline=record.baseline,
        artifacts=dict(record.artifacts), size_bytes=size, record=json.dumps(record_document(record), sort_keys=True),
        imported_by=imported_by, imported_at=at))


def fleet_models(store: ArtifactStore) -> list[FleetModel]:
    """Every model of this laptop's store and of the fleet's catalogue, by name, newest first within a name."""
    entries = {m.ref: m for m in store.catalogue.models()} if store.catalogue is not None else {}
    local = {r.ref: r for r in store.models()}
    found = []
    for record in local.values():
        entry = entries.get(record.ref)
        size = entry.size_bytes if entry else sum(store.artifact(i).size_bytes for i in set(record_ids(record))
                                                  if (store.objects / i).is_dir())
        found.append(FleetModel(record, _where(store, record), entry.imported_by if entry else "", size))
    for record in store.catalogued():
        entry = entries.get(record.ref)
        if record.ref not in local and entry is not None:  # (None: catalogued between the two reads)
            found.append(FleetModel(record, _where(store, record), entry.imported_by, entry.size_bytes))
    return sorted(found, key=lambda m: (m.record.name, newest_first(m.record)))


def _where(store: ArtifactStore, record: ModelRecord) -> str:
    missing = [i for i in set(record_ids(record)) if not (store.objects / i).is_dir()]
    if not missing:
        return ON_LAPTOP
    if store.shared is None:
        return NO_SHARED
    return ON_SHARED if all(store.shared.has(i) for i in missing) else NOT_SHARED
