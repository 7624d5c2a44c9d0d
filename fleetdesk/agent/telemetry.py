"""The `telemetry` command: a Collector that reads the sources a device has and builds the "sample" object
documented in fleetdesk/telemetry/sample.py, and the loop that prints one every interval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import gpu, procfs, protocol, sensors

SCHEMA_VERSION = 1
# How old the model server's statistics may be and still describe "now".
INFERENCE_MAX_AGE_S = 10.0

# Source names, as device profiles list them in [telemetry].sources (device_profiles/*.toml).
#   procfs      /proc/stat, /proc/loadavg, /proc/meminfo; the FleetDesk root's disk; per-core clocks
#               (cpufreq), which no profile names apart
#   thermal     /sys/class/thermal zones
#   cpufreq     per-core clocks from /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq alone
#   nvidia-smi  an NVIDIA GPU (one long-lived `nvidia-smi --query-gpu ... -lms` loop)
#   tegrastats  a Jetson's GPU, power rails (and temperatures/clocks where thermal/cpufreq are not named)
#   gpu-sysfs   a Jetson's GPU load from /sys/devices/gpu.0/load, without tegrastats
#   vcgencmd    a Pi's throttling flags (sysfs get_throttled when the kernel has it, else vcgencmd) and,
#               without thermal, its SoC temperature
SOURCES = ("procfs", "thermal", "cpufreq", "nvidia-smi", "tegrastats", "gpu-sysfs", "vcgencmd")


def parse_sources(text: str) -> list[str]:
    """"procfs,thermal" -> ["procfs", "thermal"]; AgentError for a name this agent does not know."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise protocol.AgentError(
            protocol.BAD_ARGUMENTS, f"unknown telemetry source {', '.join(unknown) or '(none given)'}",
            fix=f"name sources from: {', '.join(SOURCES)}")
    return names


def _which(tool: str) -> str | None:
    return shutil.which(tool)


class Collector:
    """Builds one sample per call to `sample()`. `sources` None = use whatever this device has.

    Reads /proc and /sys below `sysroot` ("" on a device; a fake tree in tests); the disk figure is the
    filesystem of `root`. A source that is absent or unreadable is left out of the sample, never fatal.
    """

    def __init__(self, root: str, sysroot: str = "", sources: Iterable[str] | None = None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.sysroot = sysroot
        self.clock = clock
        self.seq = 0
        self.sources = list(sources) if sources is not None else self.detect()
        self._prev_stat = self._read_stat() if "procfs" in self.sources else None
        self._tegrastats: gpu.StreamingTool | None = None
        self._nvidia: gpu.StreamingTool | None = None
        tool = _which("tegrastats") if "tegrastats" in self.sources else None
        if tool:
            self._tegrastats = gpu.tegrastats_stream(tool, interval_s)
        tool = _which("nvidia-smi") if "nvidia-smi" in self.sources else None
        if tool:
            self._nvidia = gpu.nvidia_stream(tool, interval_s)
        self._vcgencmd = _which("vcgencmd") if "vcgencmd" in self.sources else None

    def detect(self) -> list[str]:
        """The sources this device has: procfs always, the others where their file or tool is present."""
        found = ["procfs"]
        if sensors.has_thermal(self.sysroot):
            found.append("thermal")
        if sensors.cpu_freq_mhz(self.sysroot):
            found.append("cpufreq")
        if _which("nvidia-smi"):
            found.append("nvidia-smi")
        if _which("tegrastats"):
            found.append("tegrastats")
        elif os.path.exists(self.sysroot + sensors.JETSON_GPU_LOAD):
            found.append("gpu-sysfs")
        if _which("vcgencmd") or os.path.exists(self.sysroot + sensors.PI_THROTTLED):
            found.append("vcgencmd")
        return found

    def _path(self, path: str) -> str:
        return self.sysroot + path

    def _read_text(self, path: str) -> str | None:
        try:
            with open(self._path(path), encoding="ascii", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def _read_stat(self) -> dict[str, list[int]] | None:
        text = self._read_text("/proc/stat")
        return procfs.parse_stat(text) if text is not None else None

    def close(self) -> None:
        for tool in (self._tegrastats, self._nvidia):
            if tool is not None:
                tool.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float) -> None:
        """Wait (up to `timeout` s) for the streaming tools' first line, so the first sample has them."""
        for tool in (self._tegrastats, self._nvidia):
            if tool is not None:
                tool.wait_first(timeout)

    def sample(self) -> dict[str, Any]:
        self.seq += 1
        out: dict[str, Any] = {"type": "sample", "v": SCHEMA_VERSION, "t": round(self.clock(), 3), "seq": self.seq}
        src: dict[str, str] = {}
        if "procfs" in self.sources:
            self._procfs(out, src)
        cpu_freq_wanted = "cpufreq" in self.sources or "procfs" in self.sources
        if cpu_freq_wanted:
            freqs = sensors.cpu_freq_mhz(self.sysroot)
            if freqs:
                out.setdefault("cpu", {})["freq_mhz"] = freqs
                src["cpu_freq"] = "/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq"
        if "thermal" in self.sources:
            temps = sensors.thermal_zones(self.sysroot)
            if temps:
                out["temps"] = temps
                src["temps"] = sensors.THERMAL_DIR
        self._gpu(out, src)
        if "vcgencmd" in self.sources:
            self._pi(out, src)
        inference = self._inference()
        if inference is not None:
            out["inference"] = inference
            src["inference"] = os.path.join(self.root, "run", "serve-stats.json")
        out["sources"] = src
        return out

    def _procfs(self, out: dict[str, Any], src: dict[str, str]) -> None:
        cur = self._read_stat()
        if cur is not None:
            total, per_core = procfs.cpu_percent(self._prev_stat or {}, cur)
            self._prev_stat = cur
            if total is not None:
                out["cpu"] = {"total": total, "per_core": per_core}
                src["cpu"] = "/proc/stat"
        text = self._read_text("/proc/loadavg")
        if text is not None:
            try:
                out["load"] = procfs.parse_loadavg(text)
                src["load"] = "/proc/loadavg"
            except ValueError:
                pass
        text = self._read_text("/proc/meminfo")
        if text is not None:
            info = procfs.parse_meminfo(text)
            if "MemTotal" in info:
                out["mem"] = procfs.memory(info)
                src["mem"] = "/proc/meminfo"
            if "SwapTotal" in info:
                out["swap"] = procfs.swap(info)
                src["swap"] = "/proc/meminfo"
        disk = sensors.disk(self.root)
        if disk is not None:
            out["disk"] = disk
            src["disk"] = "statvfs"

    def _gpu(self, out: dict[str, Any], src: dict[str, str]) -> None:
        if self._nvidia is not None:
            rows = self._nvidia.latest()
            if rows:
                out["gpu"] = gpu.combine_gpus([rows[i] for i in sorted(rows)])
                src["gpu"] = "nvidia-smi"
        if self._tegrastats is not None:
            line = self._tegrastats.latest()
            if line:
                part = gpu.tegrastats_sample(line)
                if "gpu" in part and "gpu" not in out:
                    out["gpu"] = part["gpu"]
                    src["gpu"] = "tegrastats"
                if "power" in part:
                    out["power"] = part["power"]
                    src["power"] = "tegrastats"
                if "temps" in part and "temps" not in out:
                    out["temps"] = part["temps"]
                    src["temps"] = "tegrastats"
                if part.get("cpu_freq_mhz") and "freq_mhz" not in out.get("cpu", {}):
                    if "cpu" in out:
                        out["cpu"]["freq_mhz"] = part["cpu_freq_mhz"]
                        src["cpu_freq"] = "tegrastats"
        if "gpu" not in out and ("gpu-sysfs" in self.sources or "tegrastats" in self.sources):
            load = sensors.jetson_gpu_load(self.sysroot)
            if load is not None:
                out["gpu"] = {"util_pct": load, "mem_used_mb": None, "mem_total_mb": None,
                              "temp_c": (out.get("temps") or {}).get("gpu-thermal"), "power_w": None}
                src["gpu"] = sensors.JETSON_GPU_LOAD

    def _pi(self, out: dict[str, Any], src: dict[str, str]) -> None:
        value = sensors.pi_throttled(self.sysroot)
        where = sensors.PI_THROTTLED
        if value is None and self._vcgencmd:
            answer = gpu.run_tool([self._vcgencmd, "get_throttled"])
            try:
                value = gpu.parse_get_throttled(answer) if answer is not None else None
            except gpu.ToolError:
                value = None
            where = "vcgencmd"
        if value is not None:
            out["throttled"] = sensors.decode_throttled(value)
            src["throttled"] = where
        if "temps" not in out and self._vcgencmd:
            answer = gpu.run_tool([self._vcgencmd, "measure_temp"])
            try:
                if answer is not None:
                    out["temps"] = {"soc": gpu.parse_measure_temp(answer)}
                    src["temps"] = "vcgencmd"
            except gpu.ToolError:
                pass

    def _inference(self) -> dict[str, Any] | None:
        path = os.path.join(self.root, "run", "serve-stats.json")
        try:
            with open(path, encoding="utf-8") as f:
                stats = json.load(f)
            mtime = os.stat(path).st_mtime
        except (OSError, ValueError):
            return None
        if not isinstance(stats, dict):
            return None
        written = stats.get("t")
        if isinstance(written, bool) or not isinstance(written, (int, float)):
            written = mtime
        if self.clock() - written > INFERENCE_MAX_AGE_S:
            return None  # the server stopped (or hangs): an old figure would look like a live one
        return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between samples")
    parser.add_argument("--count", type=int, default=0, metavar="N", help="stop after N samples (0: never)")
    parser.add_argument("--sources", default=None, metavar="A,B",
                        help=f"sources to read (default: what the device has): {', '.join(SOURCES)}")


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    if not (0.05 <= args.interval <= 3600):
        raise protocol.AgentError(protocol.BAD_ARGUMENTS, f"--interval {args.interval:g} is out of range",
                                  fix="give an interval between 0.05 and 3600 seconds")
    if args.count < 0:
        raise protocol.AgentError(protocol.BAD_ARGUMENTS, f"--count {args.count} is negative",
                                  fix="give a count of samples, or 0 to stream until stopped")
    sources = parse_sources(args.sources) if args.sources is not None else None
    with Collector(args.root, args.sysroot, sources, interval_s=args.interval) as collector:
        start = time.monotonic()
        tick = 0
        while True:
            # Slot k is at start + k*interval on the monotonic clock: no drift, however long a sample
            # takes. A slot already missed (the device was busy, stdout was blocked) is skipped, not caught up.
            tick += 1
            delay = start + tick * args.interval - time.monotonic()
            if delay < -args.interval:
                tick += int(-delay // args.interval)
                delay = start + tick * args.interval - time.monotonic()
            if tick == 1:
                collector.wait_ready(max(0.0, delay))
                delay = start + tick * args.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            emit(collector.sample())
            if args.count and collector.seq >= args.count:
                return protocol.EXIT_OK
