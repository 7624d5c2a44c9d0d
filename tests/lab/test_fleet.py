"""The virtual fleet behaves like a factory floor: real sshd, real mDNS, truthful identity, offline."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

from fleetdesk.profiles import load_profiles
from tests.lab.conftest import SPEC, Fleet

pytestmark = pytest.mark.lab
PROFILES = load_profiles()


def test_up_prints_every_device_and_where_the_key_and_known_hosts_are(fleet: Fleet) -> None:
    for dev in fleet.devices:
        line = next(line for line in fleet.up_output.splitlines() if line.startswith(dev["name"] + " "))
        assert dev["address"] in line and dev["profile"] in line and dev["arch"] in line
    assert f"ssh key:     {fleet.state['ssh_key']}" in fleet.up_output
    assert f"known hosts: {fleet.state['known_hosts']}" in fleet.up_output
    wanted = sum(int(part.split(":")[1]) for part in SPEC.split(","))
    assert len(fleet.devices) == wanted


def test_every_device_answers_ssh_with_the_lab_key_and_says_its_own_hostname(fleet: Fleet) -> None:
    async def ask(dev: dict) -> tuple[str, str]:
        async with await fleet.connect(dev) as conn:
            result = await conn.run("hostname; uname -m", check=True, timeout=60)
            return dev["name"], str(result.stdout)

    async def ask_all() -> list[tuple[str, str]]:
        return await asyncio.gather(*(ask(dev) for dev in fleet.devices))

    for name, out in asyncio.run(ask_all()):
        hostname, machine = out.split()
        assert hostname == name
        assert machine == fleet.device(name)["arch"]


def test_arm64_devices_run_aarch64_python(fleet: Fleet) -> None:
    dev = fleet.by_profile("rpi4")
    result = fleet.ssh(dev, "python3 -c 'import platform, sys; print(platform.machine(), sys.version_info[:2])'")
    assert result.exit_status == 0, result.stderr
    assert result.stdout.strip() == "aarch64 (3, 11)"


def test_the_unprivileged_account_logs_in_with_its_password(fleet: Fleet) -> None:
    from fleetdesk.lab.rootfs import LAB_PASSWORD, LAB_USER

    dev = fleet.by_profile("ipc-x86")
    result = fleet.ssh(dev, "id -un", user=LAB_USER, password=LAB_PASSWORD, client_keys=None)
    assert result.stdout.strip() == LAB_USER


def test_each_device_has_its_own_host_key_matching_the_state(fleet: Fleet) -> None:
    fingerprints = [d["host_key_fingerprint"] for d in fleet.devices]
    assert len(set(fingerprints)) == len(fingerprints)
    for fp in fingerprints:
        assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp)


def test_a_device_has_no_route_out(fleet: Fleet) -> None:
    dev = fleet.by_profile("ipc-x86")
    routes = fleet.ssh(dev, "ip -4 route show").stdout
    assert "default" not in routes
    assert "198.18.0.0/16" in routes
    # `ip route get` asks the kernel's routing table; it sends nothing.
    result = fleet.ssh(dev, "ip -4 route get 192.0.2.1")
    assert result.exit_status != 0
    assert "unreachable" in result.stderr.lower()


def _hardware_report(fleet: Fleet, dev: dict) -> str:
    script = (
        "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; "
        "cat /sys/firmware/devicetree/base/model 2>/dev/null | tr -d '\\0'; echo; "
        "cat /etc/nv_tegra_release 2>/dev/null; cat /sys/class/dmi/id/product_name 2>/dev/null; "
        "cat /sys/class/thermal/thermal_zone*/type; df -k / | tail -1"
    )
    result = fleet.ssh(dev, script)
    assert result.exit_status == 0, result.stderr
    return str(result.stdout)


@pytest.mark.parametrize("profile_name", sorted({part.split(":")[0] for part in SPEC.split(",")}))
def test_each_device_carries_its_profiles_identity_where_real_hardware_puts_it(fleet: Fleet, profile_name: str) -> None:
    hw = PROFILES.get(profile_name).lab
    assert hw is not None
    report = _hardware_report(fleet, fleet.by_profile(profile_name))
    lines = report.splitlines()
    assert lines[0] == str(hw.cpu_count)
    assert lines[1].split()[1] == str(hw.memory_mb * 1024)
    if hw.device_tree_model:
        assert hw.device_tree_model in lines
    if hw.nv_tegra_release:
        assert hw.nv_tegra_release in lines
    if hw.dmi_product_name:
        assert hw.dmi_product_name in lines
    for zone in hw.thermal_zones:
        assert zone in lines
    size_kib = int(lines[-1].split()[1])
    assert abs(size_kib - hw.disk_gb * 1024 * 1024) < 1024


def test_gpu_stand_ins_print_what_the_sensors_say(fleet: Fleet) -> None:
    gpc = fleet.by_profile("ipc-x86-nvidia")
    out = fleet.ssh(gpc, "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader").stdout.strip()
    assert out == "NVIDIA RTX A2000 12GB, 12282 MiB"
    pi = fleet.by_profile("rpi4")
    temp = fleet.ssh(pi, "vcgencmd measure_temp").stdout.strip()
    zone = fleet.ssh(pi, "cat /sys/class/thermal/thermal_zone0/temp").stdout.strip()
    assert re.fullmatch(r"temp=\d+\.\d'C", temp)
    assert abs(float(temp[5:-2]) - int(zone) / 1000) < 3.0  # read a moment apart
    orin = fleet.by_profile("jetson-orin-nano")
    line = fleet.ssh(orin, "timeout 5 tegrastats --interval 500 | head -n 1").stdout
    assert re.search(r"RAM \d+/7620MB .*CPU \[.*\] .*GR3D_FREQ \d+%", line), line


def test_sensors_keep_temperatures_and_gpu_load_moving(fleet: Fleet) -> None:
    orin = fleet.by_profile("jetson-orin-nano")
    command = "cat /sys/class/thermal/thermal_zone*/temp /sys/devices/gpu.0/load /proc/uptime"
    first = fleet.ssh(orin, command).stdout
    time.sleep(3.5)
    second = fleet.ssh(orin, command).stdout
    assert first != second
    assert float(second.split()[-2]) > float(first.split()[-2])  # uptime advances


def test_mdns_announces_every_device_on_the_lab_bridge(fleet: Fleet) -> None:
    wanted = {dev["name"] for dev in fleet.devices}
    seen: dict[str, set[str]] = {"_ssh._tcp.local.": set(), "_workstation._tcp.local.": set()}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            # Avahi names the workstation service "host [mac]"; the ssh one is just the host name.
            seen[service_type].add(name.split(".")[0].split(" [")[0])

    # Bound to the bridge address only: the test sends multicast nowhere else.
    zc = Zeroconf(interfaces=[fleet.state["bridge_address"]], ip_version=IPVersion.V4Only)
    try:
        ServiceBrowser(zc, list(seen), handlers=[on_change])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(wanted <= names for names in seen.values()):
            time.sleep(0.2)
        assert seen["_ssh._tcp.local."] >= wanted
        assert seen["_workstation._tcp.local."] >= wanted
        dev = fleet.by_profile("rpi5")
        info = zc.get_service_info("_ssh._tcp.local.", f"{dev['name']}._ssh._tcp.local.", timeout=5000)
        assert info is not None
        assert info.port == 22
        assert info.server == f"{dev['name']}.local."
        assert socket.inet_ntoa(info.addresses[0]) == dev["address"]
    finally:
        zc.close()
