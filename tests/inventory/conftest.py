"""A real PostgreSQL for the inventory tests, started by the test run; every test gets its own database.

The `db_url` fixture runs each test that takes it on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetdesk.inventory import Inventory, open_inventory
from tests.conftest import skip_or_fail

PG_BIN = Path(os.environ.get("FLEETDESK_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class PostgresCluster:
    port: int
    data_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, *params: str, dbname: str = "postgres") -> None:
        """Run SQL outside a transaction (CREATE DATABASE cannot run inside one)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                             autocommit=True) as conn:
            conn.execute(sql, params or None)  # type: ignore[arg-type]

    def has_database(self, name: str) -> bool:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; elsewhere (a developer's own account) run them as is.
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *argv]
    return argv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway cluster: loopback only, trust auth, no fsync; stopped and deleted at the end."""
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        skip_or_fail(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg is not installed (pip install 'psycopg[binary]')")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        skip_or_fail("setpriv is needed to run PostgreSQL as the postgres user")
    # Not under pytest's tmp_path: its root-owned 0700 parents would keep the postgres user out.
    root = Path(tempfile.mkdtemp(prefix="fleetdesk-pg-"))
    root.chmod(0o755)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    port = _free_port()
    log = root / "postgres.log"
    started = False
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                     "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                                     "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)
        started = True
        yield PostgresCluster(port=port, data_dir=data)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace")[-800:]
        if log.is_file():
            detail += log.read_text(errors="replace")[-800:]
        pytest.fail(f"could not start the test PostgreSQL: {detail}", pytrace=False)
    finally:
        if started:
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


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
