"""The probe over real SSH against every profile's lab device, the aarch64 ones under qemu included."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.inventory.records import ProbeFacts
from fleetdesk.probe import probe
from fleetdesk.profiles import load_profiles, match_profile
from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab

PROFILES = load_profiles()


async def probe_over_ssh(fleet: Fleet, device: dict[str, Any], **connect: Any) -> tuple[ProbeFacts, list[str]]:
    """Probe through a real asyncssh connection; returns the facts and every command `run` was given."""
    calls: list[str] = []
    async with await fleet.connect(device, **connect) as conn:
        async def run(command: str) -> tuple[int | None, bytes, bytes]:
            calls.append(command)
            result = await conn.run(command, check=False, timeout=120, encoding=None)
            return result.exit_status, bytes(result.stdout or b""), bytes(result.stderr or b"")

        facts = await probe(run, device=device["name"])
    return facts, calls


def expected_facts(fleet: Fleet, device: dict[str, Any]) -> dict[str, Any]:
    """What the lab built this device to be: its profile's [lab] table and its own root files."""
    profile = PROFILES.get(device["profile"])
    hw = profile.lab
    assert hw is not None
    root = Path(device["root"])
    pretty = re.search(r'^PRETTY_NAME="([^"]*)"', (root / "etc/os-release").read_text(), re.MULTILINE)
    assert pretty is not None
    gpu = {"nvidia": hw.gpu_name, "jetson": hw.gpu_name, "raspberrypi": "VideoCore"}.get(hw.gpu, "")
    return {
        "hostname": device["name"],
        "machine_id": (root / "etc/machine-id").read_text().strip(),
        "arch": profile.arch,
        "os_name": pretty.group(1),
        "kernel": os.uname().release,  # a namespace (and qemu-user) runs on the laptop's kernel
        "cpu_model": hw.cpu_model,
        "cpu_count": hw.cpu_count,
        "ram_mb": hw.memory_mb,
        "disk_total_mb": hw.disk_gb * 1024,
        "model": hw.device_tree_model,
        "tegra_release": hw.nv_tegra_release,
        "dmi_vendor": hw.dmi_sys_vendor,
        "dmi_product": hw.dmi_product_name,
        "gpu": gpu,
        "gpu_memory_mb": hw.gpu_memory_mb if hw.gpu == "nvidia" else 0,
    }


@pytest.mark.parametrize("profile", sorted(PROFILES.profiles))
def test_probe_identifies_each_profiles_lab_device_in_one_round_trip(fleet: Fleet, profile: str) -> None:
    device = fleet.by_profile(profile)
    facts, calls = asyncio.run(probe_over_ssh(fleet, device))

    assert len(calls) == 1  # one SSH round trip
    for name, value in expected_facts(fleet, device).items():
        assert getattr(facts, name) == value, f"{device['name']}: {name}"
    # The root file system's own python3, e.g. /usr/bin/python3.11 -> "3.11.x".
    pythons = sorted(p.name for p in Path(device["root"], "usr/bin").glob("python3.*") if p.name[8:].isdigit())
    assert pythons and facts.python.startswith(pythons[-1].removeprefix("python") + ".")
    assert 0 < facts.disk_free_mb <= facts.disk_total_mb

    match = match_profile(facts, PROFILES)
    assert match is not None and match.profile == device["profile"]


@pytest.mark.parametrize("profile", ["ipc-x86-nvidia", "rpi4"])
def test_an_unprivileged_account_sees_the_same_device(fleet: Fleet, profile: str) -> None:
    # No sudo anywhere in the probe: the `fleet` account (password login) learns the same facts.
    device = fleet.by_profile(profile)
    as_root, _ = asyncio.run(probe_over_ssh(fleet, device))
    as_user, calls = asyncio.run(probe_over_ssh(fleet, device, user="fleet", client_keys=[], password="fleet-lab"))
    assert len(calls) == 1
    assert (as_user.arch, as_user.model, as_user.gpu, as_user.dmi_product, as_user.cpu_model, as_user.ram_mb) == (
        as_root.arch, as_root.model, as_root.gpu, as_root.dmi_product, as_root.cpu_model, as_root.ram_mb
    )
    assert as_user.machine_id == as_root.machine_id != ""
