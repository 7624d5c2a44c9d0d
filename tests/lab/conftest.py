"""The real virtual fleet, brought up once per test session through the `fleetdesk lab` CLI.

Every profile is in it; arm64 devices run under qemu-user. Without root or the host tools the
lab tests skip, and with CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.conftest import in_ci, skip_or_fail

# Ten devices, as issue 23's takeover proof asks (tests/lab/test_takeover_lab.py uses them all): every profile once,
# and the cheap x86 one five times (ipc-01 .. ipc-05).
SPEC = "rpi4:1,rpi5:1,jetson-orin-nano:1,jetson-xavier-nx:1,ipc-x86:5,ipc-x86-nvidia:1"
HOST_TOOLS = ("ip", "iptables", "nsenter", "unshare", "debootstrap", "ssh-keygen", "zstd")


def fleetdesk(*args: str, env: dict[str, str] | None = None, timeout: float = 1800, user: str | None = None,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `fleetdesk` command line (as `user` when given)."""
    argv = [sys.executable, "-m", "fleetdesk", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ),
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"fleetdesk {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def lab_namespaces() -> list[str]:
    folder = Path("/run/netns")
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("fdlab-")) if folder.is_dir() else []


# Which test run brought the machine's lab up: its lab folder and its pytest process. A run that is
# killed (a session that ends, a CI timeout) cannot take its lab down; the next run reads this to
# tell such an abandoned lab from one somebody is using. /run is emptied at boot, like the lab.
LAB_OWNER = Path("/run/fleetdesk-test-lab.json")


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/PID/stat), so a reused pid is not taken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_lab_owner(lab_dir: Path) -> None:
    LAB_OWNER.write_text(json.dumps({"lab_dir": str(lab_dir), "pid": os.getpid(),
                                     "start": _process_start(os.getpid())}))


def take_down_an_abandoned_lab(env: dict[str, str]) -> None:
    """Take down the lab a killed test run left up; a lab anybody else brought up is left alone."""
    try:
        owner = json.loads(LAB_OWNER.read_text())
    except (OSError, ValueError):
        return
    if _process_start(int(owner["pid"])) == owner["start"]:
        return  # that test run is still going
    print(f"taking down the lab a killed test run left up ({owner['lab_dir']})", file=sys.stderr)
    fleetdesk("lab", "down", env={**env, "FLEETDESK_LAB_DIR": owner["lab_dir"]})
    LAB_OWNER.unlink(missing_ok=True)


@dataclass
class Fleet:
    """The running lab as the tests see it."""

    lab_dir: Path
    state: dict[str, Any]
    env: dict[str, str]
    up_output: str = ""
    torn_down: bool = field(default=False)

    @property
    def devices(self) -> list[dict[str, Any]]:
        return self.state["devices"]

    def device(self, name: str) -> dict[str, Any]:
        return next(d for d in self.devices if d["name"] == name)

    def by_profile(self, profile: str) -> dict[str, Any]:
        return next(d for d in self.devices if d["profile"] == profile)

    def refresh(self) -> dict[str, Any]:
        proc = fleetdesk("lab", "status", "--json", env=self.env, check=True)
        self.state = json.loads(proc.stdout)
        return self.state

    def fault(self, device: str, *args: str) -> str:
        return fleetdesk("lab", "fault", device, *args, env=self.env, check=True, timeout=300).stdout

    async def connect(self, device: dict[str, Any], *, user: str = "root",
                      known_hosts: str | None = None, **kwargs: Any) -> asyncssh.SSHClientConnection:
        kwargs.setdefault("client_keys", [self.state["ssh_key"]])
        return await asyncssh.connect(
            device["address"], username=user, known_hosts=known_hosts or self.state["known_hosts"],
            connect_timeout=30, **kwargs,
        )

    def ssh(self, device: dict[str, Any], command: str, **kwargs: Any) -> asyncssh.SSHCompletedProcess:
        async def go() -> asyncssh.SSHCompletedProcess:
            async with await self.connect(device, **kwargs) as conn:
                return await conn.run(command, check=False, timeout=120)

        return asyncio.run(go())


def require_lab_host() -> None:
    if sys.platform != "linux":
        skip_or_fail("the lab needs Linux")
    if os.geteuid() != 0:
        skip_or_fail("the lab needs root")
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        skip_or_fail(f"host tools missing: {', '.join(missing)} (make test installs them as root)")


def reused_lab_dir() -> str | None:
    """A lab the developer already brought up, named by FLEETDESK_TEST_REUSE_LAB (never in CI).

    Lets several people work against one running fleet without each bringing one up: the
    fixture then uses it as is and never takes it down. Tests that change the fleet as a whole
    (`test_lifecycle`) skip in this mode.
    """
    folder = os.environ.get("FLEETDESK_TEST_REUSE_LAB")
    if folder and in_ci():
        pytest.fail("FLEETDESK_TEST_REUSE_LAB is for development; CI brings up its own lab", pytrace=False)
    return folder or None


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    require_lab_host()
    reused = reused_lab_dir()
    lab_dir = Path(reused) if reused else tmp_path_factory.mktemp("lab")
    env = dict(os.environ)
    env["FLEETDESK_LAB_DIR"] = str(lab_dir)
    return env


@contextlib.contextmanager
def lab_up(spec: str, env: dict[str, str]) -> Iterator[Fleet]:
    """A lab of SPEC in env's FLEETDESK_LAB_DIR, taken down afterwards (unless a test took it down itself).
    One lab at a time per machine: one a killed run left is taken down first, one somebody is using fails."""
    if lab_namespaces():
        take_down_an_abandoned_lab(env)
    if lab_namespaces():
        pytest.fail(f"a lab is already up on this machine ({lab_namespaces()[0]} ...): run `fleetdesk lab down` first")
    proc = fleetdesk("lab", "up", "--devices", spec, env=env)
    if proc.returncode != 0:
        fleetdesk("lab", "down", env=env)
        pytest.fail(f"`fleetdesk lab up` failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    record_lab_owner(Path(env["FLEETDESK_LAB_DIR"]))
    lab = Fleet(lab_dir=Path(env["FLEETDESK_LAB_DIR"]), state={}, env=env, up_output=proc.stdout)
    try:
        lab.refresh()
        yield lab
    finally:
        down = None if lab.torn_down else fleetdesk("lab", "down", env=env)
        if down is not None and down.returncode != 0:
            # The owner record stays, so the next run takes this lab down (take_down_an_abandoned_lab).
            print(f"`fleetdesk lab down` failed; the lab is left up:\n{down.stdout}\n{down.stderr}", file=sys.stderr)
        else:
            LAB_OWNER.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def fleet(lab_env: dict[str, str]) -> Iterator[Fleet]:
    if reused_lab_dir():
        lab = Fleet(lab_dir=Path(lab_env["FLEETDESK_LAB_DIR"]), state={}, env=lab_env, torn_down=True)
        lab.refresh()
        os.environ["FLEETDESK_LAB_DIR"] = lab_env["FLEETDESK_LAB_DIR"]
        yield lab
        return
    with lab_up(SPEC, lab_env) as lab:
        # Tests in this process (and helpers they call) find the same lab.
        os.environ["FLEETDESK_LAB_DIR"] = lab_env["FLEETDESK_LAB_DIR"]
        yield lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # test_installer_lab brings up a lab of its own (one device, tests/lab/test_installer_lab.py) and takes it
    # down: it runs before every other lab test, while the session's fleet is not up yet (one lab per machine).
    own_lab = [item for item in items if item.module.__name__.endswith("test_installer_lab")]
    if own_lab:
        for item in own_lab:
            items.remove(item)
        first = next((i for i, item in enumerate(items) if item.module.__name__.startswith("tests.lab.")), len(items))
        items[first:first] = own_lab
    # test_lifecycle takes the session's fleet down, so it runs after every other lab test,
    # whatever the file names; with a reused lab it does not run at all.
    last = [item for item in items if item.module.__name__.endswith("test_lifecycle")]
    for item in last:
        items.remove(item)
        items.append(item)
        if os.environ.get("FLEETDESK_TEST_REUSE_LAB") and not in_ci():
            item.add_marker(pytest.mark.skip(reason="takes the fleet down; skipped with FLEETDESK_TEST_REUSE_LAB"))
