"""Figures for issue 20 "Operators, roles, and an audit trail": appending a signed entry (target ≤ 2 ms median) and
verifying a chain of 100,000 entries (target ≤ 10 s), on SQLite in a temp folder, with the operator's key in a
real private gnome-keyring (tests/keyring_daemon.py).

References, measured in the same run:
- append: the unsigned, unchained audit row FleetDesk wrote before the chain (RolloutRepo's audit_log insert, one
  transaction each), alternated with the chained appends round by round, the order rotating;
- verify: the same 100,000 signatures checked one after the other with OpenSSL (cryptography's Ed25519), the
  library FleetDesk signs artifacts with, against the whole `verify_trail` (read, hash, chain, libsodium on
  two threads);
- the window's loop while its Audit view verifies that trail (target: never a stall over 50 ms): the same window
  idle for as long.

Run: .venv/bin/python benchmarks/audit.py [--entries 100000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk.access import Access, verify_trail
from fleetdesk.access.keys import OperatorKey
from fleetdesk.inventory import models as orm
from fleetdesk.inventory import open_inventory
from tests.audit_bulk import append_bulk
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


def verify_figures(work: Path, entries: int, rounds: int) -> dict[str, Any]:
    with open_inventory(f"sqlite:///{work / 'verify.db'}") as inventory:
        access = Access(inventory, "alice")
        access.record("bench.warm-up")
        key = OperatorKey.load("alice", access.fleet_id)
        assert key is not None
        began = time.perf_counter()
        append_bulk(inventory, key, entries)
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


def window_figures(work: Path) -> dict[str, Any]:
    """The window's loop while its Audit view verifies the 100,000-entry trail verify_figures built (off the loop):
    stall p99 and worst from the GUI tests' 10 ms heartbeat, against the same window idle for as long."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["FLEETDESK_OPERATOR"] = "alice"
    os.environ["FLEETDESK_DATA_DIR"], os.environ["FLEETDESK_CONFIG_DIR"] = str(work / "data"), str(work / "config")
    from fleetdesk.gui.audit_dialog import AuditDialog
    from tests.gui_harness import gui_session, private_qsettings

    private_qsettings(work / "qsettings")  # the operator's own window layout is left alone

    with gui_session(f"sqlite:///{work / 'verify.db'}", work / "screens") as session:
        dialog = session.call(session.window.open_audit_dialog)
        assert isinstance(dialog, AuditDialog)
        session.wait(lambda: dialog.table.rowCount() > 0, "the newest entries")
        began, before = time.perf_counter(), len(session.watch.stalls)
        session.call(lambda: dialog.verify.click())
        session.wait(lambda: dialog.status.text().startswith("the audit trail"), "verified", timeout=300)
        took, during = time.perf_counter() - began, sorted(session.watch.stalls[before:])
        assert "verifies" in dialog.status.text(), dialog.status.text()
        before = len(session.watch.stalls)
        session.settle(took)
        idle = sorted(session.watch.stalls[before:])

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, int(0.99 * len(values)))] * 1e3 if values else 0.0

    return {"verify_in_window_s": took, "stall_p99_ms": p99(during), "stall_max_ms": during[-1] * 1e3,
            "idle_stall_p99_ms": p99(idle), "ratio": p99(during) / max(p99(idle), 1e-3), "target_ms": 50.0}


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
                       "verify": verify_figures(work, args.entries, max(1, args.rounds // 2 + 1)),
                       "window": window_figures(work)}
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
    w = figures["window"]
    print(f"window loop while its Audit view verifies them ({w['verify_in_window_s']:.1f} s): stall p99 "
          f"{w['stall_p99_ms']:.1f} ms, worst {w['stall_max_ms']:.1f} ms (target: never > {w['target_ms']:.0f} ms); "
          f"idle window p99 {w['idle_stall_p99_ms']:.1f} ms; ratio {w['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
