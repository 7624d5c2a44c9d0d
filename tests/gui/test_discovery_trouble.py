"""The activity view while discovery's inventory refuses writes: a running activity shows the problem with its
fix (list, tooltip, error panel), and once the inventory records again the problem clears and the work goes on.

The problem comes from the real recorder writing real discovery events to a real SQLite file that another
connection holds the write lock of; the activity is told exactly as the window's discovery job tells it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import qasync
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.fleet import Fleet
from fleetdesk.gui.activities import Activities, Activity
from fleetdesk.gui.activity_view import DETAIL, OUTCOME
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from fleetdesk.profiles import load_profiles
from tests.gui.test_panes import cell, click_row, loop, shown_view

__all__ = ["loop"]


def seen(name: str, address: str) -> DiscoveryEvent:
    return DiscoveryEvent("seen", Sighting("mdns", (address,), host_name=f"{name}.local.", instance_name=name,
                                           service_type="_ssh._tcp.local."))


async def until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")
        await asyncio.sleep(0.02)


def test_a_locked_inventory_shows_on_the_running_discovery_then_clears_when_it_records_again(
        qtbot: QtBot, loop: qasync.QEventLoop, tmp_path: Path, screens: Path) -> None:
    path = tmp_path / "fleet.db"
    fleet = Fleet(open_inventory(f"sqlite:///{path}"), load_profiles())
    activities = Activities()
    view = shown_view(qtbot, activities)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program's write transaction, left open
    release = asyncio.Event()

    async def discovery(activity: Activity) -> int:
        def on_state(state: RecordingState) -> None:
            activity.report_problem(state.error, f"on 198.18.0.1: {state.text}")

        recorder = fleet.recorder(None, on_state)
        activity.report(None, "on 198.18.0.1: listening")
        for i in range(3):
            recorder.push(seen(f"line2-pi-{i}", f"198.18.2.{i + 10}"))
        await release.wait()
        await recorder.close()
        return len(fleet.inventory.devices())

    async def scenario() -> Activity:
        activity = activities.start("Discovery (mDNS on 198.18.0.1)", discovery, summarize=str)
        await until(lambda: activity.problem is not None, "the lock shown on the running discovery")
        assert activity.running
        assert cell(view, activity, OUTCOME).startswith("the inventory ") and "is locked by another program" in (
            cell(view, activity, OUTCOME))
        assert cell(view, activity, DETAIL).startswith("on 198.18.0.1: not recording: the inventory")
        row = view.model.activities().index(activity)
        outcome = view.model.index(row, OUTCOME)
        assert outcome.data(Qt.ItemDataRole.ForegroundRole) == view.model.error_color
        assert "Fix: finish or close what holds it" in outcome.data(Qt.ItemDataRole.ToolTipRole)
        click_row(qtbot, view, activity)
        panel = view.error_panel
        assert panel.isVisible()
        assert panel.message_label.text().startswith("Discovery (mDNS on 198.18.0.1): the inventory ")
        assert panel.fix_label.text().startswith("Fix: finish or close what holds it")
        view.grab().save(str(screens / "discovery-problem-running.png"))
        other.execute("ROLLBACK")
        await until(lambda: activity.problem is None, "the problem cleared once the inventory records again")
        assert cell(view, activity, OUTCOME) == "" and panel.isHidden()
        assert cell(view, activity, DETAIL) == "on 198.18.0.1: recording again"
        release.set()
        await until(lambda: not activity.running, "the discovery activity ended")
        return activity

    try:
        activity = loop.run_until_complete(scenario())
    finally:
        other.close()
        fleet.inventory.close()
    assert activity.summary == "3"  # every sighting held during the lock was recorded
