"""What provisioning puts beside the wheels: the agent tree and its version, the launcher, the supervisor, the unit.

The shell scripts run here for real, against a temporary ROOT, with the laptop's sh and Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fleetdesk.agent
from fleetdesk.reach import AGENT_PACKAGE, DeviceLayout
from fleetdesk.runtime.agentfiles import (
    agent_tree,
    boot_hook_line,
    boot_hook_mark,
    boot_script,
    launcher_script,
    supervisor_script,
    systemd_unit,
)
from tests.conftest import skip_or_fail

# The stand-in agent: prints how it was started, as the real one's JSON lines would.
FAKE_MAIN = """import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "prefix": sys.prefix, "base": sys.base_prefix,
                  "path0": os.environ.get("PYTHONPATH", "").split(":")[0]}))
"""


def test_the_agent_tree_is_every_python_file_of_the_agent_and_its_version_follows_the_content(tmp_path: Path) -> None:
    tree = agent_tree()
    source = Path(fleetdesk.agent.__file__).parent
    expected = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    assert [f.relpath for f in tree.files] == expected
    assert "__init__.py" in expected
    assert all(f.data == (source / f.relpath).read_bytes() for f in tree.files)
    assert len(tree.version) == 16 and agent_tree().version == tree.version

    copy = tmp_path / "agent"
    for f in tree.files:
        (copy / f.relpath).parent.mkdir(parents=True, exist_ok=True)
        (copy / f.relpath).write_bytes(f.data)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.py").write_text("ignored")
    (copy / "notes.txt").write_text("ignored")
    assert agent_tree(copy).version == tree.version
    (copy / "__init__.py").write_text((copy / "__init__.py").read_text() + "\n# changed\n")
    assert agent_tree(copy).version != tree.version


def make_root(tmp_path: Path, name: str = "root with space") -> Path:
    root = tmp_path / name
    package = root / "agent" / "v1" / AGENT_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_MAIN)
    (root / "agent" / "current").symlink_to("v1")
    (root / "bin").mkdir()
    launcher = root / "bin" / "fleetdesk-agent"
    launcher.write_text(launcher_script(str(root)))
    launcher.chmod(0o755)
    return root


def run_launcher(root: Path, *args: str) -> dict:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run([str(root / "bin" / "fleetdesk-agent"), *args], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_the_launcher_runs_the_current_agent_with_python3_until_a_runtime_venv_exists(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    seen = run_launcher(root, "status", "--x", "it's $(here)")
    assert seen["argv"] == ["--root", str(root), "status", "--x", "it's $(here)"]
    assert seen["path0"] == f"{root}/agent/current"
    assert not seen["prefix"].startswith(str(root))  # python3 from PATH: there is no runtime venv yet

    runtime = root / "runtimes" / "r1"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(runtime / "venv")], check=True, timeout=120)
    (root / "runtimes" / "current").symlink_to("r1")
    seen = run_launcher(root, "selftest")
    assert seen["prefix"] == f"{root}/runtimes/current/venv"
    assert seen["argv"] == ["--root", str(root), "selftest"]


@pytest.mark.timeout(60)
def test_the_supervisor_restarts_serve_when_it_exits_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    # A server that counts its starts and exits at once: the supervisor must start it again.
    launcher = root / "bin" / "fleetdesk-agent"
    launcher.write_text(f'#!/bin/sh\necho "$1" >> "{root}/starts"\nexit 3\n')
    launcher.chmod(0o755)
    supervisor = root / "bin" / "fleetdesk-supervise"
    supervisor.write_text(supervisor_script(str(root)))
    proc = subprocess.Popen(["sh", str(supervisor)], start_new_session=True)
    try:
        pidfile = root / "run" / "supervise.pid"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                (root / "starts").is_file() and len((root / "starts").read_text().split()) >= 2):
            time.sleep(0.1)
        assert (root / "starts").read_text().split()[:2] == ["serve", "serve"]
        assert int(pidfile.read_text()) == proc.pid
        log = (root / "log" / "supervise.log").read_text()
        assert "serve exited with status 3; restarting in 1 s" in log
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_systemd_unit_runs_serve_through_the_launcher_and_restarts_it() -> None:
    unit = systemd_unit("/opt/fleet desk")
    assert 'ExecStart="/opt/fleet desk/bin/fleetdesk-agent" serve' in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit


def test_systemd_itself_accepts_the_unit_and_refuses_one_whose_launcher_is_missing(tmp_path: Path) -> None:
    # `systemd-analyze verify` parses the unit as systemd would load it (systemd-analyze(1)); this machine runs no
    # systemd, so the unit's registration (daemon-reload, enable, restart) is not exercised here.
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze is not installed (Debian package systemd; scripts/system-deps.sh installs it)")
    root = tmp_path / "fleet desk"
    (root / "bin").mkdir(parents=True)
    launcher = root / "bin" / "fleetdesk-agent"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    unit = tmp_path / "fleetdesk-agent.service"
    unit.write_text(systemd_unit(str(root)))

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                              check=False)

    good = verify()
    assert good.returncode == 0, good.stderr
    launcher.unlink()
    bad = verify()
    assert bad.returncode != 0 and f"Command {launcher} is not executable" in bad.stderr


def test_the_boot_script_starts_one_supervisor_and_trusts_a_pid_only_when_it_is_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "run").mkdir()
    # A supervisor stand-in: writes its pid as the real one does and stays up.
    supervisor = root / "bin" / "fleetdesk-supervise"
    supervisor.write_text(f'#!/bin/sh\necho $$ > "{root}/run/supervise.pid"\necho started >> "{root}/starts"\n'
                          "sleep 60\n")
    supervisor.chmod(0o755)
    boot = root / "bin" / "fleetdesk-boot"
    boot.write_text(boot_script(str(root)))
    pidfile = root / "run" / "supervise.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # left from before the reboot, now another process's pid
    started: list[int] = []
    try:
        for _ in range(2):
            assert subprocess.run(["sh", str(boot)], timeout=30, check=False).returncode == 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (pidfile.is_file() and pidfile.read_text().strip()
                                                       and int(pidfile.read_text()) != os.getpid()):
                time.sleep(0.05)
            started.append(int(pidfile.read_text()))
        time.sleep(0.3)
        assert started[0] == started[1] and (root / "starts").read_text().split() == ["started"]
        assert b"fleetdesk-supervise" in Path(f"/proc/{started[0]}/cmdline").read_bytes()
    finally:
        for pid in set(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # setsid made it a group leader: its sleep goes too


def test_the_boot_hook_line_cannot_fail_and_names_its_root() -> None:
    line = boot_hook_line("/opt/fleet desk")
    assert line == ("if [ -x '/opt/fleet desk/bin/fleetdesk-boot' ]; then '/opt/fleet desk/bin/fleetdesk-boot' || "
                    "true; fi  # fleetdesk-boot: '/opt/fleet desk'")
    assert line.endswith(boot_hook_mark("/opt/fleet desk"))
    # Under `sh -e` (Debian's rc.local) a missing or failing boot script ends neither the line nor the file.
    result = subprocess.run(["sh", "-e", "-c", f"{line}\necho after"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0 and result.stdout == "after\n"


def test_the_device_layout_follows_the_shared_contract() -> None:
    layout = DeviceLayout("/opt/fleetdesk")
    assert layout.agent_file("abc", "procfs.py") == "/opt/fleetdesk/agent/abc/fleetdesk_agent/procfs.py"
    assert layout.runtime_dir("r1") == "/opt/fleetdesk/runtimes/r1"
    assert layout.launcher == "/opt/fleetdesk/bin/fleetdesk-agent"
    assert layout.fleet_pub == "/opt/fleetdesk/keys/fleet.pub"
    assert layout.supervise_pid == "/opt/fleetdesk/run/supervise.pid"
