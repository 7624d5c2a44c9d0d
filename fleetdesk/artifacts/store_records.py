"""What the artifact store derives from names, model records and reports, without touching the disk: the
canonical manifest bytes, the key fingerprint, the name check, version numbers and order, the baseline's figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization

from fleetdesk import __version__
from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.errors import InvalidModelNameError
from fleetdesk.models.report import BASELINE, OptimizationReport

RECORD_FORMAT = "fleetdesk-model/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """The one byte form of a manifest: sorted keys, no spaces, UTF-8 (what is hashed and signed)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def key_fingerprint(public_pem: bytes) -> str:
    """"SHA256:" and the hex SHA-256 of the key's DER SubjectPublicKeyInfo (what the manifest's "key" holds)."""
    public = serialization.load_pem_public_key(public_pem)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def check_name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidModelNameError(
            f"{str(value)[:80]!r} is not a usable model {what}",
            fix=f"use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. --{what} "
                + ("resnet50-line2" if what == "name" else "2") + ")", step="store model")
    return value


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def current_tool_versions() -> dict[str, str]:
    versions = {"fleetdesk": __version__}
    for module in ("onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions[module] = str(__import__(module).__version__)
    return versions


def record_ids(record: ModelRecord) -> list[str]:
    return [i for i in (record.baseline, *record.artifacts.values()) if i]


def newest_first(record: ModelRecord) -> tuple[int, str]:
    # Sorted ascending by this key: negate so the latest import comes first.
    stamp = record.imported_at
    return (-int(re.sub(r"\D", "", stamp) or 0), record.version)


def next_version(records: Sequence[ModelRecord]) -> str:
    numbers = [int(r.version) for r in records if r.version.isdigit()]
    return str(max(numbers, default=0) + 1)


def baseline_local_ms(report: OptimizationReport) -> float | None:
    for result in report.profiles:
        base = result.variant(BASELINE)
        if base is not None and base.local_latency_ms is not None:
            return base.local_latency_ms
    return None


def baseline_device_ms(report: OptimizationReport) -> dict[str, float]:
    merged: dict[str, float] = {}
    for result in report.profiles:
        base = result.variant(BASELINE)
        if base is not None:
            merged.update(base.device_latency_ms)
    return merged


def recipe_for(record: ModelRecord, profile: str) -> str:
    """The recipe the record's report chose for `profile` ("variant" when the report does not say)."""
    result = record.report.profile(profile) if record.report is not None else None
    return result.chosen if result is not None else "variant"


def record_document(record: ModelRecord) -> dict[str, Any]:
    """A model record as the store writes it (ROOT/models/<name>/<version>.json) and the fleet's catalogue keeps it."""
    return {"format": RECORD_FORMAT, "name": record.name, "version": record.version,
            "source_sha256": record.source_sha256, "imported_at": record.imported_at, "card": dict(record.card),
            "report": record.report.to_dict() if record.report else None, "baseline": record.baseline,
            "artifacts": dict(record.artifacts)}


def record_from_document(data: Mapping[str, Any]) -> ModelRecord:
    """The record `record_document` wrote; KeyError, TypeError or ValueError when it is not one."""
    report = data.get("report")
    return ModelRecord(name=str(data["name"]), version=str(data["version"]),
                       source_sha256=str(data["source_sha256"]), imported_at=str(data["imported_at"]),
                       card=data.get("card", {}),
                       report=None if report is None else OptimizationReport.from_dict(report),
                       baseline=str(data.get("baseline", "")),
                       artifacts={str(k): str(v) for k, v in dict(data.get("artifacts", {})).items()})
