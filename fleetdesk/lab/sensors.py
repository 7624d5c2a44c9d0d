"""The sensor process of one lab device: it keeps load, clocks, temperatures, power and memory moving.

It owns the sensor files under the device root R: fake sysfs sensors, the lab value files, the fake procfs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import select
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fleetdesk.lab.standins import PROC_DIR, PROC_FILES, SENSORS_DIR

USER_HZ = 100

_DIGITS = re.compile(r"\d+")
_RAIL_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Hardware:
    """HW.json as the sensors read it; keys it lacks take the values of a typical part."""

    name: str
    cpu_count: int
    memory_mb: int
    arch: str = "x86_64"
    cpu_max_mhz: int = 2000
    cpu_min_mhz: int = 600
    swap_mb: int = 0
    thermal_zones: tuple[str, ...] = ()
    gpu: str = "none"
    gpu_name: str = ""
    gpu_memory_mb: int = 0
    gpu_max_mhz: int = 0
    tegra_model: str = ""
    power_rails: tuple[str, ...] = ()
    # Optional keys beyond the device profile: what nvidia-smi and vcgencmd report about the part.
    gpu_power_limit_w: float = 70.0
    gpu_mem_max_mhz: int = 6001
    driver_version: str = "550.127.05"
    cuda_version: str = "12.4"
    gpu_pci_bus_id: str = "00000000:01:00.0"
    gpu_mem_mb: int = 76  # the VideoCore's share of a Pi's memory

    @classmethod
    def from_dict(cls, hw: Mapping[str, Any]) -> Hardware:
        missing = [k for k in ("name", "cpu_count", "memory_mb") if k not in hw]
        if missing:
            raise ValueError(f"hardware description lacks {', '.join(missing)}")
        scalar: dict[str, Any] = {"int": int, "float": float, "str": str}
        made = cls(**{  # the tuple fields (zones, rails) get strings whatever the JSON held
            f.name: scalar.get(str(f.type), lambda v: tuple(map(str, v)))(hw[f.name])
            for f in fields(cls) if f.name in hw
        })
        if made.gpu not in ("none", "raspberrypi", "jetson", "nvidia"):
            raise ValueError(f"unknown gpu kind {made.gpu!r}: use none, raspberrypi, jetson or nvidia")
        if made.cpu_count < 1 or made.memory_mb < 1:
            raise ValueError("cpu_count and memory_mb must be positive")
        bad = [r for r in made.power_rails if not _RAIL_NAME.match(r)]
        if bad:  # rail names become file names and shell variable names in tegrastats
            raise ValueError(f"power rail names must be letters, digits and _: {bad}")
        return made


# /proc/stat columns kept per CPU: user nice system idle iowait irq softirq (steal and guests stay 0).
_BUSY_SHARE = (0.72, 0.01, 0.22, 0.0, 0.0, 0.01, 0.04)
_IDLE_SHARE = (0.0, 0.0, 0.0, 0.98, 0.02, 0.0, 0.0)
_IDLE = 3


def _advance(times: list[float], util: float, jiffies: float) -> None:
    """Spread `jiffies` over one CPU's columns; floats, so that small steps add up."""
    busy, idle = jiffies * util, jiffies * (1.0 - util)
    for i, (b, j) in enumerate(zip(_BUSY_SHARE, _IDLE_SHARE, strict=True)):
        times[i] += busy * b + idle * j


def _approach(value: float, target: float, dt: float, tau: float) -> float:
    """First-order lag: how a heat sink (or a governor) follows its input."""
    return value + (target - value) * (1.0 - math.exp(-dt / tau))


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


class SensorModel:
    """The moving state of one device. `step(dt)` advances it by dt seconds; renderers read it."""

    BURST_GAP_S = 45.0  # mean idle time between inference bursts

    def __init__(
        self, hw: Mapping[str, Any], seed: int | None = None, boot_time: float | None = None
    ) -> None:
        self.hw = Hardware.from_dict(hw)
        # Which thermal/clock behaviour applies: raspberrypi, jetson or pc.
        self.kind = self.hw.gpu if self.hw.gpu in ("raspberrypi", "jetson") else "pc"
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        now = time.time()
        self.boot_time = now if boot_time is None else min(float(boot_time), now)
        self.uptime_s = now - self.boot_time
        n = self.hw.cpu_count
        self.load = 0.0  # inference activity 0..1, drives the accelerator (or the CPU on CPU-only devices)
        self._burst_left = self._burst_level = 0.0
        self._cpu_base = [self.rng.uniform(2.0, 10.0) for _ in range(n)]
        self.cpu_util = list(self._cpu_base)
        self.gpu_util = 0.0
        self._apps_frac = self.rng.uniform(0.15, 0.3)
        self._cache_frac = self.rng.uniform(0.15, 0.3)
        self.swap_used_kb = 0.0
        self._gpu_model_mib = self.rng.uniform(400.0, 0.3 * max(self.hw.gpu_memory_mb, 1400))
        self._zone_offset = {z: self.rng.uniform(-1.5, 1.5) for z in self.hw.thermal_zones}
        self.zone_temp_c = {z: self._zone_target(z) for z in self.hw.thermal_zones}
        self._step_zones(0.0)
        self.dgpu_temp_c = 32.0  # a discrete GPU idles near 32 C and rises ~48 C at full load
        self._capped = False
        self.throttled = self._throttled_since_boot = 0  # get_throttled bits, now and since boot
        self.cluster_mhz = float(self.hw.cpu_min_mhz)
        self.cpu_mhz = [float(self.hw.cpu_min_mhz)] * n
        # Counters start as if the device had been up since boot_time, mostly idle.
        self.cpu_times = [[0.0] * len(_BUSY_SHARE) for _ in range(n)]
        for times in self.cpu_times:
            _advance(times, 0.06, self.uptime_s * USER_HZ)
        self.ctxt, self.intr, self.softirq = (self.uptime_s * per_s * n for per_s in (400.0, 250.0, 120.0))
        self.processes = 600.0 + self.uptime_s * 0.8
        self._step_clocks()
        self.proc_sizes = {name: _capacity(text) for name, text in proc_files(self).items()}

    @property
    def cpu_avg(self) -> float:
        return sum(self.cpu_util) / len(self.cpu_util)

    def step(self, dt: float) -> None:
        """Advance every quantity by dt seconds of simulated time."""
        if dt <= 0:
            return
        self.uptime_s += dt
        self._step_load(dt)
        self._step_cpu(dt)
        self._step_memory(dt)
        self._step_zones(dt)
        self.dgpu_temp_c = _approach(self.dgpu_temp_c, 32.0 + 0.48 * self.gpu_util, dt, 35.0)
        self._step_throttle()
        self._step_clocks()
        self._step_counters(dt)

    def start_burst(self, level: float, seconds: float) -> None:
        """Start an inference burst of `level` (0..1) now; lab scenarios use it to heat a device."""
        self._burst_level, self._burst_left = _clamp(level, 0.0, 1.0), seconds

    def _step_load(self, dt: float) -> None:
        # Inference arrives in bursts (a batch, a camera event) separated by idle gaps.
        if self._burst_left > 0:
            self._burst_left -= dt
        elif self.rng.random() < 1.0 - math.exp(-dt / self.BURST_GAP_S):
            self.start_burst(self.rng.uniform(0.45, 0.98), self.rng.uniform(5.0, 40.0))
        target = self._burst_level if self._burst_left > 0 else 0.0
        self.load = _clamp(_approach(self.load, target, dt, 1.0), 0.0, 1.0)
        if self.hw.gpu in ("jetson", "nvidia"):
            idle = self.rng.uniform(0.0, 3.0)
            self.gpu_util = _clamp(100.0 * self.load + idle + self.rng.gauss(0.0, 1.5), 0.0, 100.0)

    def _step_cpu(self, dt: float) -> None:
        has_accel = self.hw.gpu in ("jetson", "nvidia")
        keep = math.exp(-0.3 * dt)
        for i, base in enumerate(self._cpu_base):
            # Ornstein-Uhlenbeck background (services, the agent, the OS), exact for any dt.
            base = 6.0 + (base - 6.0) * keep + 5.0 * math.sqrt(1.0 - keep * keep) * self.rng.gauss(0.0, 1.0)
            self._cpu_base[i] = base = _clamp(base, 0.0, 40.0)
            # With an accelerator only pre/post-processing lands on the CPU (cores 0-1).
            extra = (35.0 if i < 2 else 4.0) * self.load if has_accel else 92.0 * self.load
            self.cpu_util[i] = _clamp(base + extra + self.rng.gauss(0.0, 1.0), 0.0, 100.0)

    def _step_memory(self, dt: float) -> None:
        unified = 0.12 * self.load if self.hw.gpu == "jetson" else 0.0  # Jetson GPU memory is system RAM
        wander = math.sqrt(min(dt, 30.0)) * self.rng.gauss(0.0, 1.0)
        self._apps_frac = _clamp(_approach(self._apps_frac, 0.24 + unified, dt, 20.0) + 0.004 * wander, 0.05, 0.85)
        self._cache_frac = _clamp(_approach(self._cache_frac, 0.25, dt, 100.0) + 0.003 * wander, 0.05, 0.4)
        swap_total = self.hw.swap_mb * 1024.0
        rate = 2048.0 if self._apps_frac > 0.6 else -64.0  # kB/s: pushed out under pressure, slowly back
        self.swap_used_kb = _clamp(self.swap_used_kb + rate * dt, 0.0, 0.5 * swap_total)

    def _zone_target(self, zone: str) -> float:
        """Steady-state temperature of a thermal zone at the current load (degrees C)."""
        cpu, gpu, name = self.cpu_avg / 100.0, self.gpu_util / 100.0, zone.lower()
        off = self._zone_offset.get(zone, 0.0)
        if name.startswith("pmic"):
            return 50.0  # the PMIC die sensor reports a fixed value on Jetsons
        if self.kind == "jetson":
            if name.startswith("cv"):
                return -256.0  # Orin reports -256 C for the powered-off DLA/PVA (cv*) zones
            if "gpu" in name:
                return 38.0 + off + 5.0 * cpu + 18.0 * gpu
            if name.startswith("cpu"):
                return 38.0 + off + 12.0 * cpu + 5.0 * gpu
            return 38.0 + off + 7.0 * cpu + 9.0 * gpu  # soc*, tj, AO, PLL, thermal-fan-est
        if self.kind == "raspberrypi":
            return 41.0 + off + 42.0 * cpu  # a bare Pi 4 passes 80 C under sustained full load
        if name == "acpitz":
            return 27.8  # many PC firmwares report a constant ACPI zone
        return 36.0 + off + 48.0 * cpu

    def _step_zones(self, dt: float) -> None:
        for zone, temp in self.zone_temp_c.items():
            target = self._zone_target(zone)
            fixed = target <= -200.0 or zone.lower().startswith("pmic")
            self.zone_temp_c[zone] = target if fixed else _approach(temp, target, dt, 20.0) + self.rng.gauss(0, 0.1)
        # Tj is what the firmware computes: the hottest of the die's live sensors, with no lag of its own.
        live = [t for z, t in self.zone_temp_c.items() if t > -200.0 and not z.lower().startswith(("tj", "pmic"))]
        for zone in self.zone_temp_c:
            if zone.lower().startswith("tj") and live:
                self.zone_temp_c[zone] = max(live) + 0.4

    def _step_throttle(self) -> None:
        if self.kind != "raspberrypi" or not self.zone_temp_c:
            return
        temp = next(iter(self.zone_temp_c.values()))
        # The firmware caps the ARM clock and throttles from 80 C; a little hysteresis avoids flapping.
        self._capped = temp >= 80.0 or (self._capped and temp > 78.0)
        now = 0x2 | 0x4 if self._capped else 0
        self._throttled_since_boot |= now
        self.throttled = now | (self._throttled_since_boot << 16)

    def _step_clocks(self) -> None:
        lo, hi = self.hw.cpu_min_mhz, self.hw.cpu_max_mhz
        if self.kind == "pc":  # per-core P-states
            self.cpu_mhz = [lo + (hi - lo) * (u / 100.0) ** 0.7 + self.rng.uniform(-8, 8) for u in self.cpu_util]
            self.cpu_mhz = [_clamp(f, lo, hi) for f in self.cpu_mhz]
            return
        # SoC clusters share one clock, chosen by the busiest core (schedutil-like).
        target = lo + (hi - lo) * min(1.0, 1.25 * max(self.cpu_util) / 100.0)
        if self._capped:
            target = min(target, lo + 0.4 * (hi - lo))
        if self.kind == "raspberrypi":
            target = round(target / 100.0) * 100.0  # Pi OPPs are 100 MHz apart
        self.cluster_mhz = _clamp(target, lo, hi)
        self.cpu_mhz = [self.cluster_mhz] * self.hw.cpu_count

    def _step_counters(self, dt: float) -> None:
        for times, util in zip(self.cpu_times, self.cpu_util, strict=True):
            _advance(times, util / 100.0, dt * USER_HZ)
        busy = sum(self.cpu_util) / 100.0
        self.ctxt += dt * (300.0 + 2500.0 * busy) * self.hw.cpu_count
        self.intr += dt * (200.0 + 900.0 * busy) * self.hw.cpu_count
        self.softirq += dt * (100.0 + 400.0 * busy) * self.hw.cpu_count
        self.processes += dt * self.rng.uniform(0.2, 2.0 + 4.0 * busy)

    # Derived readings, computed from the state above when the files are rendered; like real
    # sensors they carry a little measurement noise.

    def gpu_freq_mhz(self) -> int:
        lo = 210 if self.hw.gpu == "nvidia" else 114
        hi = max(self.hw.gpu_max_mhz, lo)
        return round(lo + (hi - lo) * min(1.0, self.gpu_util / 80.0))

    def gpu_mem_used_mib(self) -> float:
        """Framebuffer in use: the loaded model plus a working set that grows with each burst."""
        total = self.hw.gpu_memory_mb
        used = self._gpu_model_mib + 0.15 * total * self.load + self.rng.gauss(0.0, 4.0)
        return _clamp(used, 1.0, 0.95 * total)

    def dgpu_power_w(self) -> float:
        limit = self.hw.gpu_power_limit_w
        return min(limit, 0.12 * limit + 0.85 * limit * self.gpu_util / 100.0 + self.rng.uniform(-0.3, 0.3))

    def emc_util_pct(self) -> float:
        return _clamp(3.0 + 0.45 * self.gpu_util + 0.15 * self.cpu_avg, 0.0, 100.0)

    def rail_mw(self) -> dict[str, int]:
        """Jetson INA3221 rails; the input rail carries everything plus the carrier board."""
        cpu, gpu = self.cpu_avg / 100.0, self.gpu_util / 100.0
        rails: dict[str, float] = {}
        for name in self.hw.power_rails:
            up = name.upper()
            if "GPU" in up or "CPU" in up or "CV" in up:
                rails[name] = 450.0 + 2800.0 * cpu + 5200.0 * gpu
            elif "SOC" in up or "DDR" in up:
                rails[name] = 1200.0 + 14.0 * self.emc_util_pct() + 300.0 * gpu
            elif not up.endswith("_IN") and "5V_IN" not in up:
                rails[name] = 150.0 + 100.0 * cpu
        inputs = [n for n in self.hw.power_rails if n not in rails]
        for name in inputs:
            rails[name] = 2900.0 + sum(v for k, v in rails.items() if k not in inputs)
        return {k: max(0, round(v + self.rng.gauss(0.0, 15.0))) for k, v in rails.items()}

    def memory_kb(self) -> dict[str, int]:
        """/proc/meminfo quantities, consistent with each other the way free(1) adds them up."""
        total = self.hw.memory_mb * 1024
        apps, cached = int(total * self._apps_frac), int(total * self._cache_frac)
        buffers, shmem = int(total * 0.018), int(total * 0.006)
        sreclaim, sunreclaim = int(total * 0.016), int(total * 0.011)
        kstack, pagetables = 6000 + 1500 * self.hw.cpu_count, int(total * 0.004)
        free = max(int(total * 0.02), total - apps - buffers - cached - sreclaim - sunreclaim - kstack - pagetables)
        available = min(total, free + buffers + cached - shmem + int(sreclaim * 0.8))
        swap_total, swap_used = self.hw.swap_mb * 1024, int(self.swap_used_kb)
        return {
            "total": total, "free": free, "available": available, "buffers": buffers, "cached": cached,
            "shmem": shmem, "sreclaimable": sreclaim, "sunreclaim": sunreclaim, "kernel_stack": kstack,
            "page_tables": pagetables, "anon": apps, "swap_total": swap_total, "swap_free": swap_total - swap_used,
            "swap_cached": min(swap_used, swap_used // 20),
        }


def _capacity(text: str) -> int:
    """A fixed file size that still fits when every number has grown to 13 digits."""
    return (len(_DIGITS.sub("9" * 13, text)) + 255) // 256 * 256


def lab_values(model: SensorModel) -> dict[str, str]:
    """The lab value files (LAB_VALUE_FILES) for the current state: name -> value, without the newline."""
    hw, mem = model.hw, model.memory_kb()
    values: dict[str, object] = {
        "cpu_count": hw.cpu_count,
        "cpu_util_pct": " ".join(str(round(u)) for u in model.cpu_util),
        "cpu_freq_mhz": " ".join(str(round(f)) for f in model.cpu_mhz),
        "ram_total_mb": mem["total"] // 1024,
        "ram_used_mb": (mem["total"] - mem["available"]) // 1024,
        "ram_lfb": f"{max(1, int(mem['free'] / 4096 * 0.02))}x4MB",  # fragmentation leaves few 4 MB blocks
        "swap_total_mb": mem["swap_total"] // 1024,
        "swap_used_mb": (mem["swap_total"] - mem["swap_free"]) // 1024,
        "swap_cached_mb": mem["swap_cached"] // 1024,
    }
    if hw.gpu in ("jetson", "nvidia"):
        values.update(gpu_util_pct=round(model.gpu_util), gpu_freq_mhz=model.gpu_freq_mhz(),
                      gpu_temp_mc=round(1000 * next(  # a Jetson's gpu thermal zone, else the discrete GPU
                          (t for z, t in model.zone_temp_c.items() if "gpu" in z.lower()), model.dgpu_temp_c)))
    if hw.gpu == "jetson":
        emc, tj = model.emc_util_pct(), max(model.zone_temp_c.values(), default=40.0)
        values.update(
            tegra_model=hw.tegra_model or "orin", emc_util_pct=round(emc),
            emc_freq_mhz=2133 if hw.tegra_model != "xavier" else (1600 if emc > 5 else 204),
            power_rails=" ".join(hw.power_rails), gpu_power_mw=round(52.0 * model.gpu_util),
            fan_pct=round(_clamp((tj - 40.0) * 3.0, 0.0, 100.0)),
        )
        values.update({f"rail_{name}_mw": mw for name, mw in model.rail_mw().items()})
    if hw.gpu == "nvidia":
        total, busy = hw.gpu_memory_mb, model.gpu_util >= 1
        values.update(
            gpu_name=hw.gpu_name or "NVIDIA GPU", gpu_pci_bus_id=hw.gpu_pci_bus_id,
            gpu_uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, hw.name + '.gpu.fleetdesk-lab')}",
            gpu_driver_version=hw.driver_version, gpu_cuda_version=hw.cuda_version, gpu_max_mhz=hw.gpu_max_mhz,
            gpu_mem_util_pct=round(0.45 * model.gpu_util), gpu_mem_max_mhz=hw.gpu_mem_max_mhz,
            gpu_mem_freq_mhz=hw.gpu_mem_max_mhz if busy else 405, gpu_mem_total_mib=total,
            gpu_mem_reserved_mib=round(total * 0.023), gpu_mem_used_mib=round(model.gpu_mem_used_mib()),
            gpu_power_mw=round(model.dgpu_power_w() * 1000), gpu_power_limit_mw=round(hw.gpu_power_limit_w * 1000),
            fan_pct=round(_clamp(30.0 + (model.dgpu_temp_c - 45.0) * 2.0, 30.0, 100.0)), pstate="P0" if busy else "P8",
        )
    if hw.gpu == "raspberrypi":
        busy = model.cpu_avg > 20.0
        frac = (model.cluster_mhz - hw.cpu_min_mhz) / max(1, hw.cpu_max_mhz - hw.cpu_min_mhz)
        values.update(
            arm_freq_hz=round(model.cluster_mhz * 1e6 * (1 + model.rng.uniform(-3e-4, 3e-4))),
            core_freq_hz=500000992 if busy else 199995120, v3d_freq_hz=500000992 if busy else 250000496,
            core_volts=f"{0.86 + 0.05 * frac:.4f}", throttled=f"0x{model.throttled:x}",
            arm_mem_mb=hw.memory_mb - hw.gpu_mem_mb, gpu_mem_mb=hw.gpu_mem_mb,
        )
    return {name: str(value) for name, value in values.items()}


def sysfs_files(model: SensorModel) -> dict[str, str]:
    """Fake sysfs files, path relative to R -> content, where real hardware puts them."""
    hw, files = model.hw, {}
    for i, zone in enumerate(hw.thermal_zones):
        base = f"sys/class/thermal/thermal_zone{i}"
        files[f"{base}/type"] = zone + "\n"
        mc = round(model.zone_temp_c[zone] * 1000)
        if hw.tegra_model == "xavier" and zone.endswith("-therm"):
            mc = round(mc / 500) * 500  # Xavier's soctherm sensors step by 0.5 C
        elif zone == "x86_pkg_temp":
            mc = round(mc / 1000) * 1000  # coretemp reports whole degrees
        files[f"{base}/temp"] = f"{mc}\n"
    for i, mhz in enumerate(model.cpu_mhz):
        base = f"sys/devices/system/cpu/cpu{i}/cpufreq"
        files[f"{base}/scaling_cur_freq"] = f"{round(mhz * 1000)}\n"
        files[f"{base}/cpuinfo_max_freq"] = f"{hw.cpu_max_mhz * 1000}\n"
        files[f"{base}/cpuinfo_min_freq"] = f"{hw.cpu_min_mhz * 1000}\n"
    if hw.gpu == "jetson":
        files["sys/devices/gpu.0/load"] = f"{round(model.gpu_util * 10)}\n"  # per mille
    if hw.gpu == "raspberrypi":
        # drivers/firmware/raspberrypi.c prints the bit field with "%x\n" (no 0x).
        files["sys/devices/platform/soc/soc:firmware/get_throttled"] = f"{model.throttled:x}\n"
    return files


def proc_files(model: SensorModel) -> dict[str, str]:
    """Contents of the fake /proc/meminfo, /proc/stat and /proc/uptime."""
    rendered = {"meminfo": _render_meminfo(model), "stat": _render_stat(model), "uptime": _render_uptime(model)}
    return {name: rendered[name] for name in PROC_FILES}


# /proc/meminfo lines of a 6.1 kernel (Debian bookworm), in order; those not set below read 0.
_MEMINFO_LABELS = (
    "MemTotal MemFree MemAvailable Buffers Cached SwapCached Active Inactive Active(anon) Inactive(anon) "
    "Active(file) Inactive(file) Unevictable Mlocked SwapTotal SwapFree Zswap Zswapped Dirty Writeback "
    "AnonPages Mapped Shmem KReclaimable Slab SReclaimable SUnreclaim KernelStack PageTables SecPageTables "
    "NFS_Unstable Bounce WritebackTmp CommitLimit Committed_AS VmallocTotal VmallocUsed VmallocChunk Percpu "
    "HardwareCorrupted AnonHugePages ShmemHugePages ShmemPmdMapped FileHugePages FilePmdMapped"
).split()


def _render_meminfo(model: SensorModel) -> str:
    m = model.memory_kb()
    total, anon, cached = m["total"], m["anon"], m["cached"]
    a_anon, a_file = anon // 2, cached // 2
    values = {
        "MemTotal": total, "MemFree": m["free"], "MemAvailable": m["available"], "Buffers": m["buffers"],
        "Cached": cached, "SwapCached": m["swap_cached"], "Active": a_anon + a_file,
        "Inactive": anon - a_anon + cached - a_file, "Active(anon)": a_anon, "Inactive(anon)": anon - a_anon,
        "Active(file)": a_file, "Inactive(file)": cached - a_file, "SwapTotal": m["swap_total"],
        "SwapFree": m["swap_free"], "Dirty": 64, "AnonPages": anon, "Mapped": cached // 5, "Shmem": m["shmem"],
        "KReclaimable": m["sreclaimable"], "Slab": m["sreclaimable"] + m["sunreclaim"],
        "SReclaimable": m["sreclaimable"], "SUnreclaim": m["sunreclaim"], "KernelStack": m["kernel_stack"],
        "PageTables": m["page_tables"], "CommitLimit": total // 2 + m["swap_total"],
        "Committed_AS": int(anon * 1.6), "VmallocUsed": 24000, "Percpu": 1024 * model.hw.cpu_count,
        "VmallocTotal": 135288315904 if model.hw.arch == "aarch64" else 34359738367,
    }
    # fs/proc/meminfo.c: the label padded to 16 columns, the value right-aligned in 8, then " kB".
    lines = [f"{label + ':':<16}{values.get(label, 0):>8} kB" for label in _MEMINFO_LABELS]
    lines[_MEMINFO_LABELS.index("HardwareCorrupted")] = "HardwareCorrupted:     0 kB"  # printed with %5lu
    lines += [f"{'HugePages_' + k + ':':<19}{0:>5}" for k in ("Total", "Free", "Rsvd", "Surp")]
    lines += ["Hugepagesize:       2048 kB", "Hugetlb:               0 kB"]
    return "\n".join(lines) + "\n"


def _render_stat(model: SensorModel) -> str:
    per_cpu = [[int(v) for v in times] + [0, 0, 0] for times in model.cpu_times]
    total = [sum(col) for col in zip(*per_cpu, strict=True)]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{i} " + " ".join(map(str, cols)) for i, cols in enumerate(per_cpu)]
    intr = int(model.intr)
    # Per-IRQ counts: most lines are quiet; the timer, the NIC and storage take the rest.
    share = {1: 0.62, 11: 0.18, 14: 0.12, 27: 0.08}
    lines.append("intr " + " ".join([str(intr)] + [str(int(intr * share.get(i, 0.0))) for i in range(64)]))
    running = 1 + round(sum(model.cpu_util) / 100.0)
    soft = int(model.softirq)
    parts = (0.0, 0.45, 0.02, 0.12, 0.08, 0.0, 0.01, 0.17, 0.0, 0.15)  # HI TIMER NET_TX ... RCU
    lines += [
        f"ctxt {int(model.ctxt)}",
        f"btime {int(model.boot_time)}",
        f"processes {int(model.processes)}",
        f"procs_running {running}",
        "procs_blocked 0",
        "softirq " + " ".join([str(soft)] + [str(int(soft * p)) for p in parts]),
    ]
    return "\n".join(lines) + "\n"


def _render_uptime(model: SensorModel) -> str:
    idle = sum(times[_IDLE] for times in model.cpu_times) / USER_HZ  # summed over all CPUs, as Linux does
    return f"{model.uptime_s:.2f} {idle:.2f}\n"


def write_in_place(path: Path, content: str, size: int) -> None:
    """Rewrite a bind-mounted file (in an existing directory) keeping its inode: one pwrite of `size` bytes.

    A rename would detach the bind mount and O_TRUNC would let a reader see an empty file, so the
    content is padded with spaces before its final newline to a size that never changes.
    """
    body = content.rstrip("\n")
    if len(body) + 1 > size:
        raise ValueError(f"{path}: {len(body) + 1} bytes do not fit the fixed size {size}")
    data = (body + " " * (size - len(body) - 1) + "\n").encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size != size:  # left over from a run with another size: trim after writing
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def write_atomic(path: Path, content: str) -> bool:
    """Replace `path` (in an existing directory) by rename when its content differs; return whether it did."""
    try:
        if path.read_text() == content:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one sensor process per root: no clash
    try:
        with open(tmp, "w") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def _make_dirs(root: Path, directory: Path) -> None:
    """Create `directory` below `root` but never `root` itself: a device root that vanished stays gone."""
    if directory.is_dir():
        return
    current = root
    for part in directory.relative_to(root).parts:
        current = current / part
        if not current.is_dir():
            current.mkdir(exist_ok=True)  # FileNotFoundError once root is gone


def write_sensors(root: Path, model: SensorModel) -> None:
    """Write every sensor file of the current state under the device root."""
    root = Path(root)
    files = {root / rel: content for rel, content in sysfs_files(model).items()}
    files.update({root / SENSORS_DIR / name: value + "\n" for name, value in lab_values(model).items()})
    for path, content in files.items():
        _make_dirs(root, path.parent)
        write_atomic(path, content)
    _make_dirs(root, root / PROC_DIR)
    for name, content in proc_files(model).items():
        write_in_place(root / PROC_DIR / name, content, model.proc_sizes[name])


def run(
    root: Path,
    hw: Mapping[str, Any],
    interval: float = 1.0,
    seed: int | None = None,
    once: bool = False,
    boot_time: float | None = None,
) -> int:
    """Keep the sensor files of `root` moving until SIGTERM/SIGINT or until `root` disappears.

    Call it from the main thread (it installs signal handlers). Returns the process exit status.
    """
    root = Path(root)
    if not root.is_dir():
        print(f"sensors: device root {root} is not a directory", file=sys.stderr)
        return 2
    model = SensorModel(hw, seed=seed, boot_time=boot_time)
    write_sensors(root, model)
    if once:
        return 0
    stop: list[int] = []
    # A signal also writes a byte to the wakeup pipe, so the wait below ends at once, not at the timeout.
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    old_fd = signal.set_wakeup_fd(wfd)
    old = {s: signal.signal(s, lambda signum, _: stop.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    skipping = False
    try:
        last = time.monotonic()
        while True:
            select.select([rfd], [], [], interval)
            if stop:
                return 0
            if not root.is_dir():
                break
            now = time.monotonic()
            model.step(now - last)
            last = now
            try:
                write_sensors(root, model)
            except OSError as exc:
                if not root.is_dir():
                    break
                # The files live on the device's disk here, not in a kernel's sysfs: a full disk (the
                # fill-disk fault) skips updates until there is room again, it never kills the init.
                if not skipping:
                    print(f"sensors: cannot update ({exc.strerror}); retrying every {interval:g} s", file=sys.stderr)
                skipping = True
            else:
                skipping = False
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, handler in old.items():
            signal.signal(s, handler)
        os.close(rfd)
        os.close(wfd)
    print(f"sensors: device root {root} is gone; stopping", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetdesk.lab.sensors", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="the device root R")
    parser.add_argument("--hardware", type=Path, required=True, help="HW.json written from the device profile")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between updates (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for a repeatable run")
    parser.add_argument("--once", action="store_true", help="write the files once and exit")
    parser.add_argument("--boot-time", type=float, default=None, help="epoch of the device's boot (default: now)")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    try:
        hw = json.loads(args.hardware.read_text())
        return run(args.root, hw, args.interval, args.seed, args.once, args.boot_time)
    except (OSError, ValueError, TypeError) as exc:
        print(f"sensors: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
