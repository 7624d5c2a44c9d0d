"""Opening an inventory: new and old databases reach the current schema; newer ones and non-databases are refused.

Every test runs on SQLite and on a real PostgreSQL (see conftest.py) unless it is about SQLite files.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from fleetdesk.errors import DatabaseTooNewError, InventoryError
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.database import open_database
from fleetdesk.inventory.migrate import head_revision, known_revisions, upgrade
from fleetdesk.inventory.models import Base
from fleetdesk.telemetry.alerts import AlertEvent

FUTURE = "9001_telemetry_v7"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


def _revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


HEAD = "0013"  # the newest migration: 0013 gives a cleared alert its own event kind


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_package_has_its_revisions_in_a_line() -> None:
    assert known_revisions() == {f"{n:04d}" for n in range(1, int(HEAD) + 1)}
    assert head_revision() == HEAD


def test_an_empty_database_is_migrated_to_head(db_url: str) -> None:
    with open_inventory(db_url) as inventory:
        assert inventory.devices() == []
    engine = open_database(db_url)
    try:
        assert _revisions(engine) == {HEAD}
        assert {"devices", "device_addresses", "device_names", "device_services", "host_keys", "groups",
                "group_members"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_opening_twice_is_harmless(db_url: str) -> None:
    with open_inventory(db_url) as inventory:
        inventory.add_device("198.18.1.10")
    with open_inventory(db_url) as inventory:
        assert [d.address for d in inventory.devices()] == ["198.18.1.10"]


def test_the_orm_matches_the_migrated_schema(engine: Engine) -> None:
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []


def test_a_database_at_0001_keeps_its_data_when_upgraded(engine: Engine, db_url: str) -> None:
    upgrade(engine, "0001")
    assert _revisions(engine) == {"0001"}
    assert not inspect(engine).has_table("groups")
    with engine.begin() as conn:
        # Written with SQL of revision 0001, as that release would have.
        conn.execute(text(
            "INSERT INTO devices (id, name, hostname, port, username, transport, source, first_seen, online,"
            " machine_id, arch, os_name, kernel, python, cpu_model, cpu_count, ram_mb, disk_total_mb, disk_free_mb,"
            " model, tegra_release, dmi_vendor, dmi_product, gpu, gpu_memory_mb)"
            " VALUES (7, 'press-cam', 'press-cam', 2222, 'pi', 'paramiko', 'manual', :t, :f, 'm-1', 'aarch64',"
            " 'Debian GNU/Linux 12', '6.1', '3.11.2', 'Cortex-A72', 4, 3794, 29000, 20000, 'Raspberry Pi 4',"
            " '', '', '', '', 0)"), {"t": "2024-05-01 08:00:00", "f": False})
        conn.execute(text("INSERT INTO device_addresses (device_id, address, last_seen) VALUES (7, '198.18.1.77', :t)"),
                     {"t": "2024-05-01 08:00:00"})
        conn.execute(text(
            "INSERT INTO host_keys (device_id, key_type, public_key, fingerprint, source, pinned_at)"
            " VALUES (7, 'ssh-ed25519', 'ssh-ed25519 AAAA', 'SHA256:abc', 'operator', :t)"),
            {"t": "2024-05-01 08:00:00"})
    engine.dispose()

    with open_inventory(db_url) as inventory:
        device = inventory.device("press-cam")
        assert (device.id, device.port, device.username, device.transport) == (7, 2222, "pi", "paramiko")
        assert device.addresses == ("198.18.1.77",)
        assert device.facts.ram_mb == 3794 and device.facts.machine_id == "m-1"
        assert device.first_seen.isoformat() == "2024-05-01T08:00:00+00:00"
        assert [k.fingerprint for k in inventory.host_keys(7)] == ["SHA256:abc"]
        # What 0002 and 0003 added works on the old data.
        inventory.add_to_group("line A", [7])
        assert inventory.device(7).groups == ("line A",)
        assert device.identity_file is None
        inventory.set_connection(7, identity_file="/home/op/.ssh/line_a")
        assert inventory.device(7).identity_file == "/home/op/.ssh/line_a"
        inventory.set_connection(7, identity_file="")
        assert inventory.device(7).identity_file is None
    assert _revisions(engine) == {HEAD}


def test_a_database_from_a_newer_fleetdesk_is_refused_and_untouched_postgresql(postgres_url: str) -> None:
    with open_inventory(postgres_url) as inventory:
        inventory.add_device("198.18.1.10")
    engine = open_database(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
        conn.execute(text("CREATE TABLE telemetry_v7 (id integer PRIMARY KEY)"))

    def snapshot() -> tuple[object, ...]:
        with engine.connect() as conn:
            insp = inspect(conn)
            tables = sorted(insp.get_table_names())
            columns = {t: [(c["name"], str(c["type"])) for c in insp.get_columns(t)] for t in tables}
            rows = conn.execute(text("SELECT * FROM devices ORDER BY id")).all()
            return tables, columns, rows, _revisions(engine)

    before = snapshot()
    with pytest.raises(DatabaseTooNewError) as caught:
        open_inventory(postgres_url)
    assert snapshot() == before
    assert _revisions(engine) == {FUTURE}
    _assert_names_revision_and_fix(caught.value)
    engine.dispose()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_sqlite_file_from_a_newer_fleetdesk_is_refused_and_byte_for_byte_untouched(
        tmp_path: Path, journal_mode: str) -> None:
    path = tmp_path / "fleetdesk.db"
    with open_inventory(f"sqlite:///{path}") as inventory:
        inventory.add_device("198.18.1.10")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (FUTURE,))
        conn.execute("CREATE TABLE telemetry_v7 (id INTEGER PRIMARY KEY)")
    conn.close()
    # A rollback-journal file would have its header rewritten by WAL mode if anything opened it for use.
    with sqlite3.connect(path) as conn:
        assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone() == (journal_mode,)
    conn.close()
    before = _sha256(path)
    siblings = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(DatabaseTooNewError) as caught:
        open_inventory(f"sqlite:///{path}")

    assert _sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    _assert_names_revision_and_fix(caught.value)


def _assert_names_revision_and_fix(error: DatabaseTooNewError) -> None:
    assert FUTURE in error.message
    assert "newer FleetDesk" in error.message
    assert error.fix is not None and "upgrade FleetDesk" in error.fix and "--db" in error.fix


def test_an_empty_file_left_by_an_earlier_release_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "fleetdesk.db"
    path.touch()
    with open_inventory(f"sqlite:///{path}") as inventory:
        assert inventory.add_device("198.18.1.10").name == "198.18.1.10"


def test_a_database_the_previous_release_opened_without_tables_is_migrated(db_url: str) -> None:
    open_database(db_url).dispose()  # what `make run` of the previous release did: WAL mode, no tables
    with open_inventory(db_url) as inventory:
        assert inventory.devices() == []


def test_a_file_that_is_not_a_database_is_a_clear_error_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "fleetdesk.db"
    path.write_bytes(b"line A: 12 cameras, 3 gateways\n" * 200)
    before = _sha256(path)
    with pytest.raises(InventoryError) as caught:
        open_inventory(f"sqlite:///{path}")
    assert "not an SQLite database" in caught.value.message and str(path) in caught.value.message
    assert caught.value.fix and "--db" in caught.value.fix
    assert _sha256(path) == before


def test_tables_without_a_version_stamp_are_refused(engine: Engine, db_url: str) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(InventoryError, match="no schema version stamp"):
        open_inventory(db_url)


def test_migration_0013_gives_the_cleared_alerts_of_earlier_releases_their_own_kind(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        upgrade(engine, "0012")
        raised = AlertEvent(1, "temp_c", 91.0, 85.0, "raised", 0.0)
        cleared = AlertEvent(1, "temp_c", 60.0, 85.0, "cleared", 60.0)
        with engine.begin() as conn:
            for message, kind in ((raised.message, "alert"), (cleared.message, "alert"), ("cleared by hand", "alert"),
                                  ("telemetry stream lost", "stream")):
                conn.execute(text("INSERT INTO events (at, kind, message) VALUES (:t, :k, :m)"),
                             {"t": datetime(2026, 12, 1, tzinfo=UTC), "k": kind, "m": message})
        upgrade(engine)
        with engine.connect() as conn:
            kinds = conn.execute(text("SELECT message, kind FROM events ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(k) for k in kinds] == [(raised.message, "alert"), (cleared.message, "alert.cleared"),
                                          ("cleared by hand", "alert"), ("telemetry stream lost", "stream")]
