"""The vendor tools' output: nvidia-smi's CSV query, tegrastats lines, vcgencmd answers; and the long-lived
reader that keeps one streaming tool running for the whole telemetry session.

Formats are those of the real tools as recorded in tests/fixtures/recorded/ (SOURCES.md says from where).
"""

from __future__ import annotations

import math
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

# nvidia-smi --query-gpu fields, in this order (nvidia-smi --help-query-gpu names them). "index" comes first
# so that the rows of a multi-GPU loop can be told apart.
NVIDIA_FIELDS = ("index", "utilization.gpu", "memory.used", "memory.total", "temperature.gpu", "power.draw")
NVIDIA_KEYS = ("util_pct", "mem_used_mb", "mem_total_mb", "temp_c", "power_w")


class ToolError(ValueError):
    """A tool printed something that is not the answer (an error message, another format)."""


def _number(text: str) -> float | None:
    """A finite number from a field such as "39.32", "39.32 W", "214 MiB", "0 %"; None for "[N/A]",
    "[Not Supported]", "N/A" and other text (nvidia-smi prints those for fields a GPU does not report)."""
    text = text.strip()
    if not text or text.startswith("[") or text.upper() == "N/A":
        return None
    head = text.split()[0]
    try:
        value = float(head)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _tidy(value: float | None) -> float | int | None:
    """Whole numbers as int (util 30, not 30.0), others as they are."""
    if value is None:
        return None
    return int(value) if value == int(value) else value


def nvidia_command(interval_ms: int | None = None) -> list[str]:
    """The nvidia-smi argv: one answer, or with interval_ms a row per GPU every interval (-lms, its loop mode)."""
    argv = ["nvidia-smi", "--query-gpu=" + ",".join(NVIDIA_FIELDS), "--format=csv,noheader,nounits"]
    if interval_ms:
        argv.append(f"-lms={int(interval_ms)}")
    return argv


def parse_nvidia_row(line: str, fields: tuple[str, ...] = NVIDIA_FIELDS) -> dict[str, Any]:
    """One CSV row of `nvidia-smi --query-gpu=FIELDS --format=csv,noheader[,nounits]` as
    {"index"?, "util_pct", "mem_used_mb", "mem_total_mb", "temp_c", "power_w"}; raises ToolError otherwise."""
    cells = [c.strip() for c in line.split(",")]
    if len(cells) != len(fields):
        raise ToolError(f"nvidia-smi printed {line.strip()[:200]!r}, not {len(fields)} comma-separated values")
    row: dict[str, Any] = {}
    for name, cell in zip(fields, cells):
        if name == "index":
            index = _number(cell)
            if index is None:
                raise ToolError(f"nvidia-smi printed {line.strip()[:200]!r}: no GPU index")
            row["index"] = int(index)
        else:
            row[NVIDIA_KEYS[NVIDIA_FIELDS.index(name) - 1]] = _tidy(_number(cell))
    if all(row.get(k) is None for k in NVIDIA_KEYS if k in row):
        raise ToolError(f"nvidia-smi printed {line.strip()[:200]!r}: no value in it")
    return row


def parse_nvidia_smi(text: str, fields: tuple[str, ...] = NVIDIA_FIELDS) -> list[dict[str, Any]]:
    """Every row (one per GPU) of a --query-gpu answer. An error message (`Field "x" is not a valid field to
    query.`, "NVIDIA-SMI has failed ...") raises ToolError with the tool's own words."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            rows.append(parse_nvidia_row(line, fields))
    if not rows:
        raise ToolError("nvidia-smi printed nothing")
    return rows


_UNIT = re.compile(r"\s*\[[^\]]*\]$")


def parse_nvidia_csv(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=... --format=csv` with its header line (and units in the values, as in
    nvidia-smi-query-csv.txt): the five values of NVIDIA_KEYS per GPU, picked out by the header's names."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ToolError(f"nvidia-smi printed {text.strip()[:200]!r}, not a header and rows")
    names = [_UNIT.sub("", cell.strip()) for cell in lines[0].split(",")]
    wanted = {name: NVIDIA_KEYS[i - 1] for i, name in enumerate(NVIDIA_FIELDS) if i}
    if not set(wanted) & set(names):
        raise ToolError(f"nvidia-smi printed {lines[0][:200]!r}, not a header naming the GPU fields")
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) != len(names):
            raise ToolError(f"nvidia-smi row has {len(cells)} values for {len(names)} fields")
        values = dict(zip(names, cells))
        row: dict[str, Any] = {key: _tidy(_number(values[name])) if name in values else None
                               for name, key in wanted.items()}
        if "index" in values and _number(values["index"]) is not None:
            row["index"] = int(_number(values["index"]) or 0)
        rows.append(row)
    return rows


# The default table (nvidia-smi with no arguments; recorded for drivers 550 and 595): per GPU, the line with
# index and name, then "| Fan Temp Perf Pwr:Usage/Cap | Memory-Usage | GPU-Util Compute M. |".
_TABLE_NAME = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off)\s+\|")
_TABLE_VALUES = re.compile(
    r"^\|\s*(?:\d+%|N/A)\s+(?P<temp>\d+C|N/A)\s+\S+\s+(?P<power>\d+W|N/A)\s*/\s*(?:\d+W|N/A)\s*"
    r"\|\s*(?P<used>\d+)MiB\s*/\s*(?P<total>\d+)MiB\s*\|\s*(?P<util>\d+%|N/A)\s")


def parse_nvidia_smi_table(text: str) -> list[dict[str, Any]]:
    """The default table's GPUs as {"index", "name", "util_pct", "mem_used_mb", "mem_total_mb", "temp_c",
    "power_w"}. The table rounds power to whole watts and cuts long names ("NVIDIA GeForce RTX 2080 ...")."""
    gpus: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _TABLE_NAME.match(line)
        if m and "Processes" not in line:
            pending = {"index": int(m.group(1)), "name": m.group(2)}
            continue
        m = _TABLE_VALUES.match(line)
        if m and pending is not None:
            pending.update({
                "util_pct": _tidy(_number(m.group("util").rstrip("%"))),
                "mem_used_mb": int(m.group("used")), "mem_total_mb": int(m.group("total")),
                "temp_c": _tidy(_number(m.group("temp").rstrip("C"))),
                "power_w": _tidy(_number(m.group("power").rstrip("W"))),
            })
            gpus.append(pending)
            pending = None
    if not gpus:
        raise ToolError("no GPU rows in nvidia-smi's table")
    return gpus


def parse_nvidia_smi_q(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi -q`: per GPU ("GPU 00000000:06:00.0" blocks) the product name, bus id and the five values
    (FB Memory Usage Used/Total, Utilization Gpu, Temperature GPU Current Temp, GPU Power Readings Power Draw;
    drivers before 530 call the last section "Power Readings")."""
    gpus: list[dict[str, Any]] = []
    gpu: dict[str, Any] | None = None
    section = ""
    for line in text.splitlines():
        if line.startswith("GPU "):
            gpu = {"bus_id": line[4:].strip(), "name": None, "util_pct": None, "mem_used_mb": None,
                   "mem_total_mb": None, "temp_c": None, "power_w": None}
            gpus.append(gpu)
            section = ""
            continue
        if gpu is None or not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        if indent == 4:
            section = key if not sep else ""
            if key == "Product Name":
                gpu["name"] = value
            continue
        if indent != 8 or not sep:
            continue
        if section == "FB Memory Usage" and key in ("Used", "Total"):
            gpu["mem_used_mb" if key == "Used" else "mem_total_mb"] = _tidy(_number(value))
        elif section == "Utilization" and key == "Gpu":
            gpu["util_pct"] = _tidy(_number(value))
        elif section == "Temperature" and key == "GPU Current Temp":
            gpu["temp_c"] = _tidy(_number(value))
        elif section in ("GPU Power Readings", "Power Readings") and key == "Power Draw":
            gpu["power_w"] = _tidy(_number(value))
    if not gpus:
        raise ToolError("no GPU blocks in nvidia-smi -q")
    return gpus


_LIST = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)$")


def parse_nvidia_smi_list(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi -L`: [{"index", "name", "uuid"}] ("GPU 0: NVIDIA GeForce RTX 2080 SUPER (UUID: GPU-...)")."""
    gpus = []
    for line in text.splitlines():
        m = _LIST.match(line.strip())
        if m:
            gpus.append({"index": int(m.group(1)), "name": m.group(2), "uuid": m.group(3)})
    return gpus


def combine_gpus(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample's "gpu" for one or several GPUs: mean utilisation, summed memory and power, the hottest
    temperature; with several GPUs, "gpus" lists each one as nvidia-smi reported it."""
    if len(rows) == 1:
        return {k: rows[0].get(k) for k in NVIDIA_KEYS}

    def values(key: str) -> list[float]:
        return [r[key] for r in rows if r.get(key) is not None]

    util, temp = values("util_pct"), values("temp_c")
    used, total, power = values("mem_used_mb"), values("mem_total_mb"), values("power_w")
    return {
        "util_pct": round(sum(util) / len(util), 1) if util else None,
        "mem_used_mb": _tidy(sum(used)) if used else None,
        "mem_total_mb": _tidy(sum(total)) if total else None,
        "temp_c": max(temp) if temp else None,
        "power_w": round(sum(power), 2) if power else None,
        "count": len(rows),
        "gpus": [{k: r.get(k) for k in ("index", *NVIDIA_KEYS) if k in r} for r in rows],
    }


# tegrastats. Field layouts (recorded: Orin R36 as root and as a user, Xavier NX R32 and R35):
#   RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) CPU [15%@729,11%@729,off,...]
#   GR3D_FREQ 63%@[621] | GR3D_FREQ 0%@1109 | GR3D_FREQ 0%      temps: cpu@53.968C GPU@31.5C
#   power rails: VDD_IN 12479mW/12479mW (R35+: current/average) | VDD_IN 6140/5510 (R32: mW, no unit)
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPUS = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"^(\d+)%@(\d+)$")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)(?:,[\d,]*)?\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_RAIL = re.compile(r"(?<!\S)([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP"}


def parse_tegrastats(line: str) -> dict[str, Any]:
    """One tegrastats line as {"ram": {"used_mb", "total_mb"}, "swap": {...}, "cpu": [{"pct", "mhz"} | None],
    "gr3d_pct", "gr3d_mhz", "emc_pct", "temps": {name: °C}, "rails_mw": {rail: [current, average]}}.
    Raises ToolError for a line with none of these (a usage message, an error)."""
    out: dict[str, Any] = {}
    m = _RAM.search(line)
    if m:
        out["ram"] = {"used_mb": int(m.group(1)), "total_mb": int(m.group(2))}
    m = _SWAP.search(line)
    if m:
        out["swap"] = {"used_mb": int(m.group(1)), "total_mb": int(m.group(2))}
    m = _CPUS.search(line)
    if m:
        cores: list[dict[str, int] | None] = []
        for item in m.group(1).split(","):
            c = _CORE.match(item.strip())
            cores.append({"pct": int(c.group(1)), "mhz": int(c.group(2))} if c else None)  # "off": offline
        out["cpu"] = cores
    m = _GR3D.search(line)
    if m:
        out["gr3d_pct"] = int(m.group(1))
        out["gr3d_mhz"] = int(m.group(2)) if m.group(2) else None
    m = _EMC.search(line)
    if m:
        out["emc_pct"] = int(m.group(1))
    temps = {}
    for name, value in _TEMP.findall(line):
        t = float(value)
        if t > -200.0:  # -256 C is a powered-off zone
            temps[name] = t
    if temps:
        out["temps"] = temps
    rails = {name: [int(cur), int(avg)] for name, cur, avg in _RAIL.findall(line) if name not in _NOT_RAILS}
    if rails:
        out["rails_mw"] = rails
    if not out:
        raise ToolError(f"tegrastats printed {line.strip()[:200]!r}, not a statistics line")
    return out


def _gpu_rail(rails: dict[str, list[int]]) -> int | None:
    """The current mW of a rail that powers the GPU alone (VDD_GPU_SOC, POM_5V_GPU, GPU), not a shared
    one such as VDD_CPU_GPU_CV, which also carries the CPU and the vision accelerators."""
    for name, (cur, _) in rails.items():
        upper = name.upper()
        if "GPU" in upper and "CPU" not in upper and "CV" not in upper:
            return cur
    return None


def tegrastats_sample(parsed: dict[str, Any]) -> dict[str, Any]:
    """What a tegrastats line gives the sample: "gpu" (GR3D load, the gpu zone's temperature, a GPU-only
    rail's power), "power" ({rail: watts now}), "temps", "cpu_freq_mhz". Jetson GPU memory is the system's
    RAM, so "gpu" has no memory figures."""
    out: dict[str, Any] = {}
    temps = parsed.get("temps", {})
    gpu_temp = next((t for name, t in temps.items() if name.lower() == "gpu"), None)
    rails = parsed.get("rails_mw", {})
    if "gr3d_pct" in parsed:
        mw = _gpu_rail(rails)
        out["gpu"] = {"util_pct": parsed["gr3d_pct"], "mem_used_mb": None, "mem_total_mb": None,
                      "temp_c": gpu_temp, "power_w": None if mw is None else mw / 1000.0}
        if parsed.get("gr3d_mhz") is not None:
            out["gpu"]["freq_mhz"] = parsed["gr3d_mhz"]
    if rails:
        out["power"] = {name: cur / 1000.0 for name, (cur, _) in rails.items()}
    if temps:
        out["temps"] = dict(temps)
    cores = parsed.get("cpu")
    if cores:
        out["cpu_freq_mhz"] = [c["mhz"] for c in cores if c is not None]
    return out


# vcgencmd (recorded: vcgencmd.txt, vcgencmd-error.txt)
_VC_TEMP = re.compile(r"^temp=(-?\d+(?:\.\d+)?)'C$")
_VC_THROTTLED = re.compile(r"^throttled=(0x[0-9a-fA-F]+)$")


def _vc_answer(text: str, pattern: re.Pattern[str], what: str) -> str:
    for line in text.splitlines():
        m = pattern.match(line.strip())
        if m:
            return m.group(1)
    raise ToolError(f"vcgencmd {what} printed {text.strip()[:200]!r}")


def parse_measure_temp(text: str) -> float:
    """`vcgencmd measure_temp` ("temp=42.8'C") in °C; ToolError for the firmware's error answer."""
    return float(_vc_answer(text, _VC_TEMP, "measure_temp"))


def parse_get_throttled(text: str) -> int:
    """`vcgencmd get_throttled` ("throttled=0x50005") as the bit field."""
    return int(_vc_answer(text, _VC_THROTTLED, "get_throttled"), 16)


def run_tool(argv: list[str], timeout: float = 5.0) -> str | None:
    """A tool's stdout, or None when it is absent, fails or hangs (a missing source is left out, not fatal)."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


class StreamingTool:
    """One long-lived child (tegrastats --interval, nvidia-smi -lms) read by a thread; `latest()` gives the last
    parsed value no older than `max_age` seconds. Never one process per sample: starting nvidia-smi costs tens
    of milliseconds of CPU, and tegrastats's averages only mean something over a running session."""

    def __init__(self, argv: list[str], parse: Callable[[str, Any], Any], max_age: float) -> None:
        self.argv = argv
        self._parse = parse  # (line, previous value) -> new value; raises ToolError/ValueError to skip the line
        self.max_age = max_age
        self._value: Any = None
        self._at = 0.0
        self._lock = threading.Lock()
        self.error: str | None = None
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self._proc, self.error = None, f"{argv[0]}: {exc.strerror}"
            return
        self._thread = threading.Thread(target=self._read, name=f"read-{argv[0]}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace")
            try:
                with self._lock:
                    value = self._parse(line, self._value)
                    self._value, self._at = value, time.monotonic()
            except (ToolError, ValueError) as exc:
                self.error = str(exc)

    def latest(self) -> Any:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self.max_age:
                return None
            return self._value

    def wait_first(self, timeout: float) -> Any:
        """The first value, waiting up to `timeout` seconds for the tool to print it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.running:
            value = self.latest()
            if value is not None:
                return value
            time.sleep(0.02)
        return self.latest()

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None


def tegrastats_stream(tool: str, interval_s: float) -> StreamingTool:
    """`tegrastats --interval MS`, one line per interval; the latest line's parse is kept."""
    ms = max(100, round(interval_s * 1000))
    return StreamingTool([tool, "--interval", str(ms)], lambda line, _prev: parse_tegrastats(line),
                         max_age=max(3.0, 3 * interval_s))


def nvidia_stream(tool: str, interval_s: float) -> StreamingTool:
    """nvidia-smi's query loop: a row per GPU per interval. The value is {index: row}, each GPU's latest row."""
    ms = max(100, round(interval_s * 1000))
    argv = nvidia_command(ms)
    argv[0] = tool

    def parse(line: str, prev: dict[int, dict[str, Any]] | None) -> dict[int, dict[str, Any]]:
        if not line.strip():
            raise ToolError("empty line")
        row = parse_nvidia_row(line)
        rows = dict(prev or {})
        rows[row["index"]] = row
        return rows

    return StreamingTool(argv, parse, max_age=max(3.0, 3 * interval_s))
