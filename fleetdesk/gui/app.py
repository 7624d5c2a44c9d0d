"""`fleetdesk-gui`: the application object, the qasync loop, and the window over one FleetBridge.

`main` opens the inventory (migrating it), builds the bridge and the window, runs them on one
qasync loop, and on quit cancels background work in order before the loop stops.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Sequence

import qasync
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication

from fleetdesk import __version__
from fleetdesk.config import Settings
from fleetdesk.discovery.mdns import local_interfaces
from fleetdesk.errors import FleetDeskError
from fleetdesk.fleet import Fleet
from fleetdesk.models.variants import preload as preload_model_tools

from .activities import Activities
from .bridge import FleetBridge
from .fleet_model import COLUMNS as FLEET_COLUMNS
from .main_window import MainWindow
from .theme import apply_theme

__all__ = ["FLEET_COLUMNS", "SWITCH_INTERVAL", "MainWindow", "build_window", "create_app", "main", "run_window"]

# How long a thread that wants the interpreter lock waits before the holder must let go (CPython's default: 5 ms).
# Every call from Qt into the window's Python code takes the lock back, many per repaint, so while a worker runs
# Python the default makes one repaint wait 5 ms per call (benchmarks/gil_handoff.py: 30 calls took a median 202 ms at
# 5 ms and 35 ms at 0.5 ms, the worker's work unchanged; CI failed on a 169 ms stall of this kind). 0.2 ms
# cut the worker's work by 18 %.
SWITCH_INTERVAL = 0.0005


def create_app(argv: Sequence[str]) -> QApplication:
    sys.setswitchinterval(SWITCH_INTERVAL)
    if QApplication.instance() is None:
        # Fractional scale factors (125 %, 150 %) as the OS says, not rounded: sharp on high-DPI screens.
        QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(list(argv))
    assert isinstance(app, QApplication)
    app.setApplicationName("FleetDesk")
    app.setOrganizationName("FleetDesk")
    app.setApplicationVersion(__version__)
    theme = QSettings("FleetDesk", "FleetDesk").value("main/theme", "light")
    apply_theme(app, theme if theme in ("light", "dark") else "light")
    return app


def interfaces_from_env() -> list[str] | None:
    """FLEETDESK_MDNS_INTERFACES="198.18.0.1,..." pins the cards discovery uses (tests, kiosks)."""
    value = os.environ.get("FLEETDESK_MDNS_INTERFACES", "").strip()
    return [part.strip() for part in value.split(",") if part.strip()] or None


def build_window(fleet: Fleet, settings: Settings, *, browse_on_start: bool = True) -> MainWindow:
    """The window over `fleet`, as `fleetdesk-gui` opens it."""
    pinned = interfaces_from_env()
    # Devices are never behind loopback: offering it would only invite a choice that finds nothing.
    cards = [c for c in local_interfaces() if not c.address.startswith("127.")]
    if pinned is not None:
        # A pin is obeyed as given, loopback included: a test keeps discovery's multicast on 127.0.0.1 with it.
        # Dropping a pinned card would leave none ticked, and none ticked means every card.
        cards = [c for c in local_interfaces() if c.address in pinned]
    # The optimizer's heavy imports happen here, before the loop runs, not in a worker thread while it runs.
    preload_model_tools()
    bridge = FleetBridge(fleet, Activities())
    return MainWindow(bridge, settings.db_url, interfaces=cards, chosen_interfaces=pinned,
                      browse_on_start=browse_on_start)


async def run_window(window: MainWindow) -> None:
    """Show the window and load the inventory; return once the window has shut down."""
    closed = asyncio.Event()
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    # Qt must not stop the loop by itself when the window closes: the coroutine ends it, after
    # background work has been cancelled in order (MainWindow.shutdown).
    app.setQuitOnLastWindowClosed(False)
    app.lastWindowClosed.connect(closed.set)
    window.show()
    await window.start()
    await closed.wait()


def freeze_startup_heap() -> None:
    """Move everything alive now out of the cyclic collector's reach (`gc.freeze`, Python >= 3.7).

    Everything imported by startup (Qt, onnx, onnxruntime, numpy, SQLAlchemy) lives as long as the app. A full
    collection walks every tracked object: with the window's modules loaded (177 000 objects) that took 75-102 ms
    on this 2-core machine, at the window's 100 ms stall bar, and it holds the interpreter lock wherever it is
    triggered (an import optimizing a model in a worker thread, for one). Frozen, later collections walk only
    what came after (0.002 ms right after the freeze).
    """
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.load()
    settings.ensure_dirs()
    try:
        # Opening migrates an older inventory and refuses one from a newer FleetDesk, before any window.
        fleet = Fleet.open(settings.db_url)
    except FleetDeskError as exc:
        print(f"fleetdesk-gui: {exc}", file=sys.stderr)
        return 2
    app = create_app(sys.argv if argv is None else argv)
    window = build_window(fleet, settings)
    freeze_startup_heap()
    # One asyncio loop on the Qt thread (DESIGN.md, runtime model); qasync.run also works on Python 3.11,
    # whose asyncio.run has no loop_factory.
    qasync.run(run_window(window))
    del window, app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
