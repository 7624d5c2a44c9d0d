"""Opening the inventory database: the SQLite default is created in WAL mode; bad URLs are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from fleetdesk.config import Settings
from fleetdesk.errors import ConfigError
from fleetdesk.inventory.database import open_database


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
