"""A throwaway PostgreSQL cluster on loopback, for the tests (tests/inventory/conftest.py) and the benchmarks that
need a real shared inventory (benchmarks/shared_inventory.py): initdb with trust auth, no fsync, stopped and
deleted when done.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("FLEETDESK_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ClusterUnavailable(RuntimeError):
    """What is missing to start a cluster here (the tests skip, or fail under CI, with it)."""


@dataclass(frozen=True)
class PostgresCluster:
    port: int
    data_dir: Path
    options: str = ""  # the server's options (pg_ctl -o), to start it again as it was
    log: Path | None = None

    def stop(self) -> None:
        """Stop the server as an administrator restarting it would (pg_ctl stop -m fast): every session is ended,
        open transactions roll back, nothing more is accepted until `start`."""
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60",
                                     "stop"]), check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        """Start the stopped server again, on the same port, with the same data."""
        log = [] if self.log is None else ["-l", str(self.log)]
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-o", self.options, *log,
                                     "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, *params: str, dbname: str = "postgres") -> None:
        """Run SQL outside a transaction (CREATE DATABASE cannot run inside one)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                             autocommit=True) as conn:
            conn.execute(sql, params or None)

    def has_database(self, name: str) -> bool:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def server_pids(self) -> list[int]:
        """The postmaster and every backend of this cluster (for its CPU share)."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                        found.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        return found


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; elsewhere (a developer's own account) run them as is.
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *argv]
    return argv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A throwaway cluster: loopback only, trust auth, no fsync; stopped and deleted at the end."""
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        raise ClusterUnavailable(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ClusterUnavailable("psycopg is not installed (pip install 'psycopg[binary]')") from None
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        raise ClusterUnavailable("setpriv is needed to run PostgreSQL as the postgres user")
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
        yield PostgresCluster(port=port, data_dir=data, options=options, log=log)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace")[-800:]
        if log.is_file():
            detail += log.read_text(errors="replace")[-800:]
        raise RuntimeError(f"could not start the test PostgreSQL: {detail}") from None
    finally:
        if started:
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)
