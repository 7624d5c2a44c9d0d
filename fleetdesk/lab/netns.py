"""The lab's network: the bridge fdlab0, one namespace and veth pair per device, link
faults and traffic shaping.

Devices get addresses in 198.18.0.0/15 and no default route: they are offline, like the floor.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleetdesk.errors import LabError
from fleetdesk.lab.state import BRIDGE, BRIDGE_ADDRESS, NETNS_PREFIX, PREFIX_LEN, VETH_PREFIX
from fleetdesk.lab.system import package_env, run, stop_processes

LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")
_FIRST_DEVICE = ipaddress.ip_address("198.18.1.0")


def device_address(index: int) -> str:
    """The address of device number `index` (1-based): 198.18.1.1, 198.18.1.2, ..."""
    address = _FIRST_DEVICE + index
    if address not in ipaddress.ip_network(f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", strict=False):
        raise ValueError(f"device index {index} is outside the lab network")
    return str(address)


def ensure_bridge() -> None:
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        return
    run(["ip", "link", "add", BRIDGE, "type", "bridge"], step="create bridge")
    run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE], step="address bridge")
    # No STP forwarding delay: a new port forwards at once.
    run(["ip", "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0"], check=False)
    run(["ip", "link", "set", BRIDGE, "up"], step="bring bridge up")


def delete_bridge() -> None:
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "link", "del", BRIDGE], check=False)


def create_device_network(netns: str, veth: str, address: str, device: str) -> None:
    """A namespace with `eth0` on the bridge at `address`, loopback up, and no route out."""
    run(["ip", "netns", "add", netns], step="create namespace", device=device)
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns],
        step="create veth", device=device)
    run(["ip", "link", "set", veth, "master", BRIDGE, "up"], step="attach veth", device=device)
    batch = "\n".join(
        [
            f"addr add {address}/{PREFIX_LEN} dev eth0",
            "link set eth0 up",
            "link set lo up",
        ]
    )
    run(["ip", "-n", netns, "-batch", "-"], input=batch.encode(), step="configure eth0", device=device)


def netns_pids(netns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def kill_netns_processes(netns: str, grace: float = 2.0) -> None:
    """SIGTERM everything running in the namespace, then SIGKILL what is left after `grace`."""
    stop_processes(netns_pids(netns), grace=grace)


def delete_device_network(netns: str, veth: str) -> None:
    kill_netns_processes(netns)
    if veth and Path(f"/sys/class/net/{veth}").exists():
        run(["ip", "link", "del", veth], check=False)
    if Path(f"/run/netns/{netns}").exists():
        run(["ip", "netns", "del", netns], check=False)


def lab_namespaces() -> list[str]:
    """Every namespace the lab made, including ones a crashed `up` left behind."""
    folder = Path("/run/netns")
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(NETNS_PREFIX))


def lab_veths() -> list[str]:
    return sorted(
        p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(VETH_PREFIX) and p.name[3:].isdigit()
    )


def set_link(veth: str, up: bool) -> None:
    run(["ip", "link", "set", veth, "up" if up else "down"], step="cut" if not up else "restore")


SHAPING_CHAIN = "FDLAB"


def _iptables(*args: str, check: bool = True) -> int:
    return run(["iptables", "-w", "5", "-t", "mangle", *args], check=check, step="traffic shaping").returncode


def shaper_pid_path(device_dir: Path) -> Path:
    return device_dir / "shaper.pid"


def set_shaping(device_dir: Path, queue: int, address: str, delay_ms: float, loss_pct: float) -> None:
    """Delay and drop traffic towards the device at `address`; both 0 removes the shaping.

    The kernel here has no netem, so an NFQUEUE rule hands the packets to fleetdesk.lab.shaper.
    """
    clear_shaping(device_dir, queue, address)
    if not delay_ms and not loss_pct:
        return
    if _iptables("-n", "-L", SHAPING_CHAIN, check=False) != 0:
        _iptables("-N", SHAPING_CHAIN)
    if _iptables("-C", "OUTPUT", "-j", SHAPING_CHAIN, check=False) != 0:
        _iptables("-I", "OUTPUT", "-j", SHAPING_CHAIN)
    log = open(device_dir / "shaper.log", "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetdesk.lab.shaper", "--queue", str(queue), "--delay-ms", f"{delay_ms:g}",
             "--loss-pct", f"{loss_pct:g}", "--lab-dir", str(device_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=package_env(),
        )
    finally:
        log.close()
    shaper_pid_path(device_dir).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while not _queue_bound(queue):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the traffic shaper did not start; see {device_dir / 'shaper.log'}", step="shaping")
        time.sleep(0.02)
    # --queue-bypass: should the shaper die, packets flow unshaped instead of vanishing.
    _iptables("-A", SHAPING_CHAIN, "-d", address, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass")


def _queue_bound(queue: int) -> bool:
    try:
        text = Path("/proc/net/netfilter/nfnetlink_queue").read_text()
    except FileNotFoundError:
        return False
    return any(line.split()[0] == str(queue) for line in text.splitlines() if line.strip())


def clear_shaping(device_dir: Path, queue: int, address: str) -> None:
    rule = ("-d", address, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass")
    while shutil.which("iptables") and _iptables("-D", SHAPING_CHAIN, *rule, check=False) == 0:
        pass
    _kill_pid_file(shaper_pid_path(device_dir))


def _kill_pid_file(path: Path) -> None:
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return
    stop_processes([pid])
    path.unlink(missing_ok=True)


def remove_shaping_chain() -> None:
    """Drop the lab's shaping chain and stop every shaper, including ones a crash left behind."""
    if shutil.which("iptables") and _iptables("-n", "-L", SHAPING_CHAIN, check=False) == 0:
        while _iptables("-D", "OUTPUT", "-j", SHAPING_CHAIN, check=False) == 0:
            pass
        _iptables("-F", SHAPING_CHAIN, check=False)
        _iptables("-X", SHAPING_CHAIN, check=False)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"fleetdesk.lab.shaper" in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
