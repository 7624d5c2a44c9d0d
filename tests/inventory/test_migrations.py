"""Opening an inventory: new and old databases reach the current schema; newer ones and non-databases are refused.

Every test runs on SQLite and on a real PostgreSQL (see conftest.py) unless it is about SQLite files.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
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


HEAD = "0018"  # the newest migration: 0018 packs the telemetry history by device and hour


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


def test_migration_0014_starts_the_groups_and_rollouts_of_earlier_releases_at_version_1_and_goes_back(
        db_url: str) -> None:
    from alembic import command

    from fleetdesk.inventory.database import for_writing
    from fleetdesk.inventory.migrate import alembic_config
    from fleetdesk.inventory.records import Edit
    from fleetdesk.inventory.rollouts import RolloutRepo

    engine = open_database(db_url)
    try:
        upgrade(engine, "0013")
        moment = {"t": datetime(2026, 12, 1, tzinfo=UTC)}
        with engine.begin() as conn:  # written as 0013 would have
            conn.execute(text("INSERT INTO devices (id, name, hostname, port, username, transport, source, first_seen,"
                              " online, machine_id, arch, os_name, kernel, python, cpu_model, cpu_count, ram_mb,"
                              " disk_total_mb, disk_free_mb, model, tegra_release, dmi_vendor, dmi_product, gpu,"
                              " gpu_memory_mb) VALUES (3, 'drill', 'drill', 22, 'root', 'asyncssh', 'manual', :t,"
                              " false, '', '', '', '', '', '', 0, 0, 0, 0, '', '', '', '', '', 0)"), moment)
            conn.execute(text("INSERT INTO groups (id, name, created_at) VALUES (5, 'line A', :t)"), moment)
            conn.execute(text("INSERT INTO group_members (group_id, device_id) VALUES (5, 3)"))
            conn.execute(text("INSERT INTO rollouts (id, model_ref, plan, resolved, status, paused_reason, actor,"
                              " created_at, updated_at) VALUES (9, 'cnn@2', '{}', '{}', 'paused', '', 'ann', :t, :t)"),
                         moment)
        upgrade(engine)
        with open_inventory(db_url) as inventory:
            assert inventory.group("line A").version == 1
            repo = RolloutRepo(inventory)
            assert (repo.get(9).version, repo.get(9).changed_by) == (1, None)
            # An edit from version 1 goes through, then names who made it.
            repo.set_status(9, "aborted", edit=Edit(by="alice", seen_version=1))
            assert (repo.get(9).version, repo.get(9).changed_by) == (2, "alice")
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0013")
        assert _revisions(engine) == {"0013"}
        for table in ("groups", "rollouts"):
            assert "version" not in {c["name"] for c in inspect(engine).get_columns(table)}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM rollouts WHERE id = 9")).scalar_one() == "aborted"
    finally:
        engine.dispose()


def test_migration_0015_stores_the_sqlite_history_by_device_and_keeps_every_minute(tmp_path: Path) -> None:
    from alembic import command

    from fleetdesk.inventory.database import for_writing
    from fleetdesk.inventory.migrate import alembic_config

    path = tmp_path / "inventory.db"
    engine = open_database(f"sqlite:///{path}")

    def table_sql() -> str:
        with sqlite3.connect(path) as db:
            return str(db.execute("SELECT sql FROM sqlite_master WHERE name = 'telemetry_minutes'").fetchone()[0])

    def minutes() -> list[tuple[object, ...]]:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT device_id, minute, samples, cpu_pct_avg, writer FROM telemetry_minutes "
                              "ORDER BY device_id, minute").fetchall()

    try:
        with open_inventory(f"sqlite:///{path}") as inventory:
            ids = [inventory.add_device(f"198.18.0.{n}", name=f"cam-{n}").id for n in (1, 2, 3)]
        with for_writing(engine).begin() as conn:  # the history as releases before 0015 kept it
            command.downgrade(alembic_config(conn), "0014")
        with engine.begin() as conn:
            for minute in range(30):  # as the live writer adds them: every device's minute together
                for n in ids:
                    conn.execute(text("INSERT INTO telemetry_minutes (device_id, minute, samples, cpu_pct_avg, writer)"
                                      " VALUES (:n, :m, 60, :v, 'laptop:1')"),
                                 {"n": n, "m": f"2026-12-01 00:{minute:02d}:00.000000", "v": n * 100.0 + minute})
        before = minutes()
        assert "WITHOUT ROWID" not in table_sql()

        upgrade(engine)
        assert table_sql().rstrip().endswith("WITHOUT ROWID")
        assert minutes() == before
        assert compare_metadata(MigrationContext.configure(engine.connect()), Base.metadata) == []
        assert "ix_telemetry_minutes_minute" in {i["name"] for i in inspect(engine).get_indexes("telemetry_minutes")}
        with engine.begin() as conn:  # the device's history still goes with the device
            conn.execute(text("PRAGMA foreign_keys = ON"))
            conn.execute(text("DELETE FROM devices WHERE id = :id"), {"id": ids[1]})
        assert minutes() == [m for m in before if m[0] != ids[1]]

        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0014")
        assert "WITHOUT ROWID" not in table_sql()
        assert minutes() == [m for m in before if m[0] != ids[1]]
    finally:
        engine.dispose()


def test_migration_0016_adds_input_drift_to_the_history_and_keeps_its_layout_and_minutes(db_url: str) -> None:
    """Up and down on SQLite and PostgreSQL: the four drift columns come and go, every minute stays, and on SQLite
    the table stays WITHOUT ROWID both ways (a batch rebuild would have lost it)."""
    from alembic import command

    from fleetdesk.inventory.database import for_writing
    from fleetdesk.inventory.migrate import alembic_config

    drift = {"drift_psi_avg", "drift_psi_max", "drift_shift_sd_avg", "drift_shift_sd_max"}
    with open_inventory(db_url) as inventory:
        device = inventory.add_device("198.18.0.9", name="cam-9").id
    engine = open_database(db_url)

    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("telemetry_minutes")}

    def layout() -> str:
        if engine.dialect.name != "sqlite":
            return "WITHOUT ROWID"
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'telemetry_minutes'")).scalar())

    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO telemetry_minutes (device_id, minute, samples, cpu_pct_avg, drift_psi_avg, "
                              "drift_psi_max) VALUES (:d, :m, 60, 12.5, 0.3, 0.4)"),
                         {"d": device, "m": datetime(2026, 12, 1, tzinfo=UTC)})
        assert drift <= columns() and "WITHOUT ROWID" in layout()
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0015")
        assert not drift & columns() and "WITHOUT ROWID" in layout()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT samples, cpu_pct_avg FROM telemetry_minutes")).all() == [(60, 12.5)]
        upgrade(engine)
        assert drift <= columns() and "WITHOUT ROWID" in layout()
        assert compare_metadata(MigrationContext.configure(engine.connect()), Base.metadata) == []
        with engine.connect() as conn:
            back = conn.execute(text("SELECT cpu_pct_avg, drift_psi_avg FROM telemetry_minutes")).all()
        assert back == [(12.5, None)]
    finally:
        engine.dispose()


def test_migration_0017_adds_the_model_catalogue_announced_on_postgresql_and_goes_back(db_url: str) -> None:
    from alembic import command

    from fleetdesk.inventory.database import for_writing
    from fleetdesk.inventory.migrate import alembic_config

    engine = open_database(db_url)
    try:
        upgrade(engine, "0016")
        assert "models" not in inspect(engine).get_table_names()
        upgrade(engine, "0017")
        assert _revisions(engine) == {"0017"}
        assert {"name", "version", "baseline", "artifacts", "size_bytes", "record", "imported_by",
                "imported_at"} <= {c["name"] for c in inspect(engine).get_columns("models")}
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM pg_trigger WHERE tgname = 'fleetdesk_notify_change'"
                                         " AND tgrelid = 'models'::regclass")).scalar_one() == 1
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0016")
        assert _revisions(engine) == {"0016"}
        assert "models" not in inspect(engine).get_table_names()
        if engine.dialect.name == "postgresql":  # 0010's triggers on the other tables are untouched
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM pg_trigger WHERE tgname = 'fleetdesk_notify_change'"
                                         )).scalar_one() == 11
        upgrade(engine, "0017")  # and forward again
        assert _revisions(engine) == {"0017"}
    finally:
        engine.dispose()


def test_migration_0018_packs_the_minutes_already_kept_by_hour_and_goes_back(db_url: str) -> None:
    """A history written before the packed hours existed (minutes written at 0017) is packed when the database is
    upgraded: the report's read gives what the stored minutes say; downgrading drops the hours, keeps the
    minutes."""
    from alembic import command

    from fleetdesk.inventory.database import for_writing
    from fleetdesk.inventory.migrate import alembic_config
    from fleetdesk.inventory.telemetry_repo import TelemetryRepo

    start = datetime(2026, 12, 1, 7, 40, tzinfo=UTC)
    with open_inventory(db_url) as inventory:
        device = inventory.add_device("198.18.0.9", name="cam-9").id
    engine = open_database(db_url)
    try:
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0017")
        assert "telemetry_hours" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            for i in (0, 1, 5, 30, 95):  # minutes in three hours; minute 5 without a CPU figure
                conn.execute(text("INSERT INTO telemetry_minutes (device_id, minute, samples, cpu_pct_avg, "
                                  "cpu_pct_max, temp_c_avg, temp_c_max) VALUES (:d, :m, 60, :c, :x, 50, 51)"),
                             {"d": device, "m": start + timedelta(minutes=i), "c": None if i == 5 else float(i),
                              "x": None if i == 5 else i + 0.5})
        upgrade(engine)
        assert _revisions(engine) == {HEAD}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM telemetry_hours")).scalar_one() == 3
        repo = TelemetryRepo(engine)
        base = start.timestamp()
        [history] = repo.histories([device], ["cpu_pct", "temp_c"], start, start + timedelta(hours=3))
        assert history.minutes.tolist() == [base + 60 * i for i in (0, 1, 5, 30, 95)]
        cpu = history.averages["cpu_pct"]
        assert cpu[[0, 1, 3, 4]].tolist() == [0.0, 1.0, 30.0, 95.0] and np.isnan(cpu[2])
        assert history.maxima == {"cpu_pct": 95.5, "temp_c": 51.0}
        assert compare_metadata(MigrationContext.configure(engine.connect()), Base.metadata) == []
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0017")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM telemetry_minutes")).scalar_one() == 5
    finally:
        engine.dispose()
