"""What the artifact store hands out: artifacts, model records and verification results.

On disk (under `Settings.data_dir / "artifacts"`), one artifact is a folder named by its id:

    objects/<id>/manifest.json        canonical JSON (sorted keys, no spaces, UTF-8), see MANIFEST_FORMAT
    objects/<id>/manifest.json.sig    base64 of the Ed25519 signature of manifest.json's exact bytes, then "\\n"
    objects/<id>/<files...>           the .onnx file and its external data, as the manifest lists them

The id is the SHA-256 of manifest.json's bytes; the manifest lists every file's SHA-256, so the id
covers every byte. The device keeps the same folder as ROOT/artifacts/<id>/ and its agent checks the
signature against ROOT/keys/fleet.pub and every file's hash before it activates the artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.models.report import OptimizationReport

MANIFEST_FORMAT = "fleetdesk-artifact/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"


@dataclass(frozen=True)
class ArtifactFile:
    path: str  # relative to the artifact folder, "/"-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Artifact:
    """One signed, content-addressed artifact: one variant of one model version."""

    id: str  # SHA-256 of manifest.json's bytes
    folder: str
    name: str
    version: str
    recipe: str  # "fp32" (the model as imported) or a recipe step such as "int8-static"
    profiles: tuple[str, ...]  # the device profiles this variant was chosen for (empty for a plain baseline)
    model_file: str  # the .onnx file's path inside the folder
    files: tuple[ArtifactFile, ...]
    size_bytes: int
    created: str  # ISO 8601, UTC
    manifest: Mapping[str, Any] = field(hash=False, compare=False)


@dataclass(frozen=True)
class ModelRecord:
    """One imported model version: its card, the optimization report, and its artifacts per profile."""

    name: str
    version: str
    source_sha256: str  # ModelCard.sha256 of the imported file(s)
    imported_at: str  # ISO 8601, UTC
    card: Mapping[str, Any] = field(hash=False, compare=False)  # ModelCard.to_dict()
    report: OptimizationReport | None = field(default=None, hash=False, compare=False)
    baseline: str = ""  # id of the FP32 artifact (the model as imported)
    artifacts: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)  # profile -> artifact id

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class VerifyResult:
    """`fleetdesk model verify`: one artifact checked byte for byte and against its signature."""

    artifact: str  # id
    ref: str  # "name@version recipe"
    ok: bool
    problems: tuple[str, ...] = ()  # one line each, naming the file and what is wrong
