"""Device profiles: the shipped ones load, bad files are named with field and fix, operators override."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetdesk.errors import ProfileError
from fleetdesk.profiles import load_profile_file, load_profiles
from fleetdesk.resources import data_dir

REQUIRED = {"rpi4", "rpi5", "jetson-orin-nano", "jetson-xavier-nx", "ipc-x86", "ipc-x86-nvidia"}


def shipped(name: str) -> str:
    return (data_dir("device_profiles") / f"{name}.toml").read_text()


def test_every_shipped_profile_loads_without_errors() -> None:
    result = load_profiles()
    assert result.errors == []
    assert REQUIRED <= set(result.profiles)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_shipped_profiles_describe_their_lab_twin(name: str) -> None:
    profile = load_profiles().get(name)
    assert profile.lab is not None
    assert profile.lab.cpu_count > 0 and profile.lab.memory_mb > 0
    if profile.arch == "aarch64":
        assert profile.lab.device_tree_model
    if profile.family == "jetson":
        assert profile.lab.nv_tegra_release.startswith("# R3")
        assert "tegrastats" in profile.lab.tools
    if profile.lab.gpu == "nvidia":
        assert "nvidia-smi" in profile.lab.tools


def test_profile_regexes_match_their_own_lab_identity() -> None:
    import re

    for profile in load_profiles().profiles.values():
        assert profile.lab is not None
        if profile.match.device_tree_model:
            assert re.search(profile.match.device_tree_model, profile.lab.device_tree_model), profile.name
        if profile.match.nv_tegra_release:
            assert re.search(profile.match.nv_tegra_release, profile.lab.nv_tegra_release), profile.name


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda t: t.replace('arch = "aarch64"\npython', 'arch = "mips"\npython', 1), "arch", "not known"),
        (lambda t: t.replace("cpu_count = 4", "cpu_count = 0"), "lab.cpu_count", "greater than 0"),
        (lambda t: t.replace("cpu_count = 4", 'cpu_count = "four"'), "lab.cpu_count", "whole number"),
        (lambda t: t.replace('name = "rpi4"\n', ""), "name", "missing"),
        (lambda t: t.replace("[telemetry]", "[telemetry]\ncolour = 3"), "telemetry.colour", "not a known field"),
        (lambda t: t.replace('"^Raspberry Pi 4 Model B"', '"^Raspberry (Pi"'), "match.device_tree_model", "regular"),
        (lambda t: t.replace('tools = ["vcgencmd"]', 'tools = ["htop"]'), "lab.tools", "unknown value"),
        (lambda t: t.replace("[telemetry]", "shadow_margin_mb = -5\n[telemetry]"), "runtime.shadow_margin_mb",
         "greater than 0"),
        (lambda t: t.replace("[telemetry]", 'shadow_margin_mb = "lots"\n[telemetry]'), "runtime.shadow_margin_mb",
         "whole number"),
    ],
)
def test_a_bad_field_is_named_with_the_file_and_a_fix(tmp_path: Path, edit, field: str, words: str) -> None:
    path = tmp_path / "rpi4.toml"
    path.write_text(edit(shipped("rpi4")))
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert f": {field}:" in message
    assert words in message
    assert caught.value.fix


def test_a_profile_may_name_the_memory_a_shadow_candidate_must_leave_free(tmp_path: Path) -> None:
    assert load_profiles().get("rpi4").shadow_margin_mb is None  # the agent's own default
    path = tmp_path / "rpi4.toml"
    path.write_text(shipped("rpi4").replace("[telemetry]", "shadow_margin_mb = 512\n[telemetry]"))
    assert load_profile_file(path).shadow_margin_mb == 512


def test_broken_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rpi4.toml"
    path.write_text(shipped("rpi4").replace("[lab]", "[lab"))
    with pytest.raises(ProfileError, match=r"rpi4\.toml: is not valid TOML .*line"):
        load_profile_file(path)


def test_one_bad_user_profile_does_not_hide_the_others(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("name = ")
    result = load_profiles(user_dir=tmp_path)
    assert REQUIRED <= set(result.profiles)
    assert len(result.errors) == 1 and "broken.toml" in str(result.errors[0])


def test_an_operator_profile_overrides_the_shipped_one_of_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "rpi4.toml").write_text(shipped("rpi4").replace("memory_mb = 3796", "memory_mb = 7812"))
    result = load_profiles(user_dir=tmp_path)
    assert result.errors == []
    profile = result.get("rpi4")
    assert profile.lab is not None and profile.lab.memory_mb == 7812
    assert profile.source == str(tmp_path / "rpi4.toml")


def test_file_name_and_declared_name_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "my-pi.toml"
    path.write_text(shipped("rpi4"))
    with pytest.raises(ProfileError, match=r"rename the file to rpi4\.toml"):
        load_profile_file(path)


def test_asking_for_an_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="ipc-x86, ipc-x86-nvidia"):
        load_profiles().get("rpi3")
