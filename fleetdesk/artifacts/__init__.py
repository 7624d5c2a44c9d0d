"""Artifacts: the content-addressed store, manifests and Ed25519 signing."""
