"""The profile matcher: every shipped profile's lab twin is recognised as itself, and only as itself."""

from __future__ import annotations

import dataclasses

import pytest

from fleetdesk.inventory.records import ProbeFacts
from fleetdesk.profiles import MatchRules, Profile, ProfileSet, has_discrete_gpu, load_profiles, match_profile

PROFILES = load_profiles()


def lab_facts(profile: Profile) -> ProbeFacts:
    """What the probe reports for the lab twin of `profile` (the [lab] table is its hardware)."""
    hw = profile.lab
    assert hw is not None, f"{profile.name} has no [lab] table"
    gpu = {"nvidia": hw.gpu_name, "jetson": hw.gpu_name, "raspberrypi": "VideoCore"}.get(hw.gpu, "")
    return ProbeFacts(
        hostname=f"{hw.hostname_prefix}-01",
        arch=profile.arch,
        os_name="Debian GNU/Linux 12 (bookworm)",
        cpu_model=hw.cpu_model,
        cpu_count=hw.cpu_count,
        ram_mb=hw.memory_mb,
        disk_total_mb=hw.disk_gb * 1024,
        model=hw.device_tree_model,
        tegra_release=hw.nv_tegra_release,
        dmi_vendor=hw.dmi_sys_vendor,
        dmi_product=hw.dmi_product_name,
        gpu=gpu,
        gpu_memory_mb=hw.gpu_memory_mb,
    )


def test_every_shipped_profile_loads_and_has_a_lab_twin() -> None:
    assert PROFILES.errors == []
    assert {"rpi4", "rpi5", "jetson-orin-nano", "jetson-xavier-nx", "ipc-x86", "ipc-x86-nvidia"} <= set(
        PROFILES.profiles
    )


@pytest.mark.parametrize("name", sorted(PROFILES.profiles))
def test_lab_twin_matches_its_own_profile_and_nothing_wins_over_it(name: str) -> None:
    profile = PROFILES.get(name)
    match = match_profile(lab_facts(profile), PROFILES)
    assert match is not None
    assert match.profile == name
    assert match.priority == profile.priority
    # Every rule the profile states is one reason; no other profile ranks above it.
    stated = sum(v is not None for v in dataclasses.astuple(profile.match))
    assert match.rules == stated
    for other in match.others:
        assert PROFILES.get(other).priority <= profile.priority
    # The same answer from a plain list of profiles, in any order.
    assert match_profile(lab_facts(profile), list(reversed(PROFILES.profiles.values()))) == match


def test_gpu_rule_means_a_discrete_card_not_an_integrated_gpu() -> None:
    x86 = lab_facts(PROFILES.get("ipc-x86"))
    assert not has_discrete_gpu(x86)
    # A GPU without its own memory (a Jetson's nvgpu, a Pi's VideoCore) is not a card.
    assert not has_discrete_gpu(dataclasses.replace(x86, gpu="Orin (nvgpu)", gpu_memory_mb=0))
    card = dataclasses.replace(x86, gpu="NVIDIA T1000 8GB", gpu_memory_mb=8192)
    assert has_discrete_gpu(card)
    result = match_profile(card, PROFILES)
    assert result is not None and result.profile == "ipc-x86-nvidia"
    assert "ipc-x86" not in result.others  # gpu = false excludes it rather than losing on priority


@pytest.mark.parametrize(
    "facts",
    [
        ProbeFacts(),
        ProbeFacts(arch="riscv64", model="StarFive VisionFive 2 v1.3B"),
        ProbeFacts(arch="aarch64", model="Radxa ROCK 5B", cpu_model="Cortex-A76 + Cortex-A55"),
        ProbeFacts(arch="aarch64"),  # no model at all: no Pi, no Jetson
        # A Jetson's model string without /etc/nv_tegra_release (not L4T): the rules are not all met.
        ProbeFacts(arch="aarch64", model="NVIDIA Jetson Orin Nano Developer Kit"),
        # An Orin model with a JetPack 4 release: neither Orin (R35/R36) nor Xavier (model) holds.
        ProbeFacts(arch="aarch64", model="NVIDIA Jetson Orin Nano Developer Kit", tegra_release="# R32 (release)"),
        # A Pi's model string on a 32-bit kernel: the profiles are for 64-bit Raspberry Pi OS.
        ProbeFacts(arch="armv7l", model="Raspberry Pi 4 Model B Rev 1.5"),
    ],
)
def test_unknown_or_half_matching_devices_match_no_profile(facts: ProbeFacts) -> None:
    assert match_profile(facts, PROFILES) is None


def test_arch_aliases_from_other_kernels_are_understood() -> None:
    pi = dataclasses.replace(lab_facts(PROFILES.get("rpi4")), arch="arm64")
    result = match_profile(pi, PROFILES)
    assert result is not None and result.profile == "rpi4"


def _custom(name: str, priority: int, **rules: object) -> Profile:
    base = PROFILES.get("ipc-x86")
    return dataclasses.replace(base, name=name, priority=priority, match=MatchRules(**rules))  # type: ignore[arg-type]


def test_priority_then_specificity_then_name_decide() -> None:
    facts = ProbeFacts(arch="x86_64", dmi_product="SIMATIC IPC427E")
    generic = _custom("generic", 10, arch="x86_64")
    specific = _custom("specific", 10, arch="x86_64", dmi_product_name="^SIMATIC")
    preferred = _custom("preferred", 20, arch="x86_64")
    twin_a = _custom("twin-a", 10, arch="x86_64", dmi_product_name="IPC")
    twin_b = _custom("twin-b", 10, arch="x86_64", dmi_product_name="427")

    result = match_profile(facts, [generic, specific])
    assert result is not None and result.profile == "specific" and result.others == ("generic",)
    result = match_profile(facts, [generic, specific, preferred])
    assert result is not None and result.profile == "preferred"
    assert result.others == ("specific", "generic")
    # Equal priority and equal specificity: the name decides, the same way every time.
    for order in ([twin_a, twin_b], [twin_b, twin_a]):
        result = match_profile(facts, order)
        assert result is not None and result.profile == "twin-a" and result.others == ("twin-b",)


def test_operator_profile_with_a_dmi_rule_beats_the_catch_all() -> None:
    facts = ProbeFacts(arch="x86_64", dmi_product="SIMATIC IPC427E")
    siemens = _custom("siemens-ipc", 30, arch="x86_64", dmi_product_name="^SIMATIC IPC4")
    result = match_profile(facts, ProfileSet(profiles={**PROFILES.profiles, "siemens-ipc": siemens}))
    assert result is not None and result.profile == "siemens-ipc"
    assert "ipc-x86" in result.others
    assert any("SIMATIC IPC427E" in r for r in result.reasons)


def test_hostile_device_strings_are_matched_as_plain_data() -> None:
    # Regex metacharacters, newlines and a huge string in device-supplied fields are just text.
    hostile = ProbeFacts(arch="aarch64", model="Raspberry Pi 4 Model B\n$(reboot) .*[", tegra_release="x" * 1_000_000)
    result = match_profile(hostile, PROFILES)
    assert result is not None and result.profile == "rpi4"
    assert match_profile(ProbeFacts(arch="aarch64", model=".*"), PROFILES) is None
