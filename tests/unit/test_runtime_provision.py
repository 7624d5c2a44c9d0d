"""Provisioning's decisions and its device-side scripts, run here for real: the runtime chosen for a profile, the
state a device reports, installed.json, the atomic `current` links, and pip's refusals told in operator terms.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetdesk.errors import DiskFullError, FleetDeskError, RemoteCommandError, UnreachableError
from fleetdesk.profiles import load_profiles
from fleetdesk.runtime import provision as prov
from fleetdesk.runtime import provision_scripts as scripts
from fleetdesk.runtime.store import RuntimeStore, WheelFile
from fleetdesk.transport.shell import python_command, python_or_sh
from tests.unit.test_runtime_wheelhouse import fetch

PROFILES = load_profiles()
PI = PROFILES.get("rpi4")


def add_runtime(store: RuntimeStore, arch: str, python: str, profile: str, marker: str):  # type: ignore[no-untyped-def]
    folder = store.new_folder()
    (folder / "wheels" / f"{marker}-1.0-py3-none-any.whl").write_bytes(marker.encode())
    wheel = WheelFile(f"{marker}-1.0-py3-none-any.whl", marker, "1.0", marker * 4, len(marker))
    runtime, _ = store.commit(folder, arch=arch, python=python, profiles=[profile], requirements=[marker],
                              platforms=[], wheels=[wheel], tools={})
    return runtime


def sh(command: str) -> subprocess.CompletedProcess[str]:
    """Run a command line exactly as a device's login shell would get it."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120, check=False)


def test_with_no_runtime_for_the_profile_the_error_says_which_and_how_to_build_one(tmp_path: Path) -> None:
    store = RuntimeStore(tmp_path)
    with pytest.raises(FleetDeskError) as caught:
        prov.choose_runtime(store, PI, None, device="rpi4-01")
    assert caught.value.message == "no runtime for rpi4 (aarch64, cp311)"
    assert caught.value.fix is not None and "`fleetdesk runtime build --profile rpi4`" in caught.value.fix
    assert caught.value.device == "rpi4-01"


def test_the_newest_runtime_for_the_profile_wins_and_a_named_one_must_fit(tmp_path: Path) -> None:
    store = RuntimeStore(tmp_path)
    other_family = add_runtime(store, "aarch64", "cp311", "some-board", "a")
    assert prov.choose_runtime(store, PI, None) == other_family  # same arch and Python fit
    own = add_runtime(store, "aarch64", "cp311", "rpi4", "b")
    add_runtime(store, "aarch64", "cp311", "some-board", "c")  # newer, but made for another profile
    x86 = add_runtime(store, "x86_64", "cp311", "ipc-x86", "d")
    assert prov.choose_runtime(store, PI, None) == own
    assert prov.choose_runtime(store, PI, other_family.id[:8]) == other_family
    with pytest.raises(FleetDeskError) as caught:
        prov.choose_runtime(store, PI, x86.id)
    assert f"runtime {x86.id} is for x86_64, cp311, but rpi4 devices are aarch64, cp311" in caught.value.message


def test_pips_wrong_platform_refusals_become_clear_errors(tmp_path: Path) -> None:
    # The real pip, offline, on this x86_64 laptop with only an aarch64 wheel: the two ways pip refuses.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    aarch64 = fetch("markupsafe==3.0.3", "aarch64", "cp311")
    (wheels / aarch64.name).write_bytes(aarch64.read_bytes())
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--disable-pip-version-check",
           "--target", str(tmp_path / "target")]
    store = RuntimeStore(tmp_path / "store")
    runtime = add_runtime(store, "aarch64", "cp311", "rpi4", "m")

    by_name = subprocess.run([*pip, "--find-links", str(wheels), "markupsafe"], capture_output=True, text=True,
                             timeout=120, check=False)
    assert by_name.returncode != 0
    error = prov.pip_install_failure(by_name.stdout + by_name.stderr, runtime, device="ipc-02", machine="x86_64",
                                     python="3.11.2")
    assert isinstance(error, RemoteCommandError)
    assert error.message == (f"runtime {runtime.id} (aarch64, cp311) holds no wheel of markupsafe that this device "
                             "(x86_64 with Python 3.11.2) can install")
    assert "--runtime ID" in (error.fix or "")

    by_file = subprocess.run([*pip, str(wheels / aarch64.name)], capture_output=True, text=True, timeout=120,
                             check=False)
    assert by_file.returncode != 0
    error = prov.pip_install_failure(by_file.stdout + by_file.stderr, runtime, device="ipc-02", machine="x86_64",
                                     python="3.11.2")
    assert error.message.startswith(f"{aarch64.name} of runtime {runtime.id} does not fit this device")
    full = prov.pip_install_failure("OSError: [Errno 28] No space left on device", runtime, device="d",
                                    machine="x86_64", python="3.11.2")
    assert isinstance(full, DiskFullError)


def state(root: Path, rid: str, files: dict[str, int], wheels: dict[str, int]) -> dict:
    proc = sh(python_or_sh(scripts.STATE_PY, scripts.STATE_SH, str(root), rid, json.dumps(files), json.dumps(wheels)))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_device_state_script_reports_what_is_there_so_nothing_is_sent_twice(tmp_path: Path) -> None:
    root = tmp_path / "opt" / "fleet desk"  # does not exist yet: free space is read from the nearest parent
    agent_file = root / "agent" / "v1" / "fleetdesk_agent" / "x.py"
    wheel = root / "runtimes" / "r1" / "wheels" / "w.whl"
    first = state(root, "r1", {str(agent_file): 3}, {str(wheel): 5})
    assert first["python3"] and first["venv"] is True and first["installed"] is False
    assert first["free"] > 0 and first["files"] == {str(agent_file): None, str(wheel): None}
    assert first["links"] == {"runtime": None, "agent": None} and first["supervisor"] is None

    agent_file.parent.mkdir(parents=True)
    agent_file.write_bytes(b"abc")
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"12345")
    second = state(root, "r1", {str(agent_file): 3}, {str(wheel): 5})
    assert second["files"][str(agent_file)] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert second["files"][str(wheel)] is not None
    assert state(root, "r1", {str(agent_file): 4}, {})["files"][str(agent_file)] is None  # size differs: not hashed

    proc = sh(python_command(scripts.INSTALLED_PY, str(root / "runtimes" / "r1"), "r1", json.dumps(["numpy>=1.24"])))
    assert proc.returncode == 0, proc.stderr
    installed = json.loads((root / "runtimes" / "r1" / "installed.json").read_text())
    assert installed["runtime"] == "r1" and installed["requirements"] == ["numpy>=1.24"]
    done = state(root, "r1", {str(agent_file): 3}, {str(wheel): 5})
    assert done["installed"] is True
    assert str(wheel) not in done["files"]  # an installed runtime's wheels are not hashed again
    assert state(root, "r2", {}, {})["installed"] is False


def test_the_sh_fallback_says_there_is_no_python3(tmp_path: Path) -> None:
    # A device whose PATH has a shell and no python3.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to("/bin/sh")
    command = python_or_sh(scripts.STATE_PY, scripts.STATE_SH, str(tmp_path), "r1", "{}", "{}")
    proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"python3": None}


def test_current_links_switch_atomically_and_only_when_they_change(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "runtimes").mkdir(parents=True)
    (root / "agent").mkdir()
    pairs = ["runtimes/current", "r1", "agent/current", "v1"]
    first = sh(python_command(scripts.LINKS_PY, str(root), *pairs))
    assert first.returncode == 0 and first.stdout.split() == ["runtimes/current", "agent/current"]
    assert (root / "runtimes" / "current").readlink() == Path("r1")
    assert (root / "run").is_dir() and (root / "log").is_dir()
    assert sh(python_command(scripts.LINKS_PY, str(root), *pairs)).stdout == ""
    third = sh(python_command(scripts.LINKS_PY, str(root), "runtimes/current", "r2", "agent/current", "v1"))
    assert third.stdout.split() == ["runtimes/current"]
    assert (root / "runtimes" / "current").readlink() == Path("r2")
    assert (root / "runtimes" / "previous").readlink() == Path("r1")  # the one to go back to
    assert sorted(p.name for p in (root / "runtimes").iterdir()) == ["current", "previous"]  # no temp link left


def test_versions_older_than_previous_are_pruned_and_current_and_previous_kept(tmp_path: Path) -> None:
    root = tmp_path / "device root"
    for version in ("r1", "r2", "r3"):
        (root / "runtimes" / version / "venv").mkdir(parents=True)
        (root / "runtimes" / version / "venv" / "big").write_bytes(b"x" * 1000)
    (root / "agent" / "v1" / "fleetdesk_agent").mkdir(parents=True)
    (root / "agent" / "v2" / "fleetdesk_agent").mkdir(parents=True)
    (root / "runtimes" / "stray-file").write_text("not a version folder")
    for target in ("r1", "r2", "r3"):
        assert sh(python_command(scripts.LINKS_PY, str(root), "runtimes/current", target, "agent/current", "v2")
                  ).returncode == 0
    pruned = sh(python_command(scripts.PRUNE_PY, str(root), "runtimes", "agent"))
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.split() == ["runtimes/r1", "agent/v1"]
    assert sorted(p.name for p in (root / "runtimes").iterdir()) == ["current", "previous", "r2", "r3", "stray-file"]
    assert (root / "runtimes" / "current").readlink() == Path("r3")
    assert (root / "runtimes" / "previous").readlink() == Path("r2")
    assert sorted(p.name for p in (root / "agent").iterdir()) == ["current", "v2"]
    assert sh(python_command(scripts.PRUNE_PY, str(root), "runtimes", "agent")).stdout == ""  # nothing more to do


def test_an_outcome_says_unreachable_apart_from_failed() -> None:
    ok = prov.ProvisionOutcome("a", runtime_id="r", bytes_sent=10, changed=("x",))
    assert ok.status == "succeeded" and ok.to_dict()["changed"] == ["x"]
    assert prov.ProvisionOutcome("b", error=UnreachableError("gone")).status == "unreachable"
    failed = prov.ProvisionOutcome("c", error=DiskFullError("full"))
    assert failed.status == "failed" and failed.to_dict()["error"]["error"] == "DiskFullError"


def test_small_files_travel_as_one_bundle_that_unpacks_each_file_into_place_checked(tmp_path: Path) -> None:
    import hashlib

    sources = tmp_path / "laptop"
    sources.mkdir()
    root = tmp_path / "device root"
    items = []
    for n, (name, data, mode) in enumerate([("a.py", b"print(1)\n", 0o644), ("fleetdesk-agent", b"#!/bin/sh\n", 0o755),
                                            ("fleet.pub", b"-----BEGIN PUBLIC KEY-----\n", 0o644)]):
        (sources / name).write_bytes(data)
        remote = str(root / f"dir{n}" / name)
        items.append(prov._Item(sources / name, remote, len(data), hashlib.sha256(data).hexdigest(), mode))
    bundle, again = tmp_path / "b1.tar", tmp_path / "b2.tar"
    prov._write_bundle(bundle, items)
    prov._write_bundle(again, items)
    assert bundle.read_bytes() == again.read_bytes()  # the same files make the same bundle (and the same hash)

    manifest = [[str(n), i.remote, i.mode, i.sha256] for n, i in enumerate(items)]
    tampered = [list(e) for e in manifest]
    tampered[1][3] = "0" * 64
    refused = sh(python_command(scripts.UNPACK_PY, str(again), json.dumps(tampered)))
    assert refused.returncode == 1 and "does not hash to" in refused.stderr
    assert not Path(items[1].remote).exists()

    done = sh(python_command(scripts.UNPACK_PY, str(bundle), json.dumps(manifest)))
    assert done.returncode == 0, done.stderr
    for item in items:
        path = Path(item.remote)
        assert path.read_bytes() == item.local.read_bytes()
        assert path.stat().st_mode & 0o777 == item.mode
    assert not bundle.exists()
    assert not list(root.rglob("*.fleetdesk-new"))
