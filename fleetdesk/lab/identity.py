"""What a lab device says about itself: hostname, hardware identity, sshd and avahi configuration.

Identity goes where real hardware puts it (device-tree model, /etc/nv_tegra_release, DMI,
/proc/cpuinfo), inside the device's own root filesystem; nothing here touches the host.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any

from fleetdesk.lab.standins import PROC_DIR, PROC_FILES, standin_files
from fleetdesk.profiles import LabHardware, Profile

# Files under PROC_DIR bind-mounted over the device's /proc: cpuinfo is static (written here),
# the others the sensors process keeps rewriting.
FAKE_PROC_FILES = ("cpuinfo", *PROC_FILES)

SSHD_CONFIG = """\
# Written by `fleetdesk lab`: a real OpenSSH sshd for one virtual device.
ListenAddress {address}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
PidFile /run/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
AuthorizedKeysFile /etc/ssh/lab_authorized_keys .ssh/authorized_keys
Subsystem sftp internal-sftp
PrintMotd no
AcceptEnv LANG LC_*
MaxStartups 100:30:200
MaxSessions 64
"""

AVAHI_CONFIG = """\
# Written by `fleetdesk lab`: announce this device on the lab bridge only, as a Pi does.
[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=eth0
enable-dbus=no
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-addresses=yes
publish-hinfo=no
publish-workstation=yes
publish-domain=yes

[reflector]

[rlimits]
"""

SSH_SERVICE = """\
<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name replace-wildcards="yes">%h</name>
  <service>
    <type>_ssh._tcp</type>
    <port>22</port>
  </service>
</service-group>
"""


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def hardware_json(name: str, profile: Profile) -> dict[str, Any]:
    """The hardware description the sensors process animates (it ignores keys it does not use)."""
    assert profile.lab is not None
    return {"name": name, "profile": profile.name, "arch": profile.arch, **dataclasses.asdict(profile.lab)}


def write_identity(root: Path, name: str, address: str, profile: Profile) -> None:
    """Hostname, hardware identity files, stand-in tools and service configuration."""
    hw = profile.lab
    assert hw is not None
    _write(root, "etc/hostname", f"{name}\n")
    _write(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n{address}\t{name}.local\n")
    _write(root, "etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
    last = hw.cpu_count - 1
    for entry in ("online", "possible", "present"):
        _write(root, f"sys/devices/system/cpu/{entry}", f"0-{last}\n" if last else "0\n")
    if hw.device_tree_model:
        # The kernel exposes the model NUL-terminated; readers strip it.
        _write(root, "sys/firmware/devicetree/base/model", hw.device_tree_model + "\0")
        serial = secrets.token_hex(8)
        _write(root, "sys/firmware/devicetree/base/serial-number", serial + "\0")
    if hw.nv_tegra_release:
        _write(root, "etc/nv_tegra_release", hw.nv_tegra_release + "\n")
    if hw.dmi_product_name:
        dmi = {
            "product_name": hw.dmi_product_name,
            "sys_vendor": hw.dmi_sys_vendor,
            "board_vendor": hw.dmi_sys_vendor,
            "product_serial": secrets.token_hex(6).upper(),
            "product_uuid": _uuid(),
        }
        for key, value in dmi.items():
            _write(root, f"sys/class/dmi/id/{key}", value + "\n")
    _write(root, f"{PROC_DIR}/cpuinfo", cpuinfo(hw, profile.arch))
    for rel, source in standin_files(list(hw.tools)).items():
        _write(root, rel, source.read_text(encoding="utf-8"), 0o755)
    _write(root, "etc/ssh/sshd_config", SSHD_CONFIG.format(address=address))
    _write(root, "etc/avahi/avahi-daemon.conf", AVAHI_CONFIG)
    _write(root, "etc/avahi/services/ssh.service", SSH_SERVICE)
    for folder in ("run/sshd", "run/avahi-daemon", "dev", "proc"):
        (root / folder).mkdir(parents=True, exist_ok=True)


def _uuid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _host_cpu_flags() -> str:
    # x86 software reads CPUID, not /proc/cpuinfo, so the flags must be what this CPU really does.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2"


def cpuinfo(hw: LabHardware, arch: str) -> str:
    """/proc/cpuinfo in the kernel's format for this CPU (aarch64 or x86_64)."""
    blocks = []
    if arch == "aarch64":
        # NVIDIA's own cores (Denver, Carmel) carry implementer 0x4e ('N'); Cortex cores Arm's 0x41
        # (MIDR_EL1 implementer codes, as util-linux lscpu-arm.c lists them).
        implementer = "0x4e" if hw.cpu_model in ("Carmel", "Denver", "Denver 2") else "0x41"
        for n in range(hw.cpu_count):
            blocks.append(
                f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                f"CPU implementer\t: {implementer}\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                f"CPU part\t: {hw.cpu_part or '0xd08'}\nCPU revision\t: 3\n"
            )
        tail = ""
        if hw.hardware_revision:  # Raspberry Pi firmware adds these three lines
            tail = (
                f"Revision\t: {hw.hardware_revision}\nSerial\t\t: 10000000{secrets.token_hex(4)}\n"
                f"Model\t\t: {hw.device_tree_model}\n"
            )
        return "\n".join(blocks) + "\n" + tail
    flags = _host_cpu_flags()
    for n in range(hw.cpu_count):
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 158\n"
            f"model name\t: {hw.cpu_model}\nstepping\t: 10\ncpu MHz\t\t: {hw.cpu_max_mhz:.3f}\n"
            f"cache size\t: 8192 KB\nphysical id\t: 0\nsiblings\t: {hw.cpu_count}\ncore id\t\t: {n}\n"
            f"cpu cores\t: {hw.cpu_count}\napicid\t\t: {n}\nfpu\t\t: yes\nfpu_exception\t: yes\n"
            f"cpuid level\t: 22\nwp\t\t: yes\nflags\t\t: {flags}\nbogomips\t: {hw.cpu_max_mhz * 2:.2f}\n"
            f"clflush size\t: 64\ncache_alignment\t: 64\naddress sizes\t: 39 bits physical, 48 bits virtual\n"
            f"power management:\n"
        )
    return "\n".join(blocks) + "\n"
