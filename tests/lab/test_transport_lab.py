"""The transport against real lab devices: an x86 industrial PC and the aarch64 Pi 5 (under qemu),
over both engines, trusting only the keys in the lab's known_hosts."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.errors import HostKeyChangedError
from fleetdesk.transport import SSHPool, SSHTarget, run_many, shell_join, shell_quote
from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab


def pinned_keys(fleet: Fleet, address: str) -> tuple[str, ...]:
    """Key lines for `address` from the lab's known_hosts ("ADDRESS[,NAME...] keytype blob")."""
    keys = []
    for line in Path(fleet.state["known_hosts"]).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and address in parts[0].split(","):
            keys.append(f"{parts[1]} {parts[2]}")
    return tuple(keys)


def lab_target(fleet: Fleet, device: dict[str, Any], transport: str, **kw: Any) -> SSHTarget:
    return SSHTarget(device=device["name"], host=device["address"],
                     pinned_host_keys=pinned_keys(fleet, device["address"]), identity_files=(fleet.state["ssh_key"],),
                     transport=transport, use_agent=False, connect_timeout=60, **kw)


@pytest.mark.parametrize("transport", ["asyncssh", "paramiko"])
@pytest.mark.parametrize(("profile", "size"), [("ipc-x86", 8 * 1024 * 1024 + 5), ("rpi5", 600 * 1024 + 3)])
def test_push_and_run_on_a_lab_device(fleet: Fleet, tmp_path: Path, transport: str, profile: str,
                                      size: int) -> None:
    device = fleet.by_profile(profile)
    target = lab_target(fleet, device, transport)
    source = tmp_path / "model.onnx"
    source.write_bytes(os.urandom(size))
    remote = f"/tmp/fleetdesk-test-{transport}/it's a model.onnx"

    async def go() -> None:
        async with SSHPool() as pool:
            result = await pool.push(target, source, remote)
            assert (result.bytes_sent, result.skipped) == (size, False)
            assert (await pool.push(target, source, remote)).bytes_sent == 0
            check = await pool.run(target, f"sha256sum {shell_quote(remote)} | cut -c1-64; uname -m", check=True)
            assert check.stdout.split() == [hashlib.sha256(source.read_bytes()).hexdigest(), device["arch"]]
            await pool.run(target, shell_join(["rm", "-rf", f"/tmp/fleetdesk-test-{transport}"]), check=True)
    asyncio.run(go())


def test_a_lab_device_with_another_devices_key_pinned_is_refused(fleet: Fleet) -> None:
    device, other = fleet.by_profile("ipc-x86"), fleet.by_profile("rpi5")
    target = lab_target(fleet, device, "asyncssh")
    target = SSHTarget(**{**target.__dict__, "pinned_host_keys": pinned_keys(fleet, other["address"])})

    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(HostKeyChangedError) as caught:
                await pool.run(target, "true")
            assert caught.value.presented == device["host_key_fingerprint"]
    asyncio.run(go())


def test_fan_out_over_the_x86_devices(fleet: Fleet) -> None:
    devices = [d for d in fleet.devices if d["arch"] == "x86_64"][:8]
    fanout = asyncio.run(run_many([lab_target(fleet, d, "asyncssh") for d in devices], "hostname", timeout=60))
    assert fanout.succeeded == tuple(d["name"] for d in devices)
    assert [o.result.stdout.strip() for o in fanout.outcomes] == [d["name"] for d in devices]  # type: ignore[union-attr]
