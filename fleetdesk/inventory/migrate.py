"""Bringing an inventory database to the schema this FleetDesk expects, or refusing to touch it; and saying where a
database stands (`fleetdesk db status`).

Alembic runs programmatically from the package's migrations folder, inside one write transaction. A role that may
not change the schema (an operator's role on a shared PostgreSQL) is told which permission it lacks and who runs
the migration instead.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

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
    except DBAPIError as exc:
        if _sqlstate(exc) in SCHEMA_REFUSED:
            raise schema_permission_error(engine, exc) from None
        raise InventoryError(f"cannot migrate the inventory {shown} ({exc.__class__.__name__}: {exc})",
                             fix="check that the database is writable and not damaged; restore a backup if it is",
                             step="migrate inventory", cause=exc) from None
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


# PostgreSQL's SQLSTATEs (PostgreSQL docs, Appendix A) for a role kept from the schema: 42501 "permission denied"
# (no CREATE on it), 3F000 "no schema has been selected to create in" (not even USAGE, so it is not on the path).
SCHEMA_REFUSED = frozenset({"42501", "3F000"})
SHARED_DB_HELP = "README, \"Several laptops, one fleet\""


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def schema_permission_error(engine: Engine, exc: DBAPIError) -> InventoryError:
    """A role that may not create or alter the inventory's tables: which permission, and who can do it instead."""
    role = engine.url.username or "(this role)"
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return InventoryError(
        f"the database role {role!r} may not change the inventory's schema in "
        f"{engine.url.render_as_string(hide_password=True)} ({reason}): creating or upgrading the tables needs "
        "USAGE and CREATE on the schema public",
        fix=("run `fleetdesk db upgrade URL` once as the database's owner (operators' roles need only USAGE on the "
             "schema and SELECT, INSERT, UPDATE, DELETE on its tables), or have the owner "
             f"GRANT CREATE ON SCHEMA public TO {role}; see {SHARED_DB_HELP}"),
        step="migrate inventory", cause=exc)


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against this FleetDesk's schema."""

    url: str  # password hidden
    backend: str  # "sqlite" or "postgresql"
    server_version: str
    role: str | None  # the PostgreSQL role connected; None for SQLite
    revisions: tuple[str, ...]  # the database's stamp; empty for a new database
    head: str  # the newest revision this FleetDesk knows
    pending: tuple[tuple[str, str], ...]  # (revision, what it does) an upgrade would apply, oldest first
    can_change_schema: bool  # may create and alter tables: what `db init` and `db upgrade` need

    @property
    def state(self) -> str:
        """new (no inventory yet), current, behind (an upgrade is pending) or too-new (a newer FleetDesk's)."""
        if not self.revisions:
            return "new"
        if set(self.revisions) - known_revisions():
            return "too-new"
        return "behind" if self.pending else "current"

    def to_dict(self) -> dict[str, object]:
        return {"url": self.url, "backend": self.backend, "server_version": self.server_version, "role": self.role,
                "state": self.state, "revisions": list(self.revisions), "head": self.head,
                "pending": [{"revision": r, "does": d} for r, d in self.pending],
                "can_change_schema": self.can_change_schema}


def schema_status(engine: Engine) -> SchemaStatus:
    """Read (never write) where the database at `engine` stands."""
    script = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    with engine.connect() as conn:
        revisions = tuple(sorted(stamped_revisions(conn)))
        if engine.dialect.name == "postgresql":
            server = str(conn.execute(text("SHOW server_version")).scalar())
            role = str(conn.execute(text("SELECT current_user")).scalar())
            can_change = bool(conn.execute(text(
                "SELECT has_schema_privilege(current_user, COALESCE(current_schema(), 'public'), 'CREATE')")).scalar())
        else:
            server, role = sqlite3.sqlite_version, None
            database = engine.url.database or ""
            target = Path(database).expanduser() if database not in ("", ":memory:") else None
            can_change = target is None or os.access(target if target.exists() else target.parent, os.W_OK)
    pending: tuple[tuple[str, str], ...] = ()
    if not set(revisions) - known_revisions():
        lower = revisions[0] if len(revisions) == 1 else None
        steps = script.iterate_revisions(head, lower if lower else "base")
        pending = tuple((s.revision, (s.doc or "").strip().splitlines()[0] if s.doc else "") for s in steps
                        if s.revision not in revisions)[::-1]
    return SchemaStatus(url=engine.url.render_as_string(hide_password=True), backend=engine.dialect.name,
                        server_version=server, role=role, revisions=revisions, head=head, pending=pending,
                        can_change_schema=can_change)
