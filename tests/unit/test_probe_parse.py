"""The probe script and its parser: real output, missing sections, hostile bytes, truncated output."""

from __future__ import annotations

import asyncio
import os
import platform
import random
import shlex
import subprocess
from pathlib import Path

import pytest

from fleetdesk.errors import RemoteCommandError
from fleetdesk.inventory.records import ProbeFacts
from fleetdesk.probe import MARK_PREFIX, PROBE_SCRIPT, parse_probe, probe, probe_command, probe_sections

NONCE = "0123abcd"


def framed(sections: dict[str, bytes], *, nonce: str = NONCE, hex_body: bool = True, end: bool = True) -> bytes:
    """Output in the probe's framing, as `od -An -tx1 -v` (hex) or as raw bytes."""
    mark = (MARK_PREFIX + nonce).encode()
    body = b"".join(b"\n" + mark + b" " + name.encode() + b"\n" + value for name, value in sections.items())
    if end:
        body += b"\n" + mark + b" end\n"
    if not hex_body:
        return mark + b" raw\n" + body
    rows = [" " + " ".join(f"{b:02x}" for b in body[i:i + 16]) for i in range(0, len(body), 16)]
    return mark + b" hex\n" + ("\n".join(rows) + "\n").encode()


# A Jetson Orin Nano dev kit on JetPack 6 (Ubuntu 22.04), in the probe's sections. The values follow
# the files' documented formats; the nvidia-smi line (integrated GPU, no memory of its own) is assumed.
ORIN = {
    "arch": b"aarch64\n",
    "kernel": b"5.15.148-tegra\n",
    "hostname": b"line2-orin-07\n",
    "os_release": b'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n',
    "cpuinfo": b"processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\nprocessor\t: 1\n"
    b"CPU implementer\t: 0x41\nCPU part\t: 0xd42\nprocessor\t: 2\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n"
    b"processor\t: 3\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\nprocessor\t: 4\nCPU implementer\t: 0x41\n"
    b"CPU part\t: 0xd42\nprocessor\t: 5\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n",
    "nproc": b"6\n",
    "meminfo": b"MemTotal:        7802880 kB\nMemFree:         5000000 kB\n",
    "df": b"Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
    b"/dev/mmcblk0p1    59600812 20811464  36327416      37% /\n",
    "python": b"Python 3.10.12\n",
    "model": b"NVIDIA Jetson Orin Nano Developer Kit\x00",
    "tegra": b"# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19\n",
    "dmi_vendor": b"",
    "dmi_product": b"",
    "nvidia_smi": b"Orin (nvgpu), [N/A]\n",
    "machine_id": b"5e0a0d2f6b7a4e3c9d1f2a3b4c5d6e7f\n",
}

ORIN_FACTS = ProbeFacts(
    hostname="line2-orin-07",
    machine_id="5e0a0d2f6b7a4e3c9d1f2a3b4c5d6e7f",
    arch="aarch64",
    os_name="Ubuntu 22.04.4 LTS",
    kernel="5.15.148-tegra",
    python="3.10.12",
    cpu_model="Cortex-A78AE",
    cpu_count=6,
    ram_mb=7620,
    disk_total_mb=58203,
    disk_free_mb=35475,
    model="NVIDIA Jetson Orin Nano Developer Kit",
    tegra_release="# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19",
    gpu="Orin (nvgpu)",
    gpu_memory_mb=0,
)


@pytest.mark.parametrize("hex_body", [True, False])
def test_a_full_answer_parses_to_every_fact(hex_body: bool) -> None:
    assert parse_probe(framed(ORIN, hex_body=hex_body)) == ORIN_FACTS
    # The same bytes handed over as text (a transport that decoded them) parse the same.
    assert parse_probe(framed(ORIN, hex_body=hex_body).decode()) == ORIN_FACTS


def test_login_noise_before_the_answer_is_ignored() -> None:
    noisy = b"Welcome to Ubuntu 22.04\n\x1b[1mLast login: yesterday\x1b[0m\n" + framed(ORIN)
    assert parse_probe(noisy) == ORIN_FACTS


def test_x86_with_discrete_gpu_and_dmi() -> None:
    facts = parse_probe(framed({
        "arch": b"x86_64\n",
        "cpuinfo": b"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) E-2278GE CPU @ 3.30GHz\n"
        b"processor\t: 1\nmodel name\t: Intel(R) Xeon(R) E-2278GE CPU @ 3.30GHz\n",
        "nproc": b"1\n",  # a cgroup-limited nproc: cpuinfo's count is the machine's
        "dmi_vendor": b"Neousys Technology Inc.\n",
        "dmi_product": b"Nuvo-8108GC\n",
        "nvidia_smi": b"NVIDIA RTX A2000 12GB, 12282\nNVIDIA T400, 2048\n",
        "python": b"",
        "model": b"",
    }))
    assert facts.cpu_model == "Intel(R) Xeon(R) E-2278GE CPU @ 3.30GHz"
    assert facts.cpu_count == 2
    assert (facts.dmi_vendor, facts.dmi_product) == ("Neousys Technology Inc.", "Nuvo-8108GC")
    assert (facts.gpu, facts.gpu_memory_mb) == ("NVIDIA RTX A2000 12GB", 12282)
    assert facts.python == ""  # no python3 on the device


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (b"processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n", "Cortex-A72"),
        (b"processor\t: 0\nCPU implementer\t: 0x4e\nCPU part\t: 0x004\n", "Carmel"),
        # RK3588: big.LITTLE lists each core type once, in the order the kernel lists them.
        (b"processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\nprocessor\t: 1\nCPU implementer\t: 0x41\n"
         b"CPU part\t: 0xd0b\nprocessor\t: 2\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\n",
         "Cortex-A55 + Cortex-A76"),
        (b"processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x802\n", "ARM implementer 0x51 part 0x802"),
        (b"processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nHardware\t: BCM2835\n",
         "ARMv7 Processor rev 4 (v7l)"),
        (b"Hardware\t: BCM2835\n", "BCM2835"),
        (b"processor\t: 0\nCPU implementer\t: zz\nCPU part\t: 0xd08\n", ""),
    ],
)
def test_cpu_names(cpuinfo: bytes, expected: str) -> None:
    assert parse_probe(framed({"cpuinfo": cpuinfo})).cpu_model == expected


@pytest.mark.parametrize(
    ("os_release", "expected"),
    [
        (b"PRETTY_NAME='Raspbian GNU/Linux 12 (bookworm)'\n", "Raspbian GNU/Linux 12 (bookworm)"),
        (b'PRETTY_NAME="A \\"quoted\\" \\$name"\n', 'A "quoted" $name'),
        (b'NAME="Alpine Linux"\nVERSION="3.20"\n', "Alpine Linux 3.20"),
        (b'PRETTY_NAME="unbalanced\n', "unbalanced"),
        (b"# only a comment\n", ""),
    ],
)
def test_os_release_follows_its_shell_like_quoting(os_release: bytes, expected: str) -> None:
    assert parse_probe(framed({"os_release": os_release})).os_name == expected


def test_missing_sections_leave_fields_empty() -> None:
    facts = parse_probe(framed({"arch": b"aarch64\n", "model": b"Raspberry Pi 4 Model B Rev 1.5\x00"}))
    assert facts == ProbeFacts(arch="aarch64", model="Raspberry Pi 4 Model B Rev 1.5", gpu="VideoCore")


@pytest.mark.parametrize(
    "output",
    [b"", b"\x00" * 64, b"sh: 1: Syntax error\n", os.urandom(4096), "ünïcødé garbage", MARK_PREFIX.encode()],
)
def test_garbage_is_no_facts_and_no_crash(output: bytes | str) -> None:
    assert parse_probe(output) == ProbeFacts()
    assert probe_sections(output) is None


def test_nvidia_smi_errors_and_odd_values_are_not_a_gpu() -> None:
    no_driver = (b"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                 b"Make sure that the latest NVIDIA driver is installed and running.\n")
    assert parse_probe(framed({"nvidia_smi": no_driver})).gpu == ""
    assert parse_probe(framed({"nvidia_smi": b"Tesla, T4, 15360\n"})).gpu == "Tesla, T4"
    assert parse_probe(framed({"nvidia_smi": b", 100\nx, lots\n"})).gpu == ""


def test_hostile_file_contents_are_stored_as_data() -> None:
    other = (MARK_PREFIX + "ffff").encode()
    facts = parse_probe(framed({
        "arch": b"x86_64\n",
        # A forged section marker (the file cannot know this probe's nonce) stays part of the value.
        "dmi_product": b"Box " + b"\n" + other + b" gpu\nFAKE\n",
        "dmi_vendor": b"$(rm -rf /); `reboot` 'q' \"dq\" \\ |&;<>\n",
        "model": b"Pi\xff\xfe caf\xc3\xa9\x00\x00",
        "hostname": b"\xe2\x80\x8bhost\x00name\n",
        "machine_id": b"\n\nafter-blank-lines\n",
        "meminfo": b"MemTotal: 99999999999999999999999 kB\n",
        "df": b"Filesystem 1024-blocks Used Available Capacity Mounted on\nmy disk 1000 x -5 1% /\n",
        "python": b"Python 3.12.0rc1+ (and more)\n",
        "nproc": b"-3\n",
    }))
    assert facts.dmi_product == "Box"
    assert facts.gpu == ""
    assert facts.dmi_vendor == "$(rm -rf /); `reboot` 'q' \"dq\" \\ |&;<>"
    assert facts.model == "Pi\\xff\\xfe café"
    assert facts.hostname == "\u200bhost\\x00name"
    assert facts.machine_id == ""  # the first line of the file is empty
    assert facts.ram_mb == 0
    assert (facts.disk_total_mb, facts.disk_free_mb) == (0, 0)
    assert facts.python == "3.12.0rc1+"
    assert facts.cpu_count == 0


@pytest.mark.parametrize("hex_body", [True, False])
def test_truncated_output_never_stores_a_partial_value(hex_body: bool) -> None:
    full = framed(ORIN, hex_body=hex_body)
    expected = ORIN_FACTS.__dict__
    for cut in range(len(full) + 1):
        facts = parse_probe(full[:cut])
        for name, value in facts.__dict__.items():
            # Either the whole value or nothing, never half of one. The GPU is the one derived
            # fact: without nvidia-smi's answer a Jetson's GPU still follows from its tegra release.
            allowed = (expected[name], ProbeFacts().__dict__[name])
            if name == "gpu":
                allowed = (*allowed, "Orin (nvgpu)")
            assert value in allowed, f"cut at {cut}: {name}={value!r}"
    # Without the end marker the last section is not trusted, everything before it is.
    facts = parse_probe(framed(ORIN, hex_body=hex_body, end=False))
    assert facts.machine_id == "" and facts.arch == "aarch64"


def test_probe_command_is_one_quoted_sh_invocation() -> None:
    command = probe_command("abc123")
    assert shlex.split(command) == ["sh", "-c", PROBE_SCRIPT, "fleetdesk-probe", "abc123"]
    with pytest.raises(ValueError):
        probe_command("x; reboot")


def test_the_script_runs_here_and_reports_this_machine() -> None:
    # The real script under dash (Debian's /bin/sh, the shell of Raspberry Pi OS and Ubuntu).
    out = subprocess.run(["sh", "-c", PROBE_SCRIPT, "fleetdesk-probe", NONCE], capture_output=True, timeout=60,
                         check=True).stdout
    assert out.startswith((MARK_PREFIX + NONCE + " hex\n").encode())
    facts = parse_probe(out)
    assert facts.arch == platform.machine()
    assert facts.kernel == os.uname().release
    assert facts.hostname == os.uname().nodename
    assert facts.cpu_count == sum(1 for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                  if ln.startswith("processor"))
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
    assert facts.ram_mb == mem_kb // 1024
    stat = os.statvfs("/")
    assert facts.disk_total_mb == stat.f_blocks * stat.f_frsize // 1024 // 1024
    assert facts.os_name and facts.os_name in Path("/etc/os-release").read_text()
    assert facts.machine_id == Path("/etc/machine-id").read_text().strip()
    assert facts.python == platform.python_version() or facts.python.startswith("3.")


def test_probe_makes_one_round_trip_and_raises_when_nothing_comes_back() -> None:
    calls: list[str] = []

    async def run_here(command: str) -> tuple[int | None, bytes, bytes]:
        calls.append(command)
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        return proc.returncode, out, err

    facts = asyncio.run(probe(run_here))
    assert len(calls) == 1
    assert facts.arch == platform.machine()

    async def broken(command: str) -> tuple[int | None, bytes, bytes]:
        return 127, b"", b"sh: not found\n"

    with pytest.raises(RemoteCommandError) as info:
        asyncio.run(probe(broken, device="ipc-01"))
    assert info.value.exit_status == 127 and "not found" in info.value.stderr
    assert info.value.device == "ipc-01" and info.value.step == "probe" and info.value.fix


def test_random_bytes_inside_sections_never_crash() -> None:
    rng = random.Random(1234)
    names = list(ORIN)
    for _ in range(300):
        sections = {n: rng.randbytes(rng.randrange(0, 200)) for n in rng.sample(names, rng.randrange(len(names)))}
        assert isinstance(parse_probe(framed(sections, hex_body=rng.random() < 0.5)), ProbeFacts)
