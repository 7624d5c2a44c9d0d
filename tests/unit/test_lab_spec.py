"""The lab's --devices SPEC and device plan: parsed and checked before the host is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetdesk.errors import LabSpecError
from fleetdesk.lab.fleet import LabPaths, plan_devices
from fleetdesk.lab.spec import parse_spec
from fleetdesk.profiles import load_profiles

PROFILES = load_profiles()


def test_spec_lists_profiles_with_counts() -> None:
    items = parse_spec("rpi4:2,jetson-orin-nano:1, ipc-x86:3", PROFILES)
    assert [(i.profile.name, i.count) for i in items] == [("rpi4", 2), ("jetson-orin-nano", 1), ("ipc-x86", 3)]


def test_a_count_defaults_to_one_and_repeats_add_up() -> None:
    items = parse_spec("rpi5,rpi5:2", PROFILES)
    assert [(i.profile.name, i.count) for i in items] == [("rpi5", 3)]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "empty"),
        ("rpi4:two", "cannot read 'rpi4:two'"),
        ("rpi4:2;ipc-x86:1", "cannot read"),
        ("rpi4:0", "asks for no devices"),
        ("rpi3:1", "unknown profile 'rpi3'"),
        ("RPI4:1", "cannot read"),
        ("ipc-x86:251", "asks for 251 devices"),
        ("rpi4:1,$(reboot):1", "cannot read"),
    ],
)
def test_a_bad_spec_is_one_clear_line_with_the_fix(spec: str, words: str) -> None:
    with pytest.raises(LabSpecError) as caught:
        parse_spec(spec, PROFILES)
    text = str(caught.value)
    assert words in text
    assert "\n" not in text
    assert caught.value.fix


def test_unknown_profile_error_lists_the_known_profiles() -> None:
    with pytest.raises(LabSpecError, match="jetson-orin-nano"):
        parse_spec("rpi3:1", PROFILES)


def test_plan_gives_each_device_a_name_an_address_in_the_benchmark_range_and_an_interface(tmp_path: Path) -> None:
    import ipaddress

    paths = LabPaths(lab_dir=tmp_path / "lab", cache_dir=tmp_path / "cache")
    plan = plan_devices("rpi4:2,ipc-x86-nvidia:1", PROFILES, paths)
    devices = [dev for dev, _ in plan]
    assert [d.name for d in devices] == ["rpi4-01", "rpi4-02", "gpc-01"]
    assert [d.arch for d in devices] == ["aarch64", "aarch64", "x86_64"]
    for dev in devices:
        assert ipaddress.ip_address(dev.address) in ipaddress.ip_network("198.18.0.0/15")
        assert len(dev.veth) <= 15  # Linux interface names
        assert dev.netns == f"fdlab-{dev.name}"
    assert len({d.address for d in devices}) == 3
    assert devices[0].root == str(tmp_path / "lab" / "devices" / "rpi4-01" / "root")
