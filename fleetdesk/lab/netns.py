"""The lab's network: the bridge fdlab0, one namespace and veth pair per device, netem faults.

Devices get addresses in 198.18.0.0/15 and no default route: they are offline, like the floor.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from pathlib import Path

from fleetdesk.lab.state import BRIDGE, BRIDGE_ADDRESS, NETNS_PREFIX, PREFIX_LEN, VETH_PREFIX
from fleetdesk.lab.system import run

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
    pids = netns_pids(netns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


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


def set_netem(veth: str, netem: str | None) -> None:
    """Shape traffic towards the device (`delay 200ms`, `loss 10%`); None removes the shaping."""
    if netem is None:
        run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
    else:
        run(["tc", "qdisc", "replace", "dev", veth, "root", "netem", *netem.split()], step="netem")
