"""The fleet's Ed25519 signing key: made on first use, private part encrypted on disk with its passphrase in
the OS keyring, public part (`fleet.pub`) pushed to every device, which verifies artifacts with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetdesk.config import Settings
from fleetdesk.errors import CredentialError, KeyringUnavailableError
from fleetdesk.files import exclusive_lock
from fleetdesk.transport import credentials

KEYRING_ACCOUNT = "artifact-signing-key"  # service "fleetdesk" (transport.credentials.SERVICE)
PRIVATE_FILE = "fleet-signing-key.pem"
PUBLIC_FILE = "fleet.pub"


class FleetSigningKey:
    """`FleetSigningKey.default().sign(data)`; the key is made on first use.

    Nothing is ever written unencrypted: with no OS keyring to hold the passphrase, making or using the key
    fails with KeyringUnavailableError. Keyring calls may wait for the desktop's unlock prompt: from the event
    loop, call these methods with `asyncio.to_thread`.
    """

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = Path(keys_dir)
        self._private: Ed25519PrivateKey | None = None

    @classmethod
    def default(cls, settings: Settings | None = None) -> FleetSigningKey:
        return cls((settings or Settings.load()).data_dir / "keys")

    @property
    def private_path(self) -> Path:
        return self.keys_dir / PRIVATE_FILE

    @property
    def public_path(self) -> Path:
        return self.keys_dir / PUBLIC_FILE

    def exists(self) -> bool:
        return self.private_path.is_file()

    def public_pem(self) -> bytes:
        """The public key as PEM SubjectPublicKeyInfo (what devices keep as ROOT/keys/fleet.pub)."""
        if self.public_path.is_file() and self.private_path.is_file():
            return self.public_path.read_bytes()
        return _public_pem(self._key().public_key())

    def unlock(self) -> None:
        """Open (or make) the private key now, so a keyring problem shows before long work, not after it."""
        self._key()

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `data` (RFC 8032)."""
        return self._key().sign(data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether `signature` is this fleet key's signature of `data` (needs only the public part)."""
        public = serialization.load_pem_public_key(self.public_pem())
        assert isinstance(public, Ed25519PublicKey)
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    # -- the private part -----------------------------------------------------------------------------

    def _key(self) -> Ed25519PrivateKey:
        if self._private is None:
            with self._lock():
                self._private = self._load() if self.private_path.is_file() else self._create()
                if not self.public_path.is_file() or self.public_path.read_bytes() != _public_pem(
                        self._private.public_key()):
                    _write_file(self.public_path, _public_pem(self._private.public_key()), 0o644)
        return self._private

    def _load(self) -> Ed25519PrivateKey:
        passphrase = credentials.get_secret(KEYRING_ACCOUNT)
        if passphrase is None:
            raise CredentialError(
                f"the passphrase of the fleet signing key {self.private_path} is not in the OS keyring "
                f"(service {credentials.SERVICE!r}, user {KEYRING_ACCOUNT!r})", step="open signing key",
                fix="unlock or restore the keyring this laptop used when the key was made; without it the key "
                    "cannot sign, and a new key means re-provisioning every device with the new fleet.pub")
        try:
            key = serialization.load_pem_private_key(self.private_path.read_bytes(), password=passphrase.encode())
        except (ValueError, TypeError) as exc:
            raise CredentialError(f"the fleet signing key {self.private_path} does not open with the passphrase "
                                  f"in the OS keyring ({exc})", step="open signing key",
                                  fix="restore the key file and the keyring entry from the same backup") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CredentialError(f"{self.private_path} is not an Ed25519 key", step="open signing key",
                                  fix="move the file away; FleetDesk makes a new key on next use")
        return key

    def _create(self) -> Ed25519PrivateKey:
        # Fail before anything is made when there is no keyring: the key would be unusable (or, worse, stored
        # in the clear by a weaker design).
        status = credentials.keyring_status()
        if not status.usable:
            raise KeyringUnavailableError(f"cannot make the fleet signing key: {status.message}", fix=status.fix,
                                          step="make signing key")
        key = Ed25519PrivateKey.generate()
        passphrase = secrets.token_urlsafe(32)
        credentials.set_secret(KEYRING_ACCOUNT, passphrase)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase.encode()))
        _write_file(self.private_path, pem, 0o600)
        return key

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One process at a time makes or reads the key, so two first uses never write two different keys."""
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self.keys_dir / ".lock"):
            yield


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def public_pem(settings: Settings | None = None) -> bytes:
    return FleetSigningKey.default(settings).public_pem()


def sign(data: bytes, settings: Settings | None = None) -> bytes:
    return FleetSigningKey.default(settings).sign(data)


def verify(data: bytes, signature: bytes, settings: Settings | None = None) -> bool:
    return FleetSigningKey.default(settings).verify(data, signature)
