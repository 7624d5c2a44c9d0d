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
    # Nor the runtimes an installed FleetDesk package ships.
    monkeypatch.setenv("FLEETDESK_SHIPPED_RUNTIMES_DIR", str(home / "shipped-runtimes"))
    return home


def as_unprivileged(code: str, folder: Path) -> str:
    """Run Python `code` as `nobody` (when we are root) and return its stdout.

    Root reads any file whatever its mode, so "cannot read the file" is only seen by another user;
    `folder` is opened to that user first. Without root the code simply runs as us.
    """
    import subprocess
    import sys

    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        for part in [folder, *folder.parents]:
            if part == Path("/"):
                break
            part.chmod(part.stat().st_mode | 0o055)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# Every change to the fleet is signed by its operator's key, which lives in the OS keyring: the whole run has one
# real private gnome-keyring (tests/keyring_daemon.py), and the CLI and window processes the tests start inherit
# its bus address. Tests that need no keyring at all point their process or backend elsewhere themselves.
from tests.keyring_daemon import KeyringDaemon, keyring_daemon  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def _signing_keyring(request: pytest.FixtureRequest) -> KeyringDaemon:
    daemon: KeyringDaemon = request.getfixturevalue("keyring_daemon")
    return daemon
