"""The fleet's model catalogue (table models, migration 0017): every model version imported on any laptop of the
inventory, so the others list it and know which signed artifacts to fetch (fleetdesk/artifacts/fleet_models.py).

The record is the artifact store's own model record as JSON, kept opaque here: the inventory does not read models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from fleetdesk.errors import ModelNameClashError
from fleetdesk.inventory.models import ModelCatalogueRow
from fleetdesk.inventory.repository import Inventory


@dataclass(frozen=True)
class CataloguedModel:
    """One model version of the fleet's catalogue."""

    name: str
    version: str
    source_sha256: str
    baseline: str  # artifact id of the model as imported
    artifacts: Mapping[str, str] = field(hash=False, compare=False)  # profile -> artifact id
    size_bytes: int
    record: str = field(repr=False, hash=False, compare=False)  # the store's model record, JSON
    imported_by: str
    imported_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def artifact_ids(self) -> list[str]:
        return sorted({self.baseline, *self.artifacts.values()} - {""})


class ModelCatalogue:
    """Reads and writes the catalogue over the inventory's own engine (one short transaction per call)."""

    def __init__(self, inventory: Inventory) -> None:
        # Same package as the Inventory: its engine and its transactions (with their error translation) are shared.
        self._session = inventory._session

    def add(self, model: CataloguedModel) -> CataloguedModel:
        """Catalogue a model version; the same name@version from the same bytes is already there (returned as
        stored), from other bytes a ModelNameClashError that changes nothing."""
        with self._session(write=True) as session:
            row = session.scalars(select(ModelCatalogueRow).where(
                ModelCatalogueRow.name == model.name, ModelCatalogueRow.version == model.version)).one_or_none()
            if row is not None:
                if row.source_sha256 != model.source_sha256:
                    raise ModelNameClashError(
                        f"the fleet already has {model.ref} from other bytes (imported by {row.imported_by}, source "
                        f"SHA-256 {row.source_sha256}); it was not added to the fleet's catalogue",
                        step="catalogue model", fix="import it as a new version (--version) or under another name")
                return _model(row)
            row = ModelCatalogueRow(name=model.name, version=model.version, source_sha256=model.source_sha256,
                                    baseline=model.baseline, artifacts=json.dumps(dict(model.artifacts),
                                                                                   sort_keys=True),
                                    size_bytes=model.size_bytes, record=model.record, imported_by=model.imported_by,
                                    imported_at=model.imported_at)
            session.add(row)
            session.flush()
            return _model(row)

    def models(self) -> list[CataloguedModel]:
        """Every catalogued model version, by name, newest import first within a name."""
        with self._session() as session:
            rows = session.scalars(select(ModelCatalogueRow)).all()
            found = [_model(r) for r in rows]
        return sorted(found, key=lambda m: (m.name, -m.imported_at.timestamp(), m.version))

    def model(self, ref: str) -> CataloguedModel | None:
        """"name" (its newest import) or "name@version"; None when the fleet has no such model."""
        name, _, version = str(ref).partition("@")
        chosen = [m for m in self.models() if m.name == name and (not version or m.version == version)]
        return chosen[0] if chosen else None

    def remove(self, name: str, version: str) -> bool:
        """Take a model version out of the catalogue; False when it was not there."""
        with self._session(write=True) as session:
            row = session.scalars(select(ModelCatalogueRow).where(
                ModelCatalogueRow.name == name, ModelCatalogueRow.version == version)).one_or_none()
            if row is None:
                return False
            session.delete(row)
            return True


def _model(row: ModelCatalogueRow) -> CataloguedModel:
    return CataloguedModel(name=row.name, version=row.version, source_sha256=row.source_sha256,
                           baseline=row.baseline, artifacts=json.loads(row.artifacts or "{}"),
                           size_bytes=row.size_bytes, record=row.record, imported_by=row.imported_by,
                           imported_at=row.imported_at)
