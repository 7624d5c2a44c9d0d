"""The fleet table under load: 500 devices changing status every second, in the real window, offscreen.

Figures (issue 4): event-loop stall p50/p99/max, from the 10 ms heartbeat the GUI tests use
(`fleetdesk.gui.loopwatch.LoopWatch`), and frame time, a synchronous repaint of the table's viewport
once a second after the update. Target: stall p99 under 50 ms.

The window is the real `MainWindow` from `build_window`, over a real SQLite inventory of 500 devices
(mDNS sightings at 198.18.x.y, about half probed, three groups) in a temporary folder; nothing is sent
on any network (mDNS browsing is never started). Every second a random 20-100 % of the devices announce
themselves again or go away (mDNS "seen" and "gone" events), fed to the real discovery recorder
(`Fleet.recorder`): it writes them to the SQLite file a batch at a time in its own thread and reports
each stored device to the window, as a browse does. The table stays sorted by Status, so re-sorting is
part of the cost.

Reference, in the same run, after the window is closed: a plain QTableWidget with the same rows and
columns and the same viewport size, fed the same events through a recorder of its own over the same
SQLite file (every device back online first, as at the start), written cell by cell with setText, sorted
by Status, with sorting switched off while a batch is written and back on after it (what Qt's
QTableWidget documentation advises). An idle phase first gives the machine's own noise floor for the
heartbeat.

    .venv/bin/python benchmarks/gui_fleet.py [--seconds 30] [--devices 500] [--json] [--profile-second 3]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt loads

import qasync
from PySide6 import __version__ as PYSIDE_VERSION
from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QtMsgType, qInstallMessageHandler, qVersion
from PySide6.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem, QWidget

from fleetdesk.config import Settings
from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.fleet import Fleet
from fleetdesk.gui.app import build_window, create_app
from fleetdesk.gui.bridge_views import DeviceView, device_status
from fleetdesk.gui.fleet_model import COLUMNS, STATUS_TEXT
from fleetdesk.gui.icons import status_icon
from fleetdesk.gui.loopwatch import LoopWatch
from fleetdesk.gui.main_window import MainWindow
from fleetdesk.inventory import Device, open_inventory
from fleetdesk.inventory.records import ProbeFacts, Sighting
from fleetdesk.profiles import load_profiles

TARGET_P99_S = 0.050  # the bar for the stall p99
STORED_WITHIN_S = 60.0  # the recorder must have stored and reported a second's events by then
SETTLE_S = 0.05  # after a second's updates, time for the view to paint them by itself (watched)
IDLE_S = 3  # seconds of an idle window: the heartbeat's noise floor on this machine
GROUPS = ("line A", "line B", "packing")
FAMILIES = (  # (host label, profile, arch, os) for probed devices; the profiles are the shipped ones
    ("jetson", "jetson-orin-nano", "aarch64", "Ubuntu 22.04.4 LTS"),
    ("rpi", "rpi5", "aarch64", "Debian GNU/Linux 12 (bookworm)"),
    ("ipc", "ipc-x86-nvidia", "x86_64", "Ubuntu 22.04.4 LTS"),
)


# -- the inventory --------------------------------------------------------------------------------------


def address(n: int) -> str:
    """The n-th lab address, inside 198.18.0.0/15 (RFC 2544 benchmark range): nothing there is contacted."""
    return f"198.18.{1 + n // 200}.{10 + n % 200}"


def sighting(n: int) -> Sighting:
    """The n-th device's SSH service as mDNS announces it."""
    label = f"{FAMILIES[n % len(FAMILIES)][0]}-{n:03d}"
    return Sighting("mdns", (address(n),), host_name=f"{label}.local.", instance_name=label,
                    service_type="_ssh._tcp.local.")


def fill_inventory(db_url: str, count: int, rng: random.Random) -> None:
    """`count` devices announced by mDNS; about half probed, most of them in one of three groups."""
    inventory = open_inventory(db_url)
    try:
        devices = inventory.record_sightings([sighting(n) for n in range(count)])
        for n, device in enumerate(devices):
            if rng.random() < 0.5:
                _, profile, arch, os_name = FAMILIES[n % len(FAMILIES)]
                facts = ProbeFacts(hostname=device.hostname, machine_id=f"{n:032x}", arch=arch, os_name=os_name,
                                   kernel="6.1.0", python="3.11.2", cpu_count=4, ram_mb=8192)
                inventory.save_probe(device.id, facts, profile=profile)
        ids = [d.id for d in devices]
        third = len(ids) // 3
        for g, group in enumerate(GROUPS):
            inventory.add_to_group(group, ids[g * third:(g + 1) * third])
    finally:
        inventory.close()


# -- the updates ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """What one measured phase saw."""

    name: str
    watch: LoopWatch
    frames: list[float] = dataclasses.field(default_factory=list)
    updates: int = 0
    seconds: int = 0
    paints: int = 0  # paint events the view had by itself (the timed repaints not counted)

    def figures(self) -> dict[str, Any]:
        ms = 1000.0
        return {
            "stall_p50_ms": round(self.watch.percentile(50) * ms, 2),
            "stall_p99_ms": round(self.watch.percentile(99) * ms, 2),
            "stall_max_ms": round(self.watch.worst * ms, 2),
            "beats": len(self.watch.stalls),
            "frame_p50_ms": round(percentile(self.frames, 50) * ms, 2) if self.frames else None,
            "frame_p99_ms": round(percentile(self.frames, 99) * ms, 2) if self.frames else None,
            "updates_per_s": round(self.updates / self.seconds, 1) if self.seconds else 0.0,
            "paints_per_s": round(self.paints / self.seconds, 1) if self.seconds else 0.0,
        }


def percentile(values: Sequence[float], p: float) -> float:
    """The same nearest-rank rule as LoopWatch.percentile, so both figures read alike."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class LiveFleet:
    """Each second's mDNS events: a random 20-100 % of the devices go away if they were there, come back if not.

    Every device starts online, as the inventory was filled; the same seed gives the same events. With no
    `rng`, nothing happens (the idle phase).
    """

    def __init__(self, count: int, rng: random.Random | None) -> None:
        self.online = [True] * count
        self.rng = rng

    def changes(self) -> list[DiscoveryEvent]:
        if self.rng is None:
            return []
        count = len(self.online)
        chosen = self.rng.sample(range(count), k=max(1, round(count * self.rng.uniform(0.2, 1.0))))
        events = []
        for n in chosen:
            self.online[n] = not self.online[n]
            events.append(DiscoveryEvent("seen" if self.online[n] else "gone", sighting(n)))
        return events


class RecorderFeed:
    """The real discovery recorder over the SQLite inventory, fed a second's events at once, as a browse hears a
    floor: it stores them a batch at a time in its own thread and reports each stored device on the loop.

    `deliver` returns once every event's device was reported (the recorder reports gone devices too).
    """

    def __init__(self, fleet: Fleet, on_device: Callable[[Device], None]) -> None:
        self._on_device = on_device
        self._reported = 0
        self._wanted = 0
        self._all_in: asyncio.Future[None] | None = None
        self.recorder = fleet.recorder(self._report, self._refused)

    def _report(self, device: Device) -> None:
        self._on_device(device)
        self._reported += 1
        if self._all_in is not None and not self._all_in.done() and self._reported >= self._wanted:
            self._all_in.set_result(None)

    def _refused(self, state: RecordingState) -> None:
        # A figure over sightings that were not stored would measure nothing: stop the benchmark instead.
        if state.error is not None and self._all_in is not None and not self._all_in.done():
            self._all_in.set_exception(RuntimeError(f"the inventory refused discovery's writes: {state.text}"))

    async def deliver(self, events: list[DiscoveryEvent]) -> None:
        if not events:
            return
        self._wanted = self._reported + len(events)
        self._all_in = asyncio.get_running_loop().create_future()
        for event in events:
            self.recorder.push(event)
        await asyncio.wait_for(self._all_in, STORED_WITHIN_S)

    async def close(self) -> None:
        await self.recorder.close()


async def nothing(_events: list[DiscoveryEvent]) -> None:
    """The idle phase's delivery."""


class PaintCounter(QObject):
    """Counts the paint events a viewport gets, to show the view really painted the updates by itself."""

    def __init__(self, viewport: QObject) -> None:
        super().__init__()
        self.count = 0
        viewport.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint:
            self.count += 1
        return False


async def drive(phase: Phase, seconds: int, live: LiveFleet,
                deliver: Callable[[list[DiscoveryEvent]], Awaitable[None]], viewport: QWidget,
                profile_second: int = 0) -> None:
    """`seconds` ticks of 1 Hz events delivered and stored, each followed by one timed repaint of `viewport`."""
    loop = asyncio.get_running_loop()
    paints = PaintCounter(viewport)
    watch = phase.watch
    changes = live.changes()  # making the synthetic events is the benchmark's work: done while unwatched
    start = loop.time()
    watch.start()
    try:
        for tick in range(seconds):
            await asyncio.sleep(max(0.0, start + tick - loop.time()))  # the 1 Hz pace, not a wait for anything
            profiler = cProfile.Profile() if profile_second and tick + 1 == profile_second else None
            if profiler is not None:
                profiler.enable()
            await deliver(changes)
            phase.updates += len(changes)
            await asyncio.sleep(SETTLE_S)
            if profiler is not None:
                profiler.disable()
                report_profile(profiler, phase.name, len(changes))
            # The timed repaint and the next second's events are the benchmark's own work: keep them out of
            # the stall figures, and let one beat pass while paused so the next beat's lateness starts after.
            watch.paused = True
            began = time.perf_counter()
            viewport.repaint()
            phase.frames.append(time.perf_counter() - began)
            changes = live.changes()
            await asyncio.sleep(2 * watch.interval)
            watch.paused = False
        await asyncio.sleep(max(0.0, start + seconds - loop.time()))
        phase.seconds = seconds
    finally:
        watch.stop()
        viewport.removeEventFilter(paints)
        phase.paints = paints.count - len(phase.frames)


def report_profile(profiler: cProfile.Profile, name: str, changes: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(18)
    print(f"--- cProfile of one update second ({name}, {changes} device changes) ---", file=sys.stderr)
    print(out.getvalue(), file=sys.stderr)


# -- the reference: a plain QTableWidget ------------------------------------------------------------------


def cells(view: DeviceView) -> list[str]:
    device = view.device
    seen = device.last_seen.astimezone().strftime("%H:%M:%S") if device.last_seen else "never"
    profile = device.profile or ("not probed" if device.probed_at is None else "no match")
    return [STATUS_TEXT[view.status], device.name, device.address, profile, device.facts.arch or "—", "—", "—",
            seen]


class ReferenceTable:
    """The naive table: one QTableWidgetItem per cell, written with setText for each change."""

    def __init__(self, views: Sequence[DeviceView]) -> None:
        self.trusted = {v.id: v.trusted for v in views}
        self.queued: list[DeviceView] = []
        table = QTableWidget(len(views), len(COLUMNS))
        table.setObjectName("ReferenceTable")
        table.setHorizontalHeaderLabels(list(COLUMNS))
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setAlternatingRowColors(True)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setDefaultSectionSize(104)
        table.horizontalHeader().setStretchLastSection(True)
        self.items: dict[int, list[QTableWidgetItem]] = {}
        for row, view in enumerate(views):
            items = [QTableWidgetItem(text) for text in cells(view)]
            items[0].setIcon(status_icon(view.status))
            for column, item in enumerate(items):
                table.setItem(row, column, item)
            self.items[view.id] = items
        table.setSortingEnabled(True)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table = table

    def deliver(self, views: list[DeviceView]) -> None:
        self.table.setSortingEnabled(False)
        for view in views:
            items = self.items[view.id]
            for item, text in zip(items, cells(view), strict=True):
                item.setText(text)
            items[0].setIcon(status_icon(view.status))
        self.table.setSortingEnabled(True)  # sorts once, by the column and order shown

    def on_device(self, device: Device) -> None:
        """A device the recorder stored; a recorder batch's devices are written together, once it has reported
        them all (they come in one loop callback), so sorting is off once per batch."""
        trusted = self.trusted[device.id]
        status = device_status(device, trusted=trusted, busy=False, unreachable=False)
        self.queued.append(DeviceView(device, status, trusted))
        if len(self.queued) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        views, self.queued = self.queued, []
        self.deliver(views)


# -- the run ------------------------------------------------------------------------------------------------


async def bench(window: MainWindow, db_url: str, seconds: int, seed: int, select: bool,
                profile_second: int) -> dict[str, Any]:
    await window.start()
    table = window.fleet_table
    table.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # Status: every change may move its row
    if select:
        window.fleet_pane.select_devices([window.fleet_model.view_at(0).id])  # an operator looking at one device
    await asyncio.sleep(0.3)
    views = window.fleet_model.views()
    count = len(views)

    idle = Phase("idle window", LoopWatch(0.01))
    await drive(idle, IDLE_S, LiveFleet(count, None), nothing, table.viewport())

    # The recorder hands each stored device to the bridge as the window's own browse does
    # (DevicesPart.start_browsing's on_device): the bridge's view changes and the table follows.
    feed = RecorderFeed(window.bridge.fleet, window.bridge.devices.update)
    fleetdesk = Phase("FleetDesk table", LoopWatch(0.01))
    try:
        await drive(fleetdesk, seconds, LiveFleet(count, random.Random(seed)), feed.deliver, table.viewport(),
                    profile_second)
    finally:
        await feed.close()
    viewport = [table.viewport().width(), table.viewport().height()]
    size = table.size()
    # Closed before the reference runs: its timers and repaints are no part of the reference's figures.
    await window.shutdown()

    async with Fleet(open_inventory(db_url), load_profiles()) as fleet:
        # Every device back online, as the window found them, so the same events make the same changes.
        again = RecorderFeed(fleet, lambda _device: None)
        await again.deliver([DiscoveryEvent("seen", sighting(n)) for n in range(count)])
        await again.close()
        trusted = {v.id: v.trusted for v in views}
        start = [DeviceView(d, device_status(d, trusted=trusted[d.id], busy=False, unreachable=False), trusted[d.id])
                 for d in fleet.inventory.devices()]
        reference = ReferenceTable(start)
        reference.table.resize(size)  # the same viewport size: the same frame to paint
        reference.table.show()
        await asyncio.sleep(0.3)
        naive = Phase("QTableWidget reference", LoopWatch(0.01))
        feed = RecorderFeed(fleet, reference.on_device)
        try:
            await drive(naive, seconds, LiveFleet(count, random.Random(seed)), feed.deliver,  # the same events
                        reference.table.viewport(), profile_second)
        finally:
            await feed.close()
            reference.table.close()
            reference.table.deleteLater()

    ours, theirs = fleetdesk.figures(), naive.figures()
    ratio = ours["stall_p99_ms"] / theirs["stall_p99_ms"] if theirs["stall_p99_ms"] else None
    return {
        "benchmark": "gui_fleet",
        "devices": count,
        "seconds": seconds,
        "sorted_by": "Status",
        "selection": "one device" if select else "none",
        "delivery": "discovery recorder over SQLite",
        "viewport": viewport,
        "idle": idle.figures(),
        "fleetdesk": ours,
        "reference": theirs,
        "ratio_stall_p99": round(ratio, 2) if ratio is not None else None,
        "target_stall_p99_ms": TARGET_P99_S * 1000,
        "meets_target": ours["stall_p99_ms"] < TARGET_P99_S * 1000,
        "qt": qVersion(),
        "pyside": PYSIDE_VERSION,
        "platform": os.environ.get("QT_QPA_PLATFORM", ""),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def quiet_offscreen_notes(kind: QtMsgType, _context: object, message: str) -> None:
    """Qt's offscreen plugin says it cannot propagate size hints for every window: true and harmless here."""
    if "propagateSizeHints" not in message:
        print(f"Qt {kind.name}: {message}", file=sys.stderr)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    qInstallMessageHandler(quiet_offscreen_notes)
    # Keep the benchmark's window layout and settings away from the operator's own.
    for name in ("DATA", "CACHE", "CONFIG"):
        os.environ[f"FLEETDESK_{name}_DIR"] = str(workdir / name.lower())
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(workdir / "qsettings"))
    db_url = f"sqlite:///{workdir / 'inventory.db'}"
    fill_inventory(db_url, args.devices, random.Random(args.seed))

    result: dict[str, Any] = run_in_window(db_url, (1280, 800), lambda window: bench(
        window, db_url, args.seconds, args.seed, not args.no_select, args.profile_second))
    return result


def run_in_window(db_url: str, size: tuple[int, int], job: Callable[[Any], Awaitable[Any]]) -> Any:
    """Show the real main window on a qasync loop over `db_url`, run `job(window)` to its end, shut down.

    Shared by the GUI benchmarks (telemetry_dashboard.py imports it)."""
    app = create_app([sys.argv[0]])
    app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    settings = Settings.load(db_url)
    fleet = Fleet(open_inventory(db_url), load_profiles(settings.user_profiles_dir))
    window = build_window(fleet, settings, browse_on_start=False)
    window.resize(*size)
    window.show()
    app.processEvents()  # the first paint (fonts, style polish) happens once, before any measurement

    async def whole() -> Any:
        try:
            return await job(window)
        finally:
            await window.shutdown()

    # As tests/gui_harness.py does: one future, the loop stopped when it is done.
    future = asyncio.ensure_future(whole(), loop=loop)
    future.add_done_callback(lambda _f: loop.stop())
    try:
        loop.run_forever()
        return future.result()
    finally:
        window.deleteLater()
        app.processEvents()
        loop.close()
        asyncio.set_event_loop(None)


def show(result: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return f"{value:8.1f}" if value is not None else "       -"

    print(f"Fleet table, {result['devices']} devices, status changes at 1 Hz for {result['seconds']} s, "
          f"sorted by {result['sorted_by']}, selection: {result['selection']} "
          f"(Qt {result['qt']}, {result['platform']}, {result['cpus']} CPUs)")
    print(f"{'':26}{'stall p50':>10}{'p99':>9}{'max':>9}{'frame p50':>11}{'p99':>9}{'changes/s':>11}"
          f"{'paints/s':>10}   (times in ms)")
    for key, label in (("idle", "idle window (noise)"), ("fleetdesk", "FleetDesk table"),
                       ("reference", "QTableWidget reference")):
        f = result[key]
        print(f"{label:26}{ms(f['stall_p50_ms']):>10}{ms(f['stall_p99_ms']):>9}{ms(f['stall_max_ms']):>9}"
              f"{ms(f['frame_p50_ms']):>11}{ms(f['frame_p99_ms']):>9}{f['updates_per_s']:>11.0f}"
              f"{f['paints_per_s']:>10.1f}")
    ratio = result["ratio_stall_p99"]
    print(f"stall p99, FleetDesk / reference: {ratio if ratio is not None else '-'}x")
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"target stall p99 < {result['target_stall_p99_ms']:.0f} ms: {verdict} "
          f"({result['fleetdesk']['stall_p99_ms']:.1f} ms)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="seconds of updates per table (default 30)")
    parser.add_argument("--devices", type=int, default=500, help="devices in the inventory (default 500)")
    parser.add_argument("--seed", type=int, default=4, help="random seed for which devices change")
    parser.add_argument("--no-select", action="store_true",
                        help="no device selected (by default one is, so the detail pane follows its updates)")
    parser.add_argument("--profile-second", type=int, default=0, metavar="N",
                        help="print a cProfile of update second N of each table to stderr (0 = none)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.seconds < 1 or not 1 <= args.devices <= 40_000:
        parser.error("--seconds must be at least 1 and --devices 1 to 40000")
    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-gui-") as tmp:
        result = run(args, Path(tmp))
    if not args.json:
        show(result)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
