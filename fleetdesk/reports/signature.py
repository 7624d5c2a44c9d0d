"""A report's detached signature, `PATH.sig`: the fleet key's Ed25519 signature of a statement that names the
report's kind, its period, the key's fingerprint and the SHA-256 of every file the report is made of.

    {"format": "fleetdesk-report-signature/1",
     "signed": {"kind": …, "since": ISO, "until": ISO, "key": "SHA256:…",
                "files": [{"name": "fleet.pdf", "size": n, "sha256": hex}, …]},
     "signature": base64 of the Ed25519 signature of canonical_json(signed)}

A CSV report is a folder of files: one signature covers them all (the statement is their manifest), so a file
removed, added or changed is caught as surely as a changed byte. Checking needs the public key alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk.artifacts.store_records import canonical_json, key_fingerprint
from fleetdesk.errors import ReportSignatureError
from fleetdesk.reports.document import Report

FORMAT = "fleetdesk-report-signature/1"
SUFFIX = ".sig"


@dataclass(frozen=True)
class VerifiedReport:
    path: Path
    kind: str
    since: str
    until: str
    key: str
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": True, "kind": self.kind, "since": self.since, "until": self.until,
                "key": self.key, "files": list(self.files)}


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def statement(report: Report, files: Mapping[str, bytes], key: str) -> dict[str, Any]:
    return {"kind": report.kind, "since": report.since.isoformat(), "until": report.until.isoformat(), "key": key,
            "files": [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                      for name, data in sorted(files.items())]}


def signature_file(signed: Mapping[str, Any], signature: bytes) -> bytes:
    return (json.dumps({"format": FORMAT, "signed": signed, "signature": base64.b64encode(signature).decode()},
                       indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def verify_report(path: Path, public_pem: bytes) -> VerifiedReport:
    """Check PATH (a file, or a CSV report's folder) against PATH.sig with the fleet's public key (PEM)."""
    sig_path = signature_path(path)
    fix = "make the report again (`fleetdesk report …`), or ask whoever sent it for the original and its .sig"
    try:
        document = json.loads(sig_path.read_text(encoding="utf-8"))
        signed, signature = document["signed"], base64.b64decode(document["signature"], validate=True)
        if document.get("format") != FORMAT or not isinstance(signed, dict):
            raise ValueError(f"it is not a {FORMAT} document")
        listed = [(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in signed["files"]]
    except FileNotFoundError:
        raise ReportSignatureError(f"{path} has no signature: {sig_path} is missing", fix=fix) from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ReportSignatureError(f"{sig_path} is not a report signature FleetDesk can read ({exc})", fix=fix) \
            from None
    try:
        public = serialization.load_pem_public_key(public_pem)
    except ValueError as exc:
        raise ReportSignatureError(f"the key given is not a PEM public key ({exc})",
                                   fix="pass the file `fleetdesk model export-key` wrote") from None
    if not isinstance(public, Ed25519PublicKey):
        raise ReportSignatureError("the key given is not an Ed25519 key", fix="pass the fleet's public key")
    key = key_fingerprint(public_pem)
    if signed.get("key") != key:
        raise ReportSignatureError(f"{path} was signed by the fleet key {signed.get('key')}, not by {key}",
                                   fix="check it with the public key of the fleet that made it (--key FILE.pem)")
    try:
        public.verify(signature, canonical_json(signed))
    except InvalidSignature:
        raise ReportSignatureError(f"the signature in {sig_path} does not verify: the signature file was changed",
                                   fix=fix) from None
    _check_files(path, listed, fix)
    return VerifiedReport(path, str(signed["kind"]), str(signed["since"]), str(signed["until"]), key,
                          tuple(name for name, _, _ in listed))


def _check_files(path: Path, listed: list[tuple[str, int, str]], fix: str) -> None:
    if path.is_dir():
        present = {p.name for p in path.iterdir() if p.is_file()}
        extra = sorted(present - {name for name, _, _ in listed})
        if extra:
            raise ReportSignatureError(f"{path} holds files the signature does not cover: {', '.join(extra)}",
                                       fix="remove them, or make the report again")
        targets = [(path / name, size, digest) for name, size, digest in listed]
    elif len(listed) == 1:
        targets = [(path, listed[0][1], listed[0][2])]
    else:
        raise ReportSignatureError(f"{path} is one file but its signature covers a folder of {len(listed)}", fix=fix)
    for target, size, digest in targets:
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise ReportSignatureError(f"cannot read {target}: {exc.strerror or exc}", fix=fix) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ReportSignatureError(
                f"{target} was changed after it was signed: {len(data)} bytes with SHA-256 {actual[:16]}…, the "
                f"signature covers {size} bytes with SHA-256 {digest[:16]}…", fix=fix)
