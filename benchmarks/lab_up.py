"""How long `fleetdesk lab up` takes from a warm image cache, and the memory the fleet holds.

Brings up 50 x86 devices, then 4 arm64 devices (qemu-user), and, as the reference measured in
the same run, the bare minimum per device: a namespace, a veth and the host's own sshd, with
no root filesystem, identity, mDNS or sensors. Prints the figures and the ratios. Needs root.

    make bench            # or: .venv/bin/python benchmarks/lab_up.py [--x86 50] [--arm64 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetdesk.config import Settings
from fleetdesk.lab import device, fleet, netns, rootfs
from fleetdesk.lab.fleet import LabPaths

TARGET_S = 60.0


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def lab_pss_mib() -> float:
    """Proportional set size of every process inside a lab namespace (shared pages split fairly)."""
    total_kib = 0
    for name in netns.lab_namespaces():
        for pid in netns.netns_pids(name):
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def measure_lab(spec: str, paths: LabPaths) -> dict[str, float]:
    before = mem_available_mib()
    started = time.monotonic()
    state = fleet.up(spec, paths=paths, progress=lambda _m: None)
    elapsed = time.monotonic() - started
    time.sleep(2)  # let sensors and avahi settle before measuring
    result = {
        "devices": len(state.devices),
        "seconds": elapsed,
        "mem_used_mib": before - mem_available_mib(),
        "pss_mib": lab_pss_mib(),
    }
    fleet.down(paths=paths, progress=lambda _m: None)
    return result


def measure_reference(count: int, workdir: Path) -> dict[str, float]:
    """The floor: namespace + veth + the host's sshd per device, nothing else."""
    key = workdir / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    Path("/run/sshd").mkdir(exist_ok=True)
    before = mem_available_mib()
    started = time.monotonic()
    netns.ensure_bridge()
    names = []
    try:
        for i in range(1, count + 1):
            name, veth, address = f"fdlab-ref{i}", f"fdv{i}", netns.device_address(i)
            names.append((name, veth))
            netns.create_device_network(name, veth, address, name)
            subprocess.run(
                ["ip", "netns", "exec", name, "/usr/sbin/sshd", "-o", f"ListenAddress={address}",
                 "-o", f"HostKey={key}", "-o", f"PidFile={workdir}/sshd-{i}.pid", "-o", "UsePAM=no"],
                check=True,
            )
        for i in range(1, count + 1):
            device.wait_for_ssh(netns.device_address(i), device=f"ref{i}")
        elapsed = time.monotonic() - started
        used = before - mem_available_mib()
        pss = lab_pss_mib()
    finally:
        for name, veth in names:
            netns.delete_device_network(name, veth)
        netns.delete_bridge()
    return {"devices": count, "seconds": elapsed, "mem_used_mib": used, "pss_mib": pss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x86", type=int, default=50)
    parser.add_argument("--arm64", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/lab_up.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if netns.lab_namespaces():
        print("a lab is up on this machine; run `fleetdesk lab down` first", file=sys.stderr)
        return 2
    cache = Settings.load().lab_cache_dir
    for arch in ("x86_64", "aarch64"):
        rootfs.ensure_base(cache, arch, progress=lambda m: print(m, file=sys.stderr))  # warm the cache first
    work = Path(tempfile.mkdtemp(prefix="fleetdesk-bench-"))
    try:
        paths = LabPaths(lab_dir=work / "lab", cache_dir=cache)
        arm_spec = f"rpi4:{(args.arm64 + 1) // 2},jetson-orin-nano:{args.arm64 // 2}"
        results = {
            "x86": measure_lab(f"ipc-x86:{args.x86}", paths),
            "arm64": measure_lab(arm_spec, paths),
            "reference_bare_sshd": measure_reference(args.x86, work),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    x86, arm, ref = results["x86"], results["arm64"], results["reference_bare_sshd"]
    results["ratio_x86_vs_reference"] = x86["seconds"] / ref["seconds"]
    results["x86_vs_target"] = x86["seconds"] / TARGET_S
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    header = ("bring-up (warm cache)", "devices", "seconds", "s/device", "MemAvail drop", "PSS")
    print(f"{header[0]:34} {header[1]:>7} {header[2]:>8} {header[3]:>9} {header[4]:>14} {header[5]:>9}")
    for label, r in (("fleetdesk lab up, x86", x86), ("fleetdesk lab up, arm64 (qemu)", arm),
                     ("reference: netns + bare sshd", ref)):
        print(f"{label:34} {r['devices']:7.0f} {r['seconds']:8.1f} {r['seconds'] / r['devices']:9.2f} "
              f"{r['mem_used_mib']:11.0f} MiB {r['pss_mib']:5.0f} MiB")
    print(f"x86 lab up vs reference: {results['ratio_x86_vs_reference']:.1f}x the time of the bare floor")
    print(f"x86 lab up vs target ({TARGET_S:.0f} s for 50): {results['x86_vs_target']:.2f}"
          f" ({'meets' if x86['seconds'] < TARGET_S else 'misses'} the target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
