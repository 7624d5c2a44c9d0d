"""Bringing an inventory database to the schema this FleetDesk expects, or refusing to touch it.

Alembic runs programmatically from the package's migrations folder, inside one write transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from fleetdesk.errors import DatabaseTooNewError, InventoryError
from fleetdesk.inventory.database import for_writing

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"  # Alembic's default name for its version stamp
# Tables of revision 0001: finding one without a version stamp means the stamp was lost, not a new database.
_OWN_TABLES = frozenset({"devices", "device_addresses", "device_names", "device_services", "host_keys"})
_UPGRADE_FIX = "upgrade FleetDesk to the release that wrote it, or use another database with --db or FLEETDESK_DB"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the inventory, with no alembic.ini: works from a wheel and a frozen bundle."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> frozenset[str]:
    """Every schema revision this FleetDesk can read."""
    return frozenset(script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # there are migrations in the package
    return head


def stamped_revisions(conn: Connection) -> frozenset[str]:
    """The revisions the database says it is at; empty for a new database."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return frozenset()
    return frozenset(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())  # noqa: S608


def check_sqlite_file(url: str) -> None:
    """Refuse a SQLite file from a newer FleetDesk, or one that is no database, before anything writes to it.

    Opening the engine switches the file to WAL mode, which rewrites its header; this check reads only.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database).expanduser()
    if not path.is_file() or path.stat().st_size == 0:
        return  # new, or the empty file an earlier release created: migrated from scratch
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error:
        return  # open_database names what is wrong with the path
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revisions = set()
        if VERSION_TABLE in tables:
            revisions = {row[0] for row in conn.execute(f"SELECT version_num FROM {VERSION_TABLE}")}  # noqa: S608
    except sqlite3.OperationalError:
        return  # busy or unreadable: open_database and the migration report it with more context
    except sqlite3.DatabaseError as exc:
        raise InventoryError(f"{path} is not a FleetDesk inventory: it is not an SQLite database ({exc})",
                             fix="point --db or FLEETDESK_DB at the inventory file, or move this file away",
                             step="open inventory") from None
    finally:
        conn.close()
    _refuse_unknown(revisions, str(path))


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` in one write transaction; a newer database is left untouched.

    Two FleetDesk processes opening an old database at once queue on the write lock; the second finds it done.
    """
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with for_writing(engine).begin() as conn:
            revisions = stamped_revisions(conn)
            _refuse_unknown(revisions, shown)
            if not revisions:
                leftovers = _OWN_TABLES & set(inspect(conn).get_table_names())
                if leftovers:
                    raise InventoryError(
                        f"{shown} has inventory tables ({', '.join(sorted(leftovers))}) but no schema version stamp",
                        fix="restore the inventory from a backup, or use another database with --db or FLEETDESK_DB",
                        step="migrate inventory")
            command.upgrade(alembic_config(conn), revision)
    except SQLAlchemyError as exc:
        raise InventoryError(f"cannot migrate the inventory {shown} ({exc.__class__.__name__}: {exc})",
                             fix="check that the database is writable and not damaged; restore a backup if it is",
                             step="migrate inventory", cause=exc) from None


def _refuse_unknown(revisions: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(revisions) - known_revisions())
    if unknown:
        raise DatabaseTooNewError(
            f"the inventory {where} is at schema revision {', '.join(unknown)}, written by a newer FleetDesk "
            f"(this one knows up to {head_revision()}); it was left untouched",
            fix=_UPGRADE_FIX, step="open inventory")
