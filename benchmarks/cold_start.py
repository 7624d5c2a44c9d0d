"""Figures for issue 22 "Installer packages": how long the frozen FleetDesk takes to start against the same commit
started from the venv, in the same run: `fleetdesk-gui` to its main window on a real X server (Xvfb, Qt's xcb
platform), both when the window is mapped (viewable) and when it is first painted (its pixels not blank), and
`fleetdesk --version`.

The frozen bundle is the cached build of these sources (`make dist-offline`, packaging/cached_build.py), unpacked
from its .tar.gz into a temp folder; or --bundle DIR. Each program gets its own fresh data folders (XDG_* in a temp
folder), whose inventory its own CLI creates before the timing, and the same private gnome-keyring (the installer
test's setting). One start of each, not counted, fills the file cache; then several rounds in rotating order
(frozen first in one round, venv first in the next), median. Run it alone: wrap it in
`flock /tmp/fleetdesk-quiet.lock` on a shared host.

Run: .venv/bin/python benchmarks/cold_start.py [--rounds 5] [--bundle DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cached_build import cached_build  # noqa: E402
from tests.gui.x_display import app_window, ask_to_close, grab_screen, missing_tools, xvfb  # noqa: E402
from tests.gui_harness import distinct_colours  # noqa: E402
from tests.keyring_daemon import private_keyring  # noqa: E402

LIMIT_S = 120.0


@dataclass(frozen=True)
class Program:
    name: str  # frozen or venv
    folder: Path  # where its fleetdesk and fleetdesk-gui are
    env: dict[str, str]


@dataclass(frozen=True)
class Start:
    mapped_s: float
    painted_s: float


def unpack_bundle(work: Path) -> Path:
    packaging = cached_build()
    folder = packaging.cached_build(sys.executable, build=False)
    if folder is None:
        raise SystemExit(f"no build of these sources in {packaging.cache_folder(sys.executable)}: "
                         "run `make dist-offline` first, or pass --bundle DIR")
    [tarball] = folder.glob("fleetdesk-*-linux-x86_64.tar.gz")
    with tarfile.open(tarball) as archive:
        archive.extractall(work, filter="tar")
    [bundle] = work.glob("fleetdesk-*")
    return bundle


def start_gui(program: Program, display: str) -> Start:
    """One start of `fleetdesk-gui` until its window is mapped, then painted; then it is asked to close."""
    env = {**program.env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    started = time.monotonic()
    app = subprocess.Popen([str(program.folder / "fleetdesk-gui")], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        window = None
        while window is None:
            if app.poll() is not None:
                raise SystemExit(f"{program.name} fleetdesk-gui exited with {app.returncode}: "
                                 f"{app.stderr.read().decode() if app.stderr else ''}")
            if time.monotonic() - started > LIMIT_S:
                raise SystemExit(f"{program.name} fleetdesk-gui showed no window within {LIMIT_S:.0f} s")
            window = app_window(display, app.pid)
        mapped = time.monotonic() - started
        while distinct_colours(grab_screen(display).copy(window.x, window.y, window.width, window.height)) < 16:
            if time.monotonic() - started > LIMIT_S:
                raise SystemExit(f"{program.name} fleetdesk-gui's window stayed blank for {LIMIT_S:.0f} s")
        painted = time.monotonic() - started
        ask_to_close(display, window)
        app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    return Start(mapped, painted)


def time_version(program: Program) -> float:
    started = time.monotonic()
    subprocess.run([str(program.folder / "fleetdesk"), "--version"], env=program.env, check=True,
                   capture_output=True, timeout=120)
    return time.monotonic() - started


def fresh_env(base: Path, bus: str) -> dict[str, str]:
    """Data, config, cache and state folders of a laptop that never ran FleetDesk; nothing of this shell's."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(base / "home"), "DBUS_SESSION_BUS_ADDRESS": bus,
           "FLEETDESK_MDNS_INTERFACES": "127.0.0.1"}
    for name in ("DATA", "CONFIG", "CACHE", "STATE"):
        env[f"XDG_{name}_HOME"] = str(base / name.lower())
    runtime = base / "runtime"
    runtime.mkdir(parents=True, mode=0o700)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    (base / "home").mkdir()
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bundle", type=Path, help="a frozen bundle's folder (default: the cached build's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        raise SystemExit(f"no real X display here: {', '.join(missing)} missing (scripts/system-deps.sh test)")

    with tempfile.TemporaryDirectory(prefix="fleetdesk-cold-start-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or unpack_bundle(work / "bundle")
        with private_keyring(work / "keyring") as keyring, xvfb(work / "xvfb.log") as display:
            programs = [Program("frozen", bundle, fresh_env(work / "frozen", keyring.bus_address)),
                        Program("venv", Path(sys.executable).parent, fresh_env(work / "venv", keyring.bus_address))]
            for program in programs:
                # Its inventory created (not timed), and one start that fills the file cache.
                subprocess.run([str(program.folder / "fleetdesk"), "devices", "--json"], env=program.env,
                               check=True, capture_output=True, timeout=300)
                start_gui(program, display)
                time_version(program)
            starts: dict[str, list[Start]] = {p.name: [] for p in programs}
            versions: dict[str, list[float]] = {p.name: [] for p in programs}
            for round_ in range(args.rounds):
                order = programs if round_ % 2 == 0 else programs[::-1]
                for program in order:
                    starts[program.name].append(start_gui(program, display))
                    versions[program.name].append(time_version(program))

    figures: dict[str, float] = {}
    for name in ("frozen", "venv"):
        figures[f"{name}_mapped_s"] = statistics.median(s.mapped_s for s in starts[name])
        figures[f"{name}_painted_s"] = statistics.median(s.painted_s for s in starts[name])
        figures[f"{name}_version_s"] = statistics.median(versions[name])
    for what in ("mapped", "painted", "version"):
        figures[f"{what}_ratio"] = figures[f"frozen_{what}_s"] / figures[f"venv_{what}_s"]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "bundle": str(bundle), **figures}, indent=2))
        return 0
    print(f"frozen bundle {bundle} against the venv {sys.executable}, {args.rounds} rounds, median "
          f"(on {os.cpu_count()} cores)")
    for what, label in (("mapped", "fleetdesk-gui: main window mapped"),
                        ("painted", "fleetdesk-gui: main window painted"),
                        ("version", "fleetdesk --version")):
        print(f"{label:36s} frozen {figures[f'frozen_{what}_s']:6.2f} s   venv {figures[f'venv_{what}_s']:6.2f} s"
              f"   frozen/venv {figures[f'{what}_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
