"""Two laptops on one PostgreSQL inventory (issue 23): the window is one laptop, `fleetdesk` command-line processes
are the other. What the other commits (a device added, renamed, grouped) appears in the window as it commits,
without the window reading the whole inventory again; while the database is unreachable the window says that what
it shows may be out of date, and when it is back it catches up with what was committed meanwhile.
On the real PostgreSQL the tests start."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.access import Access
from fleetdesk.inventory import Inventory, open_inventory
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


def _running_rollout(inventory: Inventory, names: tuple[str, str], takeover: str, lease_s: float) -> int:
    """A rollout another laptop (laptop-a) drove: both devices done, still running, laptop-a's last lease renewal
    `lease_s` long. Its devices are done already, so driving it on sends nothing (they have no agent)."""
    from fleetdesk.inventory import rollout_states as st
    from fleetdesk.inventory.rollouts import RolloutRepo
    from tests.inventory.test_rollouts import make_plan

    resolved = make_plan(inventory, *names)
    resolved = dataclasses.replace(resolved, plan=dataclasses.replace(resolved.plan, takeover=takeover))
    repo = RolloutRepo(inventory)
    rid = repo.create(resolved, "alice").id
    repo.take_lease(rid, "laptop-a:100", 30)
    repo.set_status(rid, "running", expect="planned")
    for device in repo.devices(rid):
        for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED, st.CONFIRMED):
            repo.record(rid, device.device_id, event)
    repo.take_lease(rid, "laptop-a:100", lease_s)  # its last renewal: then laptop-a died
    return rid


def test_the_window_takes_over_a_rollout_whose_plan_says_auto_when_its_drivers_lease_runs_out(
        session: GuiSession, postgres_url: str) -> None:  # noqa: F811
    """laptop-a drove two rollouts and died. The one whose plan says takeover "auto" is taken over by the window by
    itself once laptop-a's lease ran out (journaled and audited as the window's operator), and driven to done; the
    one whose plan says "ask" is left for an operator, who takes it over with the Rollouts view's Take over."""
    from fleetdesk.inventory.audit import AuditFilter
    from fleetdesk.inventory.rollouts import TAKEOVER, RolloutRepo

    bridge = session.bridge
    session.wait(lambda: bridge.shared.live is True, "the window listening to the shared inventory")
    seen: list[list[Any]] = []
    bridge.rollouts.rollouts_changed.connect(seen.append)
    with open_inventory(postgres_url) as inventory:
        asked = _running_rollout(inventory, ("cam-01", "cam-02"), "ask", 0.5)
        auto = _running_rollout(inventory, ("cam-03", "cam-04"), "auto", 2.0)
    created = time.monotonic()

    def status(rid: int) -> str:
        return next((r.status for r in (seen[-1] if seen else []) if r.id == rid), "")

    session.wait(lambda: status(auto) == "running", "the auto rollout shown as running")
    session.wait(lambda: status(auto) == "done", "the window taking the auto rollout over and finishing it",
                 timeout=30)
    took = time.monotonic() - created
    session.settle(1.0)
    driver = bridge.rollouts.rollout_engine().driver
    with open_inventory(postgres_url) as inventory:
        repo = RolloutRepo(inventory)
        taken = [e.detail for e in repo.journal(auto) if e.event == TAKEOVER]
        assert len(taken) == 1 and (taken[0]["previous"], taken[0]["driver"]) == ("laptop-a:100", driver), taken
        audit = Access(inventory, "alice").audit.entries(AuditFilter(action="rollout.takeover"), limit=None)
        assert [(e.operator, e.targets[0], e.after["previous"]) for e in audit] == [
            ("alice", f"rollout:{auto}", "laptop-a:100")]
        left = repo.get(asked)
        assert (left.status, left.driver) == ("running", "laptop-a:100"), left  # "ask": an operator's to take
        assert [e for e in repo.journal(asked) if e.event == TAKEOVER] == []

    # The "ask" one: the operator sees who drove it and takes it over with the view's button.
    view = session.window.rollouts_view
    session.call(lambda: bridge.rollouts.watch_rollout(asked))
    session.wait(lambda: view.detail is not None and view.detail.row.id == asked, "the ask rollout in the view")
    assert view.reason.text().startswith("Driven by the FleetDesk on laptop-a (process 100), lease until ")
    assert view.reason.text().endswith("takeover: ask") and view.buttons["take-over"].isEnabled()
    session.call(lambda: view.buttons["take-over"].click())
    session.wait(lambda: status(asked) == "done", "the operator's takeover of the ask rollout, driven to done")
    with open_inventory(postgres_url) as inventory:
        taken = [e.detail for e in RolloutRepo(inventory).journal(asked) if e.event == TAKEOVER]
        assert len(taken) == 1 and (taken[0]["previous"], taken[0]["driver"]) == ("laptop-a:100", driver), taken
    print(f"\nthe window took the auto rollout over and finished it {took:.1f} s after laptop-a's last renewal "
          "(its lease: 2 s)")


def test_a_model_another_laptop_imports_appears_in_the_window_and_is_fetched_verified(
        postgres_url: str, screens: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """The other laptop (a `fleetdesk model import` process with its own data folder and the same fleet key) imports
    a model; the window lists it as on the shared store while its files are not on this laptop, and its Verify
    fetches them from the shared store and finds them intact and signed."""
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.config import Settings
    from tests.fixtures.models.build import save_cnn

    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("FLEETDESK_SHARED_STORE", str(shared))
    with open_inventory(postgres_url) as inventory:
        Access(inventory, "alice").record("fleet.start")
    monkeypatch.setenv("FLEETDESK_OPERATOR", "alice")
    here = Settings.load()
    FleetSigningKey.default(here).public_pem()  # this laptop's fleet key, made now: the other laptop carries a copy
    other_data = tmp_path / "laptop-a"
    other_data.mkdir()
    subprocess.run(["cp", "-a", str(here.data_dir / "keys"), str(other_data / "keys")], check=True)
    with gui_session(postgres_url, screens) as session:
        window, bridge = session.window, session.bridge
        session.wait(lambda: bridge.shared.live is True, "the window listening to the shared inventory")
        monkeypatch.setenv("FLEETDESK_DATA_DIR", str(other_data))  # for the other laptop's process only
        model = save_cnn(tmp_path / "cnn.onnx")
        other_laptop(postgres_url, "model", "import", str(model), "--name", "cnn", "--profile", "ipc-x86",
                     "--no-device-bench")
        monkeypatch.setenv("FLEETDESK_DATA_DIR", str(here.data_dir))
        listing = window.models_view.model_list
        session.wait(lambda: listing.topLevelItemCount() == 1, "the model the other laptop imported", timeout=20)
        item = listing.topLevelItem(0)
        assert item is not None and item.text(0) == "cnn@1 (on the shared store)"
        assert not (here.data_dir / "artifacts" / "objects").exists()  # listed, nothing fetched
        window.tabs.setCurrentWidget(window.models_view)  # the picture shows the Models tab as an operator sees it
        session.screenshot(window, "shared-model-listed")

        verified: list[Any] = []
        bridge.models.verify_models("cnn@1", then=verified.append)
        session.wait(lambda: verified, "the verify of the model")
        assert verified[0] and all(r.ok for r in verified[0]), verified
        assert {r.artifact for r in verified[0]} == {p.name for p in (shared / "objects").iterdir()}
        assert {p.name for p in (here.data_dir / "artifacts" / "objects").iterdir()} == {
            p.name for p in (shared / "objects").iterdir()}
