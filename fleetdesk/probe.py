"""One SSH round trip that identifies a device: the probe script, its parser, and `probe(run)`.

The script is POSIX sh (busybox-tolerant, no sudo, python3 optional); matching the facts to a
profile is fleetdesk.profiles.match_profile.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Awaitable, Callable
from typing import Any

from fleetdesk.errors import RemoteCommandError
from fleetdesk.inventory.records import ProbeFacts

# `run(command) -> (exit_status, stdout, stderr)`, as the caller's SSH pool provides it.
RunCommand = Callable[[str], Awaitable[tuple[int | None, Any, Any]]]

MARK_PREFIX = "@@fleetdesk-probe-"

# $1 is a nonce chosen per probe: section markers carry it, so no file on the device can forge
# one. The body goes through `od` when there is one, so the output is plain ASCII hex that no
# transport decoding can mangle; without od it is sent raw. Device files are only read (cat,
# head), never executed or interpolated.
PROBE_SCRIPT = r"""M="@@fleetdesk-probe-$1"
LC_ALL=C
export LC_ALL
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T=
if command -v timeout >/dev/null 2>&1; then T="timeout 10"; fi
s() { printf '\n%s %s\n' "$M" "$1"; }
c() { for f in "$@"; do if [ -r "$f" ]; then cat "$f"; return; fi; done; }
body() {
    s arch; uname -m
    s kernel; uname -r
    s hostname; uname -n
    s os_release; c /etc/os-release /usr/lib/os-release
    s cpuinfo
    grep -E '^(processor|model name|CPU implementer|CPU part|Hardware|Model)[[:space:]]*:' /proc/cpuinfo \
        || c /proc/cpuinfo
    s nproc; nproc || getconf _NPROCESSORS_ONLN
    s meminfo; c /proc/meminfo
    s df; df -Pk /
    s python; if command -v python3 >/dev/null 2>&1; then python3 -V 2>&1; fi
    s model; c /proc/device-tree/model /sys/firmware/devicetree/base/model
    s tegra; if [ -r /etc/nv_tegra_release ]; then head -n 1 /etc/nv_tegra_release; fi
    s dmi_vendor; c /sys/class/dmi/id/sys_vendor
    s dmi_product; c /sys/class/dmi/id/product_name
    s nvidia_smi
    if command -v nvidia-smi >/dev/null 2>&1; then
        $T nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits
    fi
    s machine_id; c /etc/machine-id /var/lib/dbus/machine-id
    s end
}
if command -v od >/dev/null 2>&1; then
    printf '%s hex\n' "$M"
    body 2>/dev/null | od -An -tx1 -v
else
    printf '%s raw\n' "$M"
    body 2>/dev/null
fi
"""

_HEADER = re.compile(rb"@@fleetdesk-probe-([0-9A-Za-z]{1,64}) (hex|raw)\r?\n")
_HEX_BYTE = re.compile(rb"(?<![0-9a-fA-F])[0-9a-fA-F]{2}(?![0-9a-fA-F])")

# ARM CPU names by MIDR implementer and part number, from util-linux sys-utils/lscpu-arm.c
# (the vendors whose cores FleetDesk's device families use: Arm Cortex, NVIDIA Denver/Carmel, Broadcom).
_ARM_PARTS: dict[int, dict[int, str]] = {
    0x41: {
        0xD01: "Cortex-A32", 0xD02: "Cortex-A34", 0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55",
        0xD06: "Cortex-A65", 0xD07: "Cortex-A57", 0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75",
        0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD0E: "Cortex-A76AE",
        0xD40: "Neoverse-V1", 0xD41: "Cortex-A78", 0xD42: "Cortex-A78AE", 0xD43: "Cortex-A65AE",
        0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710", 0xD48: "Cortex-X2", 0xD49: "Neoverse-N2",
        0xD4A: "Neoverse-E1", 0xD4B: "Cortex-A78C", 0xD4C: "Cortex-X1C", 0xD4D: "Cortex-A715", 0xD4E: "Cortex-X3",
        0xD4F: "Neoverse-V2", 0xC07: "Cortex-A7", 0xC08: "Cortex-A8", 0xC09: "Cortex-A9", 0xC0F: "Cortex-A15",
        0xB76: "ARM1176",
    },
    0x42: {0x00F: "Brahma-B15", 0x100: "Brahma-B53"},
    0x4E: {0x000: "Denver", 0x003: "Denver 2", 0x004: "Carmel"},
}

# Names the integrated GPU of a Jetson carries in nvidia-smi on JetPack 6 ("Orin (nvgpu)"); the
# lab's Jetson profiles record the same form.
_JETSON_FAMILIES = ("Orin", "Xavier", "TX2", "TX1", "Nano")


def probe_command(nonce: str | None = None) -> str:
    """The one shell command a probe runs: `sh -c PROBE_SCRIPT fleetdesk-probe NONCE`, quoted."""
    nonce = nonce or secrets.token_hex(8)
    if not re.fullmatch(r"[0-9A-Za-z]{1,64}", nonce):
        raise ValueError("a probe nonce is 1-64 letters and digits")
    # sh -c, whatever the account's login shell is; the nonce is $1.
    return shlex.join(["sh", "-c", PROBE_SCRIPT, "fleetdesk-probe", nonce])


async def probe(run: RunCommand, *, device: str | None = None, nonce: str | None = None) -> ProbeFacts:
    """Identify a device with exactly one `run` call; raise RemoteCommandError when nothing came back."""
    status, stdout, stderr = await run(probe_command(nonce))
    sections = probe_sections(stdout)
    if sections is None or "arch" not in sections:
        err = stderr.decode("utf-8", "backslashreplace") if isinstance(stderr, bytes) else str(stderr or "")
        raise RemoteCommandError(
            f"the probe printed no answer (exit status {status})",
            exit_status=status,
            stderr=err[-2000:],
            device=device,
            step="probe",
            fix="check that the account can run /bin/sh and read /proc; its stderr says more",
        )
    return facts_from_sections(sections)


def parse_probe(output: bytes | str) -> ProbeFacts:
    """The facts in a probe's output; missing or mangled sections leave their fields empty."""
    return facts_from_sections(probe_sections(output) or {})


def probe_sections(output: bytes | str | None) -> dict[str, bytes] | None:
    """Each complete section of the probe output by name; None when there is no probe header.

    A section cut off by truncated output is dropped rather than stored half.
    """
    if output is None:
        return None
    data = output.encode("utf-8", "surrogateescape") if isinstance(output, str) else bytes(output)
    header = _HEADER.search(data)
    if header is None:
        return None
    body = data[header.end():]
    if header.group(2) == b"hex":
        body = bytes(int(tok, 16) for tok in _HEX_BYTE.findall(body))
    marker = b"\n" + MARK_PREFIX.encode() + header.group(1) + b" "
    parts = body.split(marker)[1:]
    sections: dict[str, bytes] = {}
    for i, part in enumerate(parts):
        name, newline, content = part.partition(b"\n")
        if not newline:
            break
        if name == b"end":
            return sections
        if i == len(parts) - 1:
            break  # no marker after it: the output stopped inside this section
        sections.setdefault(name.decode("ascii", "replace"), content)
    return sections


def facts_from_sections(sec: dict[str, bytes]) -> ProbeFacts:
    """ProbeFacts from probe sections; every field parser tolerates absent and hostile content."""
    model = _text(sec.get("model", b"")).rstrip("\x00 \t\r\n").replace("\x00", "\\x00")
    tegra = _first_line(sec.get("tegra", b""))
    gpu, gpu_mb = _nvidia_smi(sec.get("nvidia_smi", b""))
    if not gpu and tegra:
        family = next((f for f in _JETSON_FAMILIES if re.search(rf"\b{f}\b", model)), "Tegra")
        gpu = f"{family} (nvgpu)"
    elif not gpu and model.startswith("Raspberry Pi"):
        gpu = "VideoCore"
    cpu_model, cpu_count = _cpuinfo(sec.get("cpuinfo", b""))
    total_mb, free_mb = _df(sec.get("df", b""))
    return ProbeFacts(
        hostname=_first_line(sec.get("hostname", b"")),
        machine_id=_first_line(sec.get("machine_id", b"")),
        arch=_first_line(sec.get("arch", b"")),
        os_name=_os_release_name(sec.get("os_release", b"")),
        kernel=_first_line(sec.get("kernel", b"")),
        python=_python_version(sec.get("python", b"")),
        cpu_model=cpu_model,
        cpu_count=cpu_count or _int(_first_line(sec.get("nproc", b""))),
        ram_mb=_meminfo_total_mb(sec.get("meminfo", b"")),
        disk_total_mb=total_mb,
        disk_free_mb=free_mb,
        model=model,
        tegra_release=tegra,
        dmi_vendor=_first_line(sec.get("dmi_vendor", b"")),
        dmi_product=_first_line(sec.get("dmi_product", b"")),
        gpu=gpu,
        gpu_memory_mb=gpu_mb,
    )


def _text(raw: bytes) -> str:
    # Bytes that are not UTF-8 stay visible as \xNN instead of being replaced or crashing.
    return raw.decode("utf-8", "backslashreplace")


def _first_line(raw: bytes) -> str:
    line = _text(raw).split("\n", 1)[0]
    # NUL cannot be stored in PostgreSQL text; keep it visible instead.
    return line.strip().replace("\x00", "\\x00")


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0


def _os_release_value(value: str) -> str:
    # os-release(5): values with special characters are in double or single quotes, and inside
    # double quotes "$", quotes, backslash and backtick are escaped with a backslash.
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if value.startswith('"'):
        inner = value[1:-1] if len(value) >= 2 and value.endswith('"') else value[1:]
        return re.sub(r'\\([$"\\`])', r"\1", inner)
    return value


def _os_release_name(raw: bytes) -> str:
    # PRETTY_NAME, else "NAME VERSION".
    values: dict[str, str] = {}
    for line in _text(raw).splitlines():
        key, eq, value = line.partition("=")
        if eq and re.fullmatch(r"[A-Z0-9_]+", key.strip()):
            values.setdefault(key.strip(), _os_release_value(value))
    name = values.get("PRETTY_NAME") or " ".join(v for v in (values.get("NAME"), values.get("VERSION")) if v)
    return name.replace("\x00", "\\x00")


def _arm_core(implementer: str, part: str) -> str:
    try:
        impl, num = int(implementer, 16), int(part, 16)
    except ValueError:
        return ""
    return _ARM_PARTS.get(impl, {}).get(num) or f"ARM implementer {implementer} part {part}"


def _cpuinfo(raw: bytes) -> tuple[str, int]:
    count = 0
    names: list[str] = []
    implementer = ""
    hardware = ""
    for line in _text(raw).splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor" and value.isdigit():
            count += 1
        elif key == "model name" and value and value not in names:
            names.append(value)
        elif key == "CPU implementer":
            implementer = value
        elif key == "CPU part" and implementer:
            core = _arm_core(implementer, value)
            if core and core not in names:
                names.append(core)
        elif key == "Hardware":
            hardware = value
    # big.LITTLE SoCs list each core type once: "Cortex-A76 + Cortex-A55".
    model = " + ".join(names) or hardware
    return model.replace("\x00", "\\x00")[:200], count


def _meminfo_total_mb(raw: bytes) -> int:
    match = re.search(r"^MemTotal:\s*(\d{1,15})\s*kB", _text(raw), re.MULTILINE)
    return int(match.group(1)) // 1024 if match else 0


def _df(raw: bytes) -> tuple[int, int]:
    # POSIX `df -Pk`: Filesystem 1024-blocks Used Available Capacity Mounted-on; the file
    # system name may hold spaces, so count fields from the right.
    lines = _text(raw).splitlines()
    for line in lines[1:]:
        fields = line.split()
        if len(fields) >= 6:
            total, avail = _int(fields[-5]), _int(fields[-3])
            return total // 1024, avail // 1024
    return 0, 0


def _python_version(raw: bytes) -> str:
    match = re.search(r"Python (\d+\.\d+(?:\.\d+)?[a-z0-9+]*)", _text(raw))
    return match.group(1) if match else ""


def _nvidia_smi(raw: bytes) -> tuple[str, int]:
    # `--query-gpu=name,memory.total --format=csv,noheader,nounits`: "NVIDIA RTX A2000 12GB, 12282"
    # per GPU; the first GPU is the one reported. Error text (no driver) has no such line.
    for line in _text(raw).splitlines():
        name, comma, memory = line.rpartition(",")
        name, memory = name.strip(), memory.strip()
        if not comma or not name:
            continue
        if memory.isdigit() or memory in ("[N/A]", "[Not Supported]"):
            return name.replace("\x00", "\\x00")[:200], _int(memory)
    return "", 0
