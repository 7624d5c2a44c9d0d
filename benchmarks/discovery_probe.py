"""Discovery and probing at fleet scale, each against a reference measured in the same run.

1. Discovery: seconds from starting to browse until 50 given lab devices (and then every device) are
   rows in a fresh inventory. Reference: python-zeroconf's own browser resolving the same
   _ssh._tcp services with no inventory behind it. The two take turns at going first, each browse
   starting at least 1 s after the last one ended (a responder answers a record at most once a
   second, RFC 6762 §6: the second of two close browses would wait for the first's answers).
2. Probe: connect, authenticate and probe 100 lab devices (target under 5 s). Reference: 100 OpenSSH
   `ssh` processes at once running the same probe command.

Brings up its own lab of ipc-x86 devices (root), then with --with-push runs benchmarks/push.py on it
before taking it down.

    make bench        # or: .venv/bin/python benchmarks/discovery_probe.py [--devices 100] [--with-push]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from fleetdesk.discovery.mdns import MdnsBrowser
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import Device, open_inventory
from fleetdesk.probe import probe_command
from fleetdesk.profiles import load_profiles

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = "198.18.0.1"
DISCOVER_TARGET_S, PROBE_TARGET_S = 2.0, 5.0
ROUNDS = 3
DISCOVERY_ROUNDS = 4  # even: each browser goes first as often as the other
BROWSE_GAP_S = 1.0  # RFC 6762 §6: a responder multicasts a record at most once a second


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetdesk", *args], capture_output=True, text=True, env=env,
                          check=False, timeout=1800)


async def fleetdesk_discovery(workdir: Path, wanted: set[str], everyone: set[str]) -> tuple[float, float]:
    """Seconds until `wanted` addresses, then `everyone`, are inventory rows (fresh SQLite each time)."""
    db = workdir / f"discover-{time.monotonic_ns()}.db"
    fleet = Fleet(open_inventory(f"sqlite:///{db}"), load_profiles())
    seen: set[str] = set()
    done = asyncio.Event()
    marks: dict[str, float] = {}
    start = time.perf_counter()

    def on_device(device: Device) -> None:
        seen.update(device.addresses)
        if "wanted" not in marks and wanted <= seen:
            marks["wanted"] = time.perf_counter() - start
        if everyone <= seen and "everyone" not in marks:
            marks["everyone"] = time.perf_counter() - start
            done.set()

    recorder = fleet.recorder(on_device)
    browser = MdnsBrowser([BRIDGE], on_event=recorder.push)
    await browser.start()
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await browser.stop()
        await recorder.close()
        await fleet.close()
    return marks["wanted"], marks["everyone"]


async def zeroconf_discovery(wanted: set[str], everyone: set[str]) -> tuple[float, float]:
    """The reference: python-zeroconf's browser and resolver for _ssh._tcp, nothing stored."""
    azc = AsyncZeroconf(interfaces=[BRIDGE], ip_version=IPVersion.V4Only)
    seen: set[str] = set()
    done = asyncio.Event()
    marks: dict[str, float] = {}
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def resolve(service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if await info.async_request(azc.zeroconf, 3000):
            seen.update(info.parsed_addresses())
            if "wanted" not in marks and wanted <= seen:
                marks["wanted"] = time.perf_counter() - start
            if everyone <= seen:
                marks["everyone"] = time.perf_counter() - start
                done.set()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            task = asyncio.ensure_future(resolve(service_type, name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, ["_ssh._tcp.local."], handlers=[on_change])
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await browser.async_cancel()
        for task in list(tasks):
            task.cancel()
        await azc.async_close()
    return marks["wanted"], marks["everyone"]


def ssh_config(workdir: Path, key: str) -> Path:
    path = workdir / "ssh_config"
    path.write_text(f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n")
    return path


async def fleetdesk_probe(workdir: Path, state: dict[str, Any]) -> tuple[float, int]:
    """Seconds to connect, authenticate and probe every device (keys pinned beforehand, not timed)."""
    db = workdir / "probe.db"
    if not db.exists():
        fleet = Fleet(open_inventory(f"sqlite:///{db}"), load_profiles(), ssh_config=ssh_config(workdir,
                                                                                                state["ssh_key"]))
        for lab_device in state["devices"]:
            device = fleet.inventory.add_device(lab_device["address"], name=lab_device["name"])
            fleet.trust_from_known_hosts(device, state["known_hosts"])
        await fleet.close()
    fleet = Fleet(open_inventory(f"sqlite:///{db}"), load_profiles(), ssh_config=workdir / "ssh_config")
    devices = fleet.inventory.devices()
    start = time.perf_counter()
    outcomes = await fleet.probe(devices)
    seconds = time.perf_counter() - start
    await fleet.close()
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        print(f"  {len(failed)} probe(s) failed, e.g. {failed[0].device.name}: {failed[0].error}")
    return seconds, len(outcomes) - len(failed)


def openssh_probe(state: dict[str, Any]) -> tuple[float, int]:
    """The reference: one OpenSSH client process per device, all at once, running the same probe."""
    command = probe_command("bench")
    start = time.perf_counter()
    procs = [subprocess.Popen(["ssh", "-i", state["ssh_key"], "-o", f"UserKnownHostsFile={state['known_hosts']}",
                               "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=60",
                               "-F", "none", f"root@{d['address']}", command],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for d in state["devices"]]
    ok = sum(1 for p in procs if p.communicate()[0] and p.returncode == 0)
    return time.perf_counter() - start, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100, help="lab size (the probe uses all of them)")
    parser.add_argument("--discover", type=int, default=50, help="devices whose arrival is timed")
    parser.add_argument("--with-push", action="store_true", help="also run benchmarks/push.py on this lab")
    parser.add_argument("--lab", metavar="DIR", help="use the x86 devices of a lab already up there (no up/down)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fleetdesk-bench-"))
    env = dict(os.environ, FLEETDESK_LAB_DIR=args.lab or str(workdir / "lab"),
               FLEETDESK_DATA_DIR=str(workdir / "data"))
    os.environ.update(FLEETDESK_LAB_DIR=env["FLEETDESK_LAB_DIR"], FLEETDESK_DATA_DIR=env["FLEETDESK_DATA_DIR"])
    if args.lab:
        up = cli("lab", "status", "--json", env=env)
    else:
        up = cli("lab", "up", "--devices", f"ipc-x86:{args.devices}", "--json", env=env)
    if up.returncode != 0:
        sys.exit(f"lab up failed: {up.stderr.strip()}")
    try:
        state = json.loads(up.stdout)
        state["devices"] = [d for d in state["devices"] if d["arch"] == "x86_64"][:args.devices]
        args.devices = len(state["devices"])
        args.discover = min(args.discover, args.devices)
        addresses = [d["address"] for d in state["devices"]]
        wanted, everyone = set(addresses[:args.discover]), set(addresses)
        time.sleep(2)  # let every avahi-daemon finish announcing before anyone browses

        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        browsers = [(ours, functools.partial(fleetdesk_discovery, workdir, wanted, everyone)),
                    (theirs, functools.partial(zeroconf_discovery, wanted, everyone))]
        last_ended = 0.0
        for round_no in range(DISCOVERY_ROUNDS):
            for results, browse in browsers if round_no % 2 == 0 else browsers[::-1]:
                # The gap is the protocol's, not a wait for something to happen: no answer is pending then.
                time.sleep(max(0.0, last_ended + BROWSE_GAP_S - time.monotonic()))
                results.append(asyncio.run(browse()))
                last_ended = time.monotonic()
        fd_w, fd_all = statistics.median(w for w, _ in ours), statistics.median(a for _, a in ours)
        zc_w, zc_all = statistics.median(w for w, _ in theirs), statistics.median(a for _, a in theirs)
        print(f"discovery of {args.discover} lab devices into the inventory (median of {DISCOVERY_ROUNDS}, "
              f"taking turns at going first, >= {BROWSE_GAP_S:g} s apart): {fd_w:.2f} s "
              f"(target < {DISCOVER_TARGET_S:g} s); all {args.devices}: {fd_all:.2f} s")
        print(f"  reference python-zeroconf browse+resolve, nothing stored: {zc_w:.2f} s; all: {zc_all:.2f} s; "
              f"ratio FleetDesk/reference {fd_w / zc_w:.2f}")

        fd_probe, fd_ok = asyncio.run(fleetdesk_probe(workdir, state))  # first run pins the keys, untimed part
        fd_times = [fd_probe]
        for _ in range(ROUNDS - 1):
            seconds, fd_ok = asyncio.run(fleetdesk_probe(workdir, state))
            fd_times.append(seconds)
        ssh_times, ssh_ok = [], 0
        for _ in range(ROUNDS):
            seconds, ssh_ok = openssh_probe(state)
            ssh_times.append(seconds)
        fd_med, ssh_med = statistics.median(fd_times), statistics.median(ssh_times)
        print(f"connect+authenticate+probe {args.devices} devices (median of {ROUNDS}): {fd_med:.2f} s, "
              f"{fd_ok} ok (target < {PROBE_TARGET_S:g} s)")
        print(f"  reference {args.devices} OpenSSH ssh processes at once: {ssh_med:.2f} s, {ssh_ok} ok; "
              f"ratio OpenSSH/FleetDesk {ssh_med / fd_med:.2f} (above 1 = FleetDesk faster)")

        if args.with_push:
            push = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "push.py")], env=env, check=False)
            if push.returncode != 0:
                print("push benchmark failed", file=sys.stderr)
    finally:
        if not args.lab:
            cli("lab", "down", env=env)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from tests.keyring_daemon import some_keyring

    # A probe that finds a device's profile is audited, signed with the operator's key from the OS keyring.
    with some_keyring(Path(tempfile.mkdtemp(prefix="fleetdesk-bench-keyring-"))):
        main()
