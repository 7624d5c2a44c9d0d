"""Discovery of the real lab (its mDNS, read only) while the inventory refuses writes: a full disk (a real
tmpfs) and a write lock another connection holds (real SQLite). The core, `fleetdesk discover` and the window
each tell the operator why and the fix, then that it records again, and the lab's devices are recorded after.

mDNS is bound to the lab bridge only; no lab device is touched.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.errors import InventoryUnavailableError
from fleetdesk.fleet import Fleet as FleetService
from fleetdesk.gui.activity_view import OUTCOME
from fleetdesk.inventory import open_inventory
from fleetdesk.profiles import load_profiles
from tests.gui_harness import GuiSession, gui_session
from tests.lab.conftest import Fleet
from tests.small_disk import fill, small_disk

pytestmark = pytest.mark.lab

LAB_BRIDGE = "198.18.0.1"


def full_inventory(disk: Path) -> tuple[str, Path]:
    """An inventory on `disk` holding one device committed before the disk filled; its URL and the filler."""
    url = f"sqlite:///{disk / 'fleet.db'}"
    with open_inventory(url) as inventory:
        inventory.add_device("198.18.0.250", name="committed-before-the-fill")
    with sqlite3.connect(disk / "fleet.db") as conn:
        # Folded into the database file first: a write could otherwise reuse a large WAL's space.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return url, fill(disk)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def lab_addresses(fleet: Fleet) -> set[str]:
    return {d["address"] for d in fleet.devices}


def test_discovery_on_a_full_disk_says_why_and_records_the_lab_once_space_is_freed(fleet: Fleet,
                                                                                    tmp_path: Path) -> None:
    with small_disk(tmp_path / "small") as disk:
        url, filler = full_inventory(disk)
        service = FleetService(open_inventory(url), load_profiles())
        states: list[RecordingState] = []

        def on_state(state: RecordingState) -> None:
            states.append(state)
            if not state.recording and filler.exists():
                filler.unlink()  # the operator frees space once told

        try:
            devices = asyncio.run(service.discover([LAB_BRIDGE], timeout=5.0, on_state=on_state))
            stored = {d.name for d in service.inventory.devices()}
        finally:
            service.inventory.close()
        assert states and not states[0].recording and states[-1].recording
        refused = states[0].error
        assert isinstance(refused, InventoryUnavailableError) and "is full" in refused.message
        assert refused.fix is not None and "free space" in refused.fix
        assert {a for d in devices for a in d.addresses} >= lab_addresses(fleet)
        assert "committed-before-the-fill" in stored
        assert integrity(disk / "fleet.db") == "ok"


def test_fleetdesk_discover_prints_the_full_disk_with_its_fix_then_recording_again(fleet: Fleet,
                                                                                   tmp_path: Path) -> None:
    with small_disk(tmp_path / "small") as disk:
        url, filler = full_inventory(disk)
        env = dict(os.environ, FLEETDESK_DB=url)
        argv = [sys.executable, "-m", "fleetdesk", "discover", "--interface", LAB_BRIDGE, "--timeout", "5"]
        lines: list[str] = []
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            assert proc.stdout is not None
            watchdog = threading.Timer(120, proc.kill)  # bounds the read below if the command hung
            watchdog.start()
            try:
                for line in proc.stdout:  # ends when the command does: its browse is bounded by --timeout
                    lines.append(line.rstrip("\n"))
                    if "not recording" in line and filler.exists():
                        filler.unlink()  # the operator frees space once told
                returncode = proc.wait(timeout=60)
            finally:
                watchdog.cancel()
        output = "\n".join(lines)
        assert returncode == 0, output
        refused = next(line for line in lines if "not recording" in line)
        assert "the disk holding the inventory" in refused and "is full" in refused and "free space" in refused
        assert any(line.startswith("recording again") for line in lines), output
        found = re.search(r"^(\d+) device\(s\) found$", output, re.MULTILINE)
        assert found is not None and int(found.group(1)) >= len(lab_addresses(fleet)), output
        with open_inventory(url) as inventory:
            recorded = {a for d in inventory.devices() for a in d.addresses}
        assert recorded >= lab_addresses(fleet) | {"198.18.0.250"}
        assert integrity(disk / "fleet.db") == "ok"


def discovery_row(session: GuiSession, activity: Any) -> int:
    return int(session.window.activity_view.model.activities().index(activity))


def test_the_window_shows_a_locked_inventory_on_the_discovery_activity_then_listening_again(
        fleet: Fleet, tmp_path: Path, qtbot: Any) -> None:
    db = tmp_path / "fleet.db"
    screens = tmp_path / "screens"
    screens.mkdir()
    with gui_session(f"sqlite:///{db}", screens, interfaces=[LAB_BRIDGE]) as session:
        window = session.window
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another program's write transaction, left open
            activity = session.call(lambda: session.bridge.devices.start_browsing([LAB_BRIDGE]))
            session.wait(lambda: activity.problem is not None, "the lock shown on the discovery activity", 40)
            model = window.activity_view.model
            outcome = model.index(discovery_row(session, activity), OUTCOME)
            assert "is locked by another program" in model.data(outcome)
            tooltip = model.data(outcome, Qt.ItemDataRole.ToolTipRole)
            assert "Fix: finish or close what holds it" in tooltip
            assert "not recording" in activity.detail and activity.running
            label = window.discovery_panel.state_label
            assert label.text() == "Listening, but not recording: the inventory refuses writes"
            assert "is locked by another program" in label.toolTip() and "sighting(s) held" in label.toolTip()
            assert "Fix: finish or close" in label.toolTip()
            window.activity_view.tree.setCurrentIndex(outcome)
            panel = window.activity_view.error_panel
            assert not panel.isHidden() and panel.fix_label.text().startswith("Fix: finish or close what holds it")
            session.screenshot(window, "discovery-inventory-locked")
            other.execute("ROLLBACK")
        finally:
            other.close()
        session.wait(lambda: activity.problem is None and "recording again" in activity.detail,
                     "recording again on the discovery activity", 40)
        assert window.discovery_panel.state_label.text().startswith("Listening; recording again")
        assert window.discovery_panel.state_label.toolTip() == ""
        assert model.data(outcome) == "" and window.activity_view.error_panel.isHidden()
        session.wait(lambda: {v.device.address for v in window.fleet_model.views()} >= lab_addresses(fleet),
                     "every lab device in the fleet table", 30)
        session.screenshot(window, "discovery-recording-again")
        session.call(session.bridge.devices.stop_browsing)
        session.wait(lambda: not activity.running, "discovery stopped")
    assert integrity(db) == "ok"
