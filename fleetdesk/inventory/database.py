"""Opening the inventory database: SQLite in the user data directory by default, any SQLAlchemy URL otherwise.

SQLite runs in WAL mode so the GUI and a CLI can read while the other writes; writers take the lock up front.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from fleetdesk.errors import ConfigError, DatabaseUnreachableError, InventoryError, InventoryUnavailableError

# An execution option that marks a connection as one that will write (see for_writing).
_WRITES = "fleetdesk_writes"
# PostgreSQL's SQLSTATEs that say the server went away rather than refused the statement: connection exceptions
# (class 08) and the server shutting down or starting (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
# connect now).
_GONE_CLASSES = ("08",)
_GONE_STATES = frozenset({"57P01", "57P02", "57P03"})
# How long a PostgreSQL connection attempt may take: a server whose network went away must fail the attempt (and
# let the caller retry) instead of hanging on the kernel's TCP timeout. A URL's own connect_timeout wins.
PG_CONNECT_TIMEOUT_S = 10
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
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    engine = create_engine(parsed, connect_args=connect_args)
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


def unreachable(exc: DBAPIError) -> bool:
    """Whether the database error means the server cannot be reached now (stopped, restarting, its network gone),
    as opposed to a statement it refused: the one place FleetDesk tells these apart.

    SQLAlchemy marks an error that broke the connection (`connection_invalidated`); a connection that could not be
    opened at all is psycopg's OperationalError with no SQLSTATE (libpq's own message), or a server that says it is
    shutting down or starting. SQLite's file is never "unreachable": its errors are what unavailable_error says.
    """
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if type(orig).__module__.split(".")[0] != "psycopg":
        return False
    state = getattr(orig, "sqlstate", None)
    if state is None:
        return isinstance(exc, OperationalError)  # libpq could not connect, or lost the connection
    return str(state).startswith(_GONE_CLASSES) or state in _GONE_STATES


def unreachable_error(engine: Engine, exc: DBAPIError) -> DatabaseUnreachableError:
    """The operator's words for a database server that cannot be reached (see `unreachable`)."""
    shown = engine.url.render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    return DatabaseUnreachableError(f"the inventory's database {shown} cannot be reached ({reason})",
                                    fix="check that the database server runs and this laptop reaches it; what "
                                        "was written before stands, and the work goes on once it answers",
                                    step="reach inventory", cause=exc)


def unavailable_error(engine: Engine, exc: OperationalError) -> InventoryUnavailableError:
    """What the database's refusal of a transaction means to the operator, and what frees it.

    SQLite names the cause (sqlite3's `sqlite_errorname`); a disk that filled and a lock another program
    holds are the two an operator meets, and each has its own fix. Nothing of the transaction was written.
    """
    url = engine.url
    where = url.database if url.get_backend_name() == "sqlite" and url.database else (
        url.render_as_string(hide_password=True))
    code = str(getattr(exc.orig, "sqlite_errorname", ""))
    if code.startswith("SQLITE_FULL"):
        message, fix = (f"the disk holding the inventory {where} is full",
                        "free space on that disk; nothing already stored is lost")
    elif code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        message, fix = (f"the inventory {where} is locked by another program writing to it",
                        "finish or close what holds it (another FleetDesk, or an sqlite3 shell with an open "
                        "transaction)")
    elif code.startswith("SQLITE_READONLY"):
        message, fix = (f"the inventory {where} has become read-only",
                        "make the file and its folder writable again (permissions, or a disk remounted read-only)")
    elif code.startswith("SQLITE_IOERR"):
        message, fix = (f"the disk holding the inventory {where} failed to write ({exc.orig})",
                        "check the disk (space, errors in the system log) and that it is still mounted")
    else:
        message, fix = (f"cannot write to the inventory {where} ({exc.orig})",
                        "check that the database is reachable and writable")
    return InventoryUnavailableError(message, fix=fix, step="write inventory", cause=exc)


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
