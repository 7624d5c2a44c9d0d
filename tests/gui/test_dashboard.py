"""The telemetry dashboard in the real window: overview rows and values, alerts, the device view, pictures.

Samples come from `fleetdesk.telemetry.simulate` (made-up numbers on a simulated clock) and go into the
bridge's own store the way the hub's stream reader puts them there; the devices are inventory rows.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtTest import QTest

from fleetdesk.errors import UnreachableError
from fleetdesk.gui.bridge_views import stream_view
from fleetdesk.gui.device_plots import WINDOWS
from fleetdesk.gui.overview import COLUMNS, FIRST_METRIC_COLUMN, NONE_YET, OVERVIEW_METRICS, value_text
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from fleetdesk.inventory.telemetry_repo import TelemetryRepo
from fleetdesk.telemetry.alerts import AlertEvent, Threshold
from fleetdesk.telemetry.hub import StreamState
from fleetdesk.telemetry.simulate import SimulatedFleet
from tests.gui_harness import GuiSession, distinct_colours, gui_session

NAMES = ("cam-01", "cam-02", "jet-03", "pi-04", "ipc-05", "ipc-06")
KINDS = ("ipc", "ipc-nvidia", "jetson", "rpi", "ipc", "ipc-nvidia")  # what each simulates (see simulate.py)


@pytest.fixture
def session(tmp_path: Path, screens: Path) -> Iterator[GuiSession]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_inventory(url) as inventory:
        inventory.record_sightings([
            Sighting("mdns", (f"198.18.1.{10 + n}",), host_name=f"{name}.local.", instance_name=name,
                     service_type="_ssh._tcp.local.") for n, name in enumerate(NAMES)])
    with gui_session(url, screens) as s:
        s.window.resize(1400, 900)
        s.window.tabs.setCurrentWidget(s.window.dashboard)
        s.settle(0.05)
        yield s


def ids_by_name(session: GuiSession) -> dict[str, int]:
    return {v.device.name: v.id for v in session.bridge.devices.views()}


def simulate(session: GuiSession, seed: int = 3) -> SimulatedFleet:
    ids = ids_by_name(session)
    return SimulatedFleet(session.bridge.telemetry.store, [ids[n] for n in NAMES], seed=seed, kinds=KINDS)


def advance(session: GuiSession, sim: SimulatedFleet, seconds: int) -> None:
    """`seconds` of simulated time, inside the running loop (as the hub's readers deliver), then one flush."""
    async def steps() -> None:
        for n in range(seconds):
            sim.step()
            if n % 10 == 9:
                await asyncio.sleep(0)  # a burst of simulated minutes must not hold the loop itself

    session.run(steps())
    session.window.dashboard.model.flush()


def cell(session: GuiSession, name: str, column: int, role: int = Qt.ItemDataRole.DisplayRole) -> object:
    model = session.window.dashboard.model
    row = model.row_of(ids_by_name(session)[name])
    assert row is not None, f"{name} has no row in the overview"
    return model.index(row, column).data(role)


def test_the_overview_has_a_row_per_device_with_the_latest_values_from_the_store(session: GuiSession) -> None:
    dashboard = session.window.dashboard
    assert dashboard.model.rowCount() == len(NAMES)
    assert [dashboard.model.index(r, 0).data() for r in range(len(NAMES))] == sorted(NAMES)
    assert cell(session, "cam-01", 1) == "untrusted"  # sighted by mDNS, its host key not trusted yet
    assert all(cell(session, "cam-01", c) == NONE_YET for c in range(FIRST_METRIC_COLUMN, len(COLUMNS)))

    sim = simulate(session)
    advance(session, sim, 30)
    store = session.bridge.telemetry.store
    for name, device_id in ids_by_name(session).items():
        latest = store.buffer(device_id).latest
        for n, metric in enumerate(OVERVIEW_METRICS):
            assert cell(session, name, FIRST_METRIC_COLUMN + n) == value_text(metric, latest.value(metric))
        assert cell(session, name, 1) == "streaming"
    # A Raspberry Pi reports no GPU, and one device in three serves no model: shown as missing, never as 0.
    pi = store.buffer(ids_by_name(session)["pi-04"]).latest
    assert pi.gpu_pct is None and cell(session, "pi-04", FIRST_METRIC_COLUMN + 1) == NONE_YET
    assert dashboard.summary.text().startswith(f"{len(NAMES)} of {len(NAMES)} device(s) streaming")

    # The sparklines are painted from the buffers: every visible metric cell of every row, once per repaint.
    before = dashboard.delegate.painted
    dashboard.table.viewport().repaint()
    assert dashboard.delegate.painted - before == len(NAMES) * len(OVERVIEW_METRICS)


def test_a_device_that_arrives_later_takes_its_place_in_name_order(session: GuiSession) -> None:
    model = session.window.dashboard.model
    model.upsert(9001, "cam-015", "untrusted")
    model.upsert(9002, "aaa-first", "untrusted")
    model.upsert(9003, "zz-last", "untrusted")
    names = [model.index(r, 0).data() for r in range(model.rowCount())]
    assert names == sorted(names, key=str.casefold) and names[0] == "aaa-first" and names[-1] == "zz-last"
    assert names.index("cam-015") == names.index("cam-01") + 1
    # Every row is still found by its device id after the inserts moved the others down.
    assert all(model.row_at(model.row_of(i)).device_id == i for i in model.device_ids())


def test_only_rows_with_new_samples_are_repainted_and_arrivals_are_coalesced(session: GuiSession) -> None:
    dashboard = session.window.dashboard
    sim = simulate(session)
    advance(session, sim, 5)
    session.settle(0.3)
    changed: list[tuple[int, int]] = []
    dashboard.model.dataChanged.connect(lambda a, b, _r=(): changed.append((a.row(), b.row())))
    cam = ids_by_name(session)["cam-02"]
    session.call(lambda: [sim.step([cam]) for _ in range(10)])  # ten samples of one device
    assert changed == []  # nothing repainted yet: arrivals wait for the coalesced flush
    session.wait(lambda: changed, "the coalesced repaint")
    row = dashboard.model.row_of(cam)
    assert changed == [(row, row)]


def test_a_sample_over_a_threshold_marks_the_row_and_raises_one_event_then_clears_after_hysteresis(
        session: GuiSession) -> None:
    window, bridge = session.window, session.bridge
    window.device_actions.set_thresholds([Threshold("temp_c", 80.0, hold_s=3.0, hysteresis=5.0)])
    events: list[AlertEvent] = []
    bridge.telemetry.alert_event.connect(events.append)
    sim = simulate(session)
    hot = ids_by_name(session)["jet-03"]
    advance(session, sim, 10)
    assert events == []
    assert cell(session, "jet-03", 0, Qt.ItemDataRole.BackgroundRole) is None

    sim.hold(hot, "temp_c", 91.0)
    advance(session, sim, 2)
    assert events == []  # above, but not yet for the 3 s hold
    advance(session, sim, 20)
    assert [(e.device_id, e.metric, e.kind, e.value, e.bound) for e in events] == [
        (hot, "temp_c", "raised", 91.0, 80.0)]
    assert cell(session, "jet-03", 0, Qt.ItemDataRole.BackgroundRole) is not None
    assert cell(session, "jet-03", 0, Qt.ItemDataRole.DecorationRole) is not None  # the warning sign
    assert "ALERT: Temperature °C 91 is above 80" in str(cell(session, "jet-03", 0, Qt.ItemDataRole.ToolTipRole))
    assert all(cell(session, n, 0, Qt.ItemDataRole.BackgroundRole) is None for n in NAMES if n != "jet-03")
    log = window.dashboard.alert_log
    assert log.count() == 1 and "jet-03: Temperature °C 91 is above 80" in log.item(0).text()
    assert "1 alerting" in window.dashboard.summary.text()
    # The fleet table marks the device too, and says why.
    fleet_row = next(r for r in range(window.fleet_model.rowCount()) if window.fleet_model.view_at(r).id == hot)
    hostname = window.fleet_model.index(fleet_row, 1)
    assert hostname.data(Qt.ItemDataRole.DecorationRole) is not None
    assert "Telemetry alert: Temperature °C 91 is above 80" in hostname.data(Qt.ItemDataRole.ToolTipRole)
    # The row's background is painted in the alert tint, not the table's own base colours.
    row = window.dashboard.model.row_of(hot)
    table = window.dashboard.table
    picture = table.viewport().grab().toImage()
    y = table.rowViewportPosition(row) + 3
    tint = QColor(picture.pixel(table.columnViewportPosition(1) + 2, y))
    assert tint.red() > tint.green() + 10, f"the alerting row is not tinted red: {tint.name()}"
    session.screenshot(window, "dashboard-alert")

    sim.hold(hot, "temp_c", 77.0)  # under the bound, not under bound - hysteresis: still alerting
    advance(session, sim, 10)
    assert [e.kind for e in events] == ["raised"]
    sim.hold(hot, "temp_c", 60.0)
    advance(session, sim, 3)
    assert [(e.kind, e.value) for e in events] == [("raised", 91.0), ("cleared", 60.0)]
    assert cell(session, "jet-03", 0, Qt.ItemDataRole.BackgroundRole) is None
    assert log.count() == 2 and "back to 60" in log.item(0).text()
    assert hostname.data(Qt.ItemDataRole.DecorationRole) is None
    # Both are in the inventory's event log, with the metric, the value and the bound.
    repo = TelemetryRepo.of(session.bridge.fleet.inventory)
    session.wait(lambda: len(repo.events(hot)) == 2, "the two alert events in the inventory")
    logged = sorted(repo.events(hot), key=lambda e: e.id)
    assert [(e.kind, e.metric, e.value, e.bound) for e in logged] == [("alert", "temp_c", 91.0, 80.0),
                                                                       ("alert.cleared", "temp_c", 60.0, 80.0)]
    assert logged[0].message == "Temperature °C 91 is above 80"


def test_thresholds_set_in_the_dialog_apply_and_are_remembered(session: GuiSession) -> None:
    window = session.window
    dialog = window.device_actions.open_thresholds_dialog()
    line = dialog.lines["latency_p95_ms"]
    line.bound.setValue(5.0)
    line.hold.setValue(0.0)
    dialog.lines["temp_c"].enabled.setChecked(False)
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    rules = {t.metric: t for t in session.bridge.telemetry.alerts.thresholds}
    assert rules["latency_p95_ms"].bound == 5.0 and not rules["temp_c"].enabled
    stored = QSettings("FleetDesk", "FleetDesk").value("telemetry/thresholds")
    assert '"bound": 5.0' in stored
    sim = simulate(session)
    advance(session, sim, 3)
    serving = [n for n in NAMES if session.bridge.telemetry.store.buffer(ids_by_name(session)[n]).latest.latency_p95_ms]
    assert serving and session.bridge.telemetry.alerts.alerting() == {ids_by_name(session)[n] for n in serving}


def test_the_stream_column_says_what_the_hub_reports_and_why(session: GuiSession) -> None:
    device_id = ids_by_name(session)["ipc-05"]
    lost = UnreachableError("no route to 198.18.1.14 port 22", fix="check the cable", device="ipc-05")
    session.bridge.telemetry.stream_changed.emit(stream_view(StreamState(device_id, "reconnecting", retry_in=8.2,
                                                                         last_error=lost)))
    assert cell(session, "ipc-05", 1) == "reconnecting in 8 s"
    assert "no route to 198.18.1.14" in str(cell(session, "ipc-05", 0, Qt.ItemDataRole.ToolTipRole))
    session.bridge.telemetry.stream_changed.emit(stream_view(StreamState(device_id, "agentless")))
    sim = simulate(session)
    advance(session, sim, 2)
    assert cell(session, "ipc-05", 1) == "streaming (agentless)"
    session.bridge.telemetry.stream_changed.emit(stream_view(StreamState(device_id, "stopped")))
    assert cell(session, "ipc-05", 1) == "stopped"


def test_streaming_a_device_that_does_not_answer_goes_through_the_real_hub(tmp_path: Path, screens: Path) -> None:
    """The Start/Stop path end to end with no device behind it: a closed port on loopback (the only address a
    GUI test may reach). The bridge's hub tries, fails, says why and when it tries again; Stop stops it."""
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_inventory(url) as inventory:
        device = inventory.add_device("127.0.0.1", port=port, name="bench-pc")
        untrusted = inventory.add_device("127.0.0.2", port=port, name="new-pc")
        # Trusted as if its key had been checked before (untrusted devices are left out of streaming).
        key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        inventory.pin_host_key(device.id, key, source="operator")
    (tmp_path / "ssh_config").write_text("")
    with gui_session(url, screens, ssh_config=str(tmp_path / "ssh_config")) as session:
        window = session.window
        session.call(lambda: window.device_actions.set_streaming([device.id, untrusted.id], True))
        assert window.tabs.currentWidget() is window.dashboard
        assert "1 not trusted yet, left out" in window.statusBar().currentMessage()
        assert cell(session, "new-pc", 1) == "offline"  # added by hand, never seen: no stream was started
        session.wait(lambda: str(cell(session, "bench-pc", 1)).startswith("reconnecting in"),
                     "the stream to report that it will retry")
        why = str(cell(session, "bench-pc", 0, Qt.ItemDataRole.ToolTipRole))
        assert f"127.0.0.1:{port} did not accept an SSH connection (Connection refused)" in why
        session.call(lambda: window.device_actions.set_streaming([device.id], False))
        assert cell(session, "bench-pc", 1) == "stopped"
        assert session.bridge.telemetry.store.buffer(device.id) is None  # nothing was invented meanwhile


def test_start_streaming_with_no_trusted_device_says_what_to_do(session: GuiSession) -> None:
    dashboard = session.window.dashboard
    assert dashboard.start_button.text() == "Start streaming all"
    session.call(dashboard.start_button.click)
    assert "No trusted device to stream from" in session.window.statusBar().currentMessage()


def test_the_device_view_follows_the_window_pauses_and_catches_up(session: GuiSession) -> None:
    dashboard = session.window.dashboard
    sim = simulate(session)
    advance(session, sim, 400)
    device_id = ids_by_name(session)["ipc-05"]
    dashboard.table.setFocus()
    dashboard.table.setCurrentIndex(dashboard.model.index(dashboard.model.row_of(device_id), 0))
    QTest.keyClick(dashboard.table, Qt.Key.Key_Return)
    plots = dashboard.plots
    assert plots.isVisible() and plots.device_id == device_id and plots.title.text() == "ipc-05"
    session.settle(0.1)

    end = sim.clock()
    times, _ = plots.shown_series("cpu_pct")
    assert times[-1] == end and times[0] >= end - 300 and len(times) == 301  # the default window: 5 minutes
    assert plots.x_range() == pytest.approx((end - 300, end))
    plots.window_box.setCurrentIndex([w for w, _s in WINDOWS].index("1 min"))
    times, _ = plots.shown_series("cpu_pct")
    assert len(times) == 61 and plots.x_range() == pytest.approx((end - 60, end))
    session.screenshot(session.window, "dashboard-device")

    plots.pause_button.click()
    assert plots.paused and plots.live_button.isEnabled()
    frozen_t, frozen_v = plots.shown_series("cpu_pct")
    frozen_text = plots.values.text()
    advance(session, sim, 20)  # data keeps arriving while paused
    session.settle(0.6)  # longer than the redraw interval
    t, v = plots.shown_series("cpu_pct")
    assert (t == frozen_t).all() and (v == frozen_v).all() and plots.values.text() == frozen_text
    assert plots.x_range() == pytest.approx((end - 60, end))
    assert len(session.bridge.telemetry.store.buffer(device_id)) == 420  # the buffer did get the 20 new samples
    # Paused, the whole buffer is there to pan back through.
    assert frozen_t[0] == end - 399

    plots.live_button.click()
    t, _ = plots.shown_series("cpu_pct")
    assert not plots.paused and t[-1] == sim.clock() == end + 20
    assert plots.x_range() == pytest.approx((end - 40, end + 20))
    assert "(paused)" not in plots.values.text()


def test_dragging_a_plot_pauses_it_where_the_operator_left_it(session: GuiSession) -> None:
    dashboard = session.window.dashboard
    sim = simulate(session)
    advance(session, sim, 200)
    dashboard.open_device(ids_by_name(session)["cam-01"])
    plots = dashboard.plots
    session.settle(0.05)
    box = plots.plots[3].getViewBox()  # the temperature plot: the others follow it
    box.translateBy(x=-90.0)  # what a mouse drag to the right does
    box.sigRangeChangedManually.emit(box.state["mouseEnabled"])
    assert plots.paused
    left, right = plots.x_range()
    assert right == pytest.approx(sim.clock() - 90.0) and right - left == pytest.approx(300.0)


def test_device_view_shows_sources_and_throttling(session: GuiSession) -> None:
    sim = simulate(session)
    pi = ids_by_name(session)["pi-04"]
    sim.hold(pi, "temp_c", 84.0)  # the simulated Pi reports "throttled" above 80 °C
    advance(session, sim, 5)
    session.window.dashboard.open_device(pi)
    plots = session.window.dashboard.plots
    assert "throttling from vcgencmd" in plots.sources.text()
    assert "CPU from /proc/stat" in plots.sources.text()
    assert plots.throttle.text() == "Throttling now: throttled" and not plots.throttle.isHidden()
    cpu = plots.shown_series("gpu_pct")[1]
    assert len(cpu) == 0 or all(math.isnan(v) for v in cpu)  # a Pi has no GPU: nothing drawn, nothing invented


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots_of_the_overview_and_device_view(session: GuiSession, theme: str) -> None:
    window = session.window
    window.set_theme(theme)
    window.device_actions.set_thresholds([Threshold("temp_c", 80.0, hold_s=0.0, hysteresis=5.0),
                           Threshold("latency_p95_ms", 45.0, hold_s=0.0, hysteresis=5.0)])
    sim = simulate(session)
    advance(session, sim, 240)
    ids = ids_by_name(session)
    sim.hold(ids["jet-03"], "temp_c", 86.0)
    sim.hold(ids["cam-02"], "latency_p95_ms", 41.0)  # near, not past, its bound
    advance(session, sim, 60)
    session.settle(0.1)
    overview = session.screenshot(window, f"dashboard-overview-{theme}")
    window.dashboard.open_device(ids["jet-03"])
    session.settle(0.1)
    device = session.screenshot(window, f"dashboard-device-{theme}")
    # The pictures are there and show something: the window, and in it the part each picture is about.
    for picture in (overview, device):
        assert picture.is_file(), f"no screenshot at {picture}"
        assert distinct_colours(QImage(str(picture))) >= 64, f"{picture} is blank"
    assert distinct_colours(window.dashboard.table.viewport().grab().toImage()) >= 16, "the overview table is blank"
    assert distinct_colours(window.dashboard.plots.grab().toImage()) >= 16, "the device's plots are blank"
    window.set_theme("light")
