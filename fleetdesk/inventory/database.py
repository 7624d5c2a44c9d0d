"""Opening the inventory database: SQLite in the user data directory by default, any SQLAlchemy URL otherwise.

SQLite runs in WAL mode so the GUI and a CLI can read while the other writes.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from fleetdesk.errors import ConfigError


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
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        raise ConfigError(f"cannot open the database {parsed.render_as_string(hide_password=True)} ({exc.orig})",
                          fix="check the path or server and its permissions", cause=exc) from None
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
