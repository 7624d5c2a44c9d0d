"""Secrets go to a real Secret Service (gnome-keyring on a private D-Bus) and never to plaintext."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from fleetdesk.errors import CredentialError, KeyringUnavailableError
from fleetdesk.transport.credentials import (
    SERVICE,
    delete_secret,
    get_secret,
    keyring_status,
    passphrase_account,
    password_account,
    set_secret,
)
from tests.conftest import skip_or_fail
from tests.keyring_daemon import KeyringDaemon, private_keyring, use_keyring_daemon

REPO = Path(__file__).resolve().parents[2]


def fresh_account() -> str:
    return password_account("fleet", f"test-{uuid.uuid4().hex[:12]}")


def secret_service_items(account: str) -> list[bytes]:
    """The secrets stored for `account`, read straight from the Secret Service with secretstorage."""
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        return [item.get_secret() for item in collection.search_items({"service": SERVICE, "username": account})]
    finally:
        connection.close()


@contextmanager
def keyring_backend(backend: keyring.backend.KeyringBackend) -> Iterator[None]:
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        yield
    finally:
        keyring.set_keyring(previous)


def plaintext_keyring_class() -> type[keyring.backend.KeyringBackend]:
    try:
        from keyrings.alt.file import PlaintextKeyring
    except ImportError:
        skip_or_fail("keyrings.alt is not installed (pip install keyrings.alt): the plaintext backend to refuse")
    return PlaintextKeyring


def test_account_names_are_stable_documented_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert password_account("fleet", 17) == "password:fleet@17"
    assert password_account("root", "198.18.1.5") == "password:root@198.18.1.5"
    monkeypatch.chdir(tmp_path)
    assert passphrase_account("keys/../keys/id_ed25519") == f"passphrase:{tmp_path}/keys/id_ed25519"
    assert passphrase_account("~/.ssh/id_rsa") == f"passphrase:{Path.home()}/.ssh/id_rsa"
    with pytest.raises(CredentialError):
        password_account("bad user", 1)
    with pytest.raises(CredentialError):
        password_account("fleet", " ")


def test_set_get_delete_round_trip(keyring_daemon: KeyringDaemon) -> None:
    account = fresh_account()
    assert get_secret(account) is None
    set_secret(account, "fleet-lab")
    assert get_secret(account) == "fleet-lab"
    set_secret(account, "changed")  # replaces, never duplicates
    assert get_secret(account) == "changed"
    assert secret_service_items(account) == [b"changed"]
    delete_secret(account)
    assert get_secret(account) is None
    assert secret_service_items(account) == []
    delete_secret(account)  # forgetting twice is not an error


@pytest.mark.parametrize("secret", [
    "pässwörd-🔑-密码",
    "line one\nline two\r\n\ttabbed ",
    "'; rm -rf / #\"$(reboot)`id`",
    "x" * 4096,
])
def test_secret_survives_exactly_and_lives_in_the_secret_service(keyring_daemon: KeyringDaemon, secret: str) -> None:
    account = passphrase_account(f"/tmp/keys/{uuid.uuid4().hex}")
    set_secret(account, secret)
    try:
        assert get_secret(account) == secret
        # Read back through secretstorage, not through our module or keyring: the secret is really there.
        assert secret_service_items(account) == [secret.encode("utf-8")]
    finally:
        delete_secret(account)


def test_secret_is_not_written_in_clear_to_disk_or_logs(keyring_daemon: KeyringDaemon,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keyrings = keyring_daemon.home / ".local" / "share" / "keyrings"
    before = {p: p.stat().st_mtime_ns for p in keyrings.iterdir()}
    account = fresh_account()
    marker = f"plain-{uuid.uuid4().hex}"
    set_secret(account, marker)
    try:
        # gnome-keyring saves its encrypted file shortly after the change; wait for it to be rewritten.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and all(p.stat().st_mtime_ns == m for p, m in before.items()):
            time.sleep(0.05)
        written = [p for p in keyrings.iterdir() if before.get(p) != p.stat().st_mtime_ns]
        assert written, "gnome-keyring never saved the new secret"
        for path in keyrings.iterdir():
            assert marker.encode() not in path.read_bytes()
        assert marker not in caplog.text
    finally:
        delete_secret(account)


def test_status_names_the_secret_service_as_usable(keyring_daemon: KeyringDaemon) -> None:
    status = keyring_status()
    assert status.usable
    assert "SecretService" in status.backend
    assert status.fix is None


def test_no_backend_is_refused_with_a_fix() -> None:
    with keyring_backend(fail.Keyring()):
        with pytest.raises(KeyringUnavailableError) as raised:
            set_secret(fresh_account(), "hunter2")
        status = keyring_status()
    error = raised.value
    assert "no OS keyring" in error.message
    assert error.fix and "gnome-keyring" in error.fix and "dbus-run-session" in error.fix
    assert "hunter2" not in str(error) and "hunter2" not in json.dumps(error.to_dict())
    assert not status.usable and status.fix == error.fix


def test_plaintext_backend_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext = plaintext_keyring_class()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with keyring_backend(plaintext()):
        with pytest.raises(KeyringUnavailableError) as raised:
            set_secret(fresh_account(), "hunter2")
        with pytest.raises(KeyringUnavailableError):
            get_secret(fresh_account())
        assert not keyring_status().usable
    assert "file" in raised.value.message and "never" in raised.value.message
    assert not (tmp_path / "data").exists()


def test_bus_without_secret_service_is_unavailable(tmp_path: Path) -> None:
    with private_keyring(tmp_path, with_secret_service=False) as bus, use_keyring_daemon(bus):
        with pytest.raises(KeyringUnavailableError) as raised:
            get_secret(fresh_account())
        status = keyring_status()
    assert "not available" in raised.value.message
    assert raised.value.fix and "gnome-keyring" in raised.value.fix
    assert not status.usable


def test_locked_keyring_is_unavailable_not_bypassed(tmp_path: Path) -> None:
    import secretstorage

    with private_keyring(tmp_path) as daemon, use_keyring_daemon(daemon):
        account = fresh_account()
        set_secret(account, "before-lock")
        connection = secretstorage.dbus_init()
        try:
            secretstorage.get_default_collection(connection).lock()
        finally:
            connection.close()
        # No unlock prompt can be shown on this private bus: keyring reports the collection as locked.
        with pytest.raises(KeyringUnavailableError) as raised:
            get_secret(account)
        with pytest.raises(KeyringUnavailableError):
            set_secret(account, "after-lock")
        status = keyring_status()
    assert "locked" in raised.value.message
    assert not status.usable and "locked" in status.message


def test_empty_secret_or_account_is_refused(keyring_daemon: KeyringDaemon) -> None:
    account = fresh_account()
    with pytest.raises(CredentialError):
        set_secret(account, "")
    with pytest.raises(CredentialError):
        get_secret("")
    assert secret_service_items(account) == []


def _fresh_process(tmp_path: Path, extra_env: dict[str, str]) -> dict[str, str]:
    """Store a secret from a fresh Python process, where keyring picks its backend the way it does for users."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "PYTHONPATH": str(REPO), **extra_env}
    script = (
        "import json, sys, keyring\n"
        "from fleetdesk.transport.credentials import set_secret, keyring_status\n"
        "from fleetdesk.errors import KeyringUnavailableError\n"
        "backend = type(keyring.get_keyring())\n"
        "try:\n"
        "    set_secret(sys.argv[1], 'hunter2')\n"
        "    result = {'stored': 'yes'}\n"
        "except KeyringUnavailableError as exc:\n"
        "    result = {'stored': 'no', 'message': exc.message, 'fix': exc.fix}\n"
        "result['backend'] = backend.__module__ + '.' + backend.__name__\n"
        "result['usable'] = str(keyring_status().usable)\n"
        "print(json.dumps(result))\n"
    )
    account = fresh_account()
    proc = subprocess.run([sys.executable, "-c", script, account], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # Whatever happened, no secret file appeared in the process's HOME (keyrings.alt would write one there).
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files == [], f"something was written: {files}"
    return {**json.loads(proc.stdout), "account": account}


def test_fresh_process_with_a_secret_service_stores_there(keyring_daemon: KeyringDaemon, tmp_path: Path) -> None:
    result = _fresh_process(tmp_path, {"DBUS_SESSION_BUS_ADDRESS": keyring_daemon.bus_address})
    try:
        assert result["stored"] == "yes", result
        assert result["usable"] == "True"
        # With keyrings.alt installed keyring chooses its chainer (Secret Service + plaintext file): the
        # secret must still land in the Secret Service only.
        assert result["backend"] in ("keyring.backends.chainer.ChainerBackend",
                                     "keyring.backends.SecretService.Keyring")
        assert secret_service_items(result["account"]) == [b"hunter2"]
    finally:
        delete_secret(result["account"])


def test_fresh_process_without_dbus_refuses_instead_of_falling_back(tmp_path: Path) -> None:
    result = _fresh_process(tmp_path, {})
    assert result["stored"] == "no"
    assert result["usable"] == "False"
    assert "gnome-keyring" in result["fix"]


def test_fresh_process_told_to_use_plaintext_refuses(tmp_path: Path) -> None:
    plaintext_keyring_class()
    result = _fresh_process(tmp_path, {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"})
    assert result["backend"] == "keyrings.alt.file.PlaintextKeyring"
    assert result["stored"] == "no"
    assert "not in the OS keyring" in result["message"]


def test_fresh_process_with_a_chain_of_nothing_usable_refuses(tmp_path: Path) -> None:
    # No session bus: the chain holds nothing, or only the plaintext file when keyrings.alt is installed.
    result = _fresh_process(tmp_path, {"PYTHON_KEYRING_BACKEND": "keyring.backends.chainer.ChainerBackend"})
    assert result["backend"] == "keyring.backends.chainer.ChainerBackend"
    assert result["stored"] == "no"
    assert "never stores passwords outside the OS keyring" in result["message"]
