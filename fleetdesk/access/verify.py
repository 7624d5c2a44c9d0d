"""Checking the audit trail: every entry, in order, against its hash, its predecessor and its operator's key.

The keys are taken from the trail itself, not from the operators table (which anyone with the database could
edit): the genesis entry commits to the rows before the chain, the first `operator.add` makes its signer the
first admin, and from then on an operator's key and roles are what the admin-signed `operator.*` entries say.
So an entry that was changed, removed, reordered, or re-signed with another operator's key fails, and the
report names the first entry that does and why.

Signatures are checked in batches on a few threads (libsodium releases the GIL) while the next batch is read and
chained on the calling thread.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk import chain
from fleetdesk.inventory.audit import GENESIS_ACTION as GENESIS
from fleetdesk.inventory.audit import AuditCheckpoint, AuditEntry, AuditRepo

__all__ = ["Verification", "against_checkpoints", "fleet_key_b64", "verify_entries", "verify_trail"]

OPERATOR_ACTIONS = ("operator.add", "operator.set-role", "operator.remove", "operator.key")
THREADS = 2


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int  # entries read
    head_seq: int  # the last entry read
    head_hash: str
    seq: int | None = None  # the first entry that does not verify
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "seq": self.seq, "reason": self.reason}

    def __str__(self) -> str:
        if self.ok:
            return f"the audit trail verifies: {self.checked} entries, head {self.head_seq} ({self.head_hash[:16]})"
        return f"the audit trail does not verify at entry {self.seq}: {self.reason}"


class _Replay:
    """Operators' keys and roles as the trail establishes them, entry by entry."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.roles: dict[str, tuple[str, ...]] = {}

    def check(self, entry: AuditEntry) -> str | None:
        """Why `entry` may not stand where it is (None: it may), before its effect is applied."""
        if not self.keys:
            first = entry.action == "operator.add" and entry.outcome == "ok" and isinstance(entry.after, dict) \
                and entry.after.get("name") == entry.operator and entry.after.get("key") == entry.key
            if not first:
                return "no operator is established yet: the first entry after genesis must add the first admin"
            return None
        known = self.keys.get(entry.operator)
        if known is None:
            return f"operator {entry.operator!r} was never added in this trail (or was removed)"
        if entry.key != known:
            return f"signed with a key that is not operator {entry.operator}'s"
        if entry.action in OPERATOR_ACTIONS and entry.outcome == "ok":
            self_rekey = entry.action == "operator.key" and _name(entry) == entry.operator
            if not self_rekey and "admin" not in self.roles.get(entry.operator, ()):
                return f"changes operators, but {entry.operator} was not an admin then"
        return None

    def apply(self, entry: AuditEntry) -> None:
        if entry.action not in OPERATOR_ACTIONS or entry.outcome != "ok":
            return
        name = _name(entry)
        after = entry.after if isinstance(entry.after, dict) else {}
        if entry.action == "operator.add":
            self.keys[name] = str(after.get("key", ""))
            self.roles[name] = tuple(after.get("roles", ()))
        elif entry.action == "operator.set-role":
            self.roles[name] = tuple(after.get("roles", ()))
        elif entry.action == "operator.key":
            self.keys[name] = str(after.get("key", ""))
        elif entry.action == "operator.remove":
            self.keys.pop(name, None)
            self.roles.pop(name, None)


def _name(entry: AuditEntry) -> str:
    for target in entry.targets:
        if target.startswith("operator:"):
            return target.split(":", 1)[1]
    return ""


def verify_entries(batches: Iterable[Sequence[AuditEntry]], legacy: Sequence[dict[str, Any]],
                   *, threads: int = THREADS) -> Verification:
    """Check the entries (in sequence order, in batches) and the pre-chain rows the genesis commits to.

    Each batch's signatures are checked on the pool while the next batch is read and chained, so reading,
    hashing and the signature checks overlap.
    """
    replay = _Replay()
    prev_hash, expected, checked, head = chain.GENESIS_PREV, 1, 0, ""
    structural: tuple[int, str] | None = None
    pending: list[Future[AuditEntry | None]] = []
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="audit-verify") as pool:
        for batch in batches:
            signed: list[AuditEntry] = []
            for entry in batch:
                checked += 1
                problem = _structure(entry, expected, prev_hash, legacy)
                if problem is None and entry.seq > 1:
                    problem = replay.check(entry)
                    signed.append(entry)
                if problem is not None:
                    structural = (entry.seq, problem)
                    break
                replay.apply(entry)
                prev_hash, expected, head = entry.hash, entry.seq + 1, entry.hash
            size = max(1, -(-len(signed) // max(1, threads)))
            pending += [pool.submit(_check_part, signed[i:i + size]) for i in range(0, len(signed), size)]
            if structural is not None:
                break
        bad = next((found for found in (f.result() for f in pending) if found is not None), None)
    if bad is not None and (structural is None or bad.seq < structural[0]):
        return Verification(False, checked, bad.seq - 1, "", bad.seq,
                            f"its signature is not operator {bad.operator}'s signature of its hash")
    if structural is not None:
        return Verification(False, checked, structural[0] - 1, "", structural[0], structural[1])
    if checked == 0:
        return Verification(False, 0, 0, "", 1, "the trail is empty: its genesis entry is missing")
    return Verification(True, checked, expected - 1, head)


def verify_trail(repo: AuditRepo, *, threads: int = THREADS, fleet_key: str | None = None) -> Verification:
    """Check the inventory's whole audit trail; with the fleet key (base64 raw) also against the checkpoints the
    inventory keeps (a trail rewritten without them still contradicts them)."""
    result = verify_entries(repo.walk(), repo.legacy_rows(), threads=threads)
    if fleet_key is None:
        return result
    return against_checkpoints(result, [("the inventory's checkpoint", c) for c in repo.checkpoints()], fleet_key,
                               repo.entries_at)


def fleet_key_b64(public_pem: bytes) -> str:
    """The fleet key's public half (PEM, as keys/fleet.pub holds it) as checkpoints are checked against: base64 raw."""
    public = serialization.load_pem_public_key(public_pem)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("the fleet key is not an Ed25519 key")
    return base64.b64encode(public.public_bytes_raw()).decode("ascii")


def against_checkpoints(trail: Verification, held: Iterable[tuple[str, AuditCheckpoint]], fleet_key: str,
                        entries_at: Callable[[list[int]], Mapping[int, AuditEntry]]) -> Verification:
    """The trail's verification, failed at the first entry a checkpoint contradicts.

    `held` pairs who holds a checkpoint ("device cam-3", "the inventory") with it; only checkpoints the fleet key
    (`fleet_key`, base64 raw) signed count as evidence. An entry a checkpoint covers must still be in the trail with
    the same hash, and a checkpoint past the trail's end means its tail was deleted.
    """
    if not trail.ok:
        return trail
    signed = [(holder, c) for holder, c in held if chain.checkpoint_ok(fleet_key, c.seq, c.hash, c.signature)]
    entries = entries_at(sorted({c.seq for _, c in signed if c.seq <= trail.head_seq}))
    problems: list[tuple[int, str]] = []
    for holder, c in signed:
        if c.seq > trail.head_seq:
            problems.append((trail.head_seq + 1, f"{holder} holds a checkpoint of entry {c.seq}, but the trail ends "
                                                 f"at entry {trail.head_seq}: its tail was deleted"))
        elif c.seq not in entries or entries[c.seq].hash != c.hash:
            problems.append((c.seq, f"entry {c.seq} is not the one {holder} witnessed: the trail was rewritten "
                                    "from there on"))
    if not problems:
        return trail
    seq, reason = min(problems)
    return Verification(False, trail.checked, trail.head_seq, trail.head_hash, seq, reason)


def _structure(entry: AuditEntry, expected: int, prev_hash: str, legacy: Sequence[dict[str, Any]]) -> str | None:
    if entry.seq != expected:
        if entry.seq > expected:
            return f"entries {expected}–{entry.seq - 1} are missing (the trail goes from {expected - 1} to {entry.seq})"
        return f"entry {entry.seq} comes twice or out of order"
    if entry.prev_hash != prev_hash:
        return f"it does not chain on entry {entry.seq - 1}: it names a previous hash that is not that entry's"
    if chain.entry_hash(entry.hashed_fields()) != entry.hash:
        return "its fields do not match its hash: it was changed after it was written"
    if entry.seq == 1:
        if entry.action != GENESIS or entry.key or entry.operator:
            return "the first entry is not the trail's genesis entry"
        after = entry.after if isinstance(entry.after, dict) else {}
        if after.get("carried") != len(legacy) or after.get("digest") != chain.legacy_digest(legacy):
            return "the audit rows from before the chain do not match what the genesis entry committed to"
    elif entry.action == GENESIS:
        return "a second genesis entry"
    return None


def _check_part(entries: Sequence[AuditEntry]) -> AuditEntry | None:
    for entry in entries:
        if not chain.signature_ok(entry.key, entry.hash, entry.signature):
            return entry
    return None
