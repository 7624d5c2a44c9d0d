"""Provisioning an x86 and an arm64 lab device (offline), from scratch and then again: bytes sent and seconds.

The reference, in the same run on the same devices: what an operator would do by hand over plain OpenSSH,
`scp -r WHEELHOUSE` then `python3 -m venv` and `pip install --no-index --find-links` (no agent, no selftest,
no supervisor), which sends the whole wheelhouse every time. Needs a running lab and, the first time, the
package index for the wheelhouses (pip's cache afterwards):

    FLEETDESK_LAB_DIR=/tmp/devlab .venv/bin/python benchmarks/provision.py [--x86 ipc-02] [--arm rpi4-01]

Without an OS keyring (for the fleet signing key) it starts a private one, as the tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleetdesk.artifacts.signing import FleetSigningKey  # noqa: E402
from fleetdesk.fleet import Fleet  # noqa: E402
from fleetdesk.inventory import open_inventory  # noqa: E402
from fleetdesk.profiles import load_profiles  # noqa: E402
from fleetdesk.runtime.provision import ProvisionOutcome, provision  # noqa: E402
from fleetdesk.runtime.store import Runtime, RuntimeStore  # noqa: E402
from fleetdesk.runtime.wheelhouse import build_runtime  # noqa: E402
from tests.keyring_daemon import some_keyring  # noqa: E402

ROOT = "/opt/fleetdesk"
REF_DIR = "/tmp/fleetdesk-bench-reference"
PROFILES = load_profiles()


def lab_state() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "lab", "status", "--json"], capture_output=True,
                          text=True, check=True, timeout=120)
    state = json.loads(proc.stdout)
    if not state.get("up"):
        sys.exit("no lab is up: `fleetdesk lab up --devices ipc-x86:1,rpi4:1` first")
    return state


def ssh_argv(state: dict[str, Any], program: str = "ssh") -> list[str]:
    return [program, "-i", state["ssh_key"], "-o", f"UserKnownHostsFile={state['known_hosts']}", "-o",
            "IdentitiesOnly=yes", "-o", "BatchMode=yes"]


def ssh(state: dict[str, Any], address: str, command: str, timeout: float = 1800) -> str:
    proc = subprocess.run([*ssh_argv(state), f"root@{address}", command], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ssh {address} {command[:80]!r} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def wipe(state: dict[str, Any], address: str) -> None:
    ssh(state, address, f"p={ROOT}/run/supervise.pid; if [ -s $p ]; then kill $(cat $p) 2>/dev/null; sleep 1; fi; "
                        f"rm -rf {ROOT} {REF_DIR}")


def reference(state: dict[str, Any], address: str, runtime: Runtime) -> tuple[int, float]:
    """scp the wheelhouse, make a venv, pip install offline: bytes and seconds."""
    started = time.monotonic()
    ssh(state, address, f"rm -rf {REF_DIR} && mkdir -p {REF_DIR}")
    subprocess.run([*ssh_argv(state, "scp"), "-q", "-r", str(runtime.wheels_dir), f"root@{address}:{REF_DIR}/"],
                   check=True, timeout=1800)
    ssh(state, address, f"python3 -m venv {REF_DIR}/venv && {REF_DIR}/venv/bin/pip install -q --no-index "
                        f"--find-links {REF_DIR}/wheels " + " ".join(f"'{r}'" for r in runtime.requirements))
    seconds = time.monotonic() - started
    ssh(state, address, f"rm -rf {REF_DIR}")
    return runtime.size, seconds


async def enrol(db_url: str, state: dict[str, Any], names: list[str]) -> None:
    fleet = Fleet(open_inventory(db_url), PROFILES)
    try:
        for name in names:
            device = next(d for d in state["devices"] if d["name"] == name)
            row = fleet.inventory.add_device(device["address"], name=name)
            await fleet.set_login(row, identity_file=state["ssh_key"])
            fleet.trust_from_known_hosts(row, state["known_hosts"])
        for outcome in await fleet.probe(fleet.select(names)):
            if outcome.error is not None:
                raise SystemExit(f"probe {outcome.device.name}: {outcome.error}")
    finally:
        await fleet.close()


async def provision_run(db_url: str, names: list[str], store: RuntimeStore,
                        key: FleetSigningKey) -> tuple[list[ProvisionOutcome], float]:
    fleet = Fleet(open_inventory(db_url), PROFILES)
    try:
        started = time.monotonic()
        # The benchmark's own fleet key replaces whichever the lab devices trusted before.
        outcomes = await provision(fleet, fleet.select(names), store=store, signing_key=key, replace_fleet_key=True)
        return outcomes, time.monotonic() - started
    finally:
        await fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x86", default="ipc-02", help="an ipc-x86 lab device (default ipc-02)")
    parser.add_argument("--arm", default="rpi4-01", help="an rpi4 lab device (default rpi4-01)")
    args = parser.parse_args()
    state = lab_state()
    devices = {d["name"]: d for d in state["devices"]}
    names = [args.x86, args.arm]
    for name in names:
        if name not in devices:
            sys.exit(f"no lab device {name!r}; the lab has {', '.join(devices)}")

    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-provision-") as tmp:
        folder = Path(tmp)
        store = RuntimeStore(folder / "runtimes")
        runtimes = {}
        for name in names:
            profile = PROFILES.get(devices[name]["profile"])
            started = time.monotonic()
            runtimes[name], _ = asyncio.run(build_runtime(profile, store))
            print(f"wheelhouse for {profile.name}: {runtimes[name].id}, {runtimes[name].size / 1e6:.1f} MB, "
                  f"built in {time.monotonic() - started:.1f} s", flush=True)
        db_url = f"sqlite:///{folder / 'fleetdesk.db'}"
        with some_keyring(folder):
            key = FleetSigningKey(folder / "keys")
            asyncio.run(enrol(db_url, state, names))
            def run(chosen: list[str]) -> tuple[list[ProvisionOutcome], float]:
                outcomes, wall = asyncio.run(provision_run(db_url, chosen, store, key))
                for o in outcomes:
                    if o.error is not None:
                        raise SystemExit(f"provision {o.device}: {o.error}")
                return outcomes, wall

            # One device at a time, as the reference runs; then both at once, as an operator would.
            runs: list[tuple[str, list[ProvisionOutcome]]] = [("from scratch", []), ("again", [])]
            for name in names:
                wipe(state, devices[name]["address"])
                runs[0][1].extend(run([name])[0])
                runs[1][1].extend(run([name])[0])
            for name in names:
                wipe(state, devices[name]["address"])
            fan_out = [("from scratch", run(names)[1]), ("again", run(names)[1])]
            refs = {}
            for name in names:
                wipe(state, devices[name]["address"])
                refs[name] = [reference(state, devices[name]["address"], runtimes[name]) for _ in range(2)]
                wipe(state, devices[name]["address"])  # leave the device as it was found: no FleetDesk on it

    print()
    print(f"{'device':<10} {'arch':<8} {'run':<13} {'FleetDesk MB':>13} {'s':>7}   {'scp+pip MB':>11} {'s':>7}")
    for index, (label, outcomes) in enumerate(runs):
        for o in outcomes:
            ref_bytes, ref_s = refs[o.device][index]
            print(f"{o.device:<10} {devices[o.device]['arch']:<8} {label:<13} {o.bytes_sent / 1e6:>13.2f} "
                  f"{o.seconds:>7.1f}   {ref_bytes / 1e6:>11.2f} {ref_s:>7.1f}")
    for label, wall in fan_out:
        print(f"both devices at once, {label}: {wall:.1f} s wall")
    again = runs[1][1]
    assert all(o.bytes_sent == 0 and not o.changed for o in again), "the second run must send 0 bytes"
    print("second run: 0 bytes sent, nothing changed on either device")


if __name__ == "__main__":
    main()
