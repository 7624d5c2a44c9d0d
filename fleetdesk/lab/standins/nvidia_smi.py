#!/usr/bin/python3
"""nvidia-smi stand-in for FleetDesk lab devices with an NVIDIA dGPU (x86 only, so python3 starts fast).

It imitates, in tests/fixtures/recorded/ (see SOURCES.md there): nvidia-smi-table.txt (the default table,
driver 550), nvidia-smi-q.txt (-q), nvidia-smi-L.txt (-L), nvidia-smi-query-csv.txt (--query-gpu header
names and units) and nvidia-smi-query-error.txt (an unknown field: the message on stdout, exit 2).
Values come from the files fleetdesk.lab.sensors writes under ${FLEETDESK_LAB_ROOT:-}/var/lib/fleetdesk-lab.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

SENSORS = os.environ.get("FLEETDESK_LAB_ROOT", "") + "/var/lib/fleetdesk-lab/sensors"
EXIT_INVALID_ARGUMENT = 2  # nvidia-smi(1): "A supplied argument or flag is invalid"


class Gpu:
    """One reading of every lab value file, taken when the command starts."""

    def __init__(self) -> None:
        def read(name: str, default: str) -> str:
            try:
                with open(os.path.join(SENSORS, name)) as f:
                    return f.readline().strip() or default
            except OSError:
                return default

        self.name = read("gpu_name", "NVIDIA GPU")
        self.uuid = read("gpu_uuid", "GPU-00000000-0000-0000-0000-000000000000")
        self.bus_id = read("gpu_pci_bus_id", "00000000:01:00.0")
        self.driver = read("gpu_driver_version", "550.127.05")
        self.cuda = read("gpu_cuda_version", "12.4")
        self.util = int(read("gpu_util_pct", "0"))
        self.mem_util = int(read("gpu_mem_util_pct", "0"))
        self.temp = round(int(read("gpu_temp_mc", "30000")) / 1000)
        self.power_w = int(read("gpu_power_mw", "0")) / 1000
        self.limit_w = int(read("gpu_power_limit_mw", "70000")) / 1000
        self.sm_mhz = int(read("gpu_freq_mhz", "210"))
        self.max_mhz = int(read("gpu_max_mhz", "1200"))
        self.mem_mhz = int(read("gpu_mem_freq_mhz", "405"))
        self.mem_max_mhz = int(read("gpu_mem_max_mhz", "6001"))
        self.mem_total = int(read("gpu_mem_total_mib", "0"))
        self.mem_reserved = int(read("gpu_mem_reserved_mib", "0"))
        self.mem_used = int(read("gpu_mem_used_mib", "0"))
        self.fan = int(read("fan_pct", "30"))
        self.pstate = read("pstate", "P8")
        self.mem_free = max(0, self.mem_total - self.mem_reserved - self.mem_used)
        self.video_mhz = max(555, round(0.93 * self.sm_mhz))
        # What the product line implies: datacenter parts ship with ECC and persistence on,
        # workstation (RTX A) parts with ECC off, GeForce parts have no ECC at all.
        self.brand = "GeForce" if "GeForce" in self.name else "NVIDIA RTX" if " RTX A" in self.name else "NVIDIA"
        self.datacenter = self.brand == "NVIDIA"
        self.ecc = "Enabled" if self.datacenter else "N/A" if self.brand == "GeForce" else "Disabled"
        self.persistence = "Enabled" if self.datacenter else "Disabled"
        self.arch = "Turing" if "RTX 20" in self.name else "Ada Lovelace" if "RTX 40" in self.name else "Ampere"
        self.device_id = _DEVICE_IDS.get(self.name, "0x223610DE")


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


# PCI device ids of the parts lab profiles use; others get the recorded A10's.
_DEVICE_IDS = {"NVIDIA A10": "0x223610DE", "NVIDIA RTX A2000 12GB": "0x257110DE"}


# --query-gpu: accepted name -> (name in the header, unit, value). Aliases print under the canonical
# name, as the recorded --query-accounted-apps section shows (gpu_util -> gpu_utilization [%]).
Field = tuple[str, str, Callable[[Gpu], str]]
_FIELDS: dict[str, Field] = {
    "timestamp": ("timestamp", "", lambda g: _timestamp()),
    "driver_version": ("driver_version", "", lambda g: g.driver),
    "count": ("count", "", lambda g: "1"),
    "name": ("name", "", lambda g: g.name),
    "serial": ("serial", "", lambda g: "[N/A]"),
    "uuid": ("uuid", "", lambda g: g.uuid),
    "pci.bus_id": ("pci.bus_id", "", lambda g: g.bus_id),
    "index": ("index", "", lambda g: "0"),
    "persistence_mode": ("persistence_mode", "", lambda g: g.persistence),
    "fan.speed": ("fan.speed", "%", lambda g: str(g.fan)),
    "pstate": ("pstate", "", lambda g: g.pstate),
    "memory.total": ("memory.total", "MiB", lambda g: str(g.mem_total)),
    "memory.reserved": ("memory.reserved", "MiB", lambda g: str(g.mem_reserved)),
    "memory.used": ("memory.used", "MiB", lambda g: str(g.mem_used)),
    "memory.free": ("memory.free", "MiB", lambda g: str(g.mem_free)),
    "compute_mode": ("compute_mode", "", lambda g: "Default"),
    "compute_cap": ("compute_cap", "", lambda g: {"Turing": "7.5", "Ada Lovelace": "8.9"}.get(g.arch, "8.6")),
    "utilization.gpu": ("utilization.gpu", "%", lambda g: str(g.util)),
    "utilization.memory": ("utilization.memory", "%", lambda g: str(g.mem_util)),
    "temperature.gpu": ("temperature.gpu", "", lambda g: str(g.temp)),
    "power.draw": ("power.draw", "W", lambda g: f"{g.power_w:.2f}"),
    "power.limit": ("power.limit", "W", lambda g: f"{g.limit_w:.2f}"),
    "enforced.power.limit": ("enforced.power.limit", "W", lambda g: f"{g.limit_w:.2f}"),
    "power.default_limit": ("power.default_limit", "W", lambda g: f"{g.limit_w:.2f}"),
    "power.max_limit": ("power.max_limit", "W", lambda g: f"{g.limit_w:.2f}"),
    "power.min_limit": ("power.min_limit", "W", lambda g: f"{g.limit_w * 2 / 3:.2f}"),
    "clocks.current.graphics": ("clocks.current.graphics", "MHz", lambda g: str(g.sm_mhz)),
    "clocks.current.sm": ("clocks.current.sm", "MHz", lambda g: str(g.sm_mhz)),
    "clocks.current.memory": ("clocks.current.memory", "MHz", lambda g: str(g.mem_mhz)),
    "clocks.current.video": ("clocks.current.video", "MHz", lambda g: str(g.video_mhz)),
    "clocks.max.graphics": ("clocks.max.graphics", "MHz", lambda g: str(g.max_mhz)),
    "clocks.max.sm": ("clocks.max.sm", "MHz", lambda g: str(g.max_mhz)),
    "clocks.max.memory": ("clocks.max.memory", "MHz", lambda g: str(g.mem_max_mhz)),
}
_ALIASES = {
    "gpu_name": "name", "gpu_serial": "serial", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id",
    "clocks.gr": "clocks.current.graphics", "clocks.sm": "clocks.current.sm",
    "clocks.mem": "clocks.current.memory", "clocks.video": "clocks.current.video",
    "clocks.max.gr": "clocks.max.graphics", "clocks.max.mem": "clocks.max.memory",
    "gpu.power.requested_limit": "power.limit", "gpu.power.current_limit": "enforced.power.limit",
    "gpu.power.default_limit": "power.default_limit", "gpu.power.min_limit": "power.min_limit",
    "gpu.power.max_limit": "power.max_limit",
}


def query_gpu(spec: str, fmt: str) -> tuple[str, int]:
    """--query-gpu=SPEC --format=FMT: the CSV text and the exit status."""
    options = [o.strip() for o in fmt.split(",") if o.strip()]
    if "csv" not in options or set(options) - {"csv", "noheader", "nounits"}:
        return f'"{fmt}" is not a valid format.\n\n', EXIT_INVALID_ARGUMENT  # not recorded: approximate
    chosen: list[Field] = []
    for raw in spec.split(","):
        name = _ALIASES.get(raw.strip(), raw.strip())
        if name not in _FIELDS:
            return f'Field "{raw.strip()}" is not a valid field to query.\n\n', EXIT_INVALID_ARGUMENT
        chosen.append(_FIELDS[name])
    gpu = Gpu()
    units = "nounits" not in options
    lines = [] if "noheader" in options else [", ".join(h + (f" [{u}]" if u else "") for h, u, _ in chosen)]
    lines.append(", ".join(v(gpu) + (f" {u}" if units and u else "") for _, u, v in chosen))
    return "\n".join(lines) + "\n", 0


def _short_name(name: str) -> str:
    # The table cuts long product names to 24 characters and "..." (nvidia-smi-table-595.txt).
    return name if len(name) <= 27 else name[:24] + "..."


def table() -> str:
    g = Gpu()
    pm = "On" if g.persistence == "Enabled" else "Off"
    ecc = {"Enabled": "0", "Disabled": "Off"}.get(g.ecc, "N/A")  # volatile uncorrected errors, or the mode
    bar = "+" + "-" * 89 + "+"
    cells = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    rows = [
        f"{time.asctime()}       ",
        bar,
        f"| NVIDIA-SMI {g.driver:<23}Driver Version: {g.driver:<15}CUDA Version: {g.cuda:<9}|",
        "|" + cells[1:],
        "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
        "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
        "|                                         |                        |               MIG M. |",
        "|=========================================+========================+======================|",
        f"|   0  {_short_name(g.name):<31}{pm:<3} |{g.bus_id:>19} {'Off':>3} |{ecc:>21} |",
        f"|{g.fan:>3}%{g.temp:>5}C{g.pstate:>6}{round(g.power_w):>15}W / {round(g.limit_w):>4}W "
        f"|{g.mem_used:>8}MiB / {g.mem_total:>6}MiB |{g.util:>7}%{'Default':>13} |",
        "|                                         |                        |                  N/A |",
        cells,
        "",
        bar,
        "| Processes:" + " " * 78 + "|",
        "|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |",
        "|        ID   ID                                                               Usage      |",
        "|" + "=" * 89 + "|",
        "|  No running processes found" + " " * 61 + "|",
        bar,
    ]
    return "\n".join(rows) + "\n"


def _q(rows: list[tuple[int, str, str | None]]) -> str:
    """-q layout: key indented by 4 per level, the colon in column 42, or a bare heading."""
    out = []
    for level, key, value in rows:
        text = " " * (4 * level) + key
        if not text:  # an empty line between the header block and the GPUs
            out.append("")
            continue
        out.append(text if value is None else f"{text:<42}: {value}")
    return "\n".join(out)


def query() -> str:
    g = Gpu()
    _, bus, devfn = g.bus_id.split(":")
    dev = devfn.split(".")[0]
    na, inactive = "N/A", "Not Active"
    bar1 = 32768 if g.datacenter else 256
    serial = str(int(g.uuid[4:12], 16) % 10**13).zfill(13) if g.brand != "GeForce" else na
    volts = 650.0 + 350.0 * (g.sm_mhz - 210) / max(1, g.max_mhz - 210)

    def w(x: float) -> str:
        return f"{x:.2f} W"

    def mhz(x: int) -> str:
        return f"{x} MHz"

    def ecc(level: int, *names: str) -> list[tuple[int, str, str | None]]:
        return [(level, n, "0" if g.ecc == "Enabled" else na) for n in names]

    counters = ("SRAM Correctable", "SRAM Uncorrectable Parity", "SRAM Uncorrectable SEC-DED",
                "DRAM Correctable", "DRAM Uncorrectable")

    # The rows, headings and order of the recorded A10 dump (driver 550); values from the lab files.
    rows: list[tuple[int, str, str | None]] = [
        (0, "Timestamp", time.asctime()), (0, "Driver Version", g.driver), (0, "CUDA Version", g.cuda),
        (0, "", None),
        (0, "Attached GPUs", "1"), (0, f"GPU {g.bus_id}", None),
        (1, "Product Name", g.name), (1, "Product Brand", g.brand), (1, "Product Architecture", g.arch),
        (1, "Display Mode", "Enabled"), (1, "Display Active", "Disabled"), (1, "Persistence Mode", g.persistence),
        (1, "Addressing Mode", "None"), (1, "MIG Mode", None), (2, "Current", na), (2, "Pending", na),
        (1, "Accounting Mode", "Disabled"), (1, "Accounting Mode Buffer Size", "4000"),
        (1, "Driver Model", None), (2, "Current", na), (2, "Pending", na),
        (1, "Serial Number", serial), (1, "GPU UUID", g.uuid), (1, "Minor Number", "0"),
        (1, "VBIOS Version", "94.02.91.00.03"), (1, "MultiGPU Board", "No"),
        (1, "Board ID", f"0x{int(bus, 16) << 8:x}"), (1, "Board Part Number", na), (1, "GPU Part Number", na),
        (1, "FRU Part Number", na), (1, "Module ID", "1"),
        (1, "Inforom Version", None), (2, "Image Version", "G133.0215.00.06"), (2, "OEM Object", "2.0"),
        (2, "ECC Object", "6.16"), (2, "Power Management Object", na),
        (1, "Inforom BBX Object Flush", None), (2, "Latest Timestamp", na), (2, "Latest Duration", na),
        (1, "GPU Operation Mode", None), (2, "Current", na), (2, "Pending", na), (1, "GPU C2C Mode", na),
        (1, "GPU Virtualization Mode", None), (2, "Virtualization Mode", "None"), (2, "Host VGPU Mode", na),
        (2, "vGPU Heterogeneous Mode", na),
        (1, "GPU Reset Status", None), (2, "Reset Required", "No"), (2, "Drain and Reset Recommended", "No"),
        (1, "GSP Firmware Version", g.driver), (1, "IBMNPU", None), (2, "Relaxed Ordering Mode", na),
        (1, "PCI", None), (2, "Bus", f"0x{bus}"), (2, "Device", f"0x{dev}"), (2, "Domain", "0x0000"),
        (2, "Base Classcode", "0x3"), (2, "Sub Classcode", "0x0"), (2, "Device Id", g.device_id),
        (2, "Bus Id", g.bus_id), (2, "Sub System Id", g.device_id),
        (2, "GPU Link Info", None), (3, "PCIe Generation", None), (4, "Max", "4"),
        (4, "Current", "4" if g.util else "1"), (4, "Device Current", "4" if g.util else "1"),
        (4, "Device Max", "4"), (4, "Host Max", "4"), (3, "Link Width", None), (4, "Max", "16x"),
        (4, "Current", "16x"), (2, "Bridge Chip", None), (3, "Type", na), (3, "Firmware", na),
        (2, "Replays Since Reset", "0"), (2, "Replay Number Rollovers", "0"),
        (2, "Tx Throughput", f"{200 + 40 * g.util} KB/s"), (2, "Rx Throughput", f"{100 + 90 * g.util} KB/s"),
        (2, "Atomic Caps Inbound", na), (2, "Atomic Caps Outbound", na),
        (1, "Fan Speed", f"{g.fan} %"), (1, "Performance State", g.pstate),
        (1, "Clocks Event Reasons", None), (2, "Idle", "Active" if g.util == 0 else inactive),
        (2, "Applications Clocks Setting", inactive),
        (2, "SW Power Cap", "Active" if g.power_w >= 0.98 * g.limit_w else inactive),
        (2, "HW Slowdown", inactive), (3, "HW Thermal Slowdown", inactive),
        (3, "HW Power Brake Slowdown", inactive), (2, "Sync Boost", inactive),
        (2, "SW Thermal Slowdown", inactive), (2, "Display Clock Setting", inactive),
        (1, "Sparse Operation Mode", na),
        (1, "FB Memory Usage", None), (2, "Total", f"{g.mem_total} MiB"), (2, "Reserved", f"{g.mem_reserved} MiB"),
        (2, "Used", f"{g.mem_used} MiB"), (2, "Free", f"{g.mem_free} MiB"),
        (1, "BAR1 Memory Usage", None), (2, "Total", f"{bar1} MiB"), (2, "Used", "1 MiB"),
        (2, "Free", f"{bar1 - 1} MiB"),
        (1, "Conf Compute Protected Memory Usage", None), (2, "Total", "0 MiB"), (2, "Used", "0 MiB"),
        (2, "Free", "0 MiB"), (1, "Compute Mode", "Default"),
        (1, "Utilization", None), (2, "Gpu", f"{g.util} %"), (2, "Memory", f"{g.mem_util} %"),
        (2, "Encoder", "0 %"), (2, "Decoder", "0 %"), (2, "JPEG", "0 %"), (2, "OFA", "0 %"),
        (1, "Encoder Stats", None), (2, "Active Sessions", "0"), (2, "Average FPS", "0"),
        (2, "Average Latency", "0"),
        (1, "FBC Stats", None), (2, "Active Sessions", "0"), (2, "Average FPS", "0"), (2, "Average Latency", "0"),
        (1, "ECC Mode", None), (2, "Current", g.ecc), (2, "Pending", g.ecc),
        (1, "ECC Errors", None), (2, "Volatile", None), *ecc(3, *counters), (2, "Aggregate", None), *ecc(3, *counters),
        (3, "SRAM Threshold Exceeded", "No" if g.ecc == "Enabled" else na),
        (2, "Aggregate Uncorrectable SRAM Sources", None),
        *ecc(3, "SRAM L2", "SRAM SM", "SRAM Microcontroller", "SRAM PCIE", "SRAM Other"),
        (1, "Retired Pages", None), (2, "Single Bit ECC", na), (2, "Double Bit ECC", na),
        (2, "Pending Page Blacklist", na),
        (1, "Remapped Rows", None), (2, "Correctable Error", "0"), (2, "Uncorrectable Error", "0"),
        (2, "Pending", "No"), (2, "Remapping Failure Occurred", "No"),
        (2, "Bank Remap Availability Histogram", None), (3, "Max", "192 bank(s)"), (3, "High", "0 bank(s)"),
        (3, "Partial", "0 bank(s)"), (3, "Low", "0 bank(s)"), (3, "None", "0 bank(s)"),
        (1, "Temperature", None), (2, "GPU Current Temp", f"{g.temp} C"), (2, "GPU T.Limit Temp", na),
        (2, "GPU Shutdown Temp", "101 C"), (2, "GPU Slowdown Temp", "98 C"),
        (2, "GPU Max Operating Temp", "91 C"), (2, "GPU Target Temperature", na),
        (2, "Memory Current Temp", na), (2, "Memory Max Operating Temp", na),
        (1, "GPU Power Readings", None), (2, "Power Draw", w(g.power_w)),
        (2, "Current Power Limit", w(g.limit_w)), (2, "Requested Power Limit", w(g.limit_w)),
        (2, "Default Power Limit", w(g.limit_w)), (2, "Min Power Limit", w(g.limit_w * 2 / 3)),
        (2, "Max Power Limit", w(g.limit_w)),
        (1, "GPU Memory Power Readings", None), (2, "Power Draw", na),
        (1, "Module Power Readings", None), (2, "Power Draw", na), (2, "Current Power Limit", na),
        (2, "Requested Power Limit", na), (2, "Default Power Limit", na), (2, "Min Power Limit", na),
        (2, "Max Power Limit", na),
        (1, "Clocks", None), (2, "Graphics", mhz(g.sm_mhz)), (2, "SM", mhz(g.sm_mhz)),
        (2, "Memory", mhz(g.mem_mhz)), (2, "Video", mhz(g.video_mhz)),
        (1, "Applications Clocks", None), (2, "Graphics", mhz(g.max_mhz)), (2, "Memory", mhz(g.mem_max_mhz)),
        (1, "Default Applications Clocks", None), (2, "Graphics", mhz(g.max_mhz)),
        (2, "Memory", mhz(g.mem_max_mhz)), (1, "Deferred Clocks", None), (2, "Memory", na),
        (1, "Max Clocks", None), (2, "Graphics", mhz(g.max_mhz)), (2, "SM", mhz(g.max_mhz)),
        (2, "Memory", mhz(g.mem_max_mhz)), (2, "Video", mhz(round(0.93 * g.max_mhz))),
        (1, "Max Customer Boost Clocks", None), (2, "Graphics", mhz(g.max_mhz)),
        (1, "Clock Policy", None), (2, "Auto Boost", na), (2, "Auto Boost Default", na),
        (1, "Voltage", None), (2, "Graphics", f"{round(volts / 6.25) * 6.25:.3f} mV"),
        (1, "Fabric", None), (2, "State", na), (2, "Status", na), (2, "CliqueId", na), (2, "ClusterUUID", na),
        (2, "Health", None), (3, "Bandwidth", na),
        (1, "Processes", "None"),
    ]
    return "\n==============NVSMI LOG==============\n\n" + _q(rows) + "\n"


HELP = """NVIDIA System Management Interface -- v{driver}

NVSMI provides monitoring information for Tesla and select Quadro devices.
The data is presented in either a plain text or an XML format, via stdout or a file.
NVSMI also provides several management operations for changing the device state.

nvidia-smi [OPTION1 [ARG1]] [OPTION2 [ARG2]] ...

    -h,   --help                Print usage information and exit.

  LIST OPTIONS:

    -L,   --list-gpus           Display a list of GPUs connected to the system.

  SUMMARY OPTIONS:

    <no arguments>              Show a summary of GPUs connected to the system.

  QUERY OPTIONS:

    -q,   --query               Display GPU or Unit info.

  SELECTIVE QUERY OPTIONS:

    --query-gpu                 Information about GPU.
    --format=                   Comma separated list of format options:
                                  csv - comma separated values (MANDATORY)
                                  noheader - skip the first line with column headers
                                  nounits - don't print units for numerical
                                             values
    -l,   --loop=               Probe until Ctrl+C at specified second interval.
    -lms, --loop-ms=            Probe until Ctrl+C at specified millisecond interval.

Please see the nvidia-smi(1) manual page for more detailed information.
"""


def main(argv: list[str]) -> int:
    mode, spec, fmt, loop_s = "table", "", "", 0.0
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, _, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(HELP.format(driver=Gpu().driver), end="")
            return 0
        elif arg in ("-L", "--list-gpus"):
            mode = "list"
        elif arg in ("-q", "--query"):
            mode = "query"
        elif key == "--query-gpu":
            mode, spec = "csv", value
        elif key == "--format":
            fmt = value
        elif key in ("-l", "--loop", "-lms", "--loop-ms"):
            value = value or (args.pop(0) if args else "")
            try:
                loop_s = float(value) / (1000 if key in ("-lms", "--loop-ms") else 1)
            except ValueError:
                loop_s = -1.0
            if loop_s <= 0:
                print(f"ERROR: Option {arg} is not recognized. Please run 'nvidia-smi -h'.")
                return EXIT_INVALID_ARGUMENT
        elif key in ("-i", "--id"):
            value = value or (args.pop(0) if args else "")  # one GPU: any id that names it is accepted
        else:
            # Recorded wording for an unknown option (zylon-ai/private-gpt issue 1480).
            print(f"ERROR: Option {arg} is not recognized. Please run 'nvidia-smi -h'.")
            return EXIT_INVALID_ARGUMENT
    if mode == "list":
        g = Gpu()
        print(f"GPU 0: {g.name} (UUID: {g.uuid})")
        return 0
    if mode != "csv":
        print(query() if mode == "query" else table(), end="")
        return 0
    text, status = query_gpu(spec, fmt)
    print(text, end="", flush=True)
    while status == 0 and loop_s > 0:  # the header is printed once, then one row per interval
        time.sleep(loop_s)
        text = query_gpu(spec, fmt + ",noheader")[0]
        print(text, end="", flush=True)
    return status


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # like the C tool: `nvidia-smi -q | head` ends quietly
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    sys.exit(main(sys.argv[1:]))
