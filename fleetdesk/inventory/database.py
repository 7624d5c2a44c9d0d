"""Opening the inventory database: SQLite in the user data directory by default, any SQLAlchemy URL otherwise.

SQLite runs in WAL mode so the GUI and a CLI can read while the other writes; writers take the lock up front.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from fleetdesk.errors import ConfigError, InventoryError

# An execution option that marks a connection as one that will write (see for_writing).
_WRITES = "fleetdesk_writes"
# Any constant works: every FleetDesk writer takes the same PostgreSQL advisory lock.
_PG_WRITE_LOCK = 0x466C6565  # "Flee"


def open_database(url: str) -> Engine:
    """An engine for `url`, connected once so that a bad URL or an unwritable file fails here, clearly."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{url!r} is not a database URL",
                          fix="use e.g. sqlite:///path/to/fleetdesk.db or postgresql+psycopg://user@host/db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin)
    shown = parsed.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        raise ConfigError(f"cannot open the database {shown} ({exc.orig})",
                          fix="check the path or server and its permissions", cause=exc) from None
    except DatabaseError as exc:
        engine.dispose()
        raise InventoryError(f"{shown} is not a database ({exc.orig})",
                             fix="point --db or FLEETDESK_DB at a FleetDesk inventory, or move the file away",
                             cause=exc) from None
    return engine


def for_writing(engine: Engine) -> Engine:
    """The same engine (same pool), whose transactions take the write lock when they begin.

    Two writers (the GUI and a CLI) then queue instead of both reading, both deciding, and one
    failing with "database is locked" or inserting a duplicate device.
    """
    return engine.execution_options(**{_WRITES: True})


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # sqlite3's legacy mode begins transactions only before DML, so reads before a write are not in
    # the transaction; FleetDesk emits BEGIN itself (SQLAlchemy's SQLite dialect docs,
    # "Enabling Non-Legacy SQLite Transactional Modes").
    dbapi_connection.isolation_level = None


def _begin(conn: Connection) -> None:
    writes = bool(conn.get_execution_options().get(_WRITES))
    if conn.dialect.name == "sqlite":
        # IMMEDIATE takes the write lock now and waits (busy timeout) for another writer; a DEFERRED
        # transaction that read first fails at once with SQLITE_BUSY when it tries to write.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
    elif conn.dialect.name == "postgresql" and writes:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")
