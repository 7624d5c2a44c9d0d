"""Two laptops on one PostgreSQL inventory (issue 23): the window is one laptop, `fleetdesk` command-line processes
are the other. What the other commits (a device added, renamed, grouped) appears in the window as it commits,
without the window reading the whole inventory again; while the database is unreachable the window says that what
it shows may be out of date, and when it is back it catches up with what was committed meanwhile.
On the real PostgreSQL the tests start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.access import Access
from fleetdesk.inventory import open_inventory
from tests.gui_harness import GuiSession, gui_session
from tests.inventory.conftest import PostgresCluster, postgres_cluster, postgres_url  # noqa: F401 - fixtures

CHECKOUT = Path(__file__).resolve().parents[2]


def other_laptop(url: str, *argv: str) -> dict[str, object]:
    """`fleetdesk` in a process of its own on the same inventory, as alice: the other laptop."""
    env = {**os.environ, "FLEETDESK_OPERATOR": "alice", "PYTHONPATH": str(CHECKOUT)}
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "--db", url, *argv, "--json"], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


@pytest.fixture
def session(postgres_url: str, screens: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GuiSession]:  # noqa: F811
    with open_inventory(postgres_url) as inventory:
        Access(inventory, "alice").record("fleet.start")  # alice: the first admin, on both laptops
    monkeypatch.setenv("FLEETDESK_OPERATOR", "alice")
    with gui_session(postgres_url, screens) as s:
        yield s


def test_what_another_laptop_commits_appears_in_the_window(session: GuiSession, postgres_url: str,  # noqa: F811
                                                           postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    window, bridge = session.window, session.bridge
    session.wait(lambda: bridge.shared.live is True, "the window listening to the shared inventory")
    assert window.database_label.text().endswith("(shared, live)")

    added = other_laptop(postgres_url, "add", "198.18.6.10", "--name", "press-cam")
    device_id = int(str(added["id"]))
    committed = time.monotonic()
    session.wait(lambda: bridge.devices.device(device_id) is not None, "the device the other laptop added",
                 timeout=10)
    print(f"\na device added by another process appeared in the window {(time.monotonic() - committed) * 1000:.0f} "
          "ms after that process exited")
    session.wait(lambda: window.fleet_model.rowCount() == 1, "its row in the fleet table")

    other_laptop(postgres_url, "rename", "press-cam", "press-cam-line-1")
    session.wait(lambda: getattr(bridge.devices.device(device_id), "name", "") == "press-cam-line-1", "the rename")
    other_laptop(postgres_url, "group", "press-cam-line-1", "--name", "line A")
    session.wait(lambda: "line A" in getattr(bridge.devices.device(device_id), "groups", ()), "the group")
    session.screenshot(window, "shared-inventory-live")

    # The database unreachable: new connections refused, and the window's listening connection cut.
    with open_inventory(postgres_url) as during:  # opened first: its pooled connection stays usable
        postgres_cluster.admin("ALTER DATABASE inventory ALLOW_CONNECTIONS false")
        try:
            postgres_cluster.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE query LIKE 'LISTEN fleetdesk_changes%'")
            session.wait(lambda: bridge.shared.live is False, "the window noticing the database is gone")
            assert window.database_label.text().startswith("Database unreachable since ")
            assert "may be out of date" in window.database_label.text()
            assert postgres_url.rsplit("/", 1)[0] in window.database_label.toolTip()
            session.screenshot(window, "shared-inventory-unreachable")
            missed = during.add_device("198.18.6.11", name="drill-cam")  # committed while the window cannot hear
        finally:
            postgres_cluster.admin("ALTER DATABASE inventory ALLOW_CONNECTIONS true")
    session.wait(lambda: bridge.shared.live is True, "the window back on the shared inventory", timeout=20)
    session.wait(lambda: bridge.devices.device(missed.id) is not None, "what was committed meanwhile, caught up")
    assert window.database_label.text().endswith("(shared, live)")
