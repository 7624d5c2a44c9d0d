"""The audit trail (migration 0007, fleetdesk.inventory.audit, fleetdesk.access): the genesis entry, the first admin,
signed entries chained by hash, roles checked with refusals audited, and `verify` naming the first entry that
was changed, removed, reordered or re-signed. Every test runs on SQLite and on a real PostgreSQL (conftest.py),
with operator keys in a real gnome-keyring (tests/keyring_daemon.py)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from fleetdesk import chain
from fleetdesk.access import Access, fleet_key_b64, verify_trail
from fleetdesk.access.guard import CHECKPOINT_EVERY
from fleetdesk.access.keys import OperatorKey, key_account
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.errors import AccessDeniedError, AccessError
from fleetdesk.inventory import Inventory, open_inventory
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.database import for_writing, open_database
from fleetdesk.inventory.migrate import upgrade
from fleetdesk.transport import credentials
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]


@pytest.fixture
def admin(inventory: Inventory, keyring_daemon: KeyringDaemon) -> Access:
    """The fleet's first admin ("alice"), made by her first change, and a few entries of hers."""
    access = Access(inventory, "alice")
    access.record("device.add", targets=("device:1",), after={"name": "press-cam"})
    access.record("rollout.start", targets=("rollout:1", "device:1"), after={"model": "cnn@2"})
    return access


def _sql(inventory: Inventory, statement: str, **params: object) -> None:
    with for_writing(inventory.engine).begin() as conn:
        conn.execute(text(statement), params)


def test_a_fresh_trail_starts_with_genesis_and_the_first_to_act_becomes_admin(inventory: Inventory,
                                                                             keyring_daemon: KeyringDaemon) -> None:
    access = Access(inventory, "alice")
    (genesis,) = access.audit.entries()
    assert (genesis.seq, genesis.action, genesis.operator, genesis.key, genesis.prev_hash) == (
        1, "audit.genesis", "", "", chain.GENESIS_PREV)
    assert genesis.after == {"carried": 0, "digest": chain.legacy_digest([])}
    assert access.operator() is None and access.roles() == ("admin",)  # no operators yet: reading needs no key

    entry = access.record("group.add", targets=("group:line A",), after={"devices": [1]})
    first, added = access.audit.entries(AuditFilter(action="operator."))[0], access.operators.get("alice")
    assert added is not None and added.roles == ("admin",)
    assert (first.seq, first.operator, first.targets, first.after["first"]) == (2, "alice", ("operator:alice",), True)
    assert entry.seq == 3 and entry.prev_hash == first.hash and entry.key == added.public_key == first.key
    assert chain.signature_ok(entry.key, entry.hash, entry.signature)
    # The private half is in the keyring, under an account naming the operator and this fleet; never in the inventory.
    seed = credentials.get_secret(key_account("alice", access.fleet_id))
    assert seed is not None and chain.public_key(__import__("base64").b64decode(seed)) == added.public_key
    with inventory.engine.connect() as conn:
        dump = json.dumps([[str(v) for v in row] for table in ("audit_entries", "operators")
                           for row in conn.execute(text(f"SELECT * FROM {table}"))])
    assert seed not in dump
    assert str(verify_trail(access.audit)).startswith("the audit trail verifies: 3 entries")


def test_the_trail_verifies_and_names_nothing(admin: Access) -> None:
    result = verify_trail(admin.audit)
    assert (result.ok, result.checked, result.seq) == (True, 4, None)
    assert result.head_hash == admin.audit.entry(4).hash


def test_a_changed_field_is_named(admin: Access) -> None:
    _sql(admin.inventory, "UPDATE audit_entries SET operator = 'mallory' WHERE seq = 3")
    result = verify_trail(admin.audit)
    assert (result.ok, result.seq) == (False, 3)
    assert "changed after it was written" in result.reason


def test_a_changed_field_with_its_hash_recomputed_is_named_by_its_signature(admin: Access) -> None:
    entry = admin.audit.entry(4)
    after = chain.canonical_json({"model": "evil@1"})
    fields = {**entry.hashed_fields(), "after": after}
    _sql(admin.inventory, "UPDATE audit_entries SET after = :a, hash = :h WHERE seq = 4", a=after,
         h=chain.entry_hash(fields))
    result = verify_trail(admin.audit)
    assert (result.ok, result.seq) == (False, 4)
    assert "signature" in result.reason


def test_a_deleted_entry_in_the_middle_is_named(admin: Access) -> None:
    _sql(admin.inventory, "DELETE FROM audit_entries WHERE seq = 3")
    result = verify_trail(admin.audit)
    assert (result.ok, result.seq) == (False, 4)
    assert "entries 3–3 are missing" in result.reason


def test_two_swapped_entries_are_named(admin: Access) -> None:
    a, b = admin.audit.entry(3), admin.audit.entry(4)
    for one, other in ((a, b), (b, a)):
        _sql(admin.inventory, "UPDATE audit_entries SET action = :act, targets = :t, after = :af, hash = :h, "
                              "prev_hash = :p, signature = :s, at = :at WHERE seq = :seq",
             act=other.action, t=chain.canonical_json(list(other.targets)), af=other.after_text, h=other.hash,
             p=other.prev_hash, s=other.signature, at=other.at.replace(tzinfo=None)
             if admin.inventory.engine.dialect.name == "sqlite" else other.at, seq=one.seq)
    result = verify_trail(admin.audit)
    assert (result.ok, result.seq) == (False, 3)


def test_an_entry_replaced_with_one_signed_by_another_operators_key_is_named(admin: Access) -> None:
    admin.add_operator("bob", ["deployer"])
    bob_key = OperatorKey.load("bob", admin.fleet_id)
    assert bob_key is not None
    # Bob rewrites alice's rollout entry (seq 4) in her name and re-chains everything after it with valid hashes.
    entries = [e for batch in admin.audit.walk() for e in batch]
    prev = entries[2].hash
    for entry in entries[3:]:
        signer = bob_key if entry.seq == 4 else None
        fields = {**entry.hashed_fields(), "prev_hash": prev}
        if signer is not None:
            fields["after"] = chain.canonical_json({"model": "bobs@1"})
            fields["key"] = signer.key
        digest = chain.entry_hash(fields)
        signature = signer.sign(digest) if signer is not None else entry.signature
        _sql(admin.inventory, "UPDATE audit_entries SET after = :a, key = :k, prev_hash = :p, hash = :h, "
                              "signature = :s WHERE seq = :seq", a=fields["after"], k=fields["key"], p=prev,
             h=digest, s=signature, seq=entry.seq)
        prev = digest
    result = verify_trail(admin.audit)
    assert (result.ok, result.seq) == (False, 4)
    assert "not operator alice's" in result.reason


def test_an_operators_key_swapped_in_the_table_does_not_fool_verify(admin: Access) -> None:
    # The keys come from the trail's own operator entries: editing the operators table proves nothing.
    _sql(admin.inventory, "UPDATE operators SET public_key = :k WHERE name = 'alice'",
         k=chain.public_key(chain.new_seed()))
    assert verify_trail(admin.audit).ok


def test_roles_are_checked_and_a_refusal_changes_nothing_but_is_audited(admin: Access) -> None:
    inventory = admin.inventory
    line_a = inventory.add_device("198.18.2.10", name="press-a")
    line_b = inventory.add_device("198.18.2.11", name="press-b")
    inventory.add_to_group("line A", [line_a.id])
    admin.add_operator("vera", ["viewer"])
    admin.add_operator("dan", ["deployer"], groups=["line A"])
    before = admin.audit.count()

    vera = Access(inventory, "vera")
    with pytest.raises(AccessDeniedError) as refused:
        vera.require("deploy", "rollout.start", devices=[inventory.device(line_a.id)], targets=("rollout:9",))
    assert refused.value.operator == "vera" and refused.value.permission == "deploy"
    assert "operator vera (viewer) may not" in str(refused.value) and "deployer" in str(refused.value)
    assert "alice" in str(refused.value)  # who can grant it
    entry = admin.audit.entries(limit=1)[0]
    assert (entry.operator, entry.action, entry.outcome, entry.targets) == ("vera", "rollout.start", "refused",
                                                                           ("rollout:9",))
    assert entry.after["permission"] == "deploy"

    dan = Access(inventory, "dan")
    dan.require("deploy", "rollout.start", devices=[inventory.device(line_a.id)])  # inside his scope: allowed
    with pytest.raises(AccessDeniedError, match="only on devices in line A; not on press-b"):
        dan.require("deploy", "rollout.start", devices=[inventory.device(line_a.id), inventory.device(line_b.id)])
    with pytest.raises(AccessDeniedError):
        dan.add_operator("eve", ["admin"])
    assert inventory.devices() and admin.operators.get("eve") is None
    assert admin.audit.count() == before + 3  # the three refusals, nothing else
    assert verify_trail(admin.audit).ok


def test_hostile_strings_are_kept_as_given_and_still_verify(admin: Access) -> None:
    # Strings that came from devices or hostile input are stored as given on both backends, and hash the same.
    hostile = "cam\x00\udcff\u241b'; DROP TABLE audit_entries;--"
    entry = admin.record("rollout.pause", outcome="refused", targets=(f"device-name:{hostile}",),
                         before={"name": hostile}, after={"reason": hostile})
    (back,) = admin.audit.entries(AuditFilter(target=f"device-name:{hostile}"))
    assert (back.seq, back.targets, back.before, back.after) == (entry.seq, (f"device-name:{hostile}",),
                                                                 {"name": hostile}, {"reason": hostile})
    assert [e.action for e in admin.audit.entries(limit=2)] == ["rollout.pause", "rollout.start"]  # newest first
    with pytest.raises(ValueError):
        admin.record("")
    assert verify_trail(admin.audit).ok


def test_operators_are_named_and_the_last_admin_stays(admin: Access) -> None:
    with pytest.raises(AccessError, match="not an operator name"):
        admin.add_operator("bob; rm -rf /", ["viewer"])
    with pytest.raises(AccessError, match="unknown role wizard"):
        admin.add_operator("bob", ["wizard"])
    with pytest.raises(AccessError, match="last admin"):
        admin.set_roles("alice", ["viewer"])
    with pytest.raises(AccessError, match="last admin"):
        admin.remove_operator("alice")
    admin.add_operator("bob", ["auditor"])
    removed = admin.remove_operator("bob")
    assert not removed.active and admin.operators.get("bob") is not None  # kept: his entries stay his
    with pytest.raises(AccessError, match="there is no operator bob"):
        Access(admin.inventory, "bob").record("model.import")
    with pytest.raises(AccessError, match="no operator zed in this fleet"):
        Access(admin.inventory, "zed").operator()
    assert verify_trail(admin.audit).ok


def test_two_writers_never_fork_the_chain(admin: Access, db_url: str) -> None:
    admin.add_operator("bob", ["deployer"])
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with open_inventory(db_url) as inventory:
                access = Access(inventory, name)
                for i in range(15):
                    access.record("rollout.pause", targets=(f"rollout:{i}",))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = verify_trail(admin.audit)
    assert result.ok and result.checked == 5 + 30


@pytest.fixture
def pre_chain_url(db_url: str) -> Iterator[str]:
    """A database at 0006 with two audit rows written the way that release wrote them."""
    engine = open_database(db_url)
    upgrade(engine, "0006")
    with for_writing(engine).begin() as conn:
        for rid, (actor, action) in enumerate([("op", "start"), ("op\x1b[2J", "abort")], start=1):
            conn.execute(text("INSERT INTO audit_log (id, at, actor, action, rollout_id, device_ids, outcome, detail)"
                              " VALUES (:id, :at, :actor, :action, 1, '[1]', 'ok', '{}')"),
                         {"id": rid, "at": f"2026-11-30 08:00:0{rid}", "actor": actor, "action": action})
    engine.dispose()
    yield db_url


def test_the_genesis_entry_commits_to_the_audit_rows_before_the_chain(pre_chain_url: str) -> None:
    with open_inventory(pre_chain_url) as inventory:
        access = Access(inventory, "alice")
        genesis = access.audit.entry(1)
        assert genesis.after["carried"] == 2
        assert verify_trail(access.audit).ok
        _sql(inventory, "UPDATE audit_log SET actor = 'someone else' WHERE id = 2")
        result = verify_trail(access.audit)
        assert (result.ok, result.seq) == (False, 1)
        assert "before the chain" in result.reason


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from fleetdesk.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_adds_operators_lists_verifies_and_exports_the_trail(sqlite_url: str, keyring_daemon: KeyringDaemon,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--db", sqlite_url)
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "whoami", "--json")
    assert code == 0 and json.loads(out)["first"] is True
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "operator", "add", "bob", "--role", "viewer", "--json")
    assert code == 0 and json.loads(out)["roles"] == ["viewer"]
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "operator", "list")
    assert code == 0 and out.split("\n")[1].split()[:2] == ["alice", "admin"] and "bob" in out

    # bob may look at operators but not add one, nor read the audit trail; both refusals are audited.
    code, _, err = _cli(capsys, *db, "--operator", "bob", "operator", "add", "eve", "--role", "admin")
    assert code == 2 and "operator bob (viewer) may not manage operators" in err and "alice" in err
    code, _, err = _cli(capsys, *db, "--operator", "bob", "audit", "list")
    assert code == 2 and "auditor or admin" in err
    code, _, err = _cli(capsys, *db, "--operator", "nobody", "operator", "list")
    assert code == 2 and "no operator nobody in this fleet" in err

    code, out, _ = _cli(capsys, *db, "--operator", "alice", "audit", "list", "--operator", "bob", "--json")
    assert code == 0 and [(e["action"], e["outcome"]) for e in json.loads(out)] == [
        ("audit.list", "refused"), ("operator.add", "refused")]
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "audit", "show", "3")
    assert code == 0 and "operator.add" in out and "operator:bob" in out

    export = tmp_path / "trail.jsonl"
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "audit", "export", str(export))
    assert code == 0 and "wrote 5 entries" in out
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "audit", "verify", "--file", str(export))
    assert code == 0 and "verifies: 5 entries" in out
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "audit", "verify")
    assert code == 0 and "verifies: 6 entries" in out  # the export is itself an entry

    lines = export.read_text().splitlines()
    tampered = json.loads(lines[4])
    tampered["entry"]["outcome"] = "ok"
    export.write_text("\n".join([*lines[:4], json.dumps(tampered), *lines[5:]]) + "\n")
    code, out, _ = _cli(capsys, *db, "--operator", "alice", "audit", "verify", "--file", str(export), "--json")
    assert code == 1 and json.loads(out)["seq"] == 4 and "changed after it was written" in json.loads(out)["reason"]

    # No output and no export holds a private key.
    seeds = [credentials.get_secret(key_account(name, _fleet_id(sqlite_url))) for name in ("alice", "bob")]
    assert all(seeds) and not any(seed in export.read_text() + out for seed in seeds if seed)


def _fleet_id(url: str) -> str:
    with open_inventory(url) as inventory:
        return Access(inventory, "alice").fleet_id


def test_every_hundredth_entry_is_signed_as_a_checkpoint_the_inventory_keeps(admin: Access, tmp_path: Path) -> None:
    fleet_key = FleetSigningKey(tmp_path / "keys")
    admin.record("probe", after={"n": 0})  # no fleet key yet: no checkpoint, nothing stops
    admin.sign_checkpoints_with(fleet_key)
    assert admin.checkpoint() is None and admin.audit.checkpoints() == []
    fleet_key.sign(b"made")  # the fleet key exists once something was signed for the fleet
    while admin.audit.head()[0] < 2 * CHECKPOINT_EVERY + 5:
        admin.record("probe", after={"n": admin.audit.head()[0]})
    kept = admin.audit.checkpoints()
    assert [c.seq for c in kept] == [CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY]
    key = fleet_key_b64(fleet_key.public_pem())
    assert all(chain.checkpoint_ok(key, c.seq, c.hash, c.signature) for c in kept)
    assert kept[1].hash == admin.audit.entry(2 * CHECKPOINT_EVERY).hash
    asked = admin.checkpoint()  # as a rollout action asks: the newest entry
    assert asked is not None and asked.seq == admin.audit.head()[0] and asked in admin.audit.checkpoints()
    assert admin.verify().ok

    # The tail deleted and the head moved back by hand: the chain alone still verifies, the kept checkpoint does not.
    cut = 2 * CHECKPOINT_EVERY - 1
    _sql(admin.inventory, "DELETE FROM audit_entries WHERE seq > :cut", cut=cut)
    _sql(admin.inventory, "UPDATE audit_head SET seq = :cut, hash = (SELECT hash FROM audit_entries WHERE seq = :cut)",
         cut=cut)
    assert verify_trail(admin.audit).ok
    result = admin.verify()
    assert not result.ok and result.seq == cut + 1
    assert f"the inventory's checkpoint holds a checkpoint of entry {2 * CHECKPOINT_EVERY}" in result.reason
    assert "its tail was deleted" in result.reason


def test_an_export_carries_the_checkpoints_and_verifies_with_the_public_keys_alone(
        sqlite_url: str, keyring_daemon: KeyringDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--db", sqlite_url, "--operator", "alice")
    with open_inventory(sqlite_url) as inventory:
        access = Access(inventory, "alice")
        fleet_key = FleetSigningKey.default()  # the one the CLI signs with (FLEETDESK_DATA_DIR of this test)
        access.sign_checkpoints_with(fleet_key)
        fleet_key.sign(b"made")
        access.record("device.add", targets=("device:1",))
        assert access.checkpoint() is not None
    export, pem = tmp_path / "trail.jsonl", tmp_path / "fleet.pub"
    pem.write_bytes(fleet_key.public_pem())
    code, out, _ = _cli(capsys, *db, "audit", "export", str(export), "--json")
    assert code == 0 and json.loads(out)["checkpoints"] == 1
    code, out, _ = _cli(capsys, *db, "audit", "verify", "--file", str(export), "--fleet-key", str(pem))
    assert code == 0 and "verifies" in out

    # Cut the tail off the export (and re-point nothing: an export has no head): its checkpoint names the cut.
    lines = export.read_text().splitlines()
    entries = [line for line in lines if '"entry"' in line]
    checkpoint = json.loads(next(line for line in lines if '"checkpoint"' in line))["checkpoint"]
    short = [lines[0], *[e for e in entries if json.loads(e)["entry"]["seq"] < checkpoint["seq"]],
             json.dumps({"checkpoint": checkpoint})]
    export.write_text("\n".join(short) + "\n")
    code, out, _ = _cli(capsys, *db, "audit", "verify", "--file", str(export), "--fleet-key", str(pem), "--json")
    assert code == 1 and "its tail was deleted" in json.loads(out)["reason"]

    # A checkpoint signed by another key is no evidence when the fleet key is pinned; so the forger gains nothing.
    forged = FleetSigningKey(tmp_path / "other")
    checkpoint["signature"] = base64.b64encode(forged.sign(chain.checkpoint_message(
        checkpoint["seq"], checkpoint["hash"]))).decode()
    export.write_text("\n".join([*short[:-1], json.dumps({"checkpoint": checkpoint})]) + "\n")
    code, out, _ = _cli(capsys, *db, "audit", "verify", "--file", str(export), "--fleet-key", str(pem))
    assert code == 0 and "verifies" in out
