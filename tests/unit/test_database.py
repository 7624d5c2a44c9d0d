"""Opening the inventory database: the SQLite default is created in WAL mode; bad URLs are named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from fleetdesk.config import Settings
from fleetdesk.errors import ConfigError, InventoryError
from fleetdesk.inventory.database import for_writing, open_database


def test_default_is_sqlite_in_the_user_data_directory_in_wal_mode() -> None:
    settings = Settings.load()
    engine = open_database(settings.db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert (settings.data_dir / "fleetdesk.db").is_file()
    finally:
        engine.dispose()


def test_fleetdesk_db_overrides_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETDESK_DB", f"sqlite:///{tmp_path / 'other.db'}")
    assert Settings.load().db_url == f"sqlite:///{tmp_path / 'other.db'}"


def test_a_url_that_is_not_a_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="is not a database URL"):
        open_database("fleetdesk.db")


def test_an_unopenable_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot open the database"):
        open_database(f"sqlite:///{folder}")


def test_a_file_that_is_not_a_database_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database\n" * 100)
    with pytest.raises(InventoryError, match="is not a database") as caught:
        open_database(f"sqlite:///{path}")
    assert caught.value.fix and "--db" in caught.value.fix


def test_a_writer_holds_the_sqlite_write_lock_from_its_first_statement(tmp_path: Path) -> None:
    path = tmp_path / "locks.db"
    engine = open_database(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        with for_writing(engine).begin() as conn:
            conn.execute(text("SELECT count(*) FROM t"))  # only a read so far, yet the write lock is taken
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
            assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)  # readers go on (WAL)
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
        other.close()
    finally:
        engine.dispose()
