"""Push throughput to many lab devices at once: FleetDesk (asyncssh and paramiko transports) against OpenSSH
`scp` and plain paramiko `SFTPClient.put`, in the same run; then the resume and unchanged-file figures.

    make bench    # or: FLEETDESK_LAB_DIR=/tmp/devlab .venv/bin/python benchmarks/push.py [--devices 20] [--size-mb 100]

Needs a running lab (`fleetdesk lab up`). Files go to /var/tmp on the devices and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from fleetdesk.errors import TransportError
from fleetdesk.transport import BLOCK_SIZE, SSHPool, SSHTarget, shell_join
from fleetdesk.transport.paramiko_transport import _PinnedKeyPolicy  # same trust as the product, for fairness

ROOT = Path(__file__).resolve().parent.parent
REMOTE_DIR = "/var/tmp"
TARGET_SCP, TARGET_PARAMIKO_DEFAULT = 0.9, 3.0


def lab_state() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "lab", "status", "--json"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"no lab: {proc.stderr.strip()} (set FLEETDESK_LAB_DIR, run `fleetdesk lab up`)")
    return json.loads(proc.stdout)


def pinned(state: dict[str, Any], address: str) -> tuple[str, ...]:
    lines = Path(state["known_hosts"]).read_text().splitlines()
    return tuple(" ".join(p[1:3]) for p in (line.split() for line in lines) if address in p[0].split(","))


def profile_ciphers(profile: str) -> tuple[str, ...]:
    data = tomllib.loads((ROOT / "device_profiles" / f"{profile}.toml").read_text())
    return tuple(data.get("runtime", {}).get("ssh_ciphers", ()) or data.get("ssh_ciphers", ()))


def targets_for(state: dict[str, Any], devices: list[dict[str, Any]], transport: str,
                ciphers: tuple[str, ...]) -> list[SSHTarget]:
    return [SSHTarget(device=d["name"], host=d["address"], pinned_host_keys=pinned(state, d["address"]),
                      identity_files=(state["ssh_key"],), ciphers=ciphers, transport=transport, use_agent=False,
                      connect_timeout=60) for d in devices]


async def fleetdesk_push(targets: list[SSHTarget], source: Path, name: str) -> float:
    async with SSHPool() as pool:
        await pool.digest(source)  # hashed once on the laptop for every device; not part of the transfer
        started = time.monotonic()
        results = await asyncio.gather(*(pool.push(t, source, f"{REMOTE_DIR}/{name}") for t in targets))
        elapsed = time.monotonic() - started
    assert all(r.bytes_sent == r.size for r in results), "a device already had the file"
    return elapsed


def scp_push(state: dict[str, Any], devices: list[dict[str, Any]], source: Path, name: str,
             ciphers: tuple[str, ...]) -> float:
    argv = ["scp", "-q", "-i", state["ssh_key"], "-o", f"UserKnownHostsFile={state['known_hosts']}",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", *(["-c", ",".join(ciphers)] if ciphers else [])]
    started = time.monotonic()
    procs = [subprocess.Popen([*argv, str(source), f"root@{d['address']}:{REMOTE_DIR}/{name}"]) for d in devices]
    codes = [p.wait() for p in procs]
    elapsed = time.monotonic() - started
    assert codes == [0] * len(codes), f"scp failed: {codes}"
    return elapsed


def paramiko_default_push(targets: list[SSHTarget], source: Path, name: str) -> float:
    errors: list[BaseException] = []

    def one(target: SSHTarget) -> None:
        try:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_PinnedKeyPolicy(target))
            client.connect(target.host, username="root", key_filename=list(target.identity_files),
                           look_for_keys=False, allow_agent=False, timeout=60)
            with client, client.open_sftp() as sftp:
                sftp.put(str(source), f"{REMOTE_DIR}/{name}")
        except BaseException as exc:  # reported below: a benchmark must not hide a failed device
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert not errors, errors
    return elapsed


async def remove(targets: list[SSHTarget], *names: str) -> None:
    paths = [f"{REMOTE_DIR}/{n}" for n in names] + [f"{REMOTE_DIR}/.{n}.fleetdesk-partial" for n in names]
    async with SSHPool() as pool:
        await pool.run_many(targets, shell_join(["rm", "-f", "--", *paths]), timeout=60)


async def free_bytes(targets: list[SSHTarget]) -> dict[str, int]:
    cmd = shell_join(["python3", "-c", "import os;s=os.statvfs('/var/tmp');print(s.f_bavail*s.f_frsize)"])
    async with SSHPool() as pool:
        fan = await pool.run_many(targets, cmd, timeout=60)
    return {o.device: int(o.result.stdout) for o in fan.outcomes if o.result is not None and o.result.ok}


async def resume_figures(target: SSHTarget, source: Path) -> tuple[int, int, int, int]:
    """(bytes acknowledged when cut, bytes re-sent on resume, bytes sent for an unchanged file, file size)."""
    size = source.stat().st_size
    cut: list[int] = []
    async with SSHPool() as pool:
        def at_half(done: int, total: int) -> None:
            if done >= total // 2 and not cut:
                cut.append(done)
                pool.abort(target)
        try:
            await pool.push(target, source, f"{REMOTE_DIR}/bench-resume.bin", progress=at_half)
        except TransportError:
            pass
        resumed = await pool.push(target, source, f"{REMOTE_DIR}/bench-resume.bin")
        unchanged = await pool.push(target, source, f"{REMOTE_DIR}/bench-resume.bin")
    return cut[0], resumed.bytes_sent, unchanged.bytes_sent, size


def mbps(total_bytes: int, seconds: float) -> float:
    return total_bytes / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--profile", default="ipc-x86")
    args = parser.parse_args()
    state = lab_state()
    devices = [d for d in state["devices"] if d["profile"] == args.profile][: args.devices]
    if len(devices) < args.devices:
        sys.exit(f"the lab has {len(devices)} {args.profile} devices, {args.devices} asked")
    ciphers = profile_ciphers(args.profile)
    fd_targets = targets_for(state, devices, "asyncssh", ciphers)
    pm_targets = targets_for(state, devices, "paramiko", ciphers)
    size = args.size_mb * 1_000_000
    short = {d: f for d, f in asyncio.run(free_bytes(fd_targets)).items() if f < 2 * size}
    if short or len(asyncio.run(free_bytes(fd_targets))) < len(devices):
        sys.exit(f"not enough free space in {REMOTE_DIR} on: {short or 'some devices (no answer)'}")
    total = size * len(devices)
    print(f"push {args.size_mb} MB to {len(devices)} {args.profile} devices at once, ciphers {','.join(ciphers)}, "
          f"block {BLOCK_SIZE} B")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "bench.bin"
        with source.open("wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1_000_000))
        runs: list[tuple[str, str, Callable[[str], float]]] = [
            ("fleetdesk asyncssh", "bench-fd.bin", lambda n: asyncio.run(fleetdesk_push(fd_targets, source, n))),
            ("openssh scp", "bench-scp.bin", lambda n: scp_push(state, devices, source, n, ciphers)),
            ("fleetdesk paramiko", "bench-pm.bin", lambda n: asyncio.run(fleetdesk_push(pm_targets, source, n))),
            ("paramiko put (defaults)", "bench-pd.bin", lambda n: paramiko_default_push(pm_targets, source, n)),
        ]
        try:
            for label, name, measure in runs:
                seconds = measure(name)
                figures[label] = mbps(total, seconds)
                print(f"  {label:<26} {seconds:7.2f} s  {figures[label]:8.1f} MB/s aggregate")
                asyncio.run(remove(fd_targets, name))
            done_at_cut, resent, unchanged, rsize = asyncio.run(resume_figures(fd_targets[0], source))
        finally:
            asyncio.run(remove(fd_targets, "bench-fd.bin", "bench-scp.bin", "bench-pm.bin", "bench-pd.bin",
                               "bench-resume.bin"))
    a_scp = figures["fleetdesk asyncssh"] / figures["openssh scp"]
    a_pd = figures["fleetdesk asyncssh"] / figures["paramiko put (defaults)"]
    print(f"  ratio asyncssh / scp              {a_scp:5.2f}  (target >= {TARGET_SCP})")
    print(f"  ratio asyncssh / paramiko default {a_pd:5.2f}  (target >= {TARGET_PARAMIKO_DEFAULT})")
    verdict = "ok" if resent <= rsize - done_at_cut + BLOCK_SIZE else "MORE THAN ONE BLOCK"
    print(f"  resume: cut at {done_at_cut} of {rsize} B acknowledged, re-sent {resent} B "
          f"(missing {rsize - done_at_cut} B, block {BLOCK_SIZE} B: {verdict})")
    print(f"  unchanged file: {unchanged} B sent")


if __name__ == "__main__":
    main()
