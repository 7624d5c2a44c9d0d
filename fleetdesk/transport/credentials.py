"""Passwords and key passphrases in the OS keyring (service `fleetdesk`), never anywhere else.

Owns the keyring account names, the choice of backend (refusing plaintext ones) and keyring error translation.

Account names are stable strings, safe to keep in the inventory (they name a secret, they are not one):

- ``password:<username>@<device-key>``: the SSH password of `username` on one device, where the device key
  is the inventory id (preferred: it survives a change of address) or, before there is one, the host.
- ``passphrase:<absolute path>``: the passphrase of one private key file on this laptop.

Calls are synchronous D-Bus / OS calls that may wait for the desktop's unlock prompt: from the asyncio loop,
call them with ``await asyncio.to_thread(get_secret, account)``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import chainer, fail

from fleetdesk.errors import CredentialError, KeyringUnavailableError

SERVICE = "fleetdesk"

# The account keyring_status() reads to see whether the keyring answers. Nothing is ever stored under it.
_STATUS_PROBE_ACCOUNT = "status-probe"


def _backend_errors() -> tuple[type[BaseException], ...]:
    """Errors a keyring backend lets escape untranslated (the Secret Service one leaks its D-Bus errors)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from secretstorage.exceptions import SecretStorageException

        errors.append(SecretStorageException)
    except ImportError:  # not on macOS / Windows
        pass
    try:
        from jeepney import DBusErrorResponse

        errors.append(DBusErrorResponse)
    except ImportError:
        pass
    return tuple(errors)


_BACKEND_ERRORS = _backend_errors()
# Spelled out as whole tuples: mypy rejects a star-expanded tuple inside an `except (...)` clause.
_KEYRING_ERRORS: tuple[type[BaseException], ...] = (keyring.errors.KeyringError, *_BACKEND_ERRORS)
_LOAD_ERRORS: tuple[type[BaseException], ...] = (keyring.errors.KeyringError, RuntimeError, *_BACKEND_ERRORS)


@dataclass(frozen=True)
class KeyringStatus:
    """What the CLI and GUI show about the keyring: which backend, whether it works, and how to fix it."""

    backend: str
    usable: bool
    message: str
    fix: str | None = None


def password_account(username: str, device_key: str | int) -> str:
    """The keyring account for `username`'s SSH password on one device: ``password:fleet@17``."""
    if not username or any(c.isspace() for c in username):
        raise CredentialError(f"{username!r} is not a valid SSH user name", fix="give the device's login name")
    key = str(device_key).strip()
    if not key:
        raise CredentialError("a device password needs the device's inventory id or host",
                              fix="add the device to the inventory first")
    return f"password:{username}@{key}"


def passphrase_account(key_path: str | os.PathLike[str]) -> str:
    """The keyring account for a private key file's passphrase: ``passphrase:/home/op/.ssh/id_ed25519``.

    The path is made absolute (``~`` expanded, ``..`` folded) but symlinks are kept, so the name stays what
    the operator configured.
    """
    text = os.fspath(key_path)
    if not text.strip():
        raise CredentialError("a key passphrase needs the key file's path", fix="give the private key's path")
    return "passphrase:" + os.path.normpath(Path(text).expanduser().absolute())


def _unavailable_fix() -> str:
    if sys.platform == "darwin":
        return "unlock the login keychain (Keychain Access), then try again"
    if sys.platform == "win32":
        return "make sure Windows Credential Manager is running for this user, then try again"
    return ("install and unlock gnome-keyring (or KWallet) and start a D-Bus session; on a headless machine: "
            "dbus-run-session -- sh -c 'echo -n PASSWORD | gnome-keyring-daemon --unlock --components=secrets; "
            "fleetdesk ...'")


def _describe(backend: keyring.backend.KeyringBackend) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def _refusal(backend: keyring.backend.KeyringBackend) -> str | None:
    """Why FleetDesk will not keep secrets in `backend`, or None if it is an OS keyring."""
    module = type(backend).__module__
    if isinstance(backend, fail.Keyring):
        return "no OS keyring backend is available (keyring found only its 'fail' backend)"
    if module == "keyring.backends.null":
        return "the keyring is configured with the 'null' backend, which stores nothing"
    # keyrings.alt holds file-based stores: plaintext, or encrypted with a password typed on a terminal.
    if module.startswith("keyrings.alt"):
        return f"the keyring backend {_describe(backend)} stores secrets in a file, not in the OS keyring"
    if "plaintext" in type(backend).__name__.lower():
        return f"the keyring backend {_describe(backend)} stores secrets in plaintext"
    return None


def _backend() -> keyring.backend.KeyringBackend:
    """The one OS keyring backend secrets go to; raises KeyringUnavailableError rather than use a weak one.

    keyring's chainer would write to the first backend that accepts a secret, so a locked Secret Service
    followed by a plaintext file would silently land the password in the file: pick one backend instead.
    """
    try:
        chosen = keyring.get_keyring()
        # The chain re-checks each backend's priority, and the Secret Service one raises RuntimeError when
        # its daemon has gone away since start-up.
        candidates = list(chosen.backends) if isinstance(chosen, chainer.ChainerBackend) else [chosen]
    except _LOAD_ERRORS as exc:
        raise KeyringUnavailableError(f"the OS keyring could not be loaded: {exc}", fix=_unavailable_fix(),
                                      step="open keyring", cause=exc) from exc
    reasons = []
    for candidate in candidates:
        reason = _refusal(candidate)
        if reason is None:
            return candidate
        reasons.append(reason)
    message = "; ".join(reasons) if reasons else "no OS keyring backend is available (the keyring chain is empty)"
    raise KeyringUnavailableError(f"{message}; FleetDesk never stores passwords outside the OS keyring",
                                  fix=_unavailable_fix(), step="open keyring")


def _translate(exc: BaseException, backend: keyring.backend.KeyringBackend, step: str) -> CredentialError:
    name = _describe(backend)
    if isinstance(exc, keyring.errors.KeyringLocked):
        return KeyringUnavailableError(f"the OS keyring ({name}) is locked", fix=_unavailable_fix(), step=step,
                                       cause=exc)
    if isinstance(exc, keyring.errors.PasswordSetError):
        return CredentialError(f"the OS keyring ({name}) refused to store the secret: {exc}",
                               fix="check that the keyring is unlocked and writable", step=step, cause=exc)
    # InitError, NoKeyringError and the D-Bus errors all mean nobody answered for the keyring.
    return KeyringUnavailableError(f"the OS keyring ({name}) is not available: {exc}", fix=_unavailable_fix(),
                                   step=step, cause=exc)


def _check_account(account: str) -> None:
    if not isinstance(account, str) or not account:
        raise CredentialError("a keyring account name is empty",
                              fix="use password_account() or passphrase_account() to name the secret")


def get_secret(account: str) -> str | None:
    """The secret stored for `account`, or None. Raises KeyringUnavailableError without a backend."""
    _check_account(account)
    backend = _backend()
    try:
        return backend.get_password(SERVICE, account)
    except _KEYRING_ERRORS as exc:
        raise _translate(exc, backend, "read secret") from exc


def set_secret(account: str, secret: str) -> None:
    """Store `secret` for `account`. Raises KeyringUnavailableError without a backend."""
    _check_account(account)
    if not isinstance(secret, str) or secret == "":
        raise CredentialError(f"an empty secret for {account} is not stored",
                              fix="give the password or passphrase, or delete the stored one instead")
    backend = _backend()
    try:
        backend.set_password(SERVICE, account, secret)
    except _KEYRING_ERRORS as exc:
        raise _translate(exc, backend, "store secret") from exc


def delete_secret(account: str) -> None:
    """Forget the secret for `account` (no error if there was none)."""
    _check_account(account)
    backend = _backend()
    try:
        backend.delete_password(SERVICE, account)
    except keyring.errors.PasswordDeleteError as exc:
        # Backends say "not found" with this same error; only a secret that is still there is a failure.
        if get_secret(account) is not None:
            raise CredentialError(f"the OS keyring ({_describe(backend)}) could not delete {account}: {exc}",
                                  fix="delete it with the desktop's keyring tool (Seahorse, KWalletManager)",
                                  step="delete secret", cause=exc) from exc
    except _KEYRING_ERRORS as exc:
        raise _translate(exc, backend, "delete secret") from exc


def keyring_status() -> KeyringStatus:
    """Which keyring FleetDesk would use and whether it answers now (one harmless read, nothing stored)."""
    try:
        backend = _backend()
    except KeyringUnavailableError as exc:
        try:
            name = _describe(keyring.get_keyring())
        except _KEYRING_ERRORS:
            name = "none"
        return KeyringStatus(backend=name, usable=False, message=exc.message, fix=exc.fix)
    name = _describe(backend)
    try:
        backend.get_password(SERVICE, _STATUS_PROBE_ACCOUNT)
    except _KEYRING_ERRORS as exc:
        error = _translate(exc, backend, "check keyring")
        return KeyringStatus(backend=name, usable=False, message=error.message, fix=error.fix)
    return KeyringStatus(backend=name, usable=True, message=f"secrets are kept in the OS keyring ({name})")
