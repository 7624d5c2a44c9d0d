"""Sensors the kernel exposes in sysfs: thermal zones, CPU clocks, a Jetson's GPU load, a Pi's throttling
flags; and the disk that holds the FleetDesk root. Every reader returns None (or {}) when the file is absent.
"""

from __future__ import annotations

import math
import os
import re

THERMAL_DIR = "/sys/class/thermal"
CPU_DIR = "/sys/devices/system/cpu"
# Jetson: the GPU's load in per mille (jetson-stats and the L4T docs read the same file).
JETSON_GPU_LOAD = "/sys/devices/gpu.0/load"
# Raspberry Pi: drivers/firmware/raspberrypi.c (the "get_throttled" attribute) prints the firmware's bit
# field with "%x\n", without 0x. Newer kernels show it; otherwise `vcgencmd get_throttled` says the same.
PI_THROTTLED = "/sys/devices/platform/soc/soc:firmware/get_throttled"

# A zone reading at or below this is a powered-off sensor: Orin reports -256 C for its idle DLA/PVA (cv*)
# zones, and tegrastats leaves them out (fleetdesk/lab/standins/tegrastats.sh does the same).
_OFF_MC = -200000

# The Raspberry Pi documentation ("vcgencmd get_throttled", raspberrypi.com/documentation/computers/os.html):
# bit 0 under-voltage detected, 1 arm frequency capped, 2 currently throttled, 3 soft temperature limit
# active; bits 16-19 the same conditions "has occurred" since boot.
THROTTLE_FLAGS = ("under-voltage", "frequency-capped", "throttled", "soft-temperature-limit")

_ZONE = re.compile(r"^thermal_zone(\d+)$")
_CPU = re.compile(r"^cpu(\d+)$")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _numbered(folder: str, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), name))
    return sorted(found)


def thermal_zones(sysroot: str = "") -> dict[str, float]:
    """{zone type: °C} from /sys/class/thermal/thermal_zone*/{type,temp} (temp in millidegrees).

    Powered-off zones (-256 C) and unreadable ones are left out. Two zones of one type (two "acpitz")
    keep both: the second and later are named "TYPE#N" with N the zone number.
    """
    folder = sysroot + THERMAL_DIR
    temps: dict[str, float] = {}
    for number, name in _numbered(folder, _ZONE):
        zone = os.path.join(folder, name)
        kind = (_read(os.path.join(zone, "type")) or "").strip() or name
        mc = read_int(os.path.join(zone, "temp"))
        if mc is None or mc <= _OFF_MC:
            continue
        key = kind if kind not in temps else f"{kind}#{number}"
        temps[key] = mc / 1000.0
    return temps


def has_thermal(sysroot: str = "") -> bool:
    return bool(_numbered(sysroot + THERMAL_DIR, _ZONE))


def cpu_freq_mhz(sysroot: str = "") -> list[int]:
    """Current clock of each core in MHz (cpufreq scaling_cur_freq is kHz), core 0 first; [] without cpufreq."""
    folder = sysroot + CPU_DIR
    freqs = []
    for _, name in _numbered(folder, _CPU):
        khz = read_int(os.path.join(folder, name, "cpufreq", "scaling_cur_freq"))
        if khz is not None:
            freqs.append(round(khz / 1000.0))
    return freqs


def jetson_gpu_load(sysroot: str = "") -> float | None:
    """A Jetson's GPU load in percent (the file holds per mille), None where there is no such file."""
    value = read_int(sysroot + JETSON_GPU_LOAD)
    return None if value is None else value / 10.0


def decode_throttled(value: int) -> dict[str, object]:
    """The get_throttled bit field as {"raw": "0x50005", "now": [flags], "since_boot": [flags]}."""
    now = [name for bit, name in enumerate(THROTTLE_FLAGS) if value & (1 << bit)]
    since = [name for bit, name in enumerate(THROTTLE_FLAGS) if value & (1 << (16 + bit))]
    return {"raw": f"0x{value:x}", "now": now, "since_boot": since}


def parse_throttled_hex(text: str) -> int | None:
    """The sysfs file's "50005\\n" (hex without 0x) or "0x50005" as an int; None for anything else."""
    text = text.strip()
    try:
        return int(text, 16)
    except ValueError:
        return None


def pi_throttled(sysroot: str = "") -> int | None:
    text = _read(sysroot + PI_THROTTLED)
    return None if text is None else parse_throttled_hex(text)


def disk(root: str) -> dict[str, object] | None:
    """statvfs of the FleetDesk root (or "/" while it does not exist): sizes in MB, as df(1) counts them.

    used = (blocks - free) * fragment size; free_mb is what a non-root writer can still use (bavail).
    """
    path = root if os.path.isdir(root) else "/"
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    mb = 1024.0 * 1024.0
    total = st.f_blocks * st.f_frsize / mb
    used = (st.f_blocks - st.f_bfree) * st.f_frsize / mb
    free = st.f_bavail * st.f_frsize / mb
    return {"path": path, "total_mb": int(total), "used_mb": math.ceil(used), "free_mb": int(free)}
