"""Runtime bundles: built with the real pip for a device's platform, content addressed, and wheels an operator
brings checked against the device family's tags. Real wheels from the package index; hand-made broken files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fleetdesk.config import Settings
from fleetdesk.errors import ConfigError, FleetDeskError
from fleetdesk.profiles import Profile, load_profiles
from fleetdesk.runtime.store import RUNTIME_JSON, RuntimeStore, runtime_id
from fleetdesk.runtime.wheelhouse import (
    TargetPlatform,
    build_runtime,
    check_fits,
    import_wheel,
    inspect_wheel,
    same_package,
)
from tests.conftest import skip_or_fail

PROFILES = load_profiles()
PI = PROFILES.get("rpi4")  # aarch64, cp311
ORIN = PROFILES.get("jetson-orin-nano")  # aarch64, cp310
IPC = PROFILES.get("ipc-x86")  # x86_64, cp311
SMALL = ("markupsafe==3.0.3", "packaging==24.0")  # small real wheels: one CPython-specific, one pure


def small_profile(base: Profile, name: str, wheels: tuple[str, ...] = SMALL) -> Profile:
    return dataclasses.replace(base, name=name, wheels=wheels)


def fetch(requirement: str, arch: str, python: str) -> Path:
    """One real wheel from the package index for the platform, kept in FleetDesk's cache between test runs."""
    folder = Settings.load().cache_dir / "test-wheels" / f"{arch}-{python}-{requirement.replace('=', '_')}"
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[0]
    target = TargetPlatform(arch, python)
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            target.python_dotted, "--implementation", "cp", "--abi", python, "--abi", "abi3", "--abi", "none",
            "-d", str(folder), "--disable-pip-version-check", "-q"]
    for platform in target.download_platforms:
        argv += ["--platform", platform]
    proc = subprocess.run([*argv, requirement], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        skip_or_fail(f"the package index is not reachable for test wheels: {proc.stderr.strip()[-300:]}")
    return sorted(folder.glob("*.whl"))[0]


@pytest.fixture
def store(tmp_path: Path) -> RuntimeStore:
    return RuntimeStore(tmp_path / "runtimes")


def build(profile: Profile, store: RuntimeStore, **kwargs: object):  # type: ignore[no-untyped-def]
    import asyncio

    lines: list[str] = []
    runtime, created = asyncio.run(build_runtime(profile, store, progress=lines.append, **kwargs))  # type: ignore[arg-type]
    return runtime, created, lines


# -- the target platform ---------------------------------------------------------------------------


def test_a_profile_downloads_manylinux_wheels_up_to_glibc_2_28_and_accepts_linux_wheels_it_is_given() -> None:
    pi = TargetPlatform("aarch64", "cp311")
    assert pi.python_version == (3, 11) and pi.python_dotted == "3.11"
    assert pi.download_platforms[0] == "manylinux_2_28_aarch64"
    assert "manylinux_2_17_aarch64" in pi.download_platforms and "manylinux2014_aarch64" in pi.download_platforms
    assert not any(p.startswith("linux_") or "2_29" in p for p in pi.download_platforms)
    assert "linux_aarch64" in pi.accepted_platforms
    assert TargetPlatform("aarch64", "cp38").python_dotted == "3.8"
    assert "manylinux1_x86_64" in TargetPlatform("x86_64", "cp311").download_platforms


# -- building ----------------------------------------------------------------------------------------


def test_build_makes_a_content_addressed_runtime_for_the_profiles_platform(store: RuntimeStore) -> None:
    runtime, created, lines = build(small_profile(PI, "test-pi"), store)
    assert created
    assert runtime.arch == "aarch64" and runtime.python == "cp311" and runtime.profiles == ("test-pi",)
    assert runtime.requirements == SMALL
    files = sorted(p.name for p in (store.root / runtime.id / "wheels").iterdir())
    assert [w.file for w in runtime.wheels] == files
    markupsafe = next(w for w in runtime.wheels if w.project == "markupsafe")
    assert "cp311-cp311" in markupsafe.file and "aarch64" in markupsafe.file and markupsafe.version == "3.0.3"
    assert runtime.id == runtime_id(runtime.wheels)
    stored = json.loads((store.root / runtime.id / RUNTIME_JSON).read_text())
    assert stored["id"] == runtime.id and stored["profiles"] == ["test-pi"]
    assert {w["file"]: w["sha256"] for w in stored["wheels"]} == {w.file: w.sha256 for w in runtime.wheels}
    assert stored["tools"]["pip"] and stored["tools"]["fleetdesk"]
    assert "manylinux_2_28_aarch64" in stored["platforms"]
    assert any("saved markupsafe" in line for line in lines)
    assert store.list() == [runtime] and store.get(runtime.id[:6]) == runtime


def test_building_the_same_wheels_again_returns_the_stored_runtime_and_adds_the_profile(store: RuntimeStore) -> None:
    first, _, _ = build(small_profile(PI, "test-pi"), store)
    before = (store.root / first.id / "wheels" / first.wheels[0].file).stat().st_ino
    again, created, _ = build(small_profile(PI, "test-pi5"), store)
    assert not created and again.id == first.id
    assert again.profiles == ("test-pi", "test-pi5")
    assert (store.root / first.id / "wheels" / first.wheels[0].file).stat().st_ino == before  # nothing copied
    assert sorted(p.name for p in store.root.iterdir()) == [first.id]  # no temp folder left behind
    other, created, _ = build(small_profile(IPC, "test-ipc"), store)
    assert created and other.id != first.id and other.arch == "x86_64"
    assert store.newest_for("aarch64", "cp311", "test-pi5") == again
    assert store.newest_for("x86_64", "cp311") == other
    assert store.newest_for("aarch64", "cp310") is None


def test_a_requirement_the_index_cannot_satisfy_leaves_nothing_behind(store: RuntimeStore) -> None:
    with pytest.raises(FleetDeskError) as caught:
        build(small_profile(PI, "test-pi", ("markupsafe==0.0.0.1",)), store)
    assert "no wheel of markupsafe==0.0.0.1 for aarch64 with cp311" in caught.value.message
    assert "import-wheel" in (caught.value.fix or "")
    assert store.list() == [] and list(store.root.iterdir()) == []
    with pytest.raises(ConfigError, match="is not a requirement"):
        build(small_profile(PI, "test-pi", ("markupsafe>>1",)), store)


def test_an_abandoned_build_folder_is_cleaned_by_the_next_build(store: RuntimeStore) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    abandoned = store.root / f".building-{dead}-0000"
    (abandoned / "wheels").mkdir(parents=True)
    (abandoned / "wheels" / "half.whl").write_bytes(b"half")
    runtime, _, _ = build(small_profile(PI, "test-pi"), store)
    assert not abandoned.exists()
    assert [p.name for p in store.root.iterdir()] == [runtime.id]


# -- wheels the operator brings ------------------------------------------------------------------------


def test_a_wheel_for_the_right_python_and_arch_is_imported_onto_the_newest_runtime(store: RuntimeStore) -> None:
    base, _, _ = build(small_profile(ORIN, "test-orin"), store)
    assert base.python == "cp310"
    newer = fetch("packaging==24.1", "aarch64", "cp310")
    runtime, created = import_wheel(newer, small_profile(ORIN, "test-orin"), store)
    assert created and runtime.base == base.id
    assert {w.project: w.version for w in runtime.wheels} == {"markupsafe": "3.0.3", "packaging": "24.1"}
    assert runtime.requirements == ("markupsafe==3.0.3", "packaging==24.1")
    assert (store.root / runtime.id / "wheels" / newer.name).read_bytes() == newer.read_bytes()
    # The base is untouched, and importing the same wheel again is the same runtime.
    assert store.get(base.id).wheels == base.wheels
    again, created = import_wheel(newer, small_profile(ORIN, "test-orin"), store, base=base)
    assert not created and again.id == runtime.id


def test_a_wheel_for_another_python_is_refused_naming_both_tags(store: RuntimeStore) -> None:
    cp310 = fetch("markupsafe==3.0.3", "aarch64", "cp310")
    with pytest.raises(ConfigError) as caught:
        import_wheel(cp310, PI, store)
    message = caught.value.message
    assert cp310.name in message and "cp310-cp310-manylinux_2_17_aarch64" in message
    assert "rpi4 devices" in message and "cp311 on aarch64" in message and "wrong Python" in message
    assert store.list() == []


def test_a_wheel_for_another_architecture_is_refused(store: RuntimeStore) -> None:
    x86 = fetch("markupsafe==3.0.3", "x86_64", "cp311")
    with pytest.raises(ConfigError, match="wrong architecture") as caught:
        import_wheel(x86, PI, store)
    assert "x86_64" in caught.value.message and "aarch64" in caught.value.message
    assert store.list() == []
    check_fits(inspect_wheel(x86), TargetPlatform("x86_64", "cp311"), "ipc-x86")  # where it belongs, it fits


def test_a_wheel_whose_dependencies_the_base_lacks_is_refused_with_the_build_to_run(store: RuntimeStore) -> None:
    coloredlogs = fetch("coloredlogs==15.0.1", "x86_64", "cp311")
    with pytest.raises(ConfigError) as caught:
        import_wheel(coloredlogs, IPC, store)
    assert "needs humanfriendly>=9.1" in caught.value.message
    assert "--requirement 'humanfriendly>=9.1'" in (caught.value.fix or "")
    assert store.list() == []


def test_onnxruntime_builds_replace_each_other() -> None:
    assert same_package("onnxruntime_gpu", "onnxruntime")
    assert same_package("onnxruntime-gpu", "onnxruntime-openvino")
    assert same_package("Onnxruntime", "onnxruntime")
    assert not same_package("onnxruntime", "onnx")
    assert not same_package("numpy", "onnxruntime")


def test_files_that_are_not_wheels_are_refused(tmp_path: Path, store: RuntimeStore) -> None:
    text = tmp_path / "fake-1.0-py3-none-any.whl"
    text.write_text("not a zip")
    with pytest.raises(ConfigError, match="not a zip archive"):
        import_wheel(text, PI, store)
    no_meta = tmp_path / "empty-1.0-py3-none-any.whl"
    with zipfile.ZipFile(no_meta, "w") as archive:
        archive.writestr("empty/__init__.py", "")
    with pytest.raises(ConfigError, match=r"no single \.dist-info"):
        import_wheel(no_meta, PI, store)
    no_wheel = tmp_path / "nowheel-1.0-py3-none-any.whl"
    with zipfile.ZipFile(no_wheel, "w") as archive:
        archive.writestr("nowheel-1.0.dist-info/METADATA", "Name: nowheel\nVersion: 1.0\n")
    with pytest.raises(ConfigError, match="no WHEEL metadata"):
        import_wheel(no_wheel, PI, store)
    badly_named = tmp_path / "onnxruntime.whl"
    badly_named.write_bytes(b"")
    with pytest.raises(ConfigError, match="is not a wheel file name"):
        import_wheel(badly_named, PI, store)
    real = fetch("markupsafe==3.0.3", "aarch64", "cp311")
    truncated = tmp_path / real.name
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(ConfigError, match="not a zip archive"):
        import_wheel(truncated, PI, store)
    assert store.list() == []


def test_a_stored_runtime_is_found_by_id_prefix_and_unknown_ids_are_explained(store: RuntimeStore) -> None:
    with pytest.raises(ConfigError, match="no stored runtime has the id 'abcd'") as caught:
        store.get("abcd")
    assert "fleetdesk runtime build --profile" in (caught.value.fix or "")
    runtime, _, _ = build(small_profile(PI, "test-pi"), store)
    assert store.get(runtime.id.upper()) == runtime
    with pytest.raises(ConfigError):
        store.get(runtime.id[:3])  # too short to be taken as a prefix


# -- the command line ----------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetdesk", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ), check=False)


def test_the_cli_builds_lists_shows_and_imports(tmp_path: Path) -> None:
    settings = Settings.load()
    profiles = settings.user_profiles_dir
    profiles.mkdir(parents=True, exist_ok=True)
    shipped = Path(PI.source).read_text()
    (profiles / "test-pi.toml").write_text(shipped.replace('name = "rpi4"', 'name = "test-pi"').replace(
        'wheels = ["onnxruntime>=1.17", "numpy>=1.24"]', f"wheels = {json.dumps(list(SMALL))}"))
    assert "no runtimes yet" in cli("runtime", "list").stdout

    proc = cli("runtime", "build", "--profile", "test-pi", "--json")
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)
    assert built["created_now"] and built["profiles"] == ["test-pi"]
    assert "test-pi: saved markupsafe-3.0.3" in proc.stderr  # progress on stderr, JSON alone on stdout
    again = cli("runtime", "build", "--profile", "test-pi")
    assert again.returncode == 0 and again.stdout.startswith(f"already stored (same wheels); nothing copied: "
                                                             f"{built['id']}")

    listed = cli("runtime", "list").stdout
    assert built["id"] in listed and "test-pi" in listed and "markupsafe 3.0.3" in listed
    shown = cli("runtime", "show", built["id"][:8])
    assert shown.returncode == 0 and "requirements: markupsafe==3.0.3, packaging==24.0" in shown.stdout

    wrong = cli("runtime", "import-wheel", str(fetch("markupsafe==3.0.3", "x86_64", "cp311")), "--profile", "test-pi")
    assert wrong.returncode == 2 and "wrong architecture" in wrong.stderr
    unknown = cli("runtime", "show", "ffffffff")
    assert unknown.returncode == 2 and "no stored runtime has the id 'ffffffff'" in unknown.stderr
    ok = cli("runtime", "import-wheel", str(fetch("packaging==24.1", "aarch64", "cp311")), "--profile", "test-pi",
             "--base", built["id"], "--json")
    assert ok.returncode == 0, ok.stderr
    imported = json.loads(ok.stdout)
    assert imported["base"] == built["id"] and "packaging==24.1" in imported["requirements"]

    # One audit entry per runtime made (the second build stored nothing and changed nothing; the refusal of the
    # wrong wheel changed nothing either).
    trail = json.loads(cli("audit", "list", "--action", "runtime.", "--json").stdout)
    assert [(e["action"], e["targets"][0]) for e in reversed(trail)] == [
        ("runtime.build", f"runtime:{built['id']}"), ("runtime.import", f"runtime:{imported['id']}")]
