"""Shared test settings: every test runs with its own FleetDesk data, cache-free config dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose real part is missing here; in CI that is a failure (CI proves the real path)."""
    if in_ci():
        pytest.fail(f"CI=true and the real part is missing: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Tests never read or write the operator's own database or profiles. The lab's image cache
    # (FLEETDESK_CACHE_DIR) is deliberately left alone: it is minutes to rebuild and read-only here.
    home = tmp_path_factory.mktemp("fleetdesk-home")
    monkeypatch.setenv("FLEETDESK_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("FLEETDESK_CONFIG_DIR", str(home / "config"))
    monkeypatch.delenv("FLEETDESK_DB", raising=False)
    return home
