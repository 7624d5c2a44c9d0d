"""Host-key trust for every transport: the presented key must be one the operator pinned, checked during
key exchange (before any credential is sent). A new device's key, for the operator to accept, is fetched by
the engine (asyncssh_transport.fetch_host_key), which imports this module and never the other way round.
"""

from __future__ import annotations

import base64
import binascii

from fleetdesk.errors import (
    ConfigError,
    FleetDeskError,
    HostKeyChangedError,
    HostKeyUnknownError,
)
from fleetdesk.transport.hostkey import PublicKey, parse_public_key
from fleetdesk.transport.shell import shell_quote
from fleetdesk.transport.target import SSHTarget

# Key types in the order we ask a device for them when nothing is pinned: Ed25519 first, as OpenSSH
# itself prefers it (ssh_config(5) HostKeyAlgorithms default), RSA last and only with SHA-2 signatures.
PREFERRED_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


def pinned_keys(target: SSHTarget) -> tuple[PublicKey, ...]:
    """The target's pinned keys, parsed; a damaged pin is a configuration error, never "no pin"."""
    keys = []
    for line in target.pinned_host_keys:
        try:
            keys.append(parse_public_key(line))
        except FleetDeskError as exc:
            raise ConfigError(f"a pinned host key is damaged ({exc.message})", device=target.device,
                              step="connect",
                              fix=f"re-trust the device: `fleetdesk trust {shell_quote(target.device)}`") from None
    return tuple(keys)


def host_key_algorithms(target: SSHTarget) -> list[str]:
    """Signature algorithms to offer: the pinned keys' types first, then the rest, so a device that
    switched key type still reaches the check (and is refused as changed) instead of failing key exchange."""
    first: list[str] = []
    for key in pinned_keys(target):
        names = ["rsa-sha2-512", "rsa-sha2-256"] if key.key_type == "ssh-rsa" else [key.key_type]
        first += [n for n in names if n not in first]
    return first + [n for n in PREFERRED_HOST_KEY_TYPES if n not in first]


def _blob(key: PublicKey) -> bytes:
    try:
        return base64.b64decode(key.blob)
    except (binascii.Error, ValueError):
        return b""


def check_host_key(target: SSHTarget, presented: PublicKey) -> None:
    """Accept `presented` only if it is pinned for this device; otherwise raise the operator's error."""
    pinned = pinned_keys(target)
    if any(_blob(p) == _blob(presented) for p in pinned):
        return
    name = shell_quote(target.device)
    if not pinned:
        raise HostKeyUnknownError(
            f"host key {presented.fingerprint} ({presented.key_type}) is not trusted yet; nothing was sent",
            fingerprint=presented.fingerprint, public_key=presented.line, device=target.device, step="connect",
            fix=f"check the fingerprint and run `fleetdesk trust {name} --fingerprint {presented.fingerprint}`")
    was = ", ".join(f"{p.fingerprint} ({p.key_type})" for p in pinned)
    raise HostKeyChangedError(
        f"host key changed: trusted {was}, the device now presents {presented.fingerprint} "
        f"({presented.key_type}); refused, nothing was sent",
        pinned=tuple(p.fingerprint for p in pinned), presented=presented.fingerprint, public_key=presented.line,
        device=target.device, step="connect",
        fix=("if the device was reinstalled or its keys were regenerated, confirm the new fingerprint at the "
             f"device and run `fleetdesk trust {name} --fingerprint {presented.fingerprint}`; otherwise do not "
             "connect: someone may be impersonating it"))


def public_key_of(key_type: str, blob: bytes) -> PublicKey:
    """A PublicKey from the raw SSH wire blob a library handed us."""
    return PublicKey(key_type, base64.b64encode(blob).decode())
