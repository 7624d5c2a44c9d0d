"""The content-addressed, signed artifact store under the user data folder: model records and their artifacts.

    ROOT/objects/<id>/...                one artifact per folder (layout in fleetdesk/artifacts/records.py)
    ROOT/models/<name>/<version>.json    one model record: card, optimization report, artifact ids per profile
    ROOT/tmp/                            staging; whatever is left there is a crashed write, removed on next write
    ROOT/.lock                           flock held by every writer (the GUI and the CLI may run at once)

With a shared inventory, `model(ref)` also finds the models other laptops imported (the fleet's catalogue,
migration 0017), and `artifact(id)` fetches an artifact this laptop lacks from the shared store path, verified as
`verify` checks the local ones, before anything uses it (`fetch`).

An artifact appears by renaming a complete staging folder into objects/, and a record by replacing its file
(temp + fsync + rename): a crash leaves either nothing or a whole artifact, never half of one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk.artifacts.records import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Artifact,
    ArtifactFile,
    ModelRecord,
    VerifyResult,
)
from fleetdesk.artifacts.shared_store import SETTING as SHARED_SETTING
from fleetdesk.artifacts.shared_store import SharedStore
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store_files import (
    check_relative,
    copy_file,
    fsync_dir,
    full_disk_error,
    tar_add_dir,
    tar_add_file,
    tar_info,
    write_file_bytes,
)
from fleetdesk.artifacts.store_files import write_golden as write_golden  # re-exported: importers take it from here
from fleetdesk.artifacts.store_files import write_reference as write_reference
from fleetdesk.artifacts.store_records import RECORD_FORMAT as RECORD_FORMAT
from fleetdesk.artifacts.store_records import (
    baseline_device_ms,
    baseline_local_ms,
    current_tool_versions,
    newest_first,
    next_version,
    recipe_for,
    record_document,
    record_from_document,
    record_ids,
    utc_now,
)
from fleetdesk.artifacts.store_records import canonical_json as canonical_json
from fleetdesk.artifacts.store_records import check_name as check_name
from fleetdesk.artifacts.store_records import key_fingerprint as key_fingerprint
from fleetdesk.config import Settings
from fleetdesk.errors import ArtifactStoreError, ModelNameClashError, StoreEntryNotFoundError
from fleetdesk.files import exclusive_lock, sha256_file
from fleetdesk.inventory import Inventory
from fleetdesk.inventory.model_catalogue import ModelCatalogue
from fleetdesk.models.card import ModelCard
from fleetdesk.models.report import BASELINE, OptimizationReport, Variant

GOLDEN_NAME = "golden.npz"  # sample inputs and the imported model's outputs on them, read by `fleetdesk-agent check`
# Statistics of each input over the operator's samples (fleetdesk.agent.shadowstats.reference_document), what the
# device's model server scores live inputs against for drift; the manifest names it under "input_reference".
REFERENCE_NAME = "input_reference.json"
_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class _Planned:
    """One artifact to write: where its files come from and what its manifest says."""

    sources: tuple[tuple[str, Path], ...]  # (path inside the artifact, file to copy)
    model_file: str
    recipe: str
    profiles: tuple[str, ...]
    variant: Variant | None


class ArtifactStore:
    """`ArtifactStore.default().add_model(card, report, name="resnet", source_folder=...)`."""

    def __init__(self, root: Path, signer: FleetSigningKey, *, shared: Path | None = None,
                 catalogue: ModelCatalogue | None = None) -> None:
        self.root = Path(root)
        self.signer = signer
        self.shared = SharedStore(shared) if shared is not None else None  # where artifacts are shared and fetched
        self.catalogue = catalogue  # the fleet's models (a shared inventory): found by model() too
        with contextlib.suppress(OSError), self._locked(blocking=False) as got:
            if got:
                self._clean_staging()

    @classmethod
    def default(cls, settings: Settings | None = None, inventory: Inventory | None = None) -> ArtifactStore:
        """This laptop's store, fetching from the settings' shared store path (FLEETDESK_SHARED_STORE) when one is
        set; with the inventory, it also finds the fleet's models (the catalogue)."""
        settings = settings or Settings.load()
        return cls(settings.data_dir / "artifacts", FleetSigningKey.default(settings), shared=settings.shared_store,
                   catalogue=ModelCatalogue(inventory) if inventory is not None else None)

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def records(self) -> Path:
        return self.root / "models"

    def public_key_pem(self) -> bytes:
        return self.signer.public_pem()

    # -- reading ----------------------------------------------------------------------------------------

    def models(self) -> list[ModelRecord]:
        """Every model record, by name, newest version first within a name."""
        found = []
        if self.records.is_dir():
            for path in sorted(self.records.glob("*/*.json")):
                found.append(self._read_record(path))
        return sorted(found, key=lambda r: (r.name, newest_first(r)))

    def model(self, ref: str) -> ModelRecord:
        """"name" (its newest version) or "name@version"; with a catalogue, of this laptop's models and the fleet's
        (the catalogue is not read when this laptop has the name@version asked for)."""
        name, _, version = str(ref).partition("@")
        versions = [r for r in self.models() if r.name == name]
        if self.catalogue is not None and not (version and any(r.version == version for r in versions)):
            here = {r.ref for r in versions}
            versions += [r for r in self.catalogued(name) if r.ref not in here]
            versions.sort(key=newest_first)
        if version:
            versions = [r for r in versions if r.version == version]
        if not versions:
            known = ", ".join(sorted({r.ref for r in self.models()} | {r.ref for r in self.catalogued()})) or "none yet"
            raise StoreEntryNotFoundError(f"no model {str(ref)[:80]!r} in the store", step="find model",
                                          fix=f"give NAME or NAME@VERSION of a stored model ({known[:400]})")
        return versions[0]

    def catalogued(self, name: str | None = None) -> list[ModelRecord]:
        """The records of the fleet's catalogue (all, or of one name); none without a catalogue."""
        if self.catalogue is None:
            return []
        out = []
        for entry in self.catalogue.models():
            if name is None or entry.name == name:
                try:
                    out.append(record_from_document(json.loads(entry.record)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ArtifactStoreError(f"the fleet's catalogue entry of {entry.ref} cannot be read ({exc})",
                                             step="read model", fix=f"import {entry.ref} again on a laptop that "
                                                                    "has it") from None
        return out

    def artifacts(self) -> list[Artifact]:
        out = []
        if self.objects.is_dir():
            for folder in sorted(self.objects.iterdir()):
                if _ID.match(folder.name):
                    with contextlib.suppress(ArtifactStoreError):
                        out.append(self._read_artifact(folder))
        return out

    def artifact(self, id_or_prefix: str) -> Artifact:
        """An artifact by its id or a unique prefix of at least 6 hex digits."""
        text = str(id_or_prefix).lower()
        if not re.fullmatch(r"[0-9a-f]{6,64}", text):
            raise StoreEntryNotFoundError(f"{str(id_or_prefix)[:80]!r} is not an artifact id", step="find artifact",
                                          fix="give the artifact's SHA-256 or its first 6 or more hex digits")
        matches = [p for p in self.objects.glob(f"{text}*") if _ID.match(p.name)] if self.objects.is_dir() else []
        if not matches and _ID.match(text):
            return self.fetch(text)  # imported on another laptop: from the shared store, verified
        if len(matches) != 1:
            what = "no artifact" if not matches else f"{len(matches)} artifacts"
            raise StoreEntryNotFoundError(f"{what} with id {text}{'' if len(text) == 64 else '...'} in the store",
                                          step="find artifact", fix="give more of the id (`fleetdesk model show REF` "
                                                                    "lists the ids)" if matches else
                                          "list the stored models with `fleetdesk model list`")
        return self._read_artifact(matches[0])

    def _read_artifact(self, folder: Path) -> Artifact:
        try:
            data = (folder / MANIFEST_NAME).read_bytes()
            manifest = json.loads(data)
            files = tuple(ArtifactFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in manifest["files"])
            return Artifact(id=folder.name, folder=str(folder), name=str(manifest["name"]),
                            version=str(manifest["version"]), recipe=str(manifest["recipe"]),
                            profiles=tuple(manifest.get("profiles", ())), model_file=str(manifest["model"]),
                            files=files, size_bytes=sum(f.size for f in files), created=str(manifest["created"]),
                            manifest=manifest)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactStoreError(f"artifact {folder.name}: manifest.json cannot be read ({exc})",
                                     step="read artifact",
                                     fix="run `fleetdesk model verify`; remove and re-import the model it belongs "
                                         "to") from None

    def _read_record(self, path: Path) -> ModelRecord:
        try:
            return record_from_document(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactStoreError(f"the model record {path} cannot be read ({exc})", step="read model",
                                     fix="restore it from a backup, or delete it and import the model again") from None

    # -- adding -----------------------------------------------------------------------------------------

    def existing(self, name: str, version: str | None, source_sha256: str) -> ModelRecord | None:
        """What `add_model` would do, decided before any work: the stored record when this exact model is
        already there (a re-import is a no-op), None when it would be new; ModelNameClashError when
        name@version holds other bytes. Nothing is written."""
        check_name(name)
        if version is not None:
            check_name(version, "version")
        same_name = [r for r in self.models() if r.name == name]
        if version is None:
            return next((r for r in same_name if r.source_sha256 == source_sha256), None)
        record = next((r for r in same_name if r.version == version), None)
        if record is None:
            return None
        if record.source_sha256 != source_sha256:
            raise ModelNameClashError(
                f"model {name}@{version} is already stored from other bytes (stored source SHA-256 "
                f"{record.source_sha256}, this file {source_sha256}); nothing was written", step="store model",
                fix=f"import it as a new version (--version {next_version(same_name)}, or leave --version out) "
                    f"or under another name (--name {name}-2)")
        return record

    def add_model(self, card: ModelCard, report: OptimizationReport, *, name: str, version: str | None = None,
                  source_folder: Path, golden: Path | None = None, reference: Path | None = None) -> ModelRecord:
        """Store the model as imported (the baseline) and each profile's chosen variant, signed, and its record.

        Variants with the same bytes become one artifact listing all their profiles. An unchanged re-import
        returns the stored record and writes nothing; on any failure nothing of this call is left.
        `golden` (made by `write_golden`) goes into every artifact as golden.npz, listed and signed like the
        model, and named by the manifest's "golden" key: the device checks its variant against it. `reference`
        (input statistics over the operator's samples) goes in the same way as input_reference.json, named by the
        manifest's "input_reference" key: the device's model server scores its live inputs' drift against it.
        """
        with self._locked():
            self._clean_staging()
            found = self.existing(name, version, card.sha256)
            if found is not None:
                return found
            if version is None:
                version = next_version([r for r in self.models() if r.name == name])
            plans = self._plan(card, report, Path(source_folder))
            for carried, path in ((GOLDEN_NAME, golden), (REFERENCE_NAME, reference)):
                if path is not None:
                    plans = [_with_file(plan, carried, Path(path)) for plan in plans]
            pem = self.public_key_pem()
            created_now: list[Path] = []
            try:
                ids = []
                for plan in plans:
                    ids.append(self._write_artifact(plan, card, report, name, version, pem, created_now))
                record = self._record(card, report, name, version, plans, ids)
                self._write_record(record)
            except BaseException:
                for folder in created_now:
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            return record

    def _plan(self, card: ModelCard, report: OptimizationReport, source_folder: Path) -> list[_Planned]:
        model_path = Path(card.path)
        baseline_sources = ((model_path.name, model_path),
                            *((ext.location.replace(os.sep, "/"), source_folder / ext.location)
                              for ext in card.external_files))
        baseline_profiles = []
        groups: dict[tuple[tuple[str, str], ...], list[tuple[str, Variant]]] = {}
        for result in report.profiles:
            variant = result.chosen_variant
            if variant.recipe == BASELINE:
                baseline_profiles.append(result.profile)
                continue
            if not variant.files:
                raise ArtifactStoreError(f"profile {result.profile}: the chosen variant {variant.recipe} has no "
                                         "files", step="store model", fix="re-run the import (the optimizer lost "
                                                                          "its output)")
            folder = Path(variant.folder)
            key = tuple((rel, sha256_file(folder / rel)) for rel in variant.files)
            groups.setdefault(key, []).append((result.profile, variant))
        plans = [_Planned(tuple(baseline_sources), model_path.name, BASELINE, tuple(sorted(baseline_profiles)),
                          None)]
        for members in groups.values():
            variant = members[0][1]
            device_ms: dict[str, float] = {}
            for _profile, v in members:
                device_ms.update(v.device_latency_ms)
            merged = replace(variant, device_latency_ms=device_ms)
            folder = Path(variant.folder)
            sources = tuple((rel, folder / rel) for rel in variant.files)
            plans.append(_Planned(sources, variant.files[0], variant.recipe,
                                  tuple(sorted(p for p, _v in members)), merged))
        return plans

    def _manifest(self, plan: _Planned, files: list[dict[str, Any]], card: ModelCard, report: OptimizationReport,
                  name: str, version: str, pem: bytes) -> dict[str, Any]:
        variant = plan.variant
        accuracy = variant.accuracy.to_dict() if variant is not None and variant.accuracy is not None else None
        local_ms = variant.local_latency_ms if variant is not None else baseline_local_ms(report)
        device_ms = dict(variant.device_latency_ms) if variant is not None else baseline_device_ms(report)
        return {
            "format": MANIFEST_FORMAT, "name": name, "version": version, "source_sha256": card.sha256,
            "recipe": plan.recipe, "profiles": list(plan.profiles), "model": plan.model_file, "files": files,
            "inputs": [spec.to_dict() for spec in card.inputs], "outputs": [spec.to_dict() for spec in card.outputs],
            "accuracy": accuracy, "latency": {"local_ms": local_ms, "device_ms": device_ms},
            "tolerance": report.tolerance.to_dict(),
            "samples": {"count": report.samples, "synthetic": report.synthetic, "source": report.samples_source},
            "created": utc_now(), "tools": current_tool_versions(), "key": key_fingerprint(pem),
            **({"golden": GOLDEN_NAME} if any(rel == GOLDEN_NAME for rel, _ in plan.sources) else {}),
            **({"input_reference": REFERENCE_NAME} if any(rel == REFERENCE_NAME for rel, _ in plan.sources) else {}),
        }

    def _write_artifact(self, plan: _Planned, card: ModelCard, report: OptimizationReport, name: str, version: str,
                        pem: bytes, created_now: list[Path]) -> str:
        staging = self.root / "tmp" / f"artifact-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            files = []
            for rel, source in plan.sources:
                check_relative(rel)
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                files.append({"path": rel, **copy_file(source, target)})
            data = canonical_json(self._manifest(plan, files, card, report, name, version, pem))
            signature = self.signer.sign(data)
            write_file_bytes(staging / MANIFEST_NAME, data)
            write_file_bytes(staging / SIGNATURE_NAME, base64.b64encode(signature) + b"\n")
            artifact_id = hashlib.sha256(data).hexdigest()
            self.objects.mkdir(parents=True, exist_ok=True)
            final = self.objects / artifact_id
            os.rename(staging, final)
            created_now.append(final)
            fsync_dir(self.objects)
            return artifact_id
        except OSError as exc:
            raise full_disk_error(exc, f"storing the {plan.recipe} artifact of {name}@{version}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _record(self, card: ModelCard, report: OptimizationReport, name: str, version: str,
                plans: Sequence[_Planned], ids: Sequence[str]) -> ModelRecord:
        by_profile = {profile: artifact_id for plan, artifact_id in zip(plans, ids, strict=True)
                      for profile in plan.profiles}
        # The work folders are gone after the import: the report points at the stored copies instead.
        stored = {(plan.recipe, profile): self.objects / artifact_id
                  for plan, artifact_id in zip(plans, ids, strict=True) for profile in plan.profiles}
        results = []
        for result in report.profiles:
            variants = tuple(replace(v, folder=str(stored.get((v.recipe, result.profile), "")))
                             for v in result.variants)
            results.append(replace(result, variants=variants))
        return ModelRecord(name=name, version=version, source_sha256=card.sha256, imported_at=utc_now(),
                           card=card.to_dict(), report=replace(report, profiles=tuple(results)), baseline=ids[0],
                           artifacts=by_profile)

    def _write_record(self, record: ModelRecord) -> None:
        data = record_document(record)
        folder = self.records / record.name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_file_bytes(folder / f"{record.version}.json", json.dumps(data, indent=1, sort_keys=True).encode(),
                         atomic=True)
        except OSError as exc:
            raise full_disk_error(exc, f"writing the record of {record.ref}") from None

    # -- sharing ------------------------------------------------------------------------------------------

    def share(self, record: ModelRecord) -> list[str]:
        """Copy the record's artifacts to the shared store (those not there yet); the ids copied. None set: []."""
        if self.shared is None:
            return []
        return [i for i in sorted(set(record_ids(record))) if self.shared.publish(self.objects / i, i)]

    def fetch(self, artifact_id: str) -> Artifact:
        """The artifact from this store, else copied from the shared store into tmp/ and checked there as `verify`
        checks (the id, the signature with the fleet key, every file's size and SHA-256, nothing extra) before it
        is renamed into objects/. A copy that fails leaves nothing here and says what is wrong."""
        with self._locked():
            folder = self.objects / artifact_id
            if folder.is_dir():
                return self._read_artifact(folder)
            if self.shared is None:
                raise StoreEntryNotFoundError(
                    f"artifact {artifact_id} is not on this laptop, and no shared store is set to fetch it from",
                    step="fetch artifact",
                    fix=f"set {SHARED_SETTING} to the fleet's shared folder (where `model import` on the other "
                        "laptops copies the signed files), or import the model on this laptop")
            staging = self.root / "tmp" / f"fetch-{uuid.uuid4().hex}"
            try:
                self.shared.copy_into(artifact_id, staging)
                checked = self._verify_folder(staging, artifact_id, "")
                if not checked.ok:
                    copy = self.shared.folder(artifact_id)
                    other_key = any("fleet key" in p for p in checked.problems) and len(checked.problems) == 1
                    raise ArtifactStoreError(
                        f"the shared store's copy of artifact {artifact_id} ({copy}) fails verification: "
                        f"{'; '.join(checked.problems[:3])}; nothing of it was taken", step="fetch artifact",
                        fix=(f"its signature is not this laptop's fleet key ({key_fingerprint(self.public_key_pem())})"
                             ": give this laptop the fleet's key (the importing laptop's keys folder), or if that "
                             f"laptop is not of this fleet, remove {copy}") if other_key else
                            (f"remove {copy} and run the same `fleetdesk model import` again on the laptop that "
                             "imported the model: it copies its verified artifact again"))
                self.objects.mkdir(parents=True, exist_ok=True)
                os.rename(staging, folder)
                fsync_dir(self.objects)
            except OSError as exc:
                raise full_disk_error(exc, f"fetching artifact {artifact_id} from the shared store") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return self._read_artifact(folder)

    # -- verifying ----------------------------------------------------------------------------------------

    def verify(self, ref_or_id: str | None = None) -> list[VerifyResult]:
        """Check artifacts byte for byte against their manifests and the manifests against their signatures.

        None checks every artifact and every record; a model ref checks that record's artifacts; an id (or a
        unique prefix) checks one artifact. Every file is read and hashed again: no size or time shortcut.
        """
        results: list[VerifyResult] = []
        if ref_or_id is None:
            records = self.models()
            ids = sorted({p.name for p in self.objects.iterdir()} if self.objects.is_dir() else set())
            ids += sorted({i for r in records for i in record_ids(r)} - set(ids))
        else:
            try:
                records = [self.model(ref_or_id)]
                ids = sorted(set(record_ids(records[0])))
            except StoreEntryNotFoundError:
                records, ids = [], [self._id_of(ref_or_id)]
        # Labels come from the records, never from the manifest being checked (it may be the tampered part).
        labels: dict[str, str] = {}
        for r in records:
            labels[r.baseline] = f"{r.ref} fp32"
            chosen: dict[str, list[str]] = {}
            for profile, artifact_id in r.artifacts.items():
                chosen.setdefault(artifact_id, []).append(profile)
            for artifact_id, profiles in chosen.items():
                if artifact_id != r.baseline:
                    labels[artifact_id] = f"{r.ref} {recipe_for(r, profiles[0])} ({', '.join(sorted(profiles))})"
        for artifact_id in ids:
            label = labels.get(artifact_id, "")
            if ref_or_id is not None and not (self.objects / artifact_id).exists() and self.shared is not None:
                try:  # a model imported on another laptop: fetched (and checked) now, as its first use would
                    self.fetch(artifact_id)
                except ArtifactStoreError as exc:
                    results.append(VerifyResult(artifact_id, label, False, (str(exc),)))
                    continue
            results.append(self._verify_folder(self.objects / artifact_id, artifact_id, label))
        return results

    def _id_of(self, text: str) -> str:
        lowered = str(text).lower()
        if _ID.match(lowered):
            return lowered  # checked even when its folder is gone: verify reports it missing
        return self.artifact(text).id

    def _verify_folder(self, folder: Path, artifact_id: str, label: str) -> VerifyResult:
        """Check one artifact's folder (under objects/, or a copy being fetched) against `artifact_id`."""
        problems: list[str] = []

        def result() -> VerifyResult:
            return VerifyResult(artifact_id, label, not problems, tuple(problems))

        if not _ID.match(artifact_id):
            problems.append(f"{artifact_id[:80]!r} in objects/ is not an artifact (its name is not a SHA-256)")
            return result()
        if not folder.is_dir():
            problems.append(f"the artifact folder {folder} is missing")
            return result()
        try:
            data = (folder / MANIFEST_NAME).read_bytes()
        except OSError as exc:
            problems.append(f"{MANIFEST_NAME} cannot be read ({exc.strerror})")
            return result()
        if hashlib.sha256(data).hexdigest() != artifact_id:
            problems.append(f"{MANIFEST_NAME} changed: its SHA-256 is no longer the artifact id")
        problems.extend(self._signature_problems(folder, data))
        try:
            manifest = json.loads(data)
            listed = {str(f["path"]): (int(f["size"]), str(f["sha256"])) for f in manifest["files"]}
            if not label:
                label = f"{manifest.get('name')}@{manifest.get('version')} {manifest.get('recipe')}"
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{MANIFEST_NAME} does not list its files ({exc})")
            return result()
        for rel, (size, digest) in sorted(listed.items()):
            path = folder / rel
            try:
                check_relative(rel)
            except ArtifactStoreError:
                problems.append(f"the manifest names {rel[:200]!r}, outside the artifact")
                continue
            if path.is_symlink() or not path.is_file():
                problems.append(f"{rel}: " + ("is a symlink" if path.is_symlink() else "is missing"))
                continue
            try:
                actual_size, actual = path.stat().st_size, sha256_file(path)
            except OSError as exc:
                problems.append(f"{rel}: cannot be read ({exc.strerror})")
                continue
            if actual_size != size:
                problems.append(f"{rel}: {actual_size} bytes, the manifest says {size}")
            if actual != digest:
                problems.append(f"{rel}: SHA-256 {actual}, the manifest says {digest}")
        expected = set(listed) | {MANIFEST_NAME, SIGNATURE_NAME}
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_dir() and not path.is_symlink():
                if not any(e.startswith(rel + "/") for e in expected):
                    problems.append(f"{rel}/: an extra folder the manifest does not list")
            elif rel not in expected:
                problems.append(f"{rel}: an extra file the manifest does not list")
        return result()

    def _signature_problems(self, folder: Path, data: bytes) -> list[str]:
        try:
            text = (folder / SIGNATURE_NAME).read_bytes()
        except FileNotFoundError:
            return [f"{SIGNATURE_NAME} is missing: the artifact is not signed"]
        except OSError as exc:
            return [f"{SIGNATURE_NAME} cannot be read ({exc.strerror})"]
        try:
            signature = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            return [f"{SIGNATURE_NAME} is not base64"]
        public = serialization.load_pem_public_key(self.public_key_pem())
        assert isinstance(public, Ed25519PublicKey)
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return [f"{SIGNATURE_NAME} does not match {MANIFEST_NAME} and this laptop's fleet key"]
        if text != base64.b64encode(signature) + b"\n":
            return [f"{SIGNATURE_NAME} changed (its bytes are not the store's encoding of the signature)"]
        return []

    # -- export and removal -----------------------------------------------------------------------------

    def export(self, ref_or_id: str, dest: Path, profile: str | None = None) -> Path:
        """A .tar laid out as a device root: artifacts/<id>/... and keys/fleet.pub (`tar -C ROOT -xf` on a
        device, or carried by hand). A model ref exports all its artifacts, or only `profile`'s."""
        try:
            record: ModelRecord | None = self.model(ref_or_id)
        except StoreEntryNotFoundError:
            record = None
        if record is not None:
            if profile is not None:
                if profile not in record.artifacts:
                    raise StoreEntryNotFoundError(
                        f"{record.ref} has no variant for profile {profile!r}", step="export",
                        fix=f"use one of: {', '.join(sorted(record.artifacts)) or 'none (re-import with --profile)'}")
                ids = [record.artifacts[profile]]
            else:
                ids = sorted(set(record_ids(record)))
            stem = f"{record.name}-{record.version}" + (f"-{profile}" if profile else "")
        else:
            artifact = self.artifact(ref_or_id)
            ids, stem = [artifact.id], f"{artifact.name}-{artifact.version}-{artifact.id[:12]}"
        broken = [r for r in (self._verify_folder(self.objects / i, i, "") for i in ids) if not r.ok]
        if broken:
            raise ArtifactStoreError(f"artifact {broken[0].artifact} fails verification: {broken[0].problems[0]}",
                                     step="export", fix="run `fleetdesk model verify`; remove and re-import the "
                                                        "model")
        dest = Path(dest)
        target = dest / f"{stem}.tar" if dest.is_dir() else dest
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        try:
            with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
                for artifact_id in ids:
                    folder = self.objects / artifact_id
                    tar_add_dir(tar, f"artifacts/{artifact_id}")
                    for path in sorted(folder.rglob("*")):
                        name = f"artifacts/{artifact_id}/{path.relative_to(folder).as_posix()}"
                        if path.is_dir():
                            tar_add_dir(tar, name)
                        else:
                            tar_add_file(tar, name, path)
                tar_add_dir(tar, "keys")
                pem = self.public_key_pem()
                info = tar_info("keys/fleet.pub", len(pem), 0o644)
                tar.addfile(info, io.BytesIO(pem))
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise full_disk_error(exc, f"writing {target}") from None
        return target

    def remove(self, ref: str) -> list[str]:
        """Remove a model version and the artifacts no other record uses; returns the artifact ids removed."""
        with self._locked():
            name, _, version = str(ref).partition("@")
            if not version and len([r for r in self.models() if r.name == name]) > 1:
                versions = ", ".join(r.ref for r in self.models() if r.name == name)
                raise StoreEntryNotFoundError(f"{name} has several versions ({versions}); say which to remove",
                                              step="remove model", fix=f"give NAME@VERSION, e.g. {name}@"
                                                                       f"{self.model(name).version}")
            record = self.model(ref)
            path = self.records / record.name / f"{record.version}.json"
            if not path.is_file():
                return []  # a model of the fleet's catalogue that this laptop never stored: nothing of it here
            keep = {i for r in self.models() if r.ref != record.ref for i in record_ids(r)}
            gone = sorted(set(record_ids(record)) - keep)
            path.unlink()
            fsync_dir(path.parent)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when that was the name's last version
            for artifact_id in gone:
                # Renamed away first, so a crash mid-delete never leaves a half artifact under objects/.
                trash = self.root / "tmp" / f"removed-{artifact_id}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.objects / artifact_id, trash)
                shutil.rmtree(trash, ignore_errors=True)
            return gone

    # -- housekeeping -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / ".lock", blocking=blocking) as held:
            yield held

    def _clean_staging(self) -> None:
        """Under the lock no other writer runs: anything in tmp/ is what a crashed write left."""
        staging = self.root / "tmp"
        if staging.is_dir():
            for entry in staging.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()


def _with_file(plan: _Planned, name: str, path: Path) -> _Planned:
    """The plan with a file FleetDesk adds to every artifact (golden outputs, input statistics) as `name`."""
    if any(rel == name for rel, _ in plan.sources):
        raise ArtifactStoreError(f"the model has a file named {name}, a name FleetDesk's own files take",
                                 step="store model", fix=f"rename the model's {name} and import it again")
    return replace(plan, sources=(*plan.sources, (name, path)))
