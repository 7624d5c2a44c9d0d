"""The agent's parsers read the real tools' recorded output (tests/fixtures/recorded) and the kernel's files,
and the Collector turns a device's /proc and /sys into the sample the laptop reads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fleetdesk.agent import gpu, procfs, sensors
from fleetdesk.agent.telemetry import Collector
from fleetdesk.telemetry.sample import Sample

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


# --- tegrastats --------------------------------------------------------------------------------------------

def test_orin_nano_as_root_gives_gpu_load_clock_temperatures_and_rails() -> None:
    line = recorded("tegrastats-orin-nano.txt").splitlines()[0]
    parsed = gpu.parse_tegrastats(line)
    assert parsed["ram"] == {"used_mb": 6185, "total_mb": 7620}
    assert parsed["swap"] == {"used_mb": 851, "total_mb": 3810}
    assert parsed["cpu"] == [{"pct": p, "mhz": 729} for p in (15, 11, 14, 13, 11, 8)]
    assert (parsed["gr3d_pct"], parsed["gr3d_mhz"], parsed["emc_pct"]) == (63, 621, 43)
    assert parsed["temps"] == {"cpu": 53.968, "soc2": 52.437, "soc0": 50.75, "gpu": 53.343, "tj": 53.968,
                               "soc1": 51.656}
    assert parsed["rails_mw"] == {"VDD_IN": [12479, 12479], "VDD_CPU_GPU_CV": [4667, 4667], "VDD_SOC": [2817, 2817]}
    part = gpu.tegrastats_sample(parsed)
    # VDD_CPU_GPU_CV also feeds the CPU and the vision engines: it is not reported as the GPU's power.
    assert part["gpu"] == {"util_pct": 63, "mem_used_mb": None, "mem_total_mb": None, "temp_c": 53.343,
                           "power_w": None, "freq_mhz": 621}
    assert part["power"] == {"VDD_IN": 12.479, "VDD_CPU_GPU_CV": 4.667, "VDD_SOC": 2.817}


def test_orin_nano_as_a_user_has_no_gpu_clock_and_no_emc() -> None:
    parsed = gpu.parse_tegrastats(recorded("tegrastats-orin-nano.txt").splitlines()[1])
    assert (parsed["gr3d_pct"], parsed["gr3d_mhz"]) == (0, None)
    assert "emc_pct" not in parsed
    assert [c["mhz"] for c in parsed["cpu"]] == [1420, 1420, 1420, 1420, 729, 729]
    assert parsed["swap"] == {"used_mb": 1518, "total_mb": 16384}
    assert parsed["temps"]["soc0"] == 50.0 and parsed["temps"]["tj"] == 50.25
    assert gpu.tegrastats_sample(parsed)["power"]["VDD_IN"] == 4.824


def test_xavier_nx_jetpack4_power_has_no_unit_and_mts_is_not_a_rail() -> None:
    parsed = gpu.parse_tegrastats(recorded("tegrastats-xavier-nx.txt").splitlines()[0])
    assert parsed["rails_mw"] == {"VDD_IN": [6140, 5510], "VDD_CPU_GPU_CV": [2706, 2119], "VDD_SOC": [1074, 1051]}
    assert (parsed["gr3d_pct"], parsed["gr3d_mhz"]) == (0, 1109)
    assert parsed["temps"] == {"AO": 29.0, "GPU": 31.5, "PMIC": 100.0, "AUX": 30.0, "CPU": 33.5, "thermal": 31.35}
    assert parsed["cpu"][5] == {"pct": 96, "mhz": 1420}
    assert gpu.tegrastats_sample(parsed)["gpu"]["temp_c"] == 31.5  # "GPU", upper case on Xavier


def test_xavier_nx_jetpack5_has_bracketed_gpu_clock_and_milliwatts() -> None:
    parsed = gpu.parse_tegrastats(recorded("tegrastats-xavier-nx.txt").splitlines()[1])
    assert (parsed["gr3d_pct"], parsed["gr3d_mhz"]) == (0, 114)
    assert parsed["rails_mw"]["VDD_IN"] == [2763, 2846]
    assert parsed["ram"] == {"used_mb": 3168, "total_mb": 6851}
    assert [c["pct"] for c in parsed["cpu"]] == [23, 17, 16, 13, 23, 10]


def test_tegrastats_offline_cores_a_gpu_rail_and_a_usage_message() -> None:
    line = ("RAM 1903/3964MB (lfb 2x4MB) CPU [12%@102,off,off,3%@102] GR3D_FREQ 40%@76 PLL@30C GPU@29.5C "
            "POM_5V_IN 2212/2212 POM_5V_GPU 80/80 POM_5V_CPU 361/361")  # the field layout of a Jetson Nano (R32)
    parsed = gpu.parse_tegrastats(line)
    assert parsed["cpu"] == [{"pct": 12, "mhz": 102}, None, None, {"pct": 3, "mhz": 102}]
    assert gpu.tegrastats_sample(parsed)["gpu"]["power_w"] == 0.08
    with pytest.raises(gpu.ToolError):
        gpu.parse_tegrastats("Usage: tegrastats [-option]")


# --- nvidia-smi --------------------------------------------------------------------------------------------

def test_nvidia_query_rows_with_na_and_several_gpus() -> None:
    # Rows in the form of --format=csv,noheader,nounits; the values are those of the recorded RTX 2080 SUPER
    # query (nvidia-smi-query-csv.txt), the "[N/A]"/"[Not Supported]" markers as nvidia-smi prints them.
    rows = gpu.parse_nvidia_smi("0, 0, 214, 8192, 40, 39.32\n1, 88, 4041, 12282, 57, [N/A]\n"
                                "2, [Not Supported], 10, 4096, 35, [Not Supported]\n")
    assert rows[0] == {"index": 0, "util_pct": 0, "mem_used_mb": 214, "mem_total_mb": 8192, "temp_c": 40,
                       "power_w": 39.32}
    assert rows[1]["power_w"] is None and rows[2]["util_pct"] is None
    combined = gpu.combine_gpus(rows)
    assert combined["util_pct"] == 44.0  # the mean of the GPUs that report it
    assert (combined["mem_used_mb"], combined["mem_total_mb"]) == (4265, 24570)
    assert (combined["temp_c"], combined["power_w"], combined["count"]) == (57, 39.32, 3)
    assert [g["index"] for g in combined["gpus"]] == [0, 1, 2]
    single = gpu.combine_gpus(rows[:1])
    assert single == {"util_pct": 0, "mem_used_mb": 214, "mem_total_mb": 8192, "temp_c": 40, "power_w": 39.32}


def test_nvidia_query_with_header_and_units() -> None:
    rows = gpu.parse_nvidia_csv(recorded("nvidia-smi-query-csv.txt"))
    assert rows == [{"util_pct": 0, "mem_used_mb": 214, "mem_total_mb": 8192, "temp_c": 40, "power_w": 39.32,
                     "index": 0}]


def test_nvidia_query_error_is_reported_in_the_tools_words() -> None:
    with pytest.raises(gpu.ToolError, match='Field "device_minor" is not a valid field to query'):
        gpu.parse_nvidia_smi(recorded("nvidia-smi-query-error.txt"))


def test_nvidia_table_and_q_of_the_a10() -> None:
    table = gpu.parse_nvidia_smi_table(recorded("nvidia-smi-table.txt"))
    assert table == [{"index": 0, "name": "NVIDIA A10", "util_pct": 0, "mem_used_mb": 1, "mem_total_mb": 23028,
                      "temp_c": 32, "power_w": 21}]
    q = gpu.parse_nvidia_smi_q(recorded("nvidia-smi-q.txt"))
    assert q == [{"bus_id": "00000000:06:00.0", "name": "NVIDIA A10", "util_pct": 0, "mem_used_mb": 1,
                  "mem_total_mb": 23028, "temp_c": 33, "power_w": 21.3}]


def test_nvidia_table_of_driver_595_and_the_gpu_list() -> None:
    table = gpu.parse_nvidia_smi_table(recorded("nvidia-smi-table-595.txt"))
    assert table == [{"index": 0, "name": "NVIDIA GeForce RTX 2080 ...", "util_pct": 0, "mem_used_mb": 214,
                      "mem_total_mb": 8192, "temp_c": 40, "power_w": 37}]
    assert gpu.parse_nvidia_smi_list(recorded("nvidia-smi-L.txt")) == [
        {"index": 0, "name": "NVIDIA GeForce RTX 2080 SUPER", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}]


# --- vcgencmd and the throttling flags --------------------------------------------------------------------

def test_vcgencmd_temperature_and_throttling() -> None:
    transcript = recorded("vcgencmd.txt")
    assert gpu.parse_measure_temp(transcript) == 42.8
    value = gpu.parse_get_throttled(transcript)
    assert value == 0x50005
    assert sensors.decode_throttled(value) == {"raw": "0x50005", "now": ["under-voltage", "throttled"],
                                               "since_boot": ["under-voltage", "throttled"]}
    assert sensors.decode_throttled(0xF000F)["now"] == ["under-voltage", "frequency-capped", "throttled",
                                                          "soft-temperature-limit"]
    assert sensors.decode_throttled(0) == {"raw": "0x0", "now": [], "since_boot": []}


def test_vcgencmd_error_answer_is_not_a_value() -> None:
    for parse in (gpu.parse_measure_temp, gpu.parse_get_throttled):
        with pytest.raises(gpu.ToolError, match="Command not registered"):
            parse(recorded("vcgencmd-error.txt"))


# --- /proc -------------------------------------------------------------------------------------------------

STAT_1 = """cpu  1000 0 500 8000 400 10 20 0 300 0
cpu0 600 0 300 3900 200 5 10 0 300 0
cpu1 400 0 200 4100 200 5 10 0 0 0
intr 12345 0 1
ctxt 999
"""
STAT_2 = """cpu  1300 0 600 8500 500 10 20 0 400 0
cpu0 850 0 350 4100 200 5 10 0 400 0
cpu1 450 0 250 4400 300 5 10 0 0 0
"""


def test_cpu_percent_counts_iowait_as_idle_and_guest_once() -> None:
    prev, cur = procfs.parse_stat(STAT_1), procfs.parse_stat(STAT_2)
    assert set(cur) == {"cpu", "cpu0", "cpu1"}
    total, per_core = procfs.cpu_percent(prev, cur)
    # total: busy +300 user +100 system = 400 of 1000 (idle +500, iowait +100); guest (+100) is inside user.
    assert total == 40.0
    assert per_core == [round(100 * 300 / 500, 1), round(100 * 100 / 500, 1)]
    assert procfs.cpu_percent(cur, cur) == (None, [])  # no time passed: no answer, not 0 %


MEMINFO = """MemTotal:        3884740 kB
MemFree:          201544 kB
MemAvailable:    2661224 kB
Buffers:           69920 kB
Cached:          2236888 kB
SwapTotal:        102396 kB
SwapFree:          51200 kB
HugePages_Total:       0
"""


def test_meminfo_memory_and_swap() -> None:
    info = procfs.parse_meminfo(MEMINFO)
    assert info["HugePages_Total"] == 0 and info["MemTotal"] == 3884740
    assert procfs.memory(info) == {"total_mb": 3793, "used_mb": 1194, "available_mb": 2598}
    assert procfs.swap(info) == {"total_mb": 99, "used_mb": 49}
    old_kernel = {k: v for k, v in info.items() if k != "MemAvailable"}
    assert procfs.memory(old_kernel)["available_mb"] == (201544 + 69920 + 2236888) // 1024
    assert procfs.memory({})["total_mb"] is None


def test_loadavg() -> None:
    assert procfs.parse_loadavg("0.52 0.40 0.31 1/123 4567\n") == [0.52, 0.4, 0.31]
    with pytest.raises(ValueError):
        procfs.parse_loadavg("")


# --- sysfs -------------------------------------------------------------------------------------------------

def write(root: Path, rel: str, text: str) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_thermal_zones_cpufreq_gpu_load_and_throttled(tmp_path: Path) -> None:
    zones = [("cpu-thermal", "53968"), ("cv0-thermal", "-256000"), ("acpitz", "27800"), ("acpitz", "29000"),
             ("bad", "n/a")]
    for i, (kind, mc) in enumerate(zones):
        write(tmp_path, f"/sys/class/thermal/thermal_zone{i}/type", kind + "\n")
        write(tmp_path, f"/sys/class/thermal/thermal_zone{i}/temp", mc + "\n")
    sysroot = str(tmp_path)
    assert sensors.thermal_zones(sysroot) == {"cpu-thermal": 53.968, "acpitz": 27.8, "acpitz#3": 29.0}
    for i, khz in enumerate(("1420000", "729600")):
        write(tmp_path, f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq", khz + "\n")
    write(tmp_path, "/sys/devices/system/cpu/cpu10/cpufreq/scaling_cur_freq", "600000\n")
    assert sensors.cpu_freq_mhz(sysroot) == [1420, 730, 600]  # numeric order: cpu10 after cpu1
    write(tmp_path, sensors.JETSON_GPU_LOAD, "630\n")
    assert sensors.jetson_gpu_load(sysroot) == 63.0
    write(tmp_path, sensors.PI_THROTTLED, "50005\n")  # printed with %x: no 0x
    assert sensors.pi_throttled(sysroot) == 0x50005
    assert sensors.thermal_zones(str(tmp_path / "none")) == {}


# --- the Collector -----------------------------------------------------------------------------------------

def fake_device(root: Path) -> Path:
    write(root, "/proc/stat", STAT_1)
    write(root, "/proc/meminfo", MEMINFO)
    write(root, "/proc/loadavg", "0.52 0.40 0.31 1/123 4567\n")
    write(root, "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(root, "/sys/class/thermal/thermal_zone0/temp", "48300\n")
    write(root, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1800000\n")
    write(root, "/sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq", "1500000\n")
    write(root, sensors.PI_THROTTLED, "50005\n")
    return root


def test_collector_sample_is_what_the_laptop_reads(tmp_path: Path) -> None:
    sysroot, root = fake_device(tmp_path / "sys"), tmp_path / "fleetdesk"
    (root / "run").mkdir(parents=True)
    clock = [1000.0]
    with Collector(str(root), str(sysroot), ["procfs", "thermal", "vcgencmd"], clock=lambda: clock[0]) as c:
        write(sysroot, "/proc/stat", STAT_2)
        stats = {"t": 995.0, "model": "ab" * 32, "requests": 120, "rate_per_s": 9.8, "p50_ms": 3.1, "p95_ms": 5.0,
                 "p99_ms": 7.2, "errors": 1, "batch_mean": 1.6, "cache_hits": 4, "cache_size": 10,
                 "provider": "CPUExecutionProvider"}
        (root / "run" / "serve-stats.json").write_text(json.dumps(stats))
        obj = c.sample()
        clock[0] = 1006.0  # the server's figures are now 11 s old: left out
        stale = c.sample()
    assert obj["type"] == "sample" and obj["seq"] == 1 and obj["t"] == 1000.0
    assert obj["cpu"] == {"total": 40.0, "per_core": [60.0, 20.0], "freq_mhz": [1800, 1500]}
    assert obj["load"] == [0.52, 0.4, 0.31]
    assert obj["mem"] == {"total_mb": 3793, "used_mb": 1194, "available_mb": 2598}
    assert obj["temps"] == {"cpu-thermal": 48.3}
    assert obj["throttled"]["now"] == ["under-voltage", "throttled"]
    assert obj["disk"]["path"] == str(root) and obj["disk"]["total_mb"] > 0
    assert obj["inference"] == stats
    assert obj["sources"] == {"cpu": "/proc/stat", "load": "/proc/loadavg", "mem": "/proc/meminfo",
                              "swap": "/proc/meminfo", "disk": "statvfs",
                              "cpu_freq": "/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq",
                              "temps": "/sys/class/thermal", "throttled": sensors.PI_THROTTLED,
                              "inference": str(root / "run" / "serve-stats.json")}
    assert "inference" not in stale and stale["seq"] == 2
    assert stale["cpu"] == {"freq_mhz": [1800, 1500]}  # /proc/stat did not move: no CPU % rather than a false 0
    sample = Sample.from_json(json.loads(json.dumps(obj)))
    assert (sample.cpu_pct, sample.temp_c, sample.latency_p95_ms, sample.throttled) == (
        40.0, 48.3, 5.0, ("under-voltage", "throttled"))


def test_collector_leaves_out_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with Collector(str(tmp_path / "no-root"), str(empty), ["procfs", "thermal", "gpu-sysfs"]) as c:
        obj = c.sample()
    assert set(obj) == {"type", "v", "t", "seq", "disk", "sources"}
    assert obj["disk"]["path"] == "/"  # the root does not exist yet: the disk it will live on
    assert abs(obj["t"] - time.time()) < 60


def test_detect_finds_the_sources_a_device_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysroot = fake_device(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with Collector(str(tmp_path), str(sysroot)) as c:
        assert c.sources == ["procfs", "thermal", "cpufreq", "vcgencmd"]
    os.unlink(sysroot / sensors.PI_THROTTLED.lstrip("/"))
    write(sysroot, sensors.JETSON_GPU_LOAD, "120\n")
    with Collector(str(tmp_path), str(sysroot)) as c:
        assert c.sources == ["procfs", "thermal", "cpufreq", "gpu-sysfs"]
        assert c.sample()["gpu"]["util_pct"] == 12.0
