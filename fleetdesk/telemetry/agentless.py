"""The agentless reader: a POSIX sh loop sent as the SSH command, and the laptop-side parser of what it prints.

For a device without the FleetDesk agent. Every interval the loop prints one frame of /proc and sysfs text;
the laptop turns each frame into the same "sample" object the agent prints, with the agent's own parsers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.agent import procfs
from fleetdesk.reach import DEFAULT_ROOT
from fleetdesk.text import visible_text
from fleetdesk.transport.shell import shell_quote

log = logging.getLogger(__name__)

# Framing. Every line the loop prints starts with "@" (a marker the script writes) or "|" (a line of a file or
# of df, quoted by `show`), so no text a device supplies (a zone type, a filesystem name) can fake a marker.
BEGIN, END = "@fleetdesk-frame", "@fleetdesk-end"
_SECTIONS = ("@date", "@stat", "@meminfo", "@loadavg", "@thermal", "@df")
SOURCE_PREFIX = "agentless:"
# Thermal zones at or below -200 °C are powered off (they read -256000 m°C); the agent leaves them out too.
_OFF_MC = -200000
# df -P prints "Filesystem 1024-blocks Used Available Capacity% Mounted-on" (POSIX.1-2017, df, STDOUT:
# "%s %d %d %d %d%% %s\n"); the filesystem name and the mount point may hold spaces, the numbers never.
_DF_LINE = re.compile(r"^(?P<fs>.*?)\s+(?P<total>\d+)\s+(?P<used>\d+)\s+(?P<avail>\d+)\s+(?P<cap>\d+)%\s+(?P<mnt>.*)$")

# `show` copies its input, each line behind "|", with shell builtins only (no fork per file: dash, bash and
# busybox ash all have read and printf built in). `|| [ -n "$l" ]` keeps a last line without a newline.
_SCRIPT = r"""show() { while IFS= read -r l || [ -n "$l" ]; do printf '|%s\n' "$l"; done; }
if [ -d {root} ]; then d={root}; else d=/; fi
n=0
while [ {count} -eq 0 ] || [ "$n" -lt {count} ]; do
  n=$((n + 1))
  echo '{begin}'
  echo '@date'; date +%s.%N | show
  echo '@stat'; show < /proc/stat
  echo '@meminfo'; show < /proc/meminfo
  echo '@loadavg'; show < /proc/loadavg
  echo '@thermal'
  for z in /sys/class/thermal/thermal_zone*; do
    [ -r "$z/temp" ] || continue
    t=; k=; read -r k < "$z/type" 2>/dev/null; read -r t < "$z/temp" 2>/dev/null
    printf '|%s\t%s\t%s\n' "${z##*thermal_zone}" "$t" "$k"
  done
  echo '@df'; printf '|%s\n' "$d"; df -Pk "$d" 2>/dev/null | show
  echo '{end}'
  [ "$n" -eq {count} ] || sleep {interval}
done
"""


def agentless_command(root: str, interval: float, *, count: int = 0) -> str:
    """The shell command that prints a frame every `interval` s (`count` frames, or without end for 0)."""
    if not 0.05 <= interval <= 3600:
        raise ValueError(f"interval {interval!r} is out of range (0.05 to 3600 s)")
    script = (_SCRIPT.replace("{root}", shell_quote(root)).replace("{count}", str(int(count)))
              .replace("{interval}", f"{interval:g}").replace("{begin}", BEGIN).replace("{end}", END))
    # One argument to sh -c: the device's login shell may be bash, zsh or fish; the loop is POSIX sh.
    return "exec sh -c " + shell_quote(script)


@dataclass
class _Frame:
    sections: dict[str, list[str]] = field(default_factory=dict)
    current: list[str] | None = None


class AgentlessParser:
    """Feed it the loop's lines one by one; every complete frame comes back as a sample dict.

    Lines that do not fit the framing are counted in `bad_lines` (and logged), never fatal: the frame
    they broke is dropped and the next one starts clean.
    """

    def __init__(self, root: str = DEFAULT_ROOT, *, device: str = "") -> None:
        self.root = root
        self.device = device
        self.seq = 0
        self.bad_lines = 0
        self._frame: _Frame | None = None
        self._prev_stat: dict[str, list[int]] | None = None

    def _bad(self, line: str, why: str) -> None:
        self.bad_lines += 1
        log.info("%s: agentless telemetry: %s: %.120s", visible_text(self.device or "device"), visible_text(why),
                 visible_text(line))

    def feed(self, line: str) -> dict[str, Any] | None:
        """One line (without its newline); a sample dict when it ended a frame, else None."""
        if line == BEGIN:
            if self._frame is not None:
                self._bad(line, "a frame started before the last one ended")
            self._frame = _Frame()
            return None
        frame = self._frame
        if frame is None:
            self._bad(line, "a line outside a frame")
            return None
        if line == END:
            self._frame = None
            return self._sample(frame)
        if line in _SECTIONS:
            frame.current = frame.sections.setdefault(line[1:], [])
        elif line.startswith("|") and frame.current is not None:
            frame.current.append(line[1:])
        else:
            self._bad(line, "not a line of the agentless frame")
            self._frame = None
        return None

    def _sample(self, frame: _Frame) -> dict[str, Any] | None:
        s = frame.sections
        try:
            t = float(s["date"][0])
        except (KeyError, IndexError, ValueError):
            # A date(1) without %N prints "1763700000.%N" or "1763700000.N": keep the seconds.
            match = re.match(r"^(\d+)", (s.get("date") or [""])[0])
            if match is None:
                self._bad("|".join(s.get("date") or []), "a frame without a time")
                return None
            t = float(match.group(1))
        self.seq += 1
        out: dict[str, Any] = {"type": "sample", "v": 1, "t": round(t, 3), "seq": self.seq}
        src: dict[str, str] = {}
        if "stat" in s:
            cur = procfs.parse_stat("\n".join(s["stat"]))
            if cur:
                total, per_core = procfs.cpu_percent(self._prev_stat or {}, cur)
                self._prev_stat = cur
                if total is not None:
                    out["cpu"] = {"total": total, "per_core": per_core}
                    src["cpu"] = SOURCE_PREFIX + "/proc/stat"
        if s.get("loadavg"):
            try:
                out["load"] = procfs.parse_loadavg(s["loadavg"][0])
                src["load"] = SOURCE_PREFIX + "/proc/loadavg"
            except ValueError:
                self._bad(s["loadavg"][0], "/proc/loadavg does not parse")
        if "meminfo" in s:
            info = procfs.parse_meminfo("\n".join(s["meminfo"]))
            if "MemTotal" in info:
                out["mem"] = procfs.memory(info)
                src["mem"] = SOURCE_PREFIX + "/proc/meminfo"
            if "SwapTotal" in info:
                out["swap"] = procfs.swap(info)
                src["swap"] = SOURCE_PREFIX + "/proc/meminfo"
        temps = self._temps(s.get("thermal", []))
        if temps:
            out["temps"] = temps
            src["temps"] = SOURCE_PREFIX + "/sys/class/thermal"
        disk = self._disk(s.get("df", []))
        if disk is not None:
            out["disk"] = disk
            src["disk"] = SOURCE_PREFIX + "df -Pk"
        out["sources"] = src
        return out

    def _temps(self, lines: list[str]) -> dict[str, float]:
        """{zone type: °C}, named as the agent names them (a second zone of one type is "TYPE#N")."""
        temps: dict[str, float] = {}
        for line in lines:
            number, _, rest = line.partition("\t")
            millis, _, kind = rest.partition("\t")
            try:
                mc = int(millis)
            except ValueError:
                continue  # a zone that could not be read this time (e.g. a sensor that is off)
            if mc <= _OFF_MC:
                continue
            kind = kind.strip() or f"thermal_zone{number}"
            temps[kind if kind not in temps else f"{kind}#{number}"] = mc / 1000.0
        return temps

    def _disk(self, lines: list[str]) -> dict[str, Any] | None:
        """The filesystem of the FleetDesk root (or "/" while it does not exist), as the agent reports it."""
        for line in lines[2:]:  # the path asked about, then df's header
            match = _DF_LINE.match(line)
            if match:
                return {"path": lines[0], "total_mb": int(match["total"]) // 1024,
                        "used_mb": -(-int(match["used"]) // 1024), "free_mb": int(match["avail"]) // 1024}
        if len(lines) > 1:
            self._bad("|".join(lines), "df -Pk printed nothing that parses")
        return None
