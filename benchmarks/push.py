"""Push one file to many lab devices at once: FleetDesk against OpenSSH `scp` and Ansible's `copy` module.

Every variant runs --rounds times (at least 3) in rotating order; each figure is the median, with min and max.

- FleetDesk `pool.push` (asyncssh) with its hashing counted: each timed round opens a fresh pool, so its digest
  cache is cold and the round hashes the file as the product does for a file version it has not seen; then an
  unchanged second push (a fresh pool again: hashed again, asked of each device, 0 bytes sent).
- OpenSSH `scp`, one process per device, all at once (what FleetDesk must come close to).
- Ansible's `copy` module (ansible-core, ad hoc), forks = devices: a tool an operator would pick instead;
  first run, then the unchanged second run (which Ansible skips after comparing checksums).
- Informative, no target: FleetDesk over its paramiko transport, and paramiko's `SFTPClient.put` with defaults.

All of them use the same key, the lab's known_hosts (host keys checked) and the profile's ciphers. Then the
resume figure (a push cut at half, resumed) on one device.

    make bench    # or: FLEETDESK_LAB_DIR=/tmp/devlab .venv/bin/python benchmarks/push.py [--devices 20] [--size-mb 100]

Needs a running lab (`fleetdesk lab up`) and ansible-core (`pip install -e '.[bench]'`, as `make bench` does).
Files go to /var/tmp on the devices and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from fleetdesk.errors import TransportError
from fleetdesk.profiles import load_profiles
from fleetdesk.transport import BLOCK_SIZE, SSHPool, SSHTarget, digest_file, shell_join
from fleetdesk.transport.paramiko_transport import _PinnedKeyPolicy  # same trust as the product, for fairness

REMOTE_DIR = "/var/tmp"
ANSIBLE_REMOTE_TMP = f"{REMOTE_DIR}/.fleetdesk-bench-ansible"  # beside the target: Ansible's final move is a rename
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # the only hosts a benchmark may contact (RFC 2544)
MIN_ROUNDS = 3
ANSIBLE_OUTCOME = re.compile(r"^(\S+) \| (CHANGED|SUCCESS|FAILED!|UNREACHABLE!) =>", re.MULTILINE)
# Targets: FleetDesk's throughput against scp's, and how many times faster than Ansible's copy it is.
TARGET_SCP, TARGET_ANSIBLE_FIRST, TARGET_ANSIBLE_UNCHANGED = 0.9, 3.0, 8.0

# Figure names, in the order they are printed.
FD, FD_UNCHANGED = "fleetdesk push (hashing counted)", "fleetdesk push, unchanged"
SCP = "openssh scp"
ANSIBLE, ANSIBLE_UNCHANGED = "ansible copy", "ansible copy, unchanged"
FD_PARAMIKO, PARAMIKO = "fleetdesk paramiko (info)", "paramiko put, defaults (info)"


def lab_state() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "lab", "status", "--json"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"no lab: {proc.stderr.strip()} (set FLEETDESK_LAB_DIR, run `fleetdesk lab up`)")
    state: dict[str, Any] = json.loads(proc.stdout)
    if not state.get("up"):
        sys.exit("no lab is up (set FLEETDESK_LAB_DIR to a lab's folder, or `fleetdesk lab up`)")
    return state


def chosen_devices(state: dict[str, Any], profiles: list[str], count: int) -> list[dict[str, Any]]:
    devices = [d for d in state["devices"] if d["profile"] in profiles][:count]
    if len(devices) < count:
        sys.exit(f"the lab has {len(devices)} {'/'.join(profiles)} devices, {count} asked")
    outside = [d["name"] for d in devices if ipaddress.ip_address(d["address"]) not in LAB_NETWORK]
    if outside:
        sys.exit(f"not lab addresses (outside {LAB_NETWORK}): {outside}")
    return devices


def profile_ciphers(profiles: list[str]) -> tuple[str, ...]:
    """The one cipher order the chosen profiles share (every variant gets the same)."""
    known = load_profiles()
    orders = {known.get(p).ssh_ciphers for p in profiles}
    if len(orders) != 1:
        sys.exit(f"profiles {', '.join(profiles)} prefer different ciphers: benchmark one order at a time")
    return orders.pop()


def pinned(state: dict[str, Any], address: str) -> tuple[str, ...]:
    lines = Path(state["known_hosts"]).read_text().splitlines()
    return tuple(" ".join(p[1:3]) for p in (line.split() for line in lines) if address in p[0].split(","))


def targets_for(state: dict[str, Any], devices: list[dict[str, Any]], transport: str,
                ciphers: tuple[str, ...]) -> list[SSHTarget]:
    return [SSHTarget(device=d["name"], host=d["address"], pinned_host_keys=pinned(state, d["address"]),
                      identity_files=(state["ssh_key"],), ciphers=ciphers, transport=transport, use_agent=False,
                      connect_timeout=60) for d in devices]


def ssh_options(state: dict[str, Any], ciphers: tuple[str, ...]) -> list[str]:
    """The OpenSSH options scp and Ansible share: the lab's key and known_hosts (checked), the profile's ciphers."""
    return ["-o", f"UserKnownHostsFile={state['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", *(["-c", ",".join(ciphers)] if ciphers else [])]


# -- the variants: each returns its timed figures ----------------------------------------------------------


async def fleetdesk_push(targets: list[SSHTarget], source: Path, name: str, *, expect_sent: bool) -> float:
    """Seconds for one push of `source` to every target, hashing included: a fresh pool has a cold digest
    cache, so `pool.push` hashes the file (once, shared by every device) inside the timed span."""
    started = time.monotonic()
    async with SSHPool() as pool:
        results = await asyncio.gather(*(pool.push(t, source, f"{REMOTE_DIR}/{name}") for t in targets))
    elapsed = time.monotonic() - started  # connections closed included, as each scp process closes its own
    if expect_sent:
        assert all(r.bytes_sent == r.size for r in results), "a device already had the file"
    else:
        assert all(r.bytes_sent == 0 for r in results), f"an unchanged push sent bytes: {results}"
    return elapsed


def fleetdesk_rounds(targets: list[SSHTarget], source: Path, name: str, first: str,
                     unchanged: str | None) -> dict[str, float]:
    figures = {first: asyncio.run(fleetdesk_push(targets, source, name, expect_sent=True))}
    if unchanged is not None:
        figures[unchanged] = asyncio.run(fleetdesk_push(targets, source, name, expect_sent=False))
    return figures


def scp_push(state: dict[str, Any], devices: list[dict[str, Any]], source: Path, name: str,
             ciphers: tuple[str, ...]) -> dict[str, float]:
    argv = ["scp", "-q", "-i", state["ssh_key"], *ssh_options(state, ciphers)]
    started = time.monotonic()
    procs = [subprocess.Popen([*argv, str(source), f"root@{d['address']}:{REMOTE_DIR}/{name}"]) for d in devices]
    codes = [p.wait() for p in procs]
    elapsed = time.monotonic() - started
    assert codes == [0] * len(codes), f"scp failed: {codes}"
    return {SCP: elapsed}


def paramiko_default_push(targets: list[SSHTarget], source: Path, name: str) -> dict[str, float]:
    errors: list[BaseException] = []

    def one(target: SSHTarget) -> None:
        try:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_PinnedKeyPolicy(target))
            client.connect(target.host, username="root", key_filename=target.identity_files[0],
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
    return {PARAMIKO: elapsed}


@dataclass
class Ansible:
    """ansible-core's `copy` module run ad hoc over an inventory built from the lab's state.

    Set up as a careful user would for speed, and no less safe than FleetDesk: forks = devices, pipelining on,
    SSH connection sharing (Ansible's default ControlPersist), the profile's ciphers, no `-C` compression (it
    only costs CPU on model files), host keys checked against the lab's known_hosts. Its files (config home,
    local temp, control sockets) stay in `workdir`; its remote temp is a folder in /var/tmp, removed after.
    """

    executable: Path
    workdir: Path
    state: dict[str, Any]
    devices: list[dict[str, Any]]
    ciphers: tuple[str, ...]

    def __post_init__(self) -> None:
        self.inventory = self.workdir / "inventory.json"  # JSON is YAML: the yaml inventory plugin reads it
        hosts = {d["name"]: {"ansible_host": d["address"]} for d in self.devices}
        self.inventory.write_text(json.dumps({"bench": {"hosts": hosts, "vars": {
            "ansible_user": "root", "ansible_ssh_private_key_file": self.state["ssh_key"],
            "ansible_python_interpreter": "/usr/bin/python3"}}}))
        (self.workdir / "ansible.cfg").write_text("# empty: every setting is in the environment (benchmarks/push.py)\n")

    def environment(self, control_dir: Path) -> dict[str, str]:
        ssh_args = ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s", *ssh_options(self.state, self.ciphers)]
        return dict(
            os.environ,
            ANSIBLE_CONFIG=str(self.workdir / "ansible.cfg"),  # no ansible.cfg of this machine's user applies
            ANSIBLE_HOME=str(self.workdir / "home"),
            ANSIBLE_LOCAL_TEMP=str(self.workdir / "local-tmp"),
            ANSIBLE_REMOTE_TMP=ANSIBLE_REMOTE_TMP,
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir),
            ANSIBLE_HOST_KEY_CHECKING="True",
            ANSIBLE_SSH_ARGS=shlex.join(ssh_args),  # Ansible splits it as a shell would
            ANSIBLE_PIPELINING="True",
            ANSIBLE_TIMEOUT="60",
            ANSIBLE_FORKS=str(len(self.devices)),
            ANSIBLE_STDOUT_CALLBACK="minimal",  # ad hoc's own: "HOST | CHANGED => {...}" per host
            ANSIBLE_NOCOLOR="True",
        )

    def copy(self, source: Path, name: str, control_dir: Path, *, expect_changed: bool) -> float:
        argv = [str(self.executable), "bench", "-i", str(self.inventory), "-f", str(len(self.devices)),
                "-m", "ansible.builtin.copy", "-a", f"src={source} dest={REMOTE_DIR}/{name} mode=0644"]
        started = time.monotonic()
        proc = subprocess.run(argv, env=self.environment(control_dir), cwd=self.workdir, capture_output=True,
                              text=True, check=False, timeout=1800)
        elapsed = time.monotonic() - started
        outcomes = dict(ANSIBLE_OUTCOME.findall(proc.stdout))
        bad = {h: o for h, o in outcomes.items() if o not in ("CHANGED", "SUCCESS")}
        if proc.returncode != 0 or bad or sorted(outcomes) != sorted(d["name"] for d in self.devices):
            sys.exit(f"ansible copy failed (exit {proc.returncode}) on {bad or 'some devices'}: "
                     f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        wrong = [h for h, o in outcomes.items() if (o == "CHANGED") != expect_changed]
        assert not wrong, f"ansible copy {'left unchanged' if expect_changed else 'changed'}: {wrong}"
        return elapsed

    def rounds(self, source: Path, name: str, round_no: int) -> dict[str, float]:
        # A control folder per round, its masters closed after: each first run connects afresh, as
        # FleetDesk's does; the unchanged run right after reuses them, as a user's second run would.
        control_dir = self.workdir / f"cp-{round_no}"
        control_dir.mkdir()
        try:
            return {ANSIBLE: self.copy(source, name, control_dir, expect_changed=True),
                    ANSIBLE_UNCHANGED: self.copy(source, name, control_dir, expect_changed=False)}
        finally:
            for socket in control_dir.iterdir():
                subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "lab-device"],
                               capture_output=True, check=False, timeout=30)


def find_ansible() -> Path:
    beside = Path(sys.executable).parent / "ansible"
    found = beside if beside.exists() else shutil.which("ansible")
    if not found:
        sys.exit("ansible-core is not installed: `.venv/bin/pip install -e '.[bench]'` (make bench installs it), "
                 "or pass --no-ansible")
    return Path(found)


# -- housekeeping --------------------------------------------------------------------------------------------


async def remove(targets: list[SSHTarget], *names: str) -> None:
    paths = [f"{REMOTE_DIR}/{n}" for n in names] + [f"{REMOTE_DIR}/.{n}.fleetdesk-partial" for n in names]
    async with SSHPool() as pool:
        fan = await pool.run_many(targets, shell_join(["rm", "-rf", "--", *paths, ANSIBLE_REMOTE_TMP]), timeout=60)
    failed = [o.device for o in fan.outcomes if o.result is None or not o.result.ok]
    if failed:
        print(f"  warning: could not clean {REMOTE_DIR} on {failed}", file=sys.stderr)


async def free_bytes(targets: list[SSHTarget]) -> dict[str, int]:
    cmd = shell_join(["python3", "-c", f"import os;s=os.statvfs({REMOTE_DIR!r});print(s.f_bavail*s.f_frsize)"])
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


# -- the report ----------------------------------------------------------------------------------------------


def spread(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def verdict(value: float, target: float) -> str:
    return "meets" if value >= target else "MISSES"


def report(samples: dict[str, list[float]], total_bytes: int, rounds: int) -> dict[str, Any]:
    print(f"  {'':34} {'median':>8} {'min':>7} {'max':>7}   aggregate at the median ({rounds} rounds)")
    for label in (FD, SCP, ANSIBLE, FD_UNCHANGED, ANSIBLE_UNCHANGED, FD_PARAMIKO, PARAMIKO):
        if label in samples:
            middle, low, high = spread(samples[label])
            rate = "  (0 B sent)" if label in (FD_UNCHANGED, ANSIBLE_UNCHANGED) else \
                f"  {total_bytes / middle / 1e6:7.1f} MB/s"
            print(f"  {label:34} {middle:7.2f}s {low:6.2f}s {high:6.2f}s{rate}")
    med = {label: statistics.median(values) for label, values in samples.items()}
    ratios: dict[str, Any] = {}
    vs_scp = med[SCP] / med[FD]  # throughput ratio: same bytes, so the inverse of the times
    ratios["fleetdesk_vs_scp"] = vs_scp
    print(f"  fleetdesk / scp throughput, hashing counted   {vs_scp:5.2f}x  (target >= {TARGET_SCP}: "
          f"{verdict(vs_scp, TARGET_SCP)})")
    if ANSIBLE in med:
        first, again = med[ANSIBLE] / med[FD], med[ANSIBLE_UNCHANGED] / med[FD_UNCHANGED]
        ratios["fleetdesk_vs_ansible_first"], ratios["fleetdesk_vs_ansible_unchanged"] = first, again
        print(f"  fleetdesk faster than ansible copy, first run {first:5.2f}x  (target >= {TARGET_ANSIBLE_FIRST:g}: "
              f"{verdict(first, TARGET_ANSIBLE_FIRST)})")
        print(f"  fleetdesk faster than ansible copy, unchanged {again:5.2f}x  (target >= "
              f"{TARGET_ANSIBLE_UNCHANGED:g}: {verdict(again, TARGET_ANSIBLE_UNCHANGED)})")
    if PARAMIKO in med:
        ratios["fleetdesk_vs_paramiko_default"] = med[PARAMIKO] / med[FD]
        print(f"  fleetdesk / paramiko put throughput (info)    {med[PARAMIKO] / med[FD]:5.2f}x  (no target)")
    return {"seconds": samples, "medians": med, "ratios": ratios,
            "targets": {"fleetdesk_vs_scp": TARGET_SCP, "fleetdesk_vs_ansible_first": TARGET_ANSIBLE_FIRST,
                        "fleetdesk_vs_ansible_unchanged": TARGET_ANSIBLE_UNCHANGED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--profile", default="ipc-x86",
                        help="device profile(s), comma-separated (they must prefer the same ciphers)")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"rounds per variant (at least {MIN_ROUNDS})")
    parser.add_argument("--no-ansible", action="store_true", help="leave Ansible's copy out (no ansible-core here)")
    parser.add_argument("--no-paramiko", action="store_true", help="leave the informative paramiko lines out")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    if args.rounds < MIN_ROUNDS or args.devices < 1 or args.size_mb < 1:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}, --devices and --size-mb at least 1")
    ansible_exe = None if args.no_ansible else find_ansible()
    profiles = [p.strip() for p in args.profile.split(",") if p.strip()]
    state = lab_state()
    devices = chosen_devices(state, profiles, args.devices)
    ciphers = profile_ciphers(profiles)
    fd_targets = targets_for(state, devices, "asyncssh", ciphers)
    pm_targets = targets_for(state, devices, "paramiko", ciphers)
    size = args.size_mb * 1_000_000
    free = asyncio.run(free_bytes(fd_targets))
    short = {d: f for d, f in free.items() if f < 2 * size}
    if short or len(free) < len(devices):
        sys.exit(f"not enough free space in {REMOTE_DIR} on: {short or 'some devices (no answer)'}")
    total = size * len(devices)
    print(f"push {args.size_mb} MB to {len(devices)} {'/'.join(profiles)} devices at once, ciphers "
          f"{','.join(ciphers) or 'default'}, block {BLOCK_SIZE} B, {args.rounds} rounds in rotating order")
    names = ("bench-fd.bin", "bench-scp.bin", "bench-ans.bin", "bench-pm.bin", "bench-pd.bin", "bench-resume.bin")
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-push-") as folder:
        work = Path(folder)
        source = work / "bench.bin"
        with source.open("wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1_000_000))
        started = time.monotonic()
        digest_file(str(source))
        print(f"  (hashing the file alone, whole and per block, takes {time.monotonic() - started:.2f} s here; "
              "FleetDesk's figures include it)")
        # (file name on the devices, measure(round) -> figures)
        units: list[tuple[str, Callable[[int], dict[str, float]]]] = [
            ("bench-fd.bin", lambda _r: fleetdesk_rounds(fd_targets, source, "bench-fd.bin", FD, FD_UNCHANGED)),
            ("bench-scp.bin", lambda _r: scp_push(state, devices, source, "bench-scp.bin", ciphers)),
        ]
        if ansible_exe is not None:
            (work / "ansible").mkdir()
            ansible = Ansible(ansible_exe, work / "ansible", state, devices, ciphers)
            units.append(("bench-ans.bin", lambda r: ansible.rounds(source, "bench-ans.bin", r)))
        if not args.no_paramiko:
            units.append(("bench-pm.bin",
                          lambda _r: fleetdesk_rounds(pm_targets, source, "bench-pm.bin", FD_PARAMIKO, None)))
            units.append(("bench-pd.bin", lambda _r: paramiko_default_push(pm_targets, source, "bench-pd.bin")))
        try:
            asyncio.run(remove(fd_targets, *names))  # nothing left from an earlier, interrupted run
            for round_no in range(args.rounds):
                shift = round_no % len(units)
                for name, measure in units[shift:] + units[:shift]:
                    for label, seconds in measure(round_no).items():
                        samples.setdefault(label, []).append(seconds)
                    asyncio.run(remove(fd_targets, name))
            done_at_cut, resent, unchanged, rsize = asyncio.run(resume_figures(fd_targets[0], source))
        finally:
            asyncio.run(remove(fd_targets, *names))
    figures = report(samples, total, args.rounds)
    ok = "ok" if resent <= rsize - done_at_cut + BLOCK_SIZE else "MORE THAN ONE BLOCK"
    print(f"  resume: cut at {done_at_cut} of {rsize} B acknowledged, re-sent {resent} B "
          f"(missing {rsize - done_at_cut} B, block {BLOCK_SIZE} B: {ok})")
    print(f"  unchanged file: {unchanged} B sent")
    if args.json:
        figures.update(devices=len(devices), size_bytes=size, rounds=args.rounds, ciphers=list(ciphers),
                       resume={"acknowledged_at_cut": done_at_cut, "resent": resent, "unchanged_sent": unchanged})
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
