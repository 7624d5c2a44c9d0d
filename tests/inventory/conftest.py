"""A real PostgreSQL for the inventory tests, started by the test run; every test gets its own database.

The `db_url` fixture runs each test that takes it on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.fleet import Fleet
from fleetdesk.inventory import Inventory, open_inventory
from fleetdesk.profiles import load_profiles
from tests.conftest import skip_or_fail
from tests.postgres import ClusterUnavailable, PostgresCluster, running_cluster

__all__ = ["PostgresCluster", "db_url", "inventory", "postgres_cluster", "postgres_url", "sqlite_url"]

@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway cluster for the session (tests/postgres.py)."""
    try:
        with running_cluster() as cluster:
            yield cluster
    except ClusterUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """An empty database in the session's cluster: one database, its schema dropped and recreated per test.

    (CREATE DATABASE costs about 0.4 s here; resetting the schema a few milliseconds.)
    """
    name = "inventory"
    if not postgres_cluster.has_database(name):
        postgres_cluster.admin(f"CREATE DATABASE {name}")
    postgres_cluster.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        name)
    postgres_cluster.admin("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public", dbname=name)
    return postgres_cluster.url(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database URL, once for SQLite and once for a real PostgreSQL."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def inventory(db_url: str) -> Iterator[Inventory]:
    """An opened, migrated, empty inventory on each backend."""
    with open_inventory(db_url) as inventory:
        yield inventory


@pytest.fixture
def laptops(db_url: str) -> Iterator[tuple[Fleet, Fleet]]:
    """Two operators on one inventory, each with a FleetDesk of their own: alice (its first admin) and bob."""
    alice = Fleet(open_inventory(db_url), load_profiles(), operator="alice")
    alice.access.require("administer", "operator.add")  # the first to act on a fresh inventory is its admin
    alice.access.add_operator("bob", ["admin"])
    bob = Fleet(open_inventory(db_url), load_profiles(), operator="bob")
    yield alice, bob
    for fleet in (alice, bob):
        asyncio.run(fleet.close())
