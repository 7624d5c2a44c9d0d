"""Faults on demand: each does what it says, and `restore` undoes it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import asyncssh
import pytest

from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab


@pytest.fixture
def victim(fleet: Fleet) -> Iterator[dict]:
    """The second x86 device, restored after each test whatever the test did."""
    dev = fleet.device("ipc-02")
    yield dev
    fleet.fault(dev["name"], "restore")
    assert fleet.refresh() and fleet.device(dev["name"])["faults"] == {}


def banner(address: str, timeout: float = 3.0) -> bytes:
    with socket.create_connection((address, 22), timeout=timeout) as sock:
        sock.settimeout(timeout)
        return sock.recv(64)


def test_cut_makes_the_device_unreachable_and_restore_brings_it_back(fleet: Fleet, victim: dict) -> None:
    assert banner(victim["address"]).startswith(b"SSH-2.0-OpenSSH")
    fleet.fault(victim["name"], "cut")
    assert fleet.refresh() and fleet.device(victim["name"])["faults"] == {"cut": True}
    with pytest.raises(OSError):
        banner(victim["address"], timeout=2.0)
    fleet.fault(victim["name"], "restore")
    assert banner(victim["address"]).startswith(b"SSH-2.0-OpenSSH")


def test_delay_adds_at_least_that_much_to_a_round_trip(fleet: Fleet, victim: dict) -> None:
    fleet.fault(victim["name"], "delay", "400")
    started = time.monotonic()
    banner(victim["address"], timeout=10)
    # A lower bound only: netem cannot deliver early, however busy the machine is.
    assert time.monotonic() - started >= 0.4
    fleet.refresh()
    assert fleet.device(victim["name"])["faults"]["delay_ms"] == 400


def test_total_loss_drops_everything_and_restore_undoes_it(fleet: Fleet, victim: dict) -> None:
    fleet.fault(victim["name"], "loss", "100")
    with pytest.raises(OSError):
        banner(victim["address"], timeout=2.0)
    fleet.fault(victim["name"], "restore")
    assert banner(victim["address"]).startswith(b"SSH-")


def test_stop_ssh_refuses_connections_and_start_ssh_serves_again(fleet: Fleet, victim: dict) -> None:
    fleet.fault(victim["name"], "stop-ssh")
    with pytest.raises(ConnectionRefusedError):
        banner(victim["address"])
    fleet.fault(victim["name"], "start-ssh")
    assert fleet.ssh(victim, "hostname").stdout.strip() == victim["name"]


def test_reboot_restarts_the_device_with_a_fresh_uptime_and_keeps_its_disk(fleet: Fleet, victim: dict) -> None:
    fleet.ssh(victim, "echo kept > /root/survives-reboot")
    before = float(fleet.ssh(victim, "cut -d' ' -f1 /proc/uptime").stdout)
    time.sleep(1.5)
    fleet.fault(victim["name"], "reboot", "1")
    after = fleet.ssh(victim, "cut -d' ' -f1 /proc/uptime; hostname; cat /root/survives-reboot").stdout.split()
    assert float(after[0]) < before + 1.5
    assert after[1:] == [victim["name"], "kept"]


def test_fill_disk_makes_writes_fail_and_free_disk_makes_them_work(fleet: Fleet, victim: dict) -> None:
    fleet.fault(victim["name"], "fill-disk")
    full = fleet.ssh(victim, "dd if=/dev/zero of=/root/big bs=64k count=64 2>&1; df -k / | tail -1")
    assert "No space left on device" in full.stdout
    assert full.stdout.split()[-3] == "0"  # df's Available column
    uptime = "cat /proc/uptime"
    before = fleet.ssh(victim, uptime).stdout
    time.sleep(2.5)  # the sensors tick (1 s) meets the full disk: the device must live through it
    fleet.fault(victim["name"], "free-disk")
    ok = fleet.ssh(victim, "rm -f /root/big; dd if=/dev/zero of=/root/big bs=64k count=64 && rm /root/big")
    assert ok.exit_status == 0, ok.stderr
    time.sleep(1.5)
    assert fleet.ssh(victim, uptime).stdout != before  # the init still keeps the sensors moving


def test_rekey_replaces_the_host_key_as_a_reflashed_device_would(fleet: Fleet, victim: dict, tmp_path) -> None:
    old_known_hosts = tmp_path / "known_hosts.before"
    old_known_hosts.write_text(open(fleet.state["known_hosts"]).read())
    old_fingerprint = fleet.device(victim["name"])["host_key_fingerprint"]
    fleet.fault(victim["name"], "rekey")
    fleet.refresh()
    assert fleet.device(victim["name"])["host_key_fingerprint"] != old_fingerprint
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(_connect_only(fleet, victim, str(old_known_hosts)))
    # The lab's own known_hosts follows the device.
    assert fleet.ssh(victim, "hostname").stdout.strip() == victim["name"]


async def _connect_only(fleet: Fleet, dev: dict, known_hosts: str) -> None:
    async with await fleet.connect(dev, known_hosts=known_hosts):
        pass


def test_a_fault_for_an_unknown_device_names_the_lab_devices(fleet: Fleet) -> None:
    from tests.lab.conftest import fleetdesk

    proc = fleetdesk("lab", "fault", "no-such-device", "cut", env=fleet.env)
    assert proc.returncode == 2
    assert "no lab device named 'no-such-device'" in proc.stderr and "ipc-01" in proc.stderr
