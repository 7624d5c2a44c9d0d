"""The lab's stand-in tools print the real tools' formats (tests/fixtures/recorded) from the sensor files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fleetdesk.lab.sensors import SensorModel, write_sensors
from fleetdesk.lab.standins import SENSORS_DIR, standin_files

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "tests" / "fixtures" / "recorded"
STANDINS = {tool: path for tool, path in standin_files(["tegrastats", "nvidia-smi", "vcgencmd"]).items()}
TEGRASTATS = STANDINS["usr/bin/tegrastats"]
NVIDIA_SMI = STANDINS["usr/bin/nvidia-smi"]
VCGENCMD = STANDINS["usr/bin/vcgencmd"]


def hardware(profile: str, **override: object) -> dict:
    """HW.json of a device of `profile`, with the keys the lab copies from device_profiles/<profile>.toml."""
    data = tomllib.loads((REPO / "device_profiles" / f"{profile}.toml").read_text())
    return {"name": f"{profile}-01", "profile": profile, "arch": data["arch"], **data["lab"], **override}


ORIN, XAVIER = hardware("jetson-orin-nano"), hardware("jetson-xavier-nx")
PI4, GPC = hardware("rpi4"), hardware("ipc-x86-nvidia")


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def device(root: Path, hw: dict, seed: int = 1) -> Path:
    """A device root with the sensor files of `hw`, as the sensor process leaves them."""
    root.mkdir(exist_ok=True)
    write_sensors(root, SensorModel(hw, seed=seed))
    return root


def put(root: Path, **values: object) -> None:
    """Overwrite lab value files, as if the sensors had just measured these values."""
    for name, value in values.items():
        (root / SENSORS_DIR / name).write_text(f"{value}\n")


def env(root: Path) -> dict[str, str]:
    return {**os.environ, "FLEETDESK_LAB_ROOT": str(root)}


def run(argv: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env(root), capture_output=True, text=True, timeout=60)


def sh(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["/bin/sh", str(script), *args], root)


def smi(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(NVIDIA_SMI), *args], root)


def shape(text: str) -> str:
    """`text` with its numeric values blanked, so that equal shapes mean equal formats.

    Digits that belong to a name (soc2, GR3D_FREQ, NVJPG1) stay; "8x2MB" blanks both numbers.
    """
    return re.sub(r"(?<![A-Za-wyz_])\d+(?:\.\d+)?", "#", text)


def hex_shape(text: str) -> str:
    """`text` with hex numbers blanked too, for identifiers such as GPU UUIDs and PCI bus ids."""
    return re.sub(r"[0-9A-Fa-f]+", "#", text)


def tegrastats_lines(root: Path, count: int, *args: str) -> list[str]:
    proc = subprocess.Popen(["/bin/sh", str(TEGRASTATS), "--interval", "50", *args], env=env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(count)]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert all(lines), proc.stderr
    return lines


# --- installation -------------------------------------------------------------------------------


def test_standin_files_map_install_paths_to_executable_scripts() -> None:
    files = standin_files(["vcgencmd", "nvidia-smi"])
    assert set(files) == {"usr/bin/vcgencmd", "usr/bin/nvidia-smi"}
    shebangs = {"usr/bin/vcgencmd": "#!/bin/sh\n", "usr/bin/nvidia-smi": "#!/usr/bin/python3\n"}
    for path, source in files.items():
        assert source.read_text().startswith(shebangs[path])
        assert os.access(source, os.X_OK)
    with pytest.raises(ValueError, match="jtop"):
        standin_files(["jtop"])


@pytest.mark.parametrize("script", [TEGRASTATS, VCGENCMD])
def test_shell_stand_ins_are_posix_sh(script: Path) -> None:
    assert subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True).returncode == 0
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    for bashism in ("[[", "function ", "local ", "$'", "<<<", "${!", "declare "):  # dash has none of these
        assert bashism not in code, bashism


def test_shell_stand_ins_need_no_tools_beyond_date_and_sleep(tmp_path: Path) -> None:
    # An arm64 device runs every extra process under qemu-user; minbase may lack awk and friends.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("date", "sleep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    pi, orin = device(tmp_path / "pi", PI4), device(tmp_path / "orin", ORIN)
    restricted = {**env(pi), "PATH": str(bin_dir)}
    for args in (["measure_temp"], ["get_throttled"], ["measure_clock", "arm"], ["get_mem", "gpu"], ["version"]):
        result = subprocess.run(["/bin/sh", str(VCGENCMD), *args], env=restricted, capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)
    proc = subprocess.Popen(["/bin/sh", str(TEGRASTATS), "--interval", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env(orin), "PATH": str(bin_dir)})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert line.startswith(time.strftime("%m-%d-%Y ")) and " RAM " in line, err
    assert "not found" not in err


# --- tegrastats -------------------------------------------------------------------------------


def test_tegrastats_orin_has_the_recorded_shape(tmp_path: Path) -> None:
    root = device(tmp_path, ORIN)
    line = tegrastats_lines(root, 1)[0]
    # Six cores and the zones cpu, soc2, soc0, gpu, tj, soc1 (cv* read -256 C and are left out).
    assert shape(line) == shape(recorded("tegrastats-orin-nano.txt").splitlines()[0])


@pytest.mark.parametrize(("release", "sample"), [("# R35 (release), REVISION: 4.1", 1), ("# R32 (release)", 0)])
def test_tegrastats_xavier_follows_the_l4t_release(tmp_path: Path, release: str, sample: int) -> None:
    zones = ["AO-therm", "CPU-therm", "GPU-therm", "AUX-therm", "PMIC-Die", "thermal-fan-est"]
    root = device(tmp_path, {**XAVIER, "thermal_zones": zones})
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text(release + ", GCID: 33958178, BOARD: t186ref\n")
    line = tegrastats_lines(root, 1)[0]
    assert shape(line) == shape(recorded("tegrastats-xavier-nx.txt").splitlines()[sample])


def test_tegrastats_values_come_from_the_sensor_files(tmp_path: Path) -> None:
    root = device(tmp_path, ORIN)
    put(root, cpu_util_pct="11 22 33 44 55 66", cpu_freq_mhz="729 729 729 729 1420 1420", gpu_util_pct=73,
        gpu_freq_mhz=621, ram_used_mb=6185, emc_util_pct=43, rail_VDD_CPU_GPU_CV_mw=4667)
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("50031\n")
    (root / "sys/class/thermal/thermal_zone5/temp").write_text("50000\n")  # soc0
    line = tegrastats_lines(root, 1)[0]
    assert f"RAM 6185/{ORIN['memory_mb']}MB" in line
    assert "CPU [11%@729,22%@729,33%@729,44%@729,55%@1420,66%@1420]" in line
    assert "GR3D_FREQ 73%@[621]" in line and "EMC_FREQ 43%@2133" in line
    assert " cpu@50.031C " in line and " soc0@50C " in line and "cv0" not in line
    assert " VDD_CPU_GPU_CV 4667mW/4667mW " in line  # first sample: the average is the value


def test_tegrastats_averages_power_over_its_own_run(tmp_path: Path) -> None:
    root = device(tmp_path, ORIN)
    proc = subprocess.Popen(["/bin/sh", str(TEGRASTATS), "--interval", "50"], env=env(root),
                            stdout=subprocess.PIPE, text=True)
    try:
        put(root, rail_VDD_SOC_mw=1000)
        first = proc.stdout.readline()  # type: ignore[union-attr]
        put(root, rail_VDD_SOC_mw=3000)
        later = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    cur, avg = (int(x) for x in re.search(r"VDD_SOC (\d+)mW/(\d+)mW", later[-1]).groups())  # type: ignore[union-attr]
    assert "VDD_SOC 1000mW/1000mW" in first or cur == 3000
    assert cur == 3000 and 1000 <= avg < 3000


def test_tegrastats_logfile_and_stop(tmp_path: Path) -> None:
    root = device(tmp_path, ORIN)
    log = tmp_path / "tegrastats.log"
    started = sh(TEGRASTATS, root, "--start", "--interval", "50", "--logfile", str(log))
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("\n") < 2 if log.exists() else True:
            assert time.monotonic() < deadline, "tegrastats --start wrote nothing"
            time.sleep(0.05)
    finally:
        assert sh(TEGRASTATS, root, "--stop").returncode == 0
    first = log.read_text().splitlines()[0]
    assert shape(first) == shape(recorded("tegrastats-orin-nano.txt").splitlines()[0])


def test_tegrastats_rejects_unknown_options(tmp_path: Path) -> None:
    result = sh(TEGRASTATS, device(tmp_path, ORIN), "--bogus")
    assert result.returncode != 0 and "Usage: tegrastats" in result.stderr


# --- nvidia-smi -------------------------------------------------------------------------------

# The recorded A10 (nvidia-smi-table.txt, nvidia-smi-q.txt) as lab value files.
A10 = {
    "gpu_name": "NVIDIA A10", "gpu_pci_bus_id": "00000000:06:00.0", "gpu_driver_version": "550.127.05",
    "gpu_cuda_version": "12.4", "fan_pct": 0, "gpu_temp_mc": 32000, "pstate": "P8", "gpu_power_mw": 21300,
    "gpu_power_limit_mw": 150000, "gpu_mem_used_mib": 1, "gpu_mem_total_mib": 23028, "gpu_mem_reserved_mib": 526,
    "gpu_util_pct": 0, "gpu_mem_util_pct": 0, "gpu_freq_mhz": 210, "gpu_mem_freq_mhz": 405,
    "gpu_max_mhz": 1695, "gpu_mem_max_mhz": 6251,
}


def test_nvidia_smi_table_reproduces_the_recorded_one(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    put(root, **A10)
    result = smi(root)
    assert result.returncode == 0
    ours, theirs = result.stdout.splitlines(), recorded("nvidia-smi-table.txt").splitlines()
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} *", ours[0])  # the clock, not a recording
    assert ours[1:] == theirs[1:]


def test_nvidia_smi_table_cuts_long_names_like_the_real_one(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    put(root, gpu_name="NVIDIA GeForce RTX 2080 SUPER", fan_pct=37, gpu_temp_mc=40000, gpu_power_mw=37000,
        gpu_power_limit_mw=250000, gpu_mem_used_mib=214, gpu_mem_total_mib=8192, gpu_util_pct=0, pstate="P8")
    ours = smi(root).stdout.splitlines()
    theirs = recorded("nvidia-smi-table-595.txt").splitlines()
    assert ours[8].split("|")[1] == theirs[8].split("|")[1]  # "   0  NVIDIA GeForce RTX 2080 ...    Off "
    assert ours[9] == theirs[9]


def test_nvidia_smi_list(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    line = smi(root, "-L").stdout
    pattern = r"GPU 0: .+ \(UUID: GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\)\n"
    assert re.fullmatch(pattern, recorded("nvidia-smi-L.txt"))
    assert re.fullmatch(pattern, line)
    uuid = (root / SENSORS_DIR / "gpu_uuid").read_text().strip()
    assert line == f"GPU 0: NVIDIA RTX A2000 12GB (UUID: {uuid})\n"


def test_nvidia_smi_q_has_the_recorded_layout_and_live_values(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    put(root, **A10)
    put(root, gpu_util_pct=73, gpu_mem_used_mib=5120, gpu_power_mw=98760, gpu_temp_mc=71000)
    ours = smi(root, "-q").stdout.split("\n")
    theirs = recorded("nvidia-smi-q.txt").split("\n")

    def keys(lines: list[str]) -> list[str]:
        return [line.split(" : ")[0] for line in lines]

    assert keys(ours) == keys(theirs)  # every heading and key, indented and aligned the same way
    text = "\n".join(ours)
    assert re.search(r"^    Utilization\n        Gpu {31}: 73 %$", text, re.M)
    assert re.search(r"^    FB Memory Usage\n        Total {29}: 23028 MiB\n.*\n        Used {30}: 5120 MiB$",
                     text, re.M)
    assert re.search(r"^        GPU Current Temp {18}: 71 C$", text, re.M)
    assert re.search(r"^        Power Draw {24}: 98\.76 W$", text, re.M)
    assert "Product Name                          : NVIDIA A10" in text
    for name in ("Clocks", "Temperature", "GPU Power Readings", "Max Clocks"):
        assert f"\n    {name}\n" in text


CSV_FIELDS = ("index,name,uuid,driver_version,pci.bus_id,utilization.gpu,utilization.memory,memory.total,"
              "memory.used,memory.free,temperature.gpu,power.draw,power.limit,clocks.sm,clocks.mem,clocks.gr,"
              "fan.speed,pstate,timestamp")


def test_nvidia_smi_query_gpu_uses_the_recorded_headers_and_value_formats(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    put(root, gpu_name="NVIDIA GeForce RTX 2080 SUPER", gpu_driver_version="595.71.05")
    result = smi(root, f"--query-gpu={CSV_FIELDS}", "--format=csv")
    assert result.returncode == 0
    header, row = (line.split(", ") for line in result.stdout.splitlines())
    rec_header, rec_row = (line.split(", ") for line in recorded("nvidia-smi-query-csv.txt").splitlines())
    # Aliases print under their canonical names: clocks.sm -> clocks.current.sm [MHz].
    assert header[13:16] == ["clocks.current.sm [MHz]", "clocks.current.memory [MHz]", "clocks.current.graphics [MHz]"]
    for name, value in zip(header, row, strict=True):
        assert name in rec_header, name
        same = hex_shape if name in ("uuid", "pci.bus_id") else shape
        assert same(value) == same(rec_row[rec_header.index(name)]), (name, value)


def test_nvidia_smi_query_gpu_tracks_the_sensor_files(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    put(root, gpu_util_pct=73, gpu_power_mw=55500, gpu_mem_used_mib=4096)
    fields = "--query-gpu=utilization.gpu,power.draw,memory.used"
    assert smi(root, fields, "--format=csv").stdout.splitlines()[1] == "73 %, 55.50 W, 4096 MiB"
    assert smi(root, fields, "--format=csv,noheader,nounits").stdout == "73, 55.50, 4096\n"
    assert smi(root, fields, "--format=csv,nounits").stdout.splitlines()[0] == (
        "utilization.gpu [%], power.draw [W], memory.used [MiB]")


def test_nvidia_smi_unknown_field_is_refused_like_the_real_one(tmp_path: Path) -> None:
    result = smi(device(tmp_path, GPC), "--query-gpu=device_minor,gpu_uuid,pci.bus_id",
                 "--format=csv,noheader,nounits")
    assert result.returncode == 2
    assert result.stdout == recorded("nvidia-smi-query-error.txt")


def test_nvidia_smi_loop_prints_the_header_once(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    proc = subprocess.Popen([sys.executable, str(NVIDIA_SMI), "--query-gpu=index,utilization.gpu", "--format=csv",
                             "-lms", "50"], env=env(root), stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert lines[0] == "index, utilization.gpu [%]\n"
    assert all(re.fullmatch(r"0, \d+ %\n", line) for line in lines[1:])


def test_nvidia_smi_help_and_bad_options(tmp_path: Path) -> None:
    root = device(tmp_path, GPC)
    assert smi(root, "--help").stdout.startswith("NVIDIA System Management Interface -- v550.127.05\n")
    bad = smi(root, "--frobnicate")
    assert bad.returncode == 2 and "is not recognized" in bad.stdout


# --- vcgencmd -------------------------------------------------------------------------------


def recorded_vcgencmd() -> dict[str, list[str]]:
    """Command -> output lines, from the single-command blocks of the recorded transcript."""
    out: dict[str, list[str]] = {}
    for block in recorded("vcgencmd.txt").split("\n\n"):
        first, *rest = block.strip("\n").split("\n")
        if first.startswith("$ vcgencmd "):
            out[first.removeprefix("$ vcgencmd ")] = rest
    return out


@pytest.mark.parametrize("command", sorted(recorded_vcgencmd()))
def test_vcgencmd_has_the_recorded_shape(tmp_path: Path, command: str) -> None:
    result = sh(VCGENCMD, device(tmp_path, PI4), *command.split())
    assert result.returncode == 0
    theirs = recorded_vcgencmd()[command]
    assert [shape(line) for line in result.stdout.splitlines()] == [shape(line) for line in theirs]


def test_vcgencmd_clock_ids_are_the_recorded_ones(tmp_path: Path) -> None:
    root = device(tmp_path, PI4)
    ids = dict(re.findall(r"^(\w+):\s+(frequency\(\d+\))=", recorded("vcgencmd.txt"), re.M))
    assert len(ids) == 12
    for clock, prefix in ids.items():
        assert sh(VCGENCMD, root, "measure_clock", clock).stdout.startswith(prefix + "="), clock


def test_vcgencmd_values_come_from_the_sensor_files(tmp_path: Path) -> None:
    root = device(tmp_path, PI4)
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("42842\n")
    put(root, throttled="0x50005", arm_freq_hz=1500398464, core_volts="0.8600")
    assert sh(VCGENCMD, root, "measure_temp").stdout == "temp=42.8'C\n"
    assert sh(VCGENCMD, root, "get_throttled").stdout == "throttled=0x50005\n"
    assert sh(VCGENCMD, root, "measure_clock", "arm").stdout == "frequency(48)=1500398464\n"
    assert sh(VCGENCMD, root, "measure_volts", "core").stdout == "volt=0.8600V\n"
    assert sh(VCGENCMD, root, "measure_volts", "sdram_p").stdout == "volt=1.1000V\n"
    assert sh(VCGENCMD, root, "get_mem", "arm").stdout == f"arm={PI4['memory_mb'] - 76}M\n"


def test_vcgencmd_throttled_agrees_with_sysfs(tmp_path: Path) -> None:
    model = SensorModel(PI4, seed=2)
    model.start_burst(1.0, seconds=600)
    for _ in range(300):
        model.step(1.0)
    write_sensors(tmp_path, model)
    sysfs = (tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled").read_text().strip()
    assert sh(VCGENCMD, tmp_path, "get_throttled").stdout == f"throttled=0x{sysfs}\n"
    assert int(sysfs, 16) & 0x4


def test_vcgencmd_unknown_command_answers_like_the_firmware(tmp_path: Path) -> None:
    result = sh(VCGENCMD, device(tmp_path, PI4), "pmic_read_adc")
    assert result.returncode == 255
    assert result.stdout == recorded("vcgencmd-error.txt")


def test_vcgencmd_without_arguments_prints_its_usage(tmp_path: Path) -> None:
    result = sh(VCGENCMD, device(tmp_path, PI4))
    assert result.returncode == 0 and result.stdout.startswith("Usage: vcgencmd command [ params ]\n")
