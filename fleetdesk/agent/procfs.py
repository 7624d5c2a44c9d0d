"""Parsers for the /proc files telemetry reads: /proc/stat, /proc/meminfo, /proc/loadavg.

Pure functions over text, so the laptop's agentless reader (fleetdesk.telemetry) uses them on the same
text it reads over SSH. Standard library only, Python 3.8.
"""

from __future__ import annotations

# /proc/stat cpu columns (proc(5)): user nice system idle iowait irq softirq steal guest guest_nice.
# The kernel already counts guest time inside user (and guest_nice inside nice), so only the first
# eight columns make up the total; adding the guest columns would count that time twice.
_TOTAL_COLUMNS = 8
_IDLE, _IOWAIT = 3, 4


def parse_stat(text: str) -> dict[str, list[int]]:
    """The jiffy columns of every "cpu" line of /proc/stat: {"cpu": [...], "cpu0": [...], ...}."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        try:
            out[parts[0]] = [int(v) for v in parts[1:]]
        except ValueError:
            continue  # a line that is not numbers is not a CPU line we understand
    return out


def _busy_total(cols: list[int]) -> tuple[int, int]:
    head = cols[:_TOTAL_COLUMNS]
    idle = sum(head[i] for i in (_IDLE, _IOWAIT) if i < len(head))
    total = sum(head)
    return total - idle, total


def _percent(prev: list[int] | None, cur: list[int] | None) -> float | None:
    if not prev or not cur:
        return None
    busy0, total0 = _busy_total(prev)
    busy1, total1 = _busy_total(cur)
    d_total = total1 - total0
    if d_total <= 0:
        return None  # no time passed between the readings (or the counters went back): no answer
    d_busy = busy1 - busy0
    return round(max(0.0, min(100.0, 100.0 * d_busy / d_total)), 1)


def cpu_percent(prev: dict[str, list[int]], cur: dict[str, list[int]]) -> tuple[float | None, list[float]]:
    """CPU busy % between two parse_stat readings: (total, per core in core order).

    Busy is everything but idle and iowait. The total is None when there is no delta; a core whose
    delta is missing (hot-plugged between the readings) is left out of the list.
    """
    total = _percent(prev.get("cpu"), cur.get("cpu"))
    cores = sorted((k for k in cur if k[3:].isdigit()), key=lambda k: int(k[3:]))
    per_core: list[float] = []
    for name in cores:
        value = _percent(prev.get(name), cur.get(name))
        if value is not None:
            per_core.append(value)
    return total, per_core


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {"MemTotal": kB, ...}; HugePages_* counts are kept as plain numbers."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            out[key.strip()] = int(fields[0])
        except ValueError:
            continue
    return out


def _mb(kb: int) -> int:
    return int(kb // 1024)


def memory(meminfo: dict[str, int]) -> dict[str, int | None]:
    """{"total_mb", "used_mb", "available_mb"}, used = total - available (as free(1) counts it).

    Kernels before 3.14 have no MemAvailable: then available is estimated as free + buffers + cached.
    Values are None when MemTotal is missing.
    """
    total = meminfo.get("MemTotal")
    if total is None:
        return {"total_mb": None, "used_mb": None, "available_mb": None}
    available = meminfo.get("MemAvailable")
    if available is None:
        available = meminfo.get("MemFree", 0) + meminfo.get("Buffers", 0) + meminfo.get("Cached", 0)
    available = min(available, total)
    return {"total_mb": _mb(total), "used_mb": _mb(total - available), "available_mb": _mb(available)}


def swap(meminfo: dict[str, int]) -> dict[str, int | None]:
    """{"total_mb", "used_mb"}, used = SwapTotal - SwapFree; None when the kernel does not say."""
    total = meminfo.get("SwapTotal")
    if total is None:
        return {"total_mb": None, "used_mb": None}
    free = min(meminfo.get("SwapFree", total), total)
    return {"total_mb": _mb(total), "used_mb": _mb(total - free)}


def parse_loadavg(text: str) -> list[float]:
    """The 1, 5 and 15 minute load averages from /proc/loadavg ("0.52 0.40 0.31 1/123 4567")."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(f"/proc/loadavg has fewer than three fields: {text[:80]!r}")
    return [float(v) for v in fields[:3]]


def parse_uptime(text: str) -> float:
    """Seconds since boot, the first field of /proc/uptime."""
    return float(text.split()[0])
