"""The fleet's Ed25519 signing key, with the real OS keyring (a private gnome-keyring on its own D-Bus).

Made on first use; the private part only ever encrypted on disk, its passphrase only in the keyring.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from keyring.backends import fail

from fleetdesk.artifacts.signing import KEYRING_ACCOUNT, FleetSigningKey
from fleetdesk.errors import CredentialError, KeyringUnavailableError
from fleetdesk.transport import credentials
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]


@pytest.fixture
def fresh_keyring(keyring_daemon: KeyringDaemon) -> Iterator[None]:
    """The session's keyring with no signing passphrase in it (each test makes its own key)."""
    credentials.delete_secret(KEYRING_ACCOUNT)
    yield
    credentials.delete_secret(KEYRING_ACCOUNT)


def test_the_key_is_made_on_first_use_encrypted_with_a_passphrase_from_the_keyring(tmp_path: Path,
                                                                                   fresh_keyring: None) -> None:
    key = FleetSigningKey(tmp_path / "keys")
    assert not key.exists()
    signature = key.sign(b"model bytes")
    assert len(signature) == 64 and key.exists()

    private = key.private_path.read_bytes()
    assert private.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    passphrase = keyring.get_password("fleetdesk", "artifact-signing-key")
    assert passphrase and len(passphrase) >= 32
    assert passphrase.encode() not in private
    with pytest.raises(TypeError):  # it does not open without the passphrase
        serialization.load_pem_private_key(private, password=None)

    public = serialization.load_pem_public_key(key.public_path.read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    assert key.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    public.verify(signature, b"model bytes")  # raises if it were not this key's signature
    assert key.public_pem() == key.public_path.read_bytes()


def test_signatures_verify_and_anything_changed_does_not(tmp_path: Path, fresh_keyring: None) -> None:
    key = FleetSigningKey(tmp_path / "keys")
    signature = key.sign(b"manifest")
    assert key.verify(b"manifest", signature)
    assert not key.verify(b"manifest!", signature)
    assert not key.verify(b"manifest", bytes([signature[0] ^ 1]) + signature[1:])


def test_a_second_use_opens_the_same_key_with_the_passphrase_in_the_keyring(tmp_path: Path,
                                                                            fresh_keyring: None) -> None:
    first = FleetSigningKey(tmp_path / "keys")
    pem = first.public_pem()
    private = first.private_path.read_bytes()
    later = FleetSigningKey(tmp_path / "keys")  # as another FleetDesk process would
    signature = later.sign(b"artifact")
    assert later.public_pem() == pem and first.verify(b"artifact", signature)
    assert first.private_path.read_bytes() == private  # not remade


def test_without_an_os_keyring_no_key_is_made_and_nothing_is_written(tmp_path: Path) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        key = FleetSigningKey(tmp_path / "keys")
        with pytest.raises(KeyringUnavailableError) as caught:
            key.sign(b"x")
        assert "cannot make the fleet signing key" in caught.value.message and caught.value.fix
        with pytest.raises(KeyringUnavailableError):
            key.public_pem()
    finally:
        keyring.set_keyring(previous)
    assert not key.private_path.exists() and not key.public_path.exists()


def test_a_key_whose_passphrase_left_the_keyring_is_refused_clearly(tmp_path: Path, fresh_keyring: None) -> None:
    FleetSigningKey(tmp_path / "keys").sign(b"x")
    credentials.delete_secret(KEYRING_ACCOUNT)
    with pytest.raises(CredentialError) as caught:
        FleetSigningKey(tmp_path / "keys").sign(b"x")
    assert "is not in the OS keyring" in caught.value.message and "artifact-signing-key" in caught.value.message
    credentials.set_secret(KEYRING_ACCOUNT, "not-the-passphrase")
    with pytest.raises(CredentialError, match="does not open with the passphrase"):
        FleetSigningKey(tmp_path / "keys").sign(b"x")
