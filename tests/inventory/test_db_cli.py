"""`fleetdesk db init|upgrade|status` on the real PostgreSQL the tests start, and on SQLite: the owner creates and
upgrades the shared inventory once; an operator's role, which may not change the schema, uses it, and is told
which permission it lacks (and who runs the migration) when it would have to change it.

The roles are the ones the README's "Several laptops, one fleet" section tells a database administrator to make.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy.engine import make_url

from fleetdesk.cli import main
from fleetdesk.errors import InventoryError
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.database import for_writing, open_database
from fleetdesk.inventory.migrate import alembic_config, head_revision, known_revisions
from tests.inventory.conftest import PostgresCluster

OPERATOR = "fleet_operator"
BEFORE_DDL = "0011"  # the revision before 0012, which adds a column
# What the README tells the administrator to run, as the database's owner, once.
OPERATOR_GRANTS = f"""
GRANT USAGE ON SCHEMA public TO {OPERATOR};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {OPERATOR};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {OPERATOR};
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["db", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


@pytest.fixture
def shared(postgres_cluster: PostgresCluster, postgres_url: str) -> Iterator[tuple[str, str]]:
    """The owner's URL and an operator role's URL for one empty database."""
    postgres_cluster.admin(f"DROP OWNED BY {OPERATOR}" if _role_exists(postgres_cluster) else "SELECT 1",
                           dbname="inventory")
    if not _role_exists(postgres_cluster):
        postgres_cluster.admin(f"CREATE ROLE {OPERATOR} LOGIN")
    operator_url = make_url(postgres_url).set(username=OPERATOR).render_as_string(hide_password=False)
    yield postgres_url, operator_url


def _role_exists(cluster: PostgresCluster) -> bool:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres") as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OPERATOR,)).fetchone() is not None


def test_the_owner_creates_the_shared_inventory_and_an_operator_role_works_in_it(
        shared: tuple[str, str], postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]) -> None:
    owner, operator = shared
    code, status, _ = run(capsys, "status", owner)
    assert code == 0 and status["state"] == "new" and status["backend"] == "postgresql"
    assert status["role"] == "postgres" and status["can_change_schema"] is True
    assert [p["revision"] for p in status["pending"]][-1] == head_revision()

    # The operator's role may not create the tables: refused, naming the role, the permission and the fix.
    code = main(["db", "init", operator])
    err = capsys.readouterr().err
    assert code == 2
    assert f"'{OPERATOR}' may not change the inventory's schema" in err
    assert "USAGE and CREATE on the schema public" in err
    assert "fleetdesk db upgrade URL` once as the database's owner" in err
    code, status, _ = run(capsys, "status", owner)
    assert status["state"] == "new", "a refused init left something behind"

    postgres_cluster.admin(OPERATOR_GRANTS, dbname="inventory")
    code, created, _ = run(capsys, "init", owner)
    assert code == 0 and created["state"] == "current" and created["was"] == "new"
    assert created["applied"][-1] == head_revision()

    # The operator's laptop opens the inventory (no migration to run) and works in it.
    code, status, _ = run(capsys, "status", operator)
    assert status["state"] == "current" and status["can_change_schema"] is False and status["role"] == OPERATOR
    inventory = open_inventory(operator)
    try:
        device = inventory.add_device("198.18.0.7", name="cell-3")
        assert [d.name for d in inventory.devices()] == ["cell-3"]
        assert device.id > 0
    finally:
        inventory.close()

    # init again: nothing to do, and said so.
    code, again, _ = run(capsys, "init", owner)
    assert code == 0 and again["applied"] == [] and again["was"] == "current"


def test_an_upgrade_is_the_owners_and_an_operator_laptop_says_so(
        shared: tuple[str, str], postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]) -> None:
    owner, operator = shared
    postgres_cluster.admin(OPERATOR_GRANTS, dbname="inventory")
    assert run(capsys, "init", owner)[0] == 0
    inventory = open_inventory(owner)
    try:
        inventory.add_device("198.18.0.9", name="line-4")
    finally:
        inventory.close()
    # The database as an older FleetDesk left it, before a migration that changes tables (0012 adds a column; a
    # migration that only changes rows, like 0013, the operator's role may apply itself).
    engine = open_database(owner)
    try:
        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), BEFORE_DDL)
    finally:
        engine.dispose()
    pending = [r for r in sorted(known_revisions()) if r > BEFORE_DDL]

    code, status, _ = run(capsys, "status", operator)
    assert status["state"] == "behind"
    assert [p["revision"] for p in status["pending"]] == pending
    assert main(["db", "status", operator]) == 0
    text = capsys.readouterr().out
    assert "state: behind" in text and all(f"  {r}  " in text for r in pending)
    assert "may not change the schema" in text

    # The operator's laptop would have to migrate on open: refused with the fix, the data untouched.
    with pytest.raises(InventoryError, match=f"'{OPERATOR}' may not change the inventory's schema") as refused:
        open_inventory(operator)
    assert "as the database's owner" in getattr(refused.value, "fix", "")
    assert main(["db", "upgrade", operator]) == 2
    assert "USAGE and CREATE on the schema public" in capsys.readouterr().err

    code, upgraded, _ = run(capsys, "upgrade", owner)
    assert code == 0 and upgraded["applied"] == pending and upgraded["state"] == "current"
    inventory = open_inventory(operator)
    try:
        assert [d.name for d in inventory.devices()] == ["line-4"]
    finally:
        inventory.close()


def test_sqlite_status_creates_nothing_and_init_then_upgrade(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    code, status, _ = run(capsys, "status", url)
    assert code == 0 and status == {"url": url, "backend": "sqlite", "state": "new", "exists": False}
    assert not (tmp_path / "fleet.db").exists()
    assert main(["db", "upgrade", url]) == 2
    assert "there is no inventory to upgrade" in capsys.readouterr().err
    assert not (tmp_path / "fleet.db").exists()
    code, created, _ = run(capsys, "init", url)
    assert code == 0 and created["state"] == "current" and created["can_change_schema"] is True
    code, again, _ = run(capsys, "upgrade", url)
    assert code == 0 and again["applied"] == []
    # The default URL: --db.
    assert main(["--db", url, "db", "status"]) == 0
    assert f"state: current (schema revision {head_revision()})" in capsys.readouterr().out


def test_a_database_from_a_newer_fleetdesk_is_reported_and_left_alone(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    assert run(capsys, "init", url)[0] == 0
    with sqlite3.connect(tmp_path / "fleet.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    before = (tmp_path / "fleet.db").read_bytes()
    code, status, _ = run(capsys, "status", url)
    assert code == 0 and status["state"] == "too-new" and status["pending"] == []
    assert main(["db", "upgrade", url]) == 2
    assert "written by a newer FleetDesk" in capsys.readouterr().err
    assert (tmp_path / "fleet.db").read_bytes() == before
