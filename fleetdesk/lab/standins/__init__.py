"""Stand-ins for the vendor tools of lab devices (tegrastats, nvidia-smi, vcgencmd), shipped as script files.

They print the real tools' formats from the values fleetdesk.lab.sensors keeps moving inside the device root.
"""

from __future__ import annotations

from pathlib import Path

SENSORS_DIR = "var/lib/fleetdesk-lab/sensors"
PROC_DIR = "var/lib/fleetdesk-lab/proc"
# The files under PROC_DIR the sensors keep rewriting in place; each is bind-mounted over R/proc/<name>.
PROC_FILES = ("meminfo", "stat", "uptime")

# What the stand-ins read: one value per file under SENSORS_DIR, ending in a newline, written by
# fleetdesk.lab.sensors (which files exist depends on hw["gpu"]). Besides these, tegrastats reads
# sys/class/thermal/thermal_zone*/{type,temp} and etc/nv_tegra_release, vcgencmd thermal_zone0/temp.
LAB_VALUE_FILES: dict[str, str] = {
    "cpu_count": "number of cores",
    "cpu_util_pct": "per-core utilisation, integer percent, space-separated, core 0 first",
    "cpu_freq_mhz": "per-core current clock in MHz, space-separated, core 0 first",
    "ram_total_mb": "MemTotal in MB",
    "ram_used_mb": "MemTotal - MemAvailable in MB (what tegrastats calls used)",
    "ram_lfb": "largest free blocks in tegrastats notation, e.g. 25x4MB",
    "swap_total_mb": "SwapTotal in MB",
    "swap_used_mb": "SwapTotal - SwapFree in MB",
    "swap_cached_mb": "SwapCached in MB",
    # Jetson (hw["gpu"] == "jetson")
    "tegra_model": "orin | xavier: picks the tegrastats line format",
    "emc_util_pct": "external memory controller load, percent",
    "emc_freq_mhz": "external memory controller clock, MHz",
    "power_rails": "the INA3221 rail names, space-separated, in tegrastats order",
    "rail_<NAME>_mw": "current power of rail NAME in mW, one file per rail",
    # Jetson and NVIDIA dGPU
    "gpu_util_pct": "GPU load, integer percent",
    "gpu_freq_mhz": "GPU (graphics = SM) clock, MHz",
    "gpu_temp_mc": "GPU temperature, millidegrees C",
    "gpu_power_mw": "GPU power, mW",
    "fan_pct": "fan duty, percent",
    # NVIDIA dGPU (hw["gpu"] == "nvidia")
    "gpu_name": "product name, e.g. NVIDIA RTX A2000 12GB",
    "gpu_uuid": "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, stable per device name",
    "gpu_pci_bus_id": "00000000:01:00.0",
    "gpu_driver_version": "driver version nvidia-smi reports",
    "gpu_cuda_version": "CUDA version nvidia-smi reports",
    "gpu_max_mhz": "maximum graphics clock, MHz",
    "gpu_mem_util_pct": "memory controller load, integer percent",
    "gpu_mem_freq_mhz": "memory clock, MHz",
    "gpu_mem_max_mhz": "maximum memory clock, MHz",
    "gpu_mem_total_mib": "framebuffer total, MiB",
    "gpu_mem_reserved_mib": "framebuffer reserved by the driver, MiB",
    "gpu_mem_used_mib": "framebuffer used, MiB",
    "gpu_power_limit_mw": "enforced power limit, mW",
    "pstate": "performance state, P0 (busy) or P8 (idle)",
    # Raspberry Pi (hw["gpu"] == "raspberrypi")
    "arm_freq_hz": "measured ARM clock (vcgencmd measure_clock arm), Hz",
    "core_freq_hz": "VideoCore core clock, Hz",
    "v3d_freq_hz": "V3D clock, Hz",
    "core_volts": "core voltage, volts with 4 decimals",
    "throttled": "get_throttled bit field as 0x hex (bits 0-3 now, 16-19 since boot)",
    "arm_mem_mb": "memory split: ARM side, MB",
    "gpu_mem_mb": "memory split: VideoCore side, MB",
}


# tool name -> (install path inside the device root, script file in this package)
_STANDINS: dict[str, tuple[str, str]] = {
    "tegrastats": ("usr/bin/tegrastats", "tegrastats.sh"),
    "nvidia-smi": ("usr/bin/nvidia-smi", "nvidia_smi.py"),
    "vcgencmd": ("usr/bin/vcgencmd", "vcgencmd.sh"),
}


def standin_files(tools: list[str]) -> dict[str, Path]:
    """Map each tool's install path inside R (e.g. "usr/bin/nvidia-smi") to its source file here.

    Install the files with mode 0755. Every path a stand-in reads is prefixed by
    ${FLEETDESK_LAB_ROOT:-}, empty on a device, so tests can point them at a temporary root.
    """
    unknown = sorted(set(tools) - set(_STANDINS))
    if unknown:
        raise ValueError(f"no stand-in for {', '.join(unknown)}; known tools: {', '.join(sorted(_STANDINS))}")
    here = Path(__file__).resolve().parent
    return {_STANDINS[t][0]: here / _STANDINS[t][1] for t in tools}
