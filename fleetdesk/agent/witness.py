"""`witness`: the device keeps the audit trail's checkpoints the laptop hands it, so the laptop's log can be
checked against them later (a tail deleted or rewritten on the laptop no longer matches what a device holds).

A checkpoint is the fleet key's signature of one entry's sequence number and hash (fleetdesk/chain.py says the
exact message). The device stores only checkpoints that verify with its fleet key (ROOT/keys/fleet.pub), keeps
the newest KEEP of them in ROOT/audit/checkpoints.json (written atomically: a power cut leaves the old file or
the new one), and never replaces a checkpoint it holds with a different one of the same entry.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any

from . import ed25519, state
from .protocol import BAD_ARGUMENTS, AgentError

KEEP = 300
FILE = os.path.join("audit", "checkpoints.json")
DOMAIN = b"fleetdesk audit checkpoint v1\n"  # fleetdesk.chain.checkpoint_message: the same bytes
_HASH = re.compile(r"[0-9a-f]{64}")


def message(seq: int, digest: str) -> bytes:
    return DOMAIN + f"{int(seq)}:{digest}".encode("ascii")


def stored(root: str) -> list[dict[str, Any]]:
    """The checkpoints this device holds, lowest sequence number first ([] when none)."""
    path = os.path.join(root, FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise AgentError("bad-state", f"{path} cannot be read ({exc})",
                         fix="the laptop's next checkpoint replaces it; `fleetdesk audit verify --with-devices` "
                             "names this device until then", file=path) from None
    items = data.get("checkpoints", []) if isinstance(data, dict) else []
    return [c for c in items if isinstance(c, dict)]


def add(root: str, seq: int, digest: str, signature: str) -> dict[str, Any]:
    """Keep one checkpoint once its signature verifies with the device's fleet key."""
    if seq < 1 or not _HASH.fullmatch(digest):
        raise AgentError(BAD_ARGUMENTS, "a checkpoint names an entry number (1 or more) and its SHA-256 (hex)",
                         fix="hand over a checkpoint as FleetDesk makes it")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64 or not ed25519.verify(state.fleet_key(root), message(seq, digest), raw):
        raise AgentError(state.BAD_SIGNATURE, f"the checkpoint of entry {seq} is not signed by this device's fleet "
                         "key", fix="checkpoints come from the laptop whose fleet key this device trusts")
    held = {int(c["seq"]): c for c in stored(root) if "seq" in c}
    if seq in held and held[seq].get("hash") != digest:
        # What a device once witnessed stays: a second, different checkpoint of the same entry is the evidence.
        raise AgentError("checkpoint-conflict", f"this device already holds a different checkpoint of entry {seq}",
                         fix="the laptop's audit trail was rewritten after this device witnessed it: run "
                             "`fleetdesk audit verify --with-devices`")
    held[seq] = {"seq": seq, "hash": digest, "signature": signature}
    kept = [held[s] for s in sorted(held)][-KEEP:]
    folder = os.path.join(root, os.path.dirname(FILE))
    os.makedirs(folder, exist_ok=True)
    state.write_json_atomic(os.path.join(root, FILE), {"checkpoints": kept})
    return {"seq": seq, "kept": len(kept), "newest": kept[-1]["seq"]}
