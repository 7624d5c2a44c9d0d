"""Host key text as operators see it: OpenSSH public key lines and their SHA256 fingerprints.

One place computes a fingerprint, so the CLI, the GUI, the inventory and the trust check agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from fleetdesk.errors import FleetDeskError


@dataclass(frozen=True)
class PublicKey:
    """One host public key: its type ("ssh-ed25519"), its base64 blob, and the fingerprint."""

    key_type: str
    blob: str

    @property
    def line(self) -> str:
        """The key as one OpenSSH line, without a comment."""
        return f"{self.key_type} {self.blob}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_blob(base64.b64decode(self.blob))


def parse_public_key(text: str) -> PublicKey:
    """Parse "TYPE BASE64 [comment]"; raises FleetDeskError naming what is wrong."""
    parts = text.strip().split()
    if len(parts) < 2:
        raise FleetDeskError(f"{text.strip()[:60]!r} is not an OpenSSH public key",
                             fix='expected "ssh-ed25519 AAAA..." as in ~/.ssh/known_hosts or *.pub files')
    key_type, blob = parts[0], parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise FleetDeskError(f"the {key_type} key's base64 text is damaged",
                             fix="copy the whole key line again") from None
    # The blob starts with the key type as an SSH string (RFC 4253 section 6.6).
    if len(raw) < 4 or raw[4:4 + int.from_bytes(raw[:4], "big")] != key_type.encode():
        raise FleetDeskError(f"the key blob does not hold a {key_type} key", fix="copy the whole key line again")
    return PublicKey(key_type, blob)


def fingerprint_of_blob(blob: bytes) -> str:
    """SHA256 fingerprint exactly as `ssh-keygen -lf` prints it: unpadded base64 of the blob's SHA-256."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint(public_key: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line."""
    return parse_public_key(public_key).fingerprint
