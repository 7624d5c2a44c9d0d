"""The audit trail's hash chain: how an entry is written down, hashed, signed and checked. Pure functions.

An entry's hash is SHA-256 over the canonical JSON of its fields (sorted keys, no spaces, ASCII only: the same
bytes on every machine and every database), and those fields include the previous entry's hash, so changing,
removing or reordering any entry breaks every hash after it. Its signature is Ed25519 (RFC 8032) over a
domain-separated message holding the hash, by the operator's key; a checkpoint is the fleet key's signature
of one entry's (seq, hash), and devices keep the checkpoints they are handed (fleetdesk.access.checkpoints).

Signing and checking go through libsodium (PyNaCl): its verification is about twice as fast as OpenSSL's
here and releases the GIL, so a long chain is checked on several threads (benchmarks/audit.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import nacl.bindings
import nacl.exceptions

__all__ = [
    "GENESIS_PREV",
    "canonical_json",
    "checkpoint_message",
    "checkpoint_ok",
    "entry_hash",
    "legacy_digest",
    "new_seed",
    "public_key",
    "sign",
    "signature_ok",
]

GENESIS_PREV = "0" * 64  # the "previous hash" of the first entry
_ENTRY_DOMAIN = b"fleetdesk audit entry v1\n"
_CHECKPOINT_DOMAIN = b"fleetdesk audit checkpoint v1\n"

# The fields an entry's hash covers, in the order `fleetdesk audit show` prints them.
HASHED_FIELDS = ("seq", "at", "operator", "action", "targets", "before", "after", "outcome", "prev_hash", "key")


def canonical_json(value: Any) -> str:
    """The one text form of a JSON value: sorted keys, no spaces, ASCII (lone surrogates and NUL escaped)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(fields: Mapping[str, Any]) -> str:
    """The hex SHA-256 of an entry: `fields` holds exactly HASHED_FIELDS (targets, before and after as their stored
    canonical JSON text)."""
    missing = set(HASHED_FIELDS) ^ set(fields)
    if missing:
        raise ValueError(f"an audit entry is hashed over {', '.join(HASHED_FIELDS)}; not {sorted(missing)}")
    return hashlib.sha256(canonical_json(dict(fields)).encode("ascii")).hexdigest()


def new_seed() -> bytes:
    """A fresh Ed25519 private key (its 32-byte seed)."""
    return nacl.bindings.randombytes(nacl.bindings.crypto_sign_SEEDBYTES)


def public_key(seed: bytes) -> str:
    """The base64 public key of a seed (32 raw bytes, as `ssh-keygen` and RFC 8032 write them, base64)."""
    public, _secret = nacl.bindings.crypto_sign_seed_keypair(seed)
    return base64.b64encode(public).decode("ascii")


def sign(seed: bytes, digest: str) -> str:
    """The base64 signature of the entry hash `digest` by `seed`'s key."""
    _public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
    signed = nacl.bindings.crypto_sign(_ENTRY_DOMAIN + bytes.fromhex(digest), secret)
    return base64.b64encode(signed[:nacl.bindings.crypto_sign_BYTES]).decode("ascii")


def signature_ok(key: str, digest: str, signature: str) -> bool:
    """Whether `signature` is `key`'s signature of the entry hash `digest`; malformed input is simply False."""
    try:
        return _open(key, _ENTRY_DOMAIN + bytes.fromhex(digest), signature)
    except ValueError:
        return False


def checkpoint_message(seq: int, digest: str) -> bytes:
    """What a checkpoint signs (with the fleet key): the entry's sequence number and hash."""
    return _CHECKPOINT_DOMAIN + f"{int(seq)}:{digest}".encode("ascii")


def checkpoint_ok(key: str, seq: int, digest: str, signature: str) -> bool:
    """Whether `signature` is `key`'s (the fleet key's, base64 raw) checkpoint of entry `seq` with hash `digest`."""
    try:
        return _open(key, checkpoint_message(seq, digest), signature)
    except ValueError:
        return False


def legacy_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """The SHA-256 the genesis entry commits to: the audit rows written before the chain, in id order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(dict(row)).encode("ascii") + b"\n")
    return digest.hexdigest()


def _open(key: str, message: bytes, signature: str) -> bool:
    try:
        public = base64.b64decode(key, validate=True)
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(public) != nacl.bindings.crypto_sign_PUBLICKEYBYTES or len(raw) != nacl.bindings.crypto_sign_BYTES:
        return False
    try:
        nacl.bindings.crypto_sign_open(raw + message, public)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
