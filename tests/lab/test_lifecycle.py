"""Bringing the lab up and down: bad requests are refused whole, `down` leaves nothing behind,
and `down` also cleans up after an `up` that was killed half-way.

This module runs after every other lab module (tests/lab/conftest.py orders it): it takes the fleet down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.lab.conftest import Fleet, fleetdesk, lab_namespaces

pytestmark = pytest.mark.lab


def lab_leftovers(lab_dir: Path) -> list[str]:
    """Everything a lab could leave on the host: namespaces, links, mounts, processes."""
    found = [f"netns {n}" for n in lab_namespaces()]
    found += [f"link {p.name}" for p in Path("/sys/class/net").iterdir()
              if p.name == "fdlab0" or (p.name.startswith("fdv") and p.name[3:].isdigit())]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh if str(lab_dir) in line.split()[4]]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(lab_dir) in cmdline and int(proc.name) != os.getpid():
                found.append(f"process {proc.name}: {cmdline[:80]}")
    return found


def test_up_while_a_lab_is_up_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    before = fleet.refresh()
    proc = fleetdesk("lab", "up", "--devices", "ipc-x86:1", env=fleet.env)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "already up" in proc.stderr and "fleetdesk lab down" in proc.stderr
    assert fleet.refresh() == before


def test_up_without_root_is_refused_before_anything_is_built(fleet: Fleet) -> None:
    home = Path(tempfile.mkdtemp(prefix="fleetdesk-nobody-"))
    home.chmod(0o777)  # the unprivileged user needs a home of its own
    env = dict(fleet.env, HOME=str(home), FLEETDESK_LAB_DIR=str(home / "lab"),
               FLEETDESK_DATA_DIR=str(home / "data"), FLEETDESK_CONFIG_DIR=str(home / "config"))
    namespaces = lab_namespaces()
    proc = fleetdesk("lab", "up", "--devices", "ipc-x86:1", env=env, user="65534")
    assert proc.returncode == 2
    assert "needs root" in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert lab_namespaces() == namespaces
    assert not (home / "lab" / "state.json").exists()


def test_a_bad_spec_builds_nothing(fleet: Fleet) -> None:
    namespaces = lab_namespaces()
    proc = fleetdesk("lab", "up", "--devices", "rpi4:1,toaster:2", env=fleet.env)
    assert proc.returncode == 2 and "unknown profile 'toaster'" in proc.stderr
    assert lab_namespaces() == namespaces


def test_down_leaves_no_namespace_link_mount_or_process(fleet: Fleet) -> None:
    assert lab_leftovers(fleet.lab_dir)  # the fleet is really there to take down
    proc = fleetdesk("lab", "down", "--json", env=fleet.env)
    fleet.torn_down = True
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"removed": len(fleet.devices)}
    assert lab_leftovers(fleet.lab_dir) == []
    status = json.loads(fleetdesk("lab", "status", "--json", env=fleet.env, check=True).stdout)
    assert status == {"up": False, "devices": []}


def test_down_with_nothing_up_is_a_no_op(fleet: Fleet) -> None:
    assert fleet.torn_down
    proc = fleetdesk("lab", "down", env=fleet.env)
    assert proc.returncode == 0
    assert "nothing to do" in proc.stdout


def test_down_cleans_up_after_an_up_that_was_killed_half_way(fleet: Fleet) -> None:
    assert fleet.torn_down
    argv = [sys.executable, "-m", "fleetdesk", "lab", "up", "--devices", "ipc-x86:6"]
    up = subprocess.Popen(argv, env=fleet.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(lab_namespaces()) < 2 and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.05)
        assert up.poll() is None, "up finished before it could be killed"
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    assert lab_namespaces()
    status = json.loads(fleetdesk("lab", "status", "--json", env=fleet.env, check=True).stdout)
    assert status["phase"] == "building" and status["up"] is False
    proc = fleetdesk("lab", "down", env=fleet.env)
    assert proc.returncode == 0, proc.stderr
    assert lab_leftovers(fleet.lab_dir) == []
