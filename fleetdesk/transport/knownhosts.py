"""Host keys the operator already trusts in OpenSSH's known_hosts files, found for one host and port.

Owns reading the known_hosts format (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"): plain, hashed, wildcard, negated.

Matching follows OpenSSH's hostfile.c / match.c:

- the name looked up is the host for port 22 and ``[host]:port`` otherwise, lowercased as ssh(1) does;
- a hashed entry ``|1|base64(salt)|base64(hash)`` matches when HMAC-SHA1 keyed with the salt over that name
  equals the hash;
- a plain entry is a comma-separated list of patterns (``*`` any run of characters, ``?`` one character,
  compared case-insensitively); a line matches when one pattern matches and no ``!pattern`` does;
- ``@revoked`` keys are never imported, and a key revoked for the host is left out even where another line
  lists it; ``@cert-authority`` lines trust a CA, not a host key, so they are skipped with a note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fleetdesk.errors import ConfigError, FleetDeskError
from fleetdesk.transport.hostkey import PublicKey, parse_public_key

log = logging.getLogger(__name__)

# OpenSSH's defaults: UserKnownHostsFile then GlobalKnownHostsFile (ssh_config(5)).
DEFAULT_FILES = (
    "~/.ssh/known_hosts",
    "~/.ssh/known_hosts2",
    "/etc/ssh/ssh_known_hosts",
    "/etc/ssh/ssh_known_hosts2",
)

_HASH_MAGIC = "|1|"  # HASH_MAGIC in OpenSSH hostfile.h; the only hashing scheme OpenSSH writes


@dataclass(frozen=True)
class KnownHostsLookup:
    """What the known_hosts files say about one host: keys to import, revoked keys, and notes for the operator."""

    host: str
    port: int
    keys: tuple[PublicKey, ...]  # importable: matched, not revoked, in file order, each once
    revoked: tuple[PublicKey, ...]  # @revoked for this host: must never be trusted
    notes: tuple[str, ...]  # lines skipped, e.g. "FILE line N: @cert-authority ..."
    files: tuple[str, ...]  # the files that were read


def lookup_name(host: str, port: int = 22) -> str:
    """The name known_hosts stores for a host and port: ``host`` for 22, ``[host]:port`` otherwise."""
    host = host.strip().lower()
    if port == 22:
        return host
    return f"[{host}]:{port}"


@lru_cache(maxsize=256)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # match.c match_pattern(): only '*' and '?' are special; everything else, '[' included, is literal.
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _match_patterns(name: str, patterns: str) -> bool:
    """match_hostname(): True when a positive pattern matches and no negated one does."""
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _pattern_regex(pattern.lower()).fullmatch(name):
            if negated:
                return False
            positive = True
    return positive


def _match_hashed(name: str, entry: str) -> bool | None:
    """True/False for a hashed entry; None if the entry is damaged."""
    # "|1|" + base64(20-byte salt) + "|" + base64(HMAC-SHA1(salt, name)): hostfile.c host_hash().
    parts = entry[len(_HASH_MAGIC):].split("|")
    if len(parts) != 2:
        return None
    try:
        salt = base64.b64decode(parts[0], validate=True)
        expected = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(salt) != 20 or len(expected) != 20:  # SHA1 digest length, as OpenSSH checks
        return None
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(digest, expected)


def _files(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None) -> tuple[Path, ...]:
    if path is None:
        return tuple(Path(p).expanduser() for p in DEFAULT_FILES)
    if isinstance(path, (str, os.PathLike)):
        return (Path(path).expanduser(),)
    return tuple(Path(p).expanduser() for p in path)


def lookup_known_hosts(host: str, port: int = 22, *,
                       path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                       ) -> KnownHostsLookup:
    """Every key the known_hosts files hold for `host`:`port`, revoked ones set apart.

    `path` is one file or several; by default OpenSSH's user and global files. Missing files are skipped
    (no known_hosts is normal); an unreadable one raises ConfigError. Damaged lines are skipped with a note,
    as ssh skips them.
    """
    if not host.strip() or any(ch.isspace() or ch == "," for ch in host.strip()):
        raise ConfigError(f"{host!r} is not a host to look up in known_hosts", fix="give a host name or address")
    if not 0 < port < 65536:
        raise ConfigError(f"{port} is not a TCP port", fix="give a port between 1 and 65535")
    name = lookup_name(host, port)
    found: dict[str, PublicKey] = {}
    revoked: dict[str, PublicKey] = {}
    notes: list[str] = []
    read: list[str] = []
    for file in _files(path):
        try:
            # surrogateescape: a stray non-UTF-8 byte damages one line, not the whole file.
            text = file.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"the known_hosts file {file} cannot be read: {exc}",
                              fix="check the file's permissions", step="import known_hosts", cause=exc) from exc
        read.append(str(file))
        for number, raw in enumerate(text.splitlines(), 1):
            _read_line(name, raw, f"{file} line {number}", found, revoked, notes)
    keys = tuple(key for blob, key in found.items() if blob not in revoked)
    return KnownHostsLookup(host=host, port=port, keys=keys, revoked=tuple(revoked.values()),
                            notes=tuple(notes), files=tuple(read))


def _read_line(name: str, raw: str, where: str, found: dict[str, PublicKey], revoked: dict[str, PublicKey],
               notes: list[str]) -> None:
    line = raw.strip()
    if not line or line.startswith("#"):
        return
    fields = line.split()
    marker = None
    if fields[0].startswith("@"):
        marker = fields.pop(0)
        if marker not in ("@revoked", "@cert-authority"):
            notes.append(f"{where}: unknown marker {marker[:40]!r}, line skipped")
            return
    if len(fields) < 3:
        notes.append(f"{where}: not a known_hosts line (expected HOSTS KEYTYPE BASE64), skipped")
        return
    hosts, key_type, blob = fields[0], fields[1], fields[2]
    if hosts.startswith(_HASH_MAGIC):
        matched = _match_hashed(name, hosts)
        if matched is None:
            notes.append(f"{where}: damaged hashed host name, line skipped")
            return
    else:
        matched = _match_patterns(name, hosts)
    if not matched:
        return
    if marker == "@cert-authority":
        notes.append(f"{where}: @cert-authority line skipped: it trusts a CA that signs host certificates, "
                     "FleetDesk pins the device's own key")
        return
    try:
        key = parse_public_key(f"{key_type} {blob}")
    except FleetDeskError as exc:
        notes.append(f"{where}: {exc.message}, line skipped")
        return
    target = revoked if marker == "@revoked" else found
    target.setdefault(key.blob, key)


def import_known_hosts(host: str, port: int = 22, *,
                       path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                       ) -> list[PublicKey]:
    """The keys `host`:`port` is already trusted with in known_hosts (never a revoked one).

    Revoked keys and skipped lines are logged as warnings; `lookup_known_hosts` returns them for display.
    """
    result = lookup_known_hosts(host, port, path=path)
    for key in result.revoked:
        log.warning("known_hosts marks %s key %s of %s as @revoked: it is not imported and must not be trusted",
                    key.key_type, key.fingerprint, lookup_name(host, port))
    for note in result.notes:
        log.info("known_hosts: %s", note)
    return list(result.keys)
