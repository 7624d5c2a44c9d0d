"""Artifacts: the content-addressed store, manifests and Ed25519 signing."""

from fleetdesk.artifacts.records import MANIFEST_FORMAT, Artifact, ArtifactFile, ModelRecord, VerifyResult
from fleetdesk.artifacts.store import ArtifactStore, canonical_json, key_fingerprint

__all__ = ["MANIFEST_FORMAT", "Artifact", "ArtifactFile", "ArtifactStore", "ModelRecord", "VerifyResult",
           "canonical_json", "key_fingerprint"]
