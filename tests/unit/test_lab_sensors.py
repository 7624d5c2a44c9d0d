"""The lab sensor process: what it writes under a device root, and how the values move."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fleetdesk.lab.sensors import SensorModel, lab_values, main, write_sensors
from fleetdesk.lab.standins import LAB_VALUE_FILES, PROC_DIR, PROC_FILES, SENSORS_DIR

REPO = Path(__file__).resolve().parents[2]



def hardware(profile: str, **override: object) -> dict:
    """HW.json of a device of `profile`, with the keys the lab copies from device_profiles/<profile>.toml."""
    data = tomllib.loads((REPO / "device_profiles" / f"{profile}.toml").read_text())
    return {"name": f"{profile}-01", "profile": profile, "arch": data["arch"], **data["lab"], **override}


ORIN = hardware("jetson-orin-nano")
XAVIER = hardware("jetson-xavier-nx")
PI4 = hardware("rpi4")
GPC = hardware("ipc-x86-nvidia")
IPC = hardware("ipc-x86")
ALL = {"orin": ORIN, "xavier": XAVIER, "pi4": PI4, "gpc": GPC, "ipc": IPC}


def run_once(tmp_path: Path, hw: dict, *extra: str) -> Path:
    """`python -m fleetdesk.lab.sensors --once` into a fresh device root; returns the root."""
    root = tmp_path / "root"
    root.mkdir()
    hw_file = tmp_path / "hw.json"
    hw_file.write_text(json.dumps(hw))
    argv = [sys.executable, "-m", "fleetdesk.lab.sensors", "--root", str(root), "--hardware", str(hw_file)]
    proc = subprocess.run([*argv, "--once", "--seed", "7", *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return root


def meminfo(root: Path) -> dict[str, int]:
    text = (root / PROC_DIR / "meminfo").read_text()
    return {k: int(v) for k, v in re.findall(r"^(\S+):\s+(\d+)", text, re.M)}


def stat_cpus(root: Path) -> dict[str, list[int]]:
    text = (root / PROC_DIR / "stat").read_text()
    return {m[0]: [int(x) for x in m[1].split()] for m in re.findall(r"^(cpu\d*) +([\d ]+?)\s*$", text, re.M)}


@pytest.mark.parametrize("kind", ALL)
def test_once_writes_every_configured_thermal_zone(tmp_path: Path, kind: str) -> None:
    hw = ALL[kind]
    root = run_once(tmp_path, hw)
    zones = sorted((root / "sys/class/thermal").iterdir(), key=lambda p: int(p.name.removeprefix("thermal_zone")))
    assert [(z / "type").read_text() for z in zones] == [name + "\n" for name in hw["thermal_zones"]]
    for zone in zones:
        assert re.fullmatch(r"-?\d+\n", (zone / "temp").read_text())
    for n in range(hw["cpu_count"]):
        cpufreq = root / f"sys/devices/system/cpu/cpu{n}/cpufreq"
        assert (cpufreq / "cpuinfo_max_freq").read_text() == f"{hw['cpu_max_mhz'] * 1000}\n"
        assert (cpufreq / "cpuinfo_min_freq").read_text() == f"{hw['cpu_min_mhz'] * 1000}\n"
        khz = int((cpufreq / "scaling_cur_freq").read_text())
        assert hw["cpu_min_mhz"] * 1000 <= khz <= hw["cpu_max_mhz"] * 1000
    assert not (root / f"sys/devices/system/cpu/cpu{hw['cpu_count']}").exists()


@pytest.mark.parametrize("kind", ALL)
def test_lab_value_files_are_the_documented_ones(tmp_path: Path, kind: str) -> None:
    root = run_once(tmp_path, ALL[kind])
    written = {p.name for p in (root / SENSORS_DIR).iterdir()}
    documented = {re.sub(r"^rail_.+_mw$", "rail_<NAME>_mw", name) for name in written}
    assert documented <= set(LAB_VALUE_FILES)
    assert {"cpu_util_pct", "ram_used_mb", "swap_used_mb"} <= written
    for path in (root / SENSORS_DIR).iterdir():
        assert path.read_text().endswith("\n") and path.read_text().count("\n") == 1


def test_hardware_kind_decides_the_vendor_files(tmp_path: Path) -> None:
    (tmp_path / "orin").mkdir()
    (tmp_path / "pi").mkdir()
    orin, pi = run_once(tmp_path / "orin", ORIN), run_once(tmp_path / "pi", PI4)
    assert re.fullmatch(r"\d{1,4}\n", (orin / "sys/devices/gpu.0/load").read_text())  # per mille
    assert (orin / SENSORS_DIR / "tegra_model").read_text() == "orin\n"
    assert (orin / SENSORS_DIR / "power_rails").read_text() == "VDD_IN VDD_CPU_GPU_CV VDD_SOC\n"
    assert (orin / "sys/class/thermal/thermal_zone2/temp").read_text() == "-256000\n"  # cv0: DLA powered off
    assert not (orin / "sys/devices/platform/soc/soc:firmware/get_throttled").exists()
    # drivers/firmware/raspberrypi.c prints "%x\n": no 0x prefix.
    assert re.fullmatch(r"[0-9a-f]+\n", (pi / "sys/devices/platform/soc/soc:firmware/get_throttled").read_text())
    assert not (pi / "sys/devices/gpu.0").exists()
    assert not (pi / SENSORS_DIR / "gpu_util_pct").exists()


def test_meminfo_total_matches_the_hardware_and_the_parts_add_up(tmp_path: Path) -> None:
    root = run_once(tmp_path, ORIN)
    mem = meminfo(root)
    assert mem["MemTotal"] == ORIN["memory_mb"] * 1024
    assert mem["SwapTotal"] == ORIN["swap_mb"] * 1024
    assert 0 < mem["MemFree"] <= mem["MemAvailable"] <= mem["MemTotal"]
    assert mem["MemFree"] + mem["Buffers"] + mem["Cached"] + mem["Slab"] < mem["MemTotal"]
    assert mem["Active"] == mem["Active(anon)"] + mem["Active(file)"]
    assert mem["SwapFree"] <= mem["SwapTotal"]
    lines = (root / PROC_DIR / "meminfo").read_text().rstrip().splitlines()
    assert lines[0] == f"MemTotal:        {ORIN['memory_mb'] * 1024} kB"
    for line in lines:  # the kernel's layout: label, value right-aligned, kB
        assert re.fullmatch(r"[A-Za-z_()]+:\s+\d+( kB)?", line.rstrip()), line
    assert lines[-1].startswith("Hugetlb:")
    values = lab_values(SensorModel(ORIN, seed=1))
    assert values["ram_total_mb"] == str(ORIN["memory_mb"])


def test_proc_files_are_rewritten_in_place_with_a_fixed_size(tmp_path: Path) -> None:
    root = tmp_path
    model = SensorModel(PI4, seed=3)
    write_sensors(root, model)
    before = {name: os.stat(root / PROC_DIR / name) for name in PROC_FILES}
    # A reader that opened the file earlier (as through a bind mount) must see the new content.
    fd = os.open(root / PROC_DIR / "uptime", os.O_RDONLY)
    try:
        first = os.pread(fd, 4096, 0)
        for _ in range(5):
            model.step(1.0)
            write_sensors(root, model)
        second = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    assert first != second
    assert float(second.split()[0]) == pytest.approx(float(first.split()[0]) + 5.0, abs=0.02)
    for name in PROC_FILES:
        after = os.stat(root / PROC_DIR / name)
        assert after.st_ino == before[name].st_ino, name
        assert after.st_size == before[name].st_size == len((root / PROC_DIR / name).read_bytes()), name
        data = (root / PROC_DIR / name).read_bytes()
        assert data.endswith(b"\n") and data.count(b"\n") == data.rstrip(b" \n").count(b"\n") + 1


def test_proc_file_left_by_an_older_run_keeps_its_inode(tmp_path: Path) -> None:
    stale = tmp_path / PROC_DIR / "stat"
    stale.parent.mkdir(parents=True)
    stale.write_text("x" * 100_000)
    inode = os.stat(stale).st_ino
    write_sensors(tmp_path, SensorModel(IPC, seed=1))
    assert os.stat(stale).st_ino == inode
    assert "xxx" not in stale.read_text() and stale.read_text().startswith("cpu  ")


def test_stat_counters_grow_monotonically_for_every_core(tmp_path: Path) -> None:
    hw = GPC
    model = SensorModel(hw, seed=5, boot_time=time.time() - 600)
    snapshots = []
    for _ in range(20):
        write_sensors(tmp_path, model)
        snapshots.append(stat_cpus(tmp_path))
        model.step(0.7)
    assert list(snapshots[0]) == ["cpu"] + [f"cpu{n}" for n in range(hw["cpu_count"])]
    for earlier, later in itertools.pairwise(snapshots):
        for cpu, cols in later.items():
            assert len(cols) == 10
            assert all(b >= a for a, b in zip(earlier[cpu], cols, strict=True)), cpu
    last = snapshots[-1]
    assert last["cpu"] == [sum(col) for col in zip(*(v for k, v in last.items() if k != "cpu"), strict=True)]
    # Each core's jiffies add up to the time since boot (USER_HZ = 100).
    uptime = float((tmp_path / PROC_DIR / "uptime").read_text().split()[0])
    assert sum(last["cpu0"]) == pytest.approx(uptime * 100, rel=0.01)
    text = (tmp_path / PROC_DIR / "stat").read_text()
    for key in ("intr", "ctxt", "btime", "processes", "procs_running", "procs_blocked", "softirq"):
        assert re.search(rf"^{key} \d+", text, re.M), key
    assert int(re.search(r"^btime (\d+)", text, re.M)[1]) == int(model.boot_time)


def test_uptime_counts_from_the_boot_time_given(tmp_path: Path) -> None:
    boot = time.time() - 3600
    root = run_once(tmp_path, IPC, "--boot-time", str(boot))
    uptime, idle = (float(x) for x in (root / PROC_DIR / "uptime").read_text().split())
    assert 3600 <= uptime < 3660
    assert 0 < idle <= uptime * IPC["cpu_count"]  # idle is summed over all CPUs


def test_a_hot_pi_throttles_after_a_thermal_lag_and_remembers_it(tmp_path: Path) -> None:
    model = SensorModel(PI4, seed=2)
    cool = model.zone_temp_c["cpu-thermal"]
    model.start_burst(1.0, seconds=600)
    model.step(1.0)
    assert cool < model.zone_temp_c["cpu-thermal"] < 70  # the heat sink lags behind the load
    for _ in range(300):
        model.step(1.0)
    write_sensors(tmp_path, model)
    assert model.zone_temp_c["cpu-thermal"] > 80
    lab = tmp_path / SENSORS_DIR
    assert int((lab / "throttled").read_text(), 16) & 0x6 == 0x6  # capped and throttled now
    assert int((tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled").read_text(), 16) & 0x60000
    assert int((lab / "arm_freq_hz").read_text()) < 1_500_000_000  # capped below the 1.8 GHz maximum
    model.start_burst(0.0, seconds=0)
    for _ in range(600):
        model.step(1.0)
    write_sensors(tmp_path, model)
    assert model.zone_temp_c["cpu-thermal"] < 75
    assert int((lab / "throttled").read_text(), 16) == 0x60000  # not now, but it has happened since boot


def test_a_gpu_burst_moves_load_clocks_power_and_temperature(tmp_path: Path) -> None:
    model = SensorModel(ORIN, seed=4)
    write_sensors(tmp_path, model)
    lab = tmp_path / SENSORS_DIR
    idle = {name: int((lab / name).read_text()) for name in ("gpu_freq_mhz", "rail_VDD_IN_mw", "gpu_temp_mc")}
    model.start_burst(0.9, seconds=120)
    for _ in range(90):
        model.step(1.0)
    write_sensors(tmp_path, model)
    assert int((tmp_path / "sys/devices/gpu.0/load").read_text()) > 700
    assert int((lab / "gpu_util_pct").read_text()) > 70
    assert int((lab / "gpu_freq_mhz").read_text()) > idle["gpu_freq_mhz"]
    assert int((lab / "gpu_temp_mc").read_text()) > idle["gpu_temp_mc"] + 8000
    rails = {r: int((lab / f"rail_{r}_mw").read_text()) for r in ORIN["power_rails"]}
    assert rails["VDD_IN"] > idle["rail_VDD_IN_mw"] + 3000
    assert rails["VDD_IN"] > rails["VDD_CPU_GPU_CV"] + rails["VDD_SOC"]  # the input rail feeds the others
    temps = {z: model.zone_temp_c[z] for z in ORIN["thermal_zones"] if not z.startswith("cv")}
    assert temps["tj-thermal"] == max(temps.values())


def test_a_dgpu_burst_shows_in_memory_power_and_pstate(tmp_path: Path) -> None:
    model = SensorModel(GPC, seed=9)
    write_sensors(tmp_path, model)
    lab = tmp_path / SENSORS_DIR
    assert (lab / "pstate").read_text() in ("P8\n", "P0\n")
    used_idle = int((lab / "gpu_mem_used_mib").read_text())
    model.start_burst(1.0, seconds=60)
    for _ in range(30):
        model.step(1.0)
    write_sensors(tmp_path, model)
    assert (lab / "pstate").read_text() == "P0\n"
    assert int((lab / "gpu_mem_used_mib").read_text()) > used_idle
    assert 50_000 < int((lab / "gpu_power_mw").read_text()) <= int((lab / "gpu_power_limit_mw").read_text())
    assert (lab / "gpu_mem_total_mib").read_text() == f"{GPC['gpu_memory_mb']}\n"
    assert re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\n", (lab / "gpu_uuid").read_text())


def test_files_are_replaced_whole_and_only_when_they_change(tmp_path: Path) -> None:
    model = SensorModel(IPC, seed=1)
    write_sensors(tmp_path, model)
    zone_type = tmp_path / "sys/class/thermal/thermal_zone1/type"
    freq = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"
    type_inode, freq_inode = os.stat(zone_type).st_ino, os.stat(freq).st_ino
    model.step(1.0)
    write_sensors(tmp_path, model)
    assert os.stat(zone_type).st_ino == type_inode  # unchanged content: left alone
    assert os.stat(freq).st_ino != freq_inode  # changed content: a new file renamed into place
    leftovers = [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert leftovers == []


def test_the_same_seed_gives_the_same_device(tmp_path: Path) -> None:
    boot = time.time() - 100
    a, b = SensorModel(XAVIER, seed=11, boot_time=boot), SensorModel(XAVIER, seed=11, boot_time=boot)
    for _ in range(10):
        a.step(1.0)
        b.step(1.0)
    assert a.cpu_util == b.cpu_util and a.zone_temp_c == b.zone_temp_c


def test_bad_hardware_is_refused_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hw_file = tmp_path / "hw.json"
    hw_file.write_text(json.dumps({"name": "x", "gpu": "amd"}))
    assert main(["--root", str(tmp_path), "--hardware", str(hw_file), "--once"]) == 2
    assert "cpu_count" in capsys.readouterr().err
    hw_file.write_text(json.dumps({**ORIN, "power_rails": ["VDD IN; rm -rf /"]}))
    assert main(["--root", str(tmp_path), "--hardware", str(hw_file), "--once"]) == 2
    assert "power rail names" in capsys.readouterr().err


def start_sensors(tmp_path: Path, hw: dict) -> tuple[subprocess.Popen[str], Path]:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "hw.json").write_text(json.dumps(hw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetdesk.lab.sensors", "--root", str(root), "--hardware",
         str(tmp_path / "hw.json"), "--interval", "0.05", "--seed", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    uptime = root / PROC_DIR / "uptime"
    deadline = time.monotonic() + 30
    while not (uptime.exists() and float(uptime.read_text().split()[0]) > 0.1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sensors never updated the device"
        time.sleep(0.05)
    return proc, root


def test_sigterm_stops_the_process_cleanly(tmp_path: Path) -> None:
    proc, _ = start_sensors(tmp_path, PI4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_the_process_stops_by_itself_when_the_device_root_goes(tmp_path: Path) -> None:
    proc, root = start_sensors(tmp_path, ORIN)
    root.rename(tmp_path / "removed")  # the lab tearing the device down: the root vanishes at once
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "gone" in err
    assert not root.exists()  # and the sensors did not bring it back
