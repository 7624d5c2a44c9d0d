"""Figures for issue 20 "Operators, roles, and an audit trail": appending a signed entry (target ≤ 2 ms median) and
verifying a chain of 100,000 entries (target ≤ 10 s), on SQLite in a temp folder, with the operator's key in a
real private gnome-keyring (tests/keyring_daemon.py).

References, measured in the same run:
- append: the unsigned, unchained audit row FleetDesk wrote before the chain (RolloutRepo's audit_log insert, one
  transaction each), alternated with the chained appends round by round, the order rotating;
- verify: the same 100,000 signatures checked one after the other with OpenSSL (cryptography's Ed25519), the
  library FleetDesk signs artifacts with, against the whole `verify_trail` (read, hash, chain, libsodium on
  two threads).

Run: .venv/bin/python benchmarks/audit.py [--entries 100000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import insert

from fleetdesk import chain
from fleetdesk.access import Access, verify_trail
from fleetdesk.access.keys import OperatorKey
from fleetdesk.inventory import models as orm
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.audit import stamp
from fleetdesk.inventory.database import for_writing
from tests.keyring_daemon import private_keyring, use_keyring_daemon

APPENDS_PER_ROUND = 200


def _legacy_insert(inventory: Any, i: int) -> None:
    with inventory._session(write=True) as session:
        session.add(orm.AuditLogRow(at=datetime.now(UTC), actor="alice", action="pause", rollout_id=i,
                                    device_ids="[1,2]", outcome="ok", detail='{"reason":"bench"}'))


def append_figures(work: Path, rounds: int) -> dict[str, Any]:
    with open_inventory(f"sqlite:///{work / 'append.db'}") as inventory:
        access = Access(inventory, "alice")
        access.record("bench.warm-up")  # makes alice the first admin, and her key; later loads are cached
        chained: list[float] = []
        plain: list[float] = []
        for r in range(rounds):
            order = [("chained", chained), ("plain", plain)]
            for name, out in order if r % 2 == 0 else order[::-1]:
                for i in range(APPENDS_PER_ROUND):
                    began = time.perf_counter()
                    if name == "chained":
                        access.record("rollout.pause", targets=(f"rollout:{i}", "device:1", "device:2"),
                                      before={"status": "running"}, after={"status": "paused", "reason": "bench"})
                    else:
                        _legacy_insert(inventory, i)
                    out.append(time.perf_counter() - began)
        median, reference = statistics.median(chained), statistics.median(plain)
        return {"append_median_ms": median * 1e3, "append_p95_ms": sorted(chained)[int(0.95 * len(chained))] * 1e3,
                "reference_unsigned_insert_median_ms": reference * 1e3, "ratio": median / reference,
                "appends": len(chained), "target_ms": 2.0, "verifies": verify_trail(access.audit).ok}


def _build_chain(inventory: Any, key: OperatorKey, entries: int) -> None:
    """`entries` signed entries by `key`'s operator, chained after the inventory's head, written in bulk."""
    seq, prev = inventory_head(inventory)
    start = datetime.now(UTC)
    rows = []
    for n in range(entries):
        seq += 1
        at = start + timedelta(microseconds=n)
        after = chain.canonical_json({"status": "paused", "reason": f"bench {n}"})
        fields = {"seq": seq, "at": stamp(at), "operator": key.name, "action": "rollout.pause",
                  "targets": chain.canonical_json([f"rollout:{n % 97}", "device:1"]),
                  "before": '{"status":"running"}', "after": after,
                  "outcome": "ok", "prev_hash": prev, "key": key.key}
        digest = chain.entry_hash(fields)
        rows.append({"seq": seq, "at": at, "operator": key.name, "action": "rollout.pause",
                     "targets": fields["targets"], "before": fields["before"], "after": after,
                     "outcome": "ok", "prev_hash": prev, "hash": digest, "key": key.key,
                     "signature": key.sign(digest)})
        prev = digest
    with for_writing(inventory.engine).begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(insert(orm.AuditEntryRow.__table__), rows[i:i + 5000])
        conn.execute(orm.AuditHeadRow.__table__.update().values(seq=seq, hash=prev))


def inventory_head(inventory: Any) -> tuple[int, str]:
    from fleetdesk.inventory.audit import AuditRepo

    return AuditRepo(inventory).head()


def verify_figures(work: Path, entries: int, rounds: int) -> dict[str, Any]:
    with open_inventory(f"sqlite:///{work / 'verify.db'}") as inventory:
        access = Access(inventory, "alice")
        access.record("bench.warm-up")
        key = OperatorKey.load("alice", access.fleet_id)
        assert key is not None
        began = time.perf_counter()
        _build_chain(inventory, key, entries)
        build_s = time.perf_counter() - began
        all_entries = [e for batch in access.audit.walk() for e in batch if e.key]
        ours: list[float] = []
        reference: list[float] = []
        result = None
        for r in range(rounds):
            order = ["ours", "openssl"] if r % 2 == 0 else ["openssl", "ours"]
            for name in order:
                began = time.perf_counter()
                if name == "ours":
                    result = verify_trail(access.audit)
                    ours.append(time.perf_counter() - began)
                else:
                    for e in all_entries:
                        Ed25519PublicKey.from_public_bytes(base64.b64decode(e.key)).verify(
                            base64.b64decode(e.signature), b"fleetdesk audit entry v1\n" + bytes.fromhex(e.hash))
                    reference.append(time.perf_counter() - began)
        assert result is not None and result.ok, result
        median, ref = statistics.median(ours), statistics.median(reference)
        return {"entries": result.checked, "verify_median_s": median, "reference_openssl_signatures_only_s": ref,
                "ratio": median / ref, "target_s": 10.0, "build_s": build_s, "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-audit-") as tmp:
        work = Path(tmp)
        with private_keyring(work / "keyring") as daemon, use_keyring_daemon(daemon):
            figures = {"append": append_figures(work, args.rounds),
                       "verify": verify_figures(work, args.entries, max(1, args.rounds // 2 + 1))}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    a, v = figures["append"], figures["verify"]
    print(f"audit append (signed, chained, SQLite): median {a['append_median_ms']:.2f} ms, p95 "
          f"{a['append_p95_ms']:.2f} ms over {a['appends']} (target ≤ {a['target_ms']} ms); unsigned insert "
          f"{a['reference_unsigned_insert_median_ms']:.2f} ms; ratio {a['ratio']:.2f}")
    print(f"audit verify ({v['entries']} entries): median {v['verify_median_s']:.2f} s over {v['rounds']} rounds "
          f"(target ≤ {v['target_s']:.0f} s); OpenSSL signature checks alone "
          f"{v['reference_openssl_signatures_only_s']:.2f} s; ratio {v['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
