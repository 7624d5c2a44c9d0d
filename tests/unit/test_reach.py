"""The device handle: Fleet.reach(device), its one rule for the device root, its cache and its async accessor."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import Device, ProbeFacts
from fleetdesk.inventory.runtimes import DeviceRuntime, DeviceRuntimes
from fleetdesk.profiles import ProfileSet, load_profiles
from fleetdesk.reach import DEFAULT_ROOT, DeviceLayout, device_root

AN_HOUR_AGO = time.time() - 3600


def settle(*paths: Path, at: float = AN_HOUR_AGO) -> None:
    """Date files (and folders) back, as an operator's config edited a while ago: a stamp of them is trusted."""
    for path in paths:
        os.utime(path, (at, at))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ssh = tmp_path / "ssh"  # the config in a folder of its own: the database's journal comes and goes elsewhere
    ssh.mkdir()
    config = ssh / "config"
    config.write_text("Host line2-*\n  User pi\n  Port 2222\n")
    settle(config, ssh)
    fleet = Fleet(open_inventory(f"sqlite:///{tmp_path / 'fleet.db'}"), load_profiles(), ssh_config=config)
    yield fleet
    fleet.inventory.close()


def probed(fleet: Fleet, address: str, name: str, profile: str | None) -> Device:
    device = fleet.inventory.add_device(address, name=name)
    return fleet.inventory.save_probe(device.id, ProbeFacts(arch="aarch64"), profile=profile)


def record_runtime(fleet: Fleet, device: Device, root: str) -> None:
    DeviceRuntimes(fleet.inventory).record(device.id, runtime_id="r1", agent_version="a1", device_root=root,
                                           onnxruntime="1.31.1", providers=["CPUExecutionProvider"], python="3.11")


def with_device_root(fleet: Fleet, profile: str, root: str) -> None:
    """The operator edits a profile's device_root (the fleet's profiles are loaded again)."""
    profiles = dict(fleet.profiles.profiles)
    profiles[profile] = dataclasses.replace(profiles[profile], device_root=root)
    fleet.profiles = ProfileSet(profiles)


def test_the_root_is_what_provisioning_recorded_then_the_profiles_then_the_default(fleet: Fleet) -> None:
    provisioned = probed(fleet, "198.18.1.40", "pi-40", "rpi4")
    fresh = probed(fleet, "198.18.1.41", "pi-41", "rpi4")
    unknown = probed(fleet, "198.18.1.42", "box-42", None)
    record_runtime(fleet, provisioned, "/opt/fleetdesk")

    # The profile's device_root changes after pi-40 was provisioned: what is installed there does not move.
    with_device_root(fleet, "rpi4", "/data/fleetdesk")
    assert fleet.reach(provisioned).root == "/opt/fleetdesk"
    assert fleet.reach(fresh).root == "/data/fleetdesk"  # never provisioned: its profile's, as provisioning uses
    assert fleet.reach(unknown).root == DEFAULT_ROOT == "/opt/fleetdesk"
    assert fleet.reach(unknown).profile is None and fleet.reach(unknown).runtime is None

    # Provisioning pi-41 now records the profile's root, and that is what it keeps.
    record_runtime(fleet, fresh, fleet.reach(fresh).root)
    with_device_root(fleet, "rpi4", "/srv/elsewhere")
    assert fleet.reach(fresh).root == "/data/fleetdesk"

    layout = fleet.reach(provisioned).layout
    assert layout == DeviceLayout("/opt/fleetdesk")
    assert (layout.artifacts, layout.artifact_dir("abc"), layout.tmp, layout.venv, layout.launcher) == (
        "/opt/fleetdesk/artifacts", "/opt/fleetdesk/artifacts/abc", "/opt/fleetdesk/tmp",
        "/opt/fleetdesk/runtimes/current/venv", "/opt/fleetdesk/bin/fleetdesk-agent")


def test_the_rule_itself() -> None:
    profile = dataclasses.replace(load_profiles().get("rpi4"), device_root="/p")
    runtime = dataclasses.replace(_a_runtime(), device_root="/r")
    assert device_root(runtime, profile) == "/r"
    assert device_root(None, profile) == "/p"
    assert device_root(None, None) == DEFAULT_ROOT


def _a_runtime() -> DeviceRuntime:
    return DeviceRuntime(1, "r", "a", "/x", "1.31.1", ("CPUExecutionProvider",), "3.11", datetime.now(UTC))


def test_the_handle_is_frozen_and_carries_the_target_and_profile(fleet: Fleet) -> None:
    device = probed(fleet, "198.18.1.43", "line2-pi-43", "rpi4")
    reach = fleet.reach(device)
    assert reach.device == device and reach.profile is fleet.profiles.get("rpi4")
    assert (reach.target.host, reach.target.username, reach.target.port) == ("198.18.1.43", "pi", 2222)
    assert reach.target.ciphers == fleet.profiles.get("rpi4").ssh_ciphers
    assert fleet.reach(device).target == reach.target
    with pytest.raises(dataclasses.FrozenInstanceError):
        reach.layout = DeviceLayout("/elsewhere")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        reach.layout.root = "/elsewhere"  # type: ignore[misc]


def test_the_handle_is_kept_until_the_pinned_keys_change(fleet: Fleet, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True)
    public = " ".join((tmp_path / "hk.pub").read_text().split()[:2])
    device = probed(fleet, "198.18.1.44", "pi-44", "rpi4")
    first = fleet.reach(device)
    assert first.target.pinned_host_keys == ()
    assert fleet.reach(device) is first  # nothing changed: nothing read again

    # Trusted through the fleet (the operator's known_hosts): the next handle holds the key.
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"198.18.1.44 {public}\n")
    fleet.trust_from_known_hosts(device, known_hosts)
    trusted = fleet.reach(device)
    assert trusted is not first and trusted.target.pinned_host_keys == (public,)
    assert fleet.reach(device) is trusted

    # Forgotten straight in the inventory (as a re-trust does before it pins the new key): seen as well.
    fleet.inventory.forget_host_keys(device.id)
    assert fleet.reach(device).target.pinned_host_keys == ()


def test_the_handle_follows_a_provisioning_record_and_a_changed_login(fleet: Fleet) -> None:
    device = probed(fleet, "198.18.1.45", "pi-45", "rpi4")
    first = fleet.reach(device)
    record_runtime(fleet, device, "/var/lib/fleetdesk")
    assert fleet.reach(device).root == "/var/lib/fleetdesk" and fleet.reach(device).runtime is not None
    changed = asyncio.run(fleet.set_login(device, port=2200))
    assert fleet.reach(changed).target.port == 2200 and first.target.port == 22


def test_the_handle_is_read_again_when_the_ssh_config_changes(fleet: Fleet, tmp_path: Path) -> None:
    config, folder = tmp_path / "ssh" / "config", tmp_path / "ssh"
    device = probed(fleet, "198.18.1.46", "line2-pi-46", "rpi4")
    first = fleet.reach(device)
    assert first.target.port == 2222 and fleet.reach(device) is first

    config.write_text("Host line2-*\n  User pi\n  Port 2223\n")  # edited in place
    settle(config, folder, at=AN_HOUR_AGO + 60)
    assert fleet.reach(device).target.port == 2223

    # A file the config includes counts too.
    extra = folder / "extra.conf"
    extra.write_text("Host line2-pi-46\n  User operator\n")
    config.write_text(f"Include {extra}\nHost line2-*\n  User pi\n  Port 2223\n")
    settle(config, extra, folder, at=AN_HOUR_AGO + 120)
    reach = fleet.reach(device)
    assert reach.target.username == "operator" and fleet.reach(device) is reach
    extra.write_text("Host line2-pi-46\n  User engineer\n")
    settle(extra, at=AN_HOUR_AGO + 180)
    assert fleet.reach(device).target.username == "engineer"


def test_a_config_written_just_now_is_read_again_at_the_next_call(fleet: Fleet, tmp_path: Path) -> None:
    """Two writes within one tick of the file system's clock can leave the same stamp: not trusted."""
    config = tmp_path / "ssh" / "config"
    config.write_text("Host line2-*\n  Port 2224\n")
    device = probed(fleet, "198.18.1.47", "line2-pi-47", "rpi4")
    assert fleet.reach(device).target.port == 2224
    before = config.stat()
    config.write_text("Host line2-*\n  Port 2225\n")  # same size, maybe the same mtime
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert fleet.reach(device).target.port == 2225


def test_the_async_accessor_reads_the_inventory_off_the_loop(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [probed(fleet, f"198.18.1.{50 + n}", f"pi-{50 + n}", "rpi4") for n in range(3)]
    record_runtime(fleet, devices[0], "/opt/fleetdesk")
    reads: list[tuple[str, int]] = []  # (what, thread) for every transaction the inventory opens
    session = fleet.inventory._session

    def observed(*args: Any, **kwargs: Any) -> Any:
        reads.append(("write" if kwargs.get("write") else "read", threading.get_ident()))
        return session(*args, **kwargs)

    monkeypatch.setattr(fleet.inventory, "_session", observed)

    async def main() -> tuple[int, list[Any], Any]:
        loop_thread = threading.get_ident()
        handles = await asyncio.gather(*(fleet.areach(d) for d in devices))
        # The observer is not blind: the synchronous call, made on the loop, is seen reading on the loop.
        with_device_root(fleet, "rpi4", "/other")  # another profile: the next reach reads again
        on_loop = fleet.reach(devices[1])
        return loop_thread, handles, on_loop

    loop_thread, handles, on_loop = asyncio.run(main())
    assert [h.root for h in handles] == ["/opt/fleetdesk", "/opt/fleetdesk", "/opt/fleetdesk"]
    assert on_loop.root == "/other"
    async_reads, sync_reads = reads[:-2], reads[-2:]  # each reach: its pinned keys, then its runtime record
    assert len(async_reads) == 2 * len(devices)
    assert all(what == "read" and thread != loop_thread for what, thread in async_reads)
    assert [thread for _, thread in sync_reads] == [loop_thread, loop_thread]
