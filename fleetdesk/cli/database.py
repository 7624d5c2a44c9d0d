"""`fleetdesk db init|upgrade|status [URL]`: the inventory database's schema, for a shared PostgreSQL that several
laptops use (and for the SQLite file of one laptop).

Opening an inventory migrates it as before; these commands let the database's owner do it on purpose, once, for
every laptop, and let anyone see where a database stands without changing it. The URL defaults to --db, then
FLEETDESK_DB, then the SQLite inventory in the user data folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from fleetdesk.cli.options import with_json
from fleetdesk.cli.output import emit, safe
from fleetdesk.errors import DatabaseTooNewError, InventoryError

ACTIONS = {"init": "create FleetDesk's tables in a new, empty database (as its owner)",
           "upgrade": "bring the database's tables to this FleetDesk's schema (as its owner)",
           "status": "where the database stands: its schema revision, pending upgrades, whether this role may "
                     "change the schema (changes nothing)"}


def add_db(sub: Any) -> None:
    p = sub.add_parser("db", help="the inventory database's schema: init, upgrade, status (a shared PostgreSQL)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="db_action", required=True, metavar="ACTION")
    for name, func in (("init", cmd_init), ("upgrade", cmd_upgrade), ("status", cmd_status)):
        a = with_json(actions.add_parser(name, help=ACTIONS[name], description=ACTIONS[name]))
        a.add_argument("url", nargs="?", metavar="URL",
                       help="database URL, e.g. postgresql+psycopg://owner@dbhost/fleet (default: --db, "
                            "FLEETDESK_DB, else the SQLite inventory in the user data folder)")
        a.set_defaults(func=func)


def _url(args: argparse.Namespace) -> str:
    from fleetdesk.config import Settings

    return str(args.url or Settings.load(args.db).db_url)


def _missing_sqlite_file(url: str) -> Path | None:
    """The path of an SQLite inventory that does not exist yet (status must not create it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).expanduser()
    return None if path.exists() else path


def _status(url: str) -> Any:
    from fleetdesk.inventory.database import open_database
    from fleetdesk.inventory.migrate import check_sqlite_file, schema_status

    try:
        check_sqlite_file(url)
    except DatabaseTooNewError:
        pass  # status says so below, from the stamp itself
    engine = open_database(url)
    try:
        return schema_status(engine)
    finally:
        engine.dispose()


def _status_text(status: Any) -> str:
    lines = [f"database: {status.url} ({status.backend} {status.server_version}"
             + (f", role {status.role})" if status.role else ")"),
             {"new": "state: new (no FleetDesk inventory yet; `fleetdesk db init` creates it)",
              "current": f"state: current (schema revision {status.head})",
              "behind": f"state: behind (revision {', '.join(status.revisions)}; this FleetDesk's is {status.head})",
              "too-new": f"state: written by a newer FleetDesk (revision {', '.join(status.revisions)}; this one "
                         f"knows up to {status.head})"}[status.state]]
    if status.pending and status.state != "new":
        lines.append("pending upgrades:")
        lines += [f"  {revision}  {does}" for revision, does in status.pending]
    lines.append("this role may change the schema" if status.can_change_schema else
                 "this role may not change the schema (init and upgrade need the database's owner)")
    return "\n".join(safe(line) for line in lines)


def cmd_status(args: argparse.Namespace) -> int:
    url = _url(args)
    missing = _missing_sqlite_file(url)
    if missing is not None:
        emit(args, {"url": url, "backend": "sqlite", "state": "new", "exists": False},
             safe(f"database: {missing} does not exist yet (FleetDesk creates it on first use, or `fleetdesk db "
                  "init`)"))
        return 0
    status = _status(url)
    emit(args, status.to_dict(), _status_text(status))
    return 0


def _migrate(args: argparse.Namespace, *, new_only: bool) -> int:
    from fleetdesk.inventory.database import open_database
    from fleetdesk.inventory.migrate import check_sqlite_file, schema_status, upgrade

    url = _url(args)
    missing = _missing_sqlite_file(url)
    if missing is not None and not new_only:
        raise InventoryError(f"{missing} does not exist: there is no inventory to upgrade",
                             fix="run `fleetdesk db init` to create one, or check the URL", step="migrate inventory")
    check_sqlite_file(url)
    engine = open_database(url)
    try:
        before = schema_status(engine)
        if before.state == "too-new":
            raise DatabaseTooNewError(
                f"{before.url} is at schema revision {', '.join(before.revisions)}, written by a newer FleetDesk "
                f"(this one knows up to {before.head}); it was left untouched",
                fix="upgrade FleetDesk on this laptop to the release that wrote it", step="migrate inventory")
        if new_only and before.state == "behind":
            raise InventoryError(f"{before.url} already holds a FleetDesk inventory (revision "
                                 f"{', '.join(before.revisions)}); init only creates new ones",
                                 fix="run `fleetdesk db upgrade` to bring it to this FleetDesk's schema",
                                 step="migrate inventory")
        if not new_only and before.state == "new":
            raise InventoryError(f"{before.url} holds no FleetDesk inventory to upgrade",
                                 fix="run `fleetdesk db init` to create one, or check the URL",
                                 step="migrate inventory")
        if before.state != "current":
            upgrade(engine)
        after = schema_status(engine)
    finally:
        engine.dispose()
    applied = [revision for revision, _ in before.pending] if before.state != "current" else []
    verb = "created" if before.state == "new" else "upgraded"
    text = (f"{after.url}: already at schema revision {after.head}, nothing to do" if not applied else
            f"{after.url}: {verb} to schema revision {after.head} (applied {', '.join(applied)})")
    emit(args, {**after.to_dict(), "applied": applied, "was": before.state}, safe(text))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    return _migrate(args, new_only=True)


def cmd_upgrade(args: argparse.Namespace) -> int:
    return _migrate(args, new_only=False)
