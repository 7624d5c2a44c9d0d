"""The activity view and the device detail pane, driven as an operator drives them.

Activities run real asyncio tasks on a qasync loop; devices are the inventory's own frozen records.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import qasync
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QFontInfo, QPalette
from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QToolButton
from pytestqt.qtbot import QtBot

from fleetdesk.errors import ConfigError, FleetDeskError
from fleetdesk.gui.activities import CANCELLED, FAILED, SUCCEEDED, Activities, Activity
from fleetdesk.gui.activity_view import DETAIL, DEVICES, ELAPSED, OPERATION, OUTCOME, PROGRESS, ActivityView
from fleetdesk.gui.app import create_app
from fleetdesk.gui.device_detail import EMPTY_HINT, NOT_PROBED, NOT_TRUSTED, DeviceDetail, DeviceText, visible_text
from fleetdesk.gui.theme import apply_theme, palette_for
from fleetdesk.inventory.records import Device, HostKey, ProbeFacts
from fleetdesk.profiles.matcher import ProfileMatch
from fleetdesk.transport.sshconfig import resolve
from tests.gui_harness import shown_text

# -- activity view ---------------------------------------------------------------------------------


@pytest.fixture
def loop(qtbot: QtBot) -> Iterator[qasync.QEventLoop]:
    """A qasync loop on the Qt thread, as the window runs: Activities.start needs a running loop."""
    apply_theme(create_app([]), "light")  # Fusion, palette and style sheet, as the operator sees them
    event_loop = qasync.QEventLoop(QApplication.instance())
    asyncio.set_event_loop(event_loop)
    yield event_loop
    event_loop.close()
    asyncio.set_event_loop(None)


def shown_view(qtbot: QtBot, activities: Activities) -> ActivityView:
    view = ActivityView(activities)
    qtbot.addWidget(view)
    view.resize(1000, 380)
    view.show()
    qtbot.waitExposed(view)
    return view


def cell(view: ActivityView, activity: Activity, column: int) -> str:
    """The text the list shows for `activity` in `column`."""
    row = view.model.activities().index(activity)
    return str(view.model.index(row, column).data(Qt.ItemDataRole.DisplayRole))


def click_row(qtbot: QtBot, view: ActivityView, activity: Activity,
              modifier: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    row = view.model.activities().index(activity)
    rect = view.tree.visualRect(view.model.index(row, OPERATION))
    qtbot.mouseClick(view.tree.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


def click_action(qtbot: QtBot, view: ActivityView, text: str) -> None:
    button = next(b for b in view.toolbar.findChildren(QToolButton) if b.text() == text)
    assert button.isEnabled(), f"{text!r} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


async def ended(activity: Activity, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while activity.running:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def forever() -> Callable[[Activity], Awaitable[None]]:
    async def job(activity: Activity) -> None:
        await asyncio.Event().wait()
    return job


async def refused(activity: Activity) -> None:
    activity.report(0.1, "connecting to 198.18.0.11:22")
    await asyncio.sleep(0)
    raise FleetDeskError("the device refused the SSH connection", fix="check that sshd runs on it and port 22 is open",
                         device="line2-pi-07", step="connect", cause=ConnectionRefusedError(111, "Connection refused"))


def test_running_activity_shows_progress_detail_and_device_count(qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    activities = Activities()
    view = shown_view(qtbot, activities)

    async def scenario() -> None:
        gate = asyncio.Event()

        async def push(activity: Activity) -> str:
            activity.report(None, "opening connections")
            await asyncio.sleep(0)
            assert cell(view, activity, PROGRESS) == "working…"  # total unknown yet
            activity.report(0.246, "12.3 MB of 50.0 MB, 8.1 MB/s, about 5 s left")
            await gate.wait()
            return "pushed to 3 devices"

        older = activities.start("Probe rpi4-01", forever(), devices=[7])
        push = activities.start("Push yolov8n.onnx", push, devices=[1, 2, 3], summarize=str)
        await asyncio.sleep(0.05)
        assert [a.title for a in view.model.activities()] == ["Push yolov8n.onnx", "Probe rpi4-01"]  # newest first
        assert cell(view, push, OPERATION) == "Push yolov8n.onnx"
        assert cell(view, push, DEVICES) == "3 devices"
        assert cell(view, older, DEVICES) == "1 device"
        assert cell(view, push, PROGRESS) == "25 %"
        assert cell(view, push, DETAIL) == "12.3 MB of 50.0 MB, 8.1 MB/s, about 5 s left"
        assert re.fullmatch(r"\d+ s", cell(view, push, ELAPSED))
        assert cell(view, push, OUTCOME) == ""
        gate.set()
        await ended(push)
        assert push.state == SUCCEEDED
        assert cell(view, push, PROGRESS) == "100 %"
        assert cell(view, push, OUTCOME) == "pushed to 3 devices"
        older.cancel()
        await ended(older)

    loop.run_until_complete(scenario())
    assert view.log_lines()[0].endswith(" Push yolov8n.onnx — pushed to 3 devices")


def test_cancel_button_and_delete_key_cancel_the_selected_running_tasks(qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    activities = Activities()
    view = shown_view(qtbot, activities)

    async def scenario() -> None:
        first = activities.start("Sweep 198.18.0.0/24", forever())
        second = activities.start("Probe line2-pi-07", forever(), devices=[4])
        third = activities.start("Install runtime", forever(), devices=[5])
        await asyncio.sleep(0.01)
        assert not view.cancel_action.isEnabled()  # nothing selected yet
        click_row(qtbot, view, second)
        click_action(qtbot, view, "Cancel")
        await ended(second)
        assert second.state == CANCELLED
        assert cell(view, second, OUTCOME) == "cancelled"
        assert first.running and third.running  # only the selected one
        assert not view.cancel_action.isEnabled()  # the selection holds nothing running any more

        click_row(qtbot, view, first)
        click_row(qtbot, view, third, Qt.KeyboardModifier.ControlModifier)
        view.tree.setFocus()
        qtbot.keyClick(view.tree, Qt.Key.Key_Delete)
        await ended(first)
        await ended(third)
        assert (first.state, third.state) == (CANCELLED, CANCELLED)

    view.activateWindow()
    qtbot.waitActive(view)
    loop.run_until_complete(scenario())


def test_a_failure_shows_message_fix_and_expandable_details(qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    activities = Activities()
    view = shown_view(qtbot, activities)

    async def scenario() -> Activity:
        ok = activities.start("Probe rpi4-01", _returns("identified as rpi4"), summarize=str)
        failed = activities.start("Probe line2-pi-07", refused, devices=[9])
        await ended(ok)
        await ended(failed)
        return failed

    failed = loop.run_until_complete(scenario())
    assert failed.state == FAILED
    assert cell(view, failed, OUTCOME) == "the device refused the SSH connection"
    assert cell(view, failed, PROGRESS) == ""  # no half-full bar for work that failed
    row = view.model.activities().index(failed)
    assert view.model.index(row, OUTCOME).data(Qt.ItemDataRole.ForegroundRole) == view.model.error_color
    assert view.model.index(0 if row else 1, OUTCOME).data(Qt.ItemDataRole.ForegroundRole) is None
    assert not view.error_panel.isVisible()  # until the operator selects the failure

    click_row(qtbot, view, failed)
    panel = view.error_panel
    assert panel.isVisible()
    assert panel.message_label.text() == "Probe line2-pi-07 failed: the device refused the SSH connection"
    assert panel.fix_label.text() == "Fix: check that sshd runs on it and port 22 is open"
    assert not panel.details.isVisible()
    qtbot.mouseClick(panel.details_button, Qt.MouseButton.LeftButton)
    assert panel.details.isVisible() and panel.details.isReadOnly()
    details = panel.details.toPlainText().splitlines()
    assert details[:4] == ["Device: line2-pi-07", "Step: connect", "Error: FleetDeskError",
                           "Cause: ConnectionRefusedError(111, 'Connection refused')"]
    qtbot.mouseClick(panel.details_button, Qt.MouseButton.LeftButton)
    assert not panel.details.isVisible()

    click_row(qtbot, view, activities.all()[0])  # the success: no error panel
    assert not panel.isVisible()
    failure_line = r"\d\d:\d\d:\d\d Probe line2-pi-07 — failed: the device refused the SSH connection"
    assert sum(bool(re.fullmatch(failure_line, line)) for line in view.log_lines()) == 1


def test_device_strings_in_an_activity_are_shown_as_text(qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    activities = Activities()
    view = shown_view(qtbot, activities)
    name = "<b>pi</b>\u202e7"

    async def probe(activity: Activity) -> None:
        raise FleetDeskError(f"{name} did not answer", fix="check its cable", device=name, step="probe")

    failed = activities.start(f"Probe {name}", probe)
    loop.run_until_complete(ended(failed))
    assert cell(view, failed, OPERATION) == "Probe <b>pi</b>\\u202e7"
    tooltip = view.model.index(0, OUTCOME).data(Qt.ItemDataRole.ToolTipRole)
    assert shown_text(tooltip) == "<b>pi</b>\\u202e7 did not answer\nFix: check its cable"  # drawn literally
    click_row(qtbot, view, failed)
    assert view.error_panel.message_label.textFormat() == Qt.TextFormat.PlainText
    assert view.error_panel.message_label.text() == "Probe <b>pi</b>\\u202e7 failed: <b>pi</b>\\u202e7 did not answer"
    assert "Device: <b>pi</b>\\u202e7" in view.error_panel.details.toPlainText()
    assert view.log_lines()[0].endswith("Probe <b>pi</b>\\u202e7 — failed: <b>pi</b>\\u202e7 did not answer")


def test_clear_finished_keeps_running_work_and_the_log(qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    activities = Activities()

    async def scenario() -> tuple[ActivityView, Activity]:
        done = activities.start("Import yolov8n.onnx", _returns("imported"), summarize=str)
        await ended(done)
        view = shown_view(qtbot, activities)  # built after work finished: it shows and logs that work too
        running = activities.start("Watch telemetry", forever(), devices=[1])
        failed = activities.start("Probe line2-pi-07", refused)
        await ended(failed)
        assert len(view.model.activities()) == 3
        click_action(qtbot, view, "Clear finished")
        assert view.model.activities() == [running]
        assert activities.all() == [running]
        assert not view.clear_action.isEnabled()  # nothing finished is left to clear
        assert [line.split(" ", 1)[1] for line in view.log_lines()] == [
            "Import yolov8n.onnx — imported", "Probe line2-pi-07 — failed: the device refused the SSH connection"]
        running.cancel()
        await ended(running)
        assert view.clear_action.isEnabled()
        return view, running

    view, running = loop.run_until_complete(scenario())
    assert view.model.rowCount() == 1 and running.state == CANCELLED


def test_one_elapsed_timer_ticks_while_work_runs_and_stops_after(qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    activities = Activities()
    view = shown_view(qtbot, activities)
    timer = view.model.elapsed_timer
    assert not timer.isActive()  # nothing runs yet

    async def scenario() -> None:
        first = activities.start("Push model", forever())
        second = activities.start("Probe", forever())
        assert timer.isActive()
        ticked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_changed(top_left: QModelIndex, bottom_right: QModelIndex, roles: list[int]) -> None:
            if top_left.column() == ELAPSED == bottom_right.column() and not ticked.done():
                ticked.set_result(None)

        view.model.dataChanged.connect(on_changed)
        await asyncio.wait_for(ticked, 5)  # the Elapsed column repaints by itself
        view.model.dataChanged.disconnect(on_changed)
        first.cancel()
        await ended(first)
        assert timer.isActive()  # the second still runs
        second.cancel()
        await ended(second)
        assert not timer.isActive()

    loop.run_until_complete(scenario())
    assert not timer.isActive()


def test_screenshot_of_running_failed_and_succeeded_work(qtbot: QtBot, loop: qasync.QEventLoop, screens: Path) -> None:
    activities = Activities()
    view = shown_view(qtbot, activities)

    async def scenario() -> tuple[Activity, Activity]:
        done = activities.start("Probe rpi4-01", _returns("identified as rpi4 (Raspberry Pi 4 Model B)"),
                                devices=[1], summarize=str)
        failed = activities.start("Probe line2-pi-07", refused, devices=[2])
        gate = asyncio.Event()

        async def push(activity: Activity) -> None:
            activity.report(0.246, "12.3 MB of 50.0 MB, 8.1 MB/s, about 5 s left")
            await gate.wait()

        running = activities.start("Push yolov8n.onnx to line A", push, devices=[3, 4, 5])
        await ended(done)
        await ended(failed)
        await asyncio.sleep(0.01)
        return failed, running

    failed, running = loop.run_until_complete(scenario())
    click_row(qtbot, view, failed)
    qtbot.mouseClick(view.error_panel.details_button, Qt.MouseButton.LeftButton)
    QApplication.processEvents()  # the text box lays its lines out on the next pass
    assert view.grab().save(str(screens / "activity-view.png"))
    app = QApplication.instance()
    try:
        apply_theme(app, "dark")
        dark_red = palette_for("dark").color(QPalette.ColorRole.BrightText)
        assert view.model.error_color == dark_red  # the failure red follows a theme switch
        click_row(qtbot, view, running)  # the failed row unselected: its outcome in the dark theme's red
        QApplication.processEvents()
        assert view.grab().save(str(screens / "activity-view-dark.png"))
    finally:
        apply_theme(app, "light")
    running.cancel()
    loop.run_until_complete(ended(running))


def _returns(value: str) -> Callable[[Activity], Awaitable[str]]:
    async def job(activity: Activity) -> str:
        await asyncio.sleep(0)
        return value
    return job


# -- device detail ---------------------------------------------------------------------------------

SEEN = datetime(2025, 3, 4, 9, 15, tzinfo=UTC)

JETSON = Device(
    id=12, name="line2-orin-03", hostname="line2-orin-03", addresses=("198.18.0.23", "fe80::2"),
    mdns_names=("line2-orin-03.local.", "line2-orin-03 SSH"), services=("_ssh._tcp.local.",), port=22,
    username="fleet", transport="asyncssh", password_account="fleetdesk/line2-orin-03", profile="jetson-orin-nano",
    facts=ProbeFacts(
        hostname="line2-orin-03", machine_id="3f2a9c0e5d7b4e1f8a6c2b9d0e4f7a13", arch="aarch64",
        os_name="Ubuntu 22.04.4 LTS", kernel="5.15.136-tegra", python="3.10.12", cpu_model="Cortex-A78AE",
        cpu_count=6, ram_mb=7782, disk_total_mb=59_000, disk_free_mb=41_234,
        model="NVIDIA Jetson Orin Nano Developer Kit",
        tegra_release="# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64",
        gpu="Orin (nvgpu)", gpu_memory_mb=0),
    probed_at=SEEN, first_seen=datetime(2025, 3, 1, 7, 0), last_seen=SEEN, online=True,
    groups=("Line 2", "Vision QA"), source="mdns")

ORIN_MATCH = ProfileMatch(
    profile="jetson-orin-nano", priority=100,
    reasons=("device-tree model 'NVIDIA Jetson Orin Nano Developer Kit' matches '^NVIDIA Jetson Orin Nano'",
             "nv_tegra_release '# R36 (release), REVISION: 3.0, GCID: 369' matches '^# R3[56] '",
             "architecture is aarch64"),
    others=("generic-aarch64",))

ORIN_KEY = HostKey(device_id=12, key_type="ssh-ed25519", public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample",
                   fingerprint="SHA256:pDBdWbCGbM9Vq0yGVeUbqH7RzJQkGxWnYv0h3mZcX4s", source="operator", pinned_at=SEEN)


def detail_pane(qtbot: QtBot) -> DeviceDetail:
    apply_theme(create_app([]), "light")
    pane = DeviceDetail()
    qtbot.addWidget(pane)
    pane.resize(520, 900)
    pane.show()
    qtbot.waitExposed(pane)
    return pane


def shown(pane: DeviceDetail) -> dict[tuple[str, str], str]:
    return {(section, label): value for section, label, value in pane.rows()}


def value_labels(pane: DeviceDetail) -> list[QLabel]:
    return [label for label in pane.findChildren(QLabel) if label.isVisibleTo(pane)]


def test_empty_pane_says_what_to_do(qtbot: QtBot) -> None:
    pane = detail_pane(qtbot)
    assert pane.empty_hint.isVisible() and pane.empty_hint.text() == EMPTY_HINT
    assert not pane.scroll_area.isVisible()
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online")
    assert not pane.empty_hint.isVisible()
    pane.show_device(None, match=None, host_keys=(), status="")
    assert pane.empty_hint.isVisible() and pane.rows() == []


def test_a_live_update_that_changes_nothing_keeps_the_pane_and_the_operators_selection(qtbot: QtBot) -> None:
    pane = detail_pane(qtbot)
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online")
    name = next(label for label in value_labels(pane) if label.text() == "fleet")  # the User row
    name.setSelection(0, 3)
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online")  # the same device again
    assert name in value_labels(pane) and name.selectedText() == "fle"
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="offline")
    assert shown(pane)[("", "Status")] == "offline"  # a change is shown, on new labels
    assert name not in value_labels(pane)


def test_probed_jetson_shows_identity_trust_hardware_and_why_its_profile_matched(qtbot: QtBot, screens: Path) -> None:
    pane = detail_pane(qtbot)
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online")
    rows = shown(pane)
    assert rows[("Identity", "Addresses")] == "198.18.0.23\nfe80::2"
    assert rows[("Identity", "mDNS names")] == "line2-orin-03.local.\nline2-orin-03 SSH"
    assert rows[("Identity", "Found by")] == "mDNS announcement"
    assert rows[("Connection", "User")] == "fleet"
    assert rows[("Connection", "Password in keyring")] == "Yes — in the OS keyring"
    assert rows[("Trust", "ssh-ed25519")].splitlines()[0] == "SHA256:pDBdWbCGbM9Vq0yGVeUbqH7RzJQkGxWnYv0h3mZcX4s"
    assert rows[("Trust", "ssh-ed25519")].splitlines()[1].startswith("trusted by the operator on 2025-03-0")
    assert rows[("Hardware & OS", "CPU")] == "Cortex-A78AE × 6"
    assert rows[("Hardware & OS", "Memory")] == "7.6 GB"  # 7782 MiB, as people read it
    assert rows[("Hardware & OS", "Disk")] == "40.3 GB free of 57.6 GB"
    assert rows[("Hardware & OS", "GPU")] == "Orin (nvgpu), shares system memory"
    assert rows[("Hardware & OS", "Tegra release")].startswith("# R36 (release)")
    assert ("Hardware & OS", "DMI vendor") not in rows  # a Jetson has none: no empty rows
    assert rows[("Profile", "Profile")] == "jetson-orin-nano"
    assert rows[("Profile", "Why")].splitlines() == [f"• {reason}" for reason in ORIN_MATCH.reasons]
    assert rows[("Profile", "Also matched")] == "generic-aarch64"
    assert rows[("Groups", "Member of")] == "Line 2, Vision QA"
    assert rows[("", "Status")] == "online"

    fingerprint = pane.findChild(QLabel, "DetailFingerprint")
    assert fingerprint.isVisible() and QFontInfo(fingerprint.font()).fixedPitch()
    texts = [label.text() for label in value_labels(pane)]
    assert "7.6 GB" in texts and "NVIDIA Jetson Orin Nano Developer Kit" in texts  # on screen, not only in rows()
    for label in value_labels(pane):
        assert label.textFormat() == Qt.TextFormat.PlainText
    for label in pane.findChildren(QLabel, "DetailValue"):
        assert label.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert pane.findChild(QPushButton, "ProbeButton") is None and pane.findChild(QPushButton, "TrustButton") is None
    assert pane.grab().save(str(screens / "device-detail-jetson.png"))


def test_never_probed_device_says_probe_and_trust_and_the_buttons_ask_for_them(qtbot: QtBot) -> None:
    pane = detail_pane(qtbot)
    fresh = replace(JETSON, id=31, name="rpi4-01", hostname="rpi4-01", facts=ProbeFacts(), probed_at=None,
                    profile=None, password_account=None, groups=(), source="sweep", last_seen=None)
    pane.show_device(fresh, match=None, host_keys=(), status="untrusted")
    rows = shown(pane)
    assert rows[("Profile", "Profile")] == NOT_PROBED
    assert rows[("Trust", "Host key")] == NOT_TRUSTED
    assert rows[("Connection", "Password in keyring")] == "No"
    assert rows[("Identity", "Found by")] == "network sweep"
    assert rows[("Identity", "Last seen")] == "never"
    assert rows[("Groups", "Member of")].startswith("No group")
    assert not any(section == "Hardware & OS" for section, _, _ in pane.rows())
    with qtbot.waitSignal(pane.probe_requested) as probe:
        qtbot.mouseClick(pane.findChild(QPushButton, "ProbeButton"), Qt.MouseButton.LeftButton)
    assert probe.args == [31]
    with qtbot.waitSignal(pane.trust_requested) as trust:
        qtbot.mouseClick(pane.findChild(QPushButton, "TrustButton"), Qt.MouseButton.LeftButton)
    assert trust.args == [31]


def test_hostile_device_strings_are_shown_literally_never_as_markup(qtbot: QtBot, screens: Path) -> None:
    pane = detail_pane(qtbot)
    name = '<b>line2</b><img src="x">\u202egnp.exe\x1b[31m'
    long_label = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63  # 255 bytes, as DNS allows
    hostile = replace(JETSON, name=name, hostname="evil\nhost\u200b", mdns_names=(long_label,),
                      facts=replace(JETSON.facts, model="<script>alert(1)</script>", os_name="Ubuntu\r\n\tfake"),
                      groups=("<i>line</i>",))
    pane.show_device(hostile, match=None, host_keys=[ORIN_KEY], status="online")
    rows = shown(pane)
    assert visible_text(name) == '<b>line2</b><img src="x">\\u202egnp.exe\\x1b[31m'
    assert rows[("Identity", "Name")] == visible_text(name)
    assert rows[("Identity", "Hostname")] == "evil\\nhost\\u200b"
    assert rows[("Identity", "mDNS names")] == long_label
    assert rows[("Hardware & OS", "Model")] == "<script>alert(1)</script>"
    assert rows[("Hardware & OS", "OS")] == "Ubuntu\\r\\n\\tfake"
    assert rows[("Groups", "Member of")] == "<i>line</i>"
    assert rows[("Profile", "Why")] == "Probe again to see which rules matched"  # stored profile, no match at hand

    labels = [label for label in value_labels(pane) if isinstance(label, DeviceText)]
    texts = [label.shown_text() for label in labels]
    assert visible_text(name) in texts and long_label in texts and "<script>alert(1)</script>" in texts
    for label in value_labels(pane):
        assert label.textFormat() == Qt.TextFormat.PlainText
    for text in texts:  # nothing invisible or reordering reaches the screen; line breaks only between lines
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]", text)

    # The 255-byte label wraps inside the pane instead of widening it, and copies back whole.
    long = labels[texts.index(long_label)]
    assert long.height() > 2 * long.fontMetrics().lineSpacing()
    assert not pane.scroll_area.horizontalScrollBar().isVisible()
    long.setSelection(0, len(long.text()))
    long.setFocus()
    qtbot.keyClick(long, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QApplication.clipboard().text() == long_label
    assert pane.grab().save(str(screens / "device-detail-hostile.png"))


def test_the_ssh_config_lines_that_applied_are_shown_with_file_and_line(qtbot: QtBot, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host line2-*\n  User operator\nHost 198.18.0.23\n  IdentityFile ~/.ssh/line2_key\n"
                      "  User ignored\nHost other\n  Port 2200\n")
    entry = resolve(JETSON.name, aliases=(JETSON.address, "line2-orin-03.local"), config_path=config)
    pane = detail_pane(qtbot)
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online", ssh_config=entry)
    lines = [f"{config}:2: User operator  (Host line2-*)",  # by its name
             f"{config}:4: IdentityFile ~/.ssh/line2_key  (Host 198.18.0.23)"]  # by its address
    assert shown(pane)[("Connection", "SSH config")].splitlines() == lines
    on_screen = [label.shown_text() for label in value_labels(pane) if isinstance(label, DeviceText)]
    assert "\n".join(lines) in on_screen

    nothing = resolve("dock-pc", aliases=("198.18.0.99",), config_path=config)
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online", ssh_config=nothing)
    assert shown(pane)[("Connection", "SSH config")] == f"No line of {config} applies to this device"

    broken = ConfigError(f"{config} line 2: Invalid Port integer value: abc", fix="correct that line")
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online", ssh_config=broken)
    assert shown(pane)[("Connection", "SSH config")] == (f"Cannot be read: {config} line 2: Invalid Port integer "
                                                        "value: abc — correct that line")
    pane.show_device(JETSON, match=ORIN_MATCH, host_keys=[ORIN_KEY], status="online")
    assert ("Connection", "SSH config") not in shown(pane)  # not looked up: nothing claimed
