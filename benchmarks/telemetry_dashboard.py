"""The telemetry dashboard under load: 100 devices streaming 1 Hz telemetry, in the real window, offscreen.

Figures (issue 5): redraw rate (coalesced overview repaints, sparkline cells painted and device-view plot
redraws per second), event-loop stall p50/p99/max from the 10 ms heartbeat the GUI tests use
(`fleetdesk.gui.loopwatch.LoopWatch`; target p99 under 50 ms), CPU time per simulated second, and memory
after warm-up (the first 5 simulated minutes, until the plotted windows are full), as a least-squares slope
and first vs last (target: flat, the ring buffers being bounded: under 5 % of the buffers' size per hour).
Memory is sampled every 20 simulated seconds in two ways: RSS through the main run, and tracemalloc's traced
total through a second stretch of the same stream (`--traced-seconds`, after one more minute of warm-up for
the objects made before tracing began to turn over). tracemalloc is on only there because it slows every
Python allocation about threefold here, which would make the stall and CPU figures its own.

The window is the real `MainWindow` from `build_window`, over a real SQLite inventory of `--devices`
devices (198.18.x.y, nothing is contacted), on its Telemetry tab, with the device view open on one device.
Samples come from `fleetdesk.telemetry.simulate` (made-up numbers on a simulated clock): each simulated
second every device's agent JSON line is parsed and stored in the bridge's own `TelemetryStore` exactly as
the hub's stream reader does (json -> Sample.from_json -> store.add: alerts judged, dashboard marked),
delivered in batches of 10 devices per loop callback spread over the second. The clock runs `--speed`
times faster than real time (10: 600 simulated seconds in about a minute), so the per-wall-second load is
`--speed` times what a real fleet of that size gives; "redraws/s" are per wall second.

Reference, in the same run, with the same simulated data and the same 250 ms coalescing: one pyqtgraph
PlotWidget per device row (CPU, GPU, temperature and latency curves, as the sparklines show them) in a
scroll area of the same size as the overview, the dashboard tab hidden meanwhile. Its duration is
`--reference-seconds` simulated seconds (default 120): per-simulated-second figures compare fairly.
An idle phase first gives the machine's own noise floor for the heartbeat.

    .venv/bin/python benchmarks/telemetry_dashboard.py [--devices 100] [--seconds 600] [--speed 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt loads

import numpy as np
import pyqtgraph as pg
from gui_fleet import run_in_window  # benchmarks/ is the script's folder, so on sys.path
from PySide6 import __version__ as PYSIDE_VERSION
from PySide6.QtCore import QEvent, QObject, QSettings, QTimer, QtMsgType, qInstallMessageHandler, qVersion
from PySide6.QtWidgets import QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from fleetdesk.gui.loopwatch import LoopWatch
from fleetdesk.gui.main_window import MainWindow
from fleetdesk.gui.overview import FLUSH_MS, OVERVIEW_METRICS, SPARK_SECONDS
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Sighting
from fleetdesk.telemetry.buffers import Arrival, TelemetryStore
from fleetdesk.telemetry.simulate import SimulatedFleet, deliver

TARGET_P99_S = 0.050  # the bar for the stall p99
BATCH = 10  # devices whose lines are parsed and stored in one loop callback
# Memory is sampled once the 5-minute windows (sparklines, device view) are full: before that the arrays the
# plots hold grow by design. Flat means under 5 % of the ring buffers' size per hour, projected.
WARMUP_S = int(SPARK_SECONDS)
TRACED_WARMUP_S = 60  # of the traced stretch: objects made before tracing began are replaced by traced ones
MEMORY_EVERY_S = 20  # simulated seconds between memory samples
FLAT_SHARE_PER_HOUR = 0.05
IDLE_S = 3  # wall seconds of an idle window: the heartbeat's noise floor on this machine
PAGE = os.sysconf("SC_PAGE_SIZE")


def traced_mb(watch: LoopWatch) -> float:
    """Python memory traced by tracemalloc, less the heartbeat's own list of stalls (which grows by design)."""
    instrument = sys.getsizeof(watch.stalls) + sum(sys.getsizeof(s) for s in watch.stalls)
    return (tracemalloc.get_traced_memory()[0] - instrument) / 2**20


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def fill_inventory(db_url: str, count: int) -> None:
    """`count` devices as mDNS sightings at lab addresses (198.18.0.0/15: nothing there is contacted)."""
    with open_inventory(db_url) as inventory:
        inventory.record_sightings([
            Sighting("mdns", (f"198.18.{1 + n // 200}.{10 + n % 200}",), host_name=f"edge-{n:03d}.local.",
                     instance_name=f"edge-{n:03d}", service_type="_ssh._tcp.local.") for n in range(count)])


class PaintCounter(QObject):
    """Counts the paint events widgets get (the frames really drawn)."""

    def __init__(self, widgets: Sequence[QWidget]) -> None:
        super().__init__()
        self.count = 0
        self.widgets = list(widgets)
        for widget in self.widgets:
            widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint:
            self.count += 1
        return False

    def close(self) -> None:
        for widget in self.widgets:
            widget.removeEventFilter(self)


@dataclass
class Phase:
    """What one measured phase saw."""

    name: str
    watch: LoopWatch = field(default_factory=lambda: LoopWatch(0.01))
    sim_seconds: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    samples: int = 0
    paints: int = 0
    flushes: int = 0
    cells: int = 0
    plot_redraws: int = 0
    memory: list[tuple[float, float, float]] = field(default_factory=list)  # (sim s, RSS MB, traced MB)

    def figures(self) -> dict[str, Any]:
        ms = 1000.0
        wall = self.wall_s or 1.0
        figures: dict[str, Any] = {
            "stall_p50_ms": round(self.watch.percentile(50) * ms, 2),
            "stall_p99_ms": round(self.watch.percentile(99) * ms, 2),
            "stall_max_ms": round(self.watch.worst * ms, 2),
            "beats": len(self.watch.stalls),
            "simulated_s": self.sim_seconds,
            "wall_s": round(self.wall_s, 1),
            "speed": round(self.sim_seconds / wall, 2) if self.sim_seconds else 0.0,
            "samples_per_wall_s": round(self.samples / wall, 1),
            "paints_per_s": round(self.paints / wall, 1),
            "flushes_per_s": round(self.flushes / wall, 2),
            "cells_per_s": round(self.cells / wall, 1),
            "plot_redraws_per_s": round(self.plot_redraws / wall, 2),
            "cpu_ms_per_sim_s": round(self.cpu_s / self.sim_seconds * ms, 2) if self.sim_seconds else None,
        }
        if len(self.memory) >= 2:
            t, rss, traced = (np.array(c) for c in zip(*self.memory, strict=True))
            per_min = 60.0
            figures["memory"] = {
                "samples": len(self.memory),
                "rss_first_mb": round(float(rss[0]), 1), "rss_last_mb": round(float(rss[-1]), 1),
                "rss_slope_mb_per_sim_min": round(float(np.polyfit(t, rss, 1)[0]) * per_min, 3),
                "traced_first_mb": round(float(traced[0]), 2), "traced_last_mb": round(float(traced[-1]), 2),
                "traced_slope_mb_per_sim_min": round(float(np.polyfit(t, traced, 1)[0]) * per_min, 4),
            }
        return figures


async def stream(phase: Phase, sim: SimulatedFleet, seconds: int, speed: float,
                 counters: Callable[[], tuple[int, int, int]], warmup: int = WARMUP_S) -> None:
    """`seconds` simulated seconds: each device's line parsed and stored, BATCH devices per loop callback."""
    loop = asyncio.get_running_loop()
    store = sim.store
    ids = list(sim.devices)
    interval = 1.0 / speed
    watch = phase.watch
    flushes0, cells0, redraws0 = counters()
    lines = sim.lines()  # making the devices' lines is the devices' work, not the laptop's: done unwatched
    watch.start()
    started, cpu_started = loop.time(), time.process_time()
    try:
        for second in range(seconds):
            due = started + second * interval
            sim.now += sim.interval
            for n in range(0, len(ids), BATCH):
                await asyncio.sleep(max(0.0, due + interval * n / len(ids) - loop.time()))
                for device_id, line in lines[n:n + BATCH]:
                    deliver(store, device_id, line)
                phase.samples += len(lines[n:n + BATCH])
            watch.paused = True  # the next lines and the memory sample are the benchmark's own work
            lines = [(d, sim.devices[d].line(sim.now + sim.interval)) for d in ids]
            if second >= warmup and second % MEMORY_EVERY_S == 0:
                phase.memory.append((float(second), rss_mb(), traced_mb(watch) if tracemalloc.is_tracing() else 0.0))
            await asyncio.sleep(0)
            await asyncio.sleep(2 * watch.interval)  # one beat passes unwatched, as benchmarks/gui_fleet.py does
            watch.paused = False
        await asyncio.sleep(max(0.0, started + seconds * interval - loop.time()))
        await asyncio.sleep(FLUSH_MS / 1000 * 1.5)  # the last coalesced repaint
    finally:
        watch.stop()
    phase.sim_seconds = seconds
    phase.wall_s = loop.time() - started
    phase.cpu_s = time.process_time() - cpu_started
    flushes1, cells1, redraws1 = counters()
    phase.flushes, phase.cells, phase.plot_redraws = flushes1 - flushes0, cells1 - cells0, redraws1 - redraws0


# -- the reference: one PlotWidget per device row ------------------------------------------------------------


class PlotRows:
    """The naive overview: a row per device with a label and one pyqtgraph PlotWidget holding its four curves,
    each row's curves set from its ring buffer when it got samples, on the same 250 ms coalescing."""

    def __init__(self, store: TelemetryStore, names: dict[int, str]) -> None:
        self.store = store
        self.area = QScrollArea()
        self.area.setObjectName("ReferencePlotRows")
        self.area.setWidgetResizable(True)
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.setSpacing(0)
        layout.setContentsMargins(0, 0, 0, 0)
        self.curves: dict[int, list[pg.PlotDataItem]] = {}
        self.plots: list[pg.PlotWidget] = []
        for device_id, name in names.items():
            row = QWidget(inner)
            row_layout = QHBoxLayout(row)
            row_layout.setContentsMargins(2, 0, 2, 0)
            row_layout.addWidget(QLabel(name, row))
            plot = pg.PlotWidget(row)
            plot.setFixedHeight(30)
            plot.hideAxis("left")
            plot.hideAxis("bottom")
            plot.setMouseEnabled(x=False, y=False)
            plot.setMenuEnabled(False)
            plot.hideButtons()
            self.curves[device_id] = [plot.plot([], [], pen=pg.mkPen(c)) for c in
                                      ("#2f6fde", "#d08a00", "#c8372d", "#2e9d50")]
            row_layout.addWidget(plot, 1)
            layout.addWidget(row)
            self.plots.append(plot)
        self.area.setWidget(inner)
        self.dirty: set[int] = set()
        self.flushes = 0
        self.redraws = 0
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(FLUSH_MS)
        self.timer.timeout.connect(self.flush)
        self.unsubscribe = store.subscribe(self.arrived)

    def arrived(self, arrival: Arrival) -> None:
        self.dirty.add(arrival.device_id)
        if not self.timer.isActive():
            self.timer.start()

    def flush(self) -> None:
        self.flushes += 1
        for device_id in self.dirty:
            buffer = self.store.buffer(device_id)
            if buffer is None:
                continue
            last = int(SPARK_SECONDS)
            times = buffer.times(last)
            for curve, metric in zip(self.curves[device_id], OVERVIEW_METRICS, strict=True):
                values = buffer.values(metric, last)
                curve.setData(times, values, connect="finite")
                self.redraws += 1
        self.dirty.clear()

    def close(self) -> None:
        self.unsubscribe()
        self.timer.stop()
        self.area.close()
        self.area.deleteLater()


# -- the run ------------------------------------------------------------------------------------------------


async def bench(window: MainWindow, args: argparse.Namespace) -> dict[str, Any]:
    await window.start()
    dashboard = window.dashboard
    window.tabs.setCurrentWidget(dashboard)
    ids = dashboard.model.device_ids()
    sim = SimulatedFleet(window.bridge.telemetry.store, ids, seed=args.seed)
    dashboard.open_device(ids[0])
    # An operator watching a fleet gives the dashboard the room: the activity list small, the overview
    # about half of the dashboard (some 14 rows of sparklines), the device's plots the rest.
    window.v_splitter.setSizes([880, 120])
    height = sum(dashboard.splitter.sizes())
    dashboard.splitter.setSizes([height * 9 // 20, height * 9 // 20, height // 10])
    await asyncio.sleep(0.3)

    idle = Phase("idle window")
    idle.watch.start()
    await asyncio.sleep(IDLE_S)
    idle.watch.stop()
    idle.wall_s = IDLE_S

    ours = Phase("FleetDesk dashboard")
    paints = PaintCounter([dashboard.table.viewport(), dashboard.plots.graphics.viewport()])
    counters = lambda: (dashboard.model.flushes, dashboard.delegate.painted, dashboard.plots.redraws)  # noqa: E731
    gc.collect()
    await stream(ours, sim, args.seconds, args.speed, counters)
    ours.paints = paints.count
    paints.close()
    buffers_mb = window.bridge.telemetry.store.nbytes() / 2**20

    traced = Phase("FleetDesk dashboard, tracemalloc on")
    if args.traced_seconds:
        tracemalloc.start()
        await stream(traced, sim, args.traced_seconds, args.speed, counters, warmup=TRACED_WARMUP_S)
        tracemalloc.stop()

    # The reference: the dashboard hidden (the Fleet tab shown), the plot rows in a window of the overview's size.
    size = dashboard.table.viewport().size()
    window.tabs.setCurrentIndex(0)
    names = {d: f"edge-{n:03d}" for n, d in enumerate(ids)}
    reference = PlotRows(window.bridge.telemetry.store, names)
    reference.area.resize(size.width(), size.height() + 20)
    reference.area.show()
    await asyncio.sleep(0.5)
    theirs = Phase("PlotWidget per row")
    paints = PaintCounter([p.viewport() for p in reference.plots])
    await stream(theirs, sim, args.reference_seconds, args.speed, lambda: (reference.flushes, 0, reference.redraws))
    theirs.paints = paints.count
    paints.close()
    reference.close()

    a, b = ours.figures(), theirs.figures()
    ratio_stall = a["stall_p99_ms"] / b["stall_p99_ms"] if b["stall_p99_ms"] else None
    ratio_cpu = a["cpu_ms_per_sim_s"] / b["cpu_ms_per_sim_s"] if b["cpu_ms_per_sim_s"] else None
    allowed = buffers_mb * FLAT_SHARE_PER_HOUR / 60  # MB per simulated minute
    rss = a.get("memory", {})
    traced_memory = traced.figures().get("memory", {})
    flat = bool(rss) and rss["rss_slope_mb_per_sim_min"] < allowed \
        and (not traced_memory or traced_memory["traced_slope_mb_per_sim_min"] < allowed)
    return {
        "benchmark": "telemetry_dashboard",
        "devices": len(ids),
        "simulated_seconds": args.seconds,
        "speed": args.speed,
        "viewport": [size.width(), size.height()],
        "device_view": "open on one device",
        "ring_buffers_mb": round(buffers_mb, 1),
        "idle": idle.figures(),
        "fleetdesk": a,
        "reference": b,
        "ratio_stall_p99": round(ratio_stall, 2) if ratio_stall is not None else None,
        "ratio_cpu_per_sim_s": round(ratio_cpu, 3) if ratio_cpu is not None else None,
        "target_stall_p99_ms": TARGET_P99_S * 1000,
        "meets_target": a["stall_p99_ms"] < TARGET_P99_S * 1000,
        "traced": traced.figures() if args.traced_seconds else None,
        "memory_flat": flat,
        "memory_flat_bound_mb_per_sim_min": round(allowed, 3),
        "qt": qVersion(),
        "pyside": PYSIDE_VERSION,
        "pyqtgraph": pg.__version__,
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
    for name in ("DATA", "CACHE", "CONFIG"):
        os.environ[f"FLEETDESK_{name}_DIR"] = str(workdir / name.lower())
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(workdir / "qsettings"))
    db_url = f"sqlite:///{workdir / 'inventory.db'}"
    fill_inventory(db_url, args.devices)

    return run_in_window(db_url, (1600, 1000), lambda window: bench(window, args))


def show(result: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return f"{value:8.1f}" if value is not None else "       -"

    print(f"Telemetry dashboard, {result['devices']} devices at 1 Hz, {result['simulated_seconds']} simulated s "
          f"at {result['speed']}x, device view open (Qt {result['qt']}, pyqtgraph {result['pyqtgraph']}, "
          f"{result['platform']}, {result['cpus']} CPUs)")
    print(f"{'':24}{'stall p50':>10}{'p99':>8}{'max':>8}{'sim s':>7}{'speed':>7}{'paints/s':>9}"
          f"{'flush/s':>8}{'cells/s':>8}{'plots/s':>8}{'CPU ms/sim s':>13}   (times in ms)")
    for key, label in (("idle", "idle window (noise)"), ("fleetdesk", "FleetDesk dashboard"),
                       ("reference", "PlotWidget per row")):
        f = result[key]
        cpu = f["cpu_ms_per_sim_s"]
        print(f"{label:24}{ms(f['stall_p50_ms']):>10}{ms(f['stall_p99_ms']):>8}{ms(f['stall_max_ms']):>8}"
              f"{f['simulated_s']:>7}{f['speed']:>7.1f}{f['paints_per_s']:>9.1f}{f['flushes_per_s']:>8.1f}"
              f"{f['cells_per_s']:>8.0f}{f['plot_redraws_per_s']:>8.1f}{(f'{cpu:.1f}' if cpu else '-'):>13}")
    m = result["fleetdesk"].get("memory")
    if m:
        print(f"RSS after warm-up: {m['rss_first_mb']:.1f} -> {m['rss_last_mb']:.1f} MB, slope "
              f"{m['rss_slope_mb_per_sim_min']:+.3f} MB/sim min ({m['samples']} samples over "
              f"{result['simulated_seconds'] - WARMUP_S} simulated s)")
    t = (result.get("traced") or {}).get("memory")
    if t:
        print(f"tracemalloc, traced Python memory: {t['traced_first_mb']:.2f} -> {t['traced_last_mb']:.2f} MB, slope "
              f"{t['traced_slope_mb_per_sim_min']:+.4f} MB/sim min ({t['samples']} samples over "
              f"{result['traced']['simulated_s'] - TRACED_WARMUP_S} simulated s; RSS {t['rss_first_mb']:.1f} -> "
              f"{t['rss_last_mb']:.1f} MB)")
    print(f"ring buffers: {result['ring_buffers_mb']} MB for {result['devices']} devices (fixed at the first sample); "
          f"flat means a slope under {result['memory_flat_bound_mb_per_sim_min']} MB/sim min (5 % of them an hour)")
    print(f"FleetDesk / reference: stall p99 {result['ratio_stall_p99']}x, CPU per simulated second "
          f"{result['ratio_cpu_per_sim_s']}x")
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"target stall p99 < {result['target_stall_p99_ms']:.0f} ms: {verdict} "
          f"({result['fleetdesk']['stall_p99_ms']:.1f} ms); memory after warm-up: "
          f"{'flat' if result['memory_flat'] else 'NOT FLAT'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100, help="streaming devices (default 100)")
    parser.add_argument("--seconds", type=int, default=600, help="simulated seconds of streaming (default 600)")
    parser.add_argument("--reference-seconds", type=int, default=120,
                        help="simulated seconds for the PlotWidget-per-row reference (default 120)")
    parser.add_argument("--speed", type=float, default=10.0, help="simulated seconds per wall second (default 10)")
    parser.add_argument("--seed", type=int, default=5, help="random seed of the simulated fleet")
    parser.add_argument("--traced-seconds", type=int, default=360,
                        help="simulated seconds more with tracemalloc on, for the traced memory (default 360; 0: none)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.seconds < WARMUP_S + 2 * MEMORY_EVERY_S or args.reference_seconds < 1 or args.speed <= 0 \
            or (args.traced_seconds and args.traced_seconds < TRACED_WARMUP_S + 2 * MEMORY_EVERY_S) \
            or not 1 <= args.devices <= 5000:
        parser.error(f"--seconds must be at least {WARMUP_S + 2 * MEMORY_EVERY_S}, --traced-seconds 0 or at least "
                     f"{TRACED_WARMUP_S + 2 * MEMORY_EVERY_S}, --speed above 0, --devices 1 to 5000")
    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-telemetry-") as tmp:
        result = run(args, Path(tmp))
    if not args.json:
        show(result)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
