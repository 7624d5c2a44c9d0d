"""Running the host's own tools (ip, iptables, mount, ssh-keygen, debootstrap) for the lab.

Every failure becomes a LabError that names the command and what it printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from fleetdesk.errors import LabError, NotRootError

# Debian packages that provide the host tools the lab calls, for the error message.
HOST_TOOLS = {
    "ip": "iproute2",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "unshare": "util-linux",
    "ssh-keygen": "openssh-client",
    "debootstrap": "debootstrap",
    "tar": "tar",
    "chroot": "coreutils",
}


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            "the lab needs root (network namespaces, mounts, sshd)",
            fix="run it as root, e.g. `sudo fleetdesk lab up ...`",
        )


def require_tools(names: Sequence[str]) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        packages = sorted({HOST_TOOLS.get(n, n) for n in missing})
        raise LabError(
            f"missing host tools: {', '.join(missing)}",
            fix=f"install them: apt-get install {' '.join(packages)}",
        )


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    input: bytes | None = None,
    timeout: float = 60.0,
    step: str | None = None,
    device: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a host command with a timeout; raise LabError naming it on failure when `check`."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(args, input=input, capture_output=True, timeout=timeout, check=False, env=env)
    except FileNotFoundError:
        require_tools([args[0]])
        raise
    except subprocess.TimeoutExpired as exc:
        raise LabError(
            f"`{' '.join(args)}` did not finish within {timeout:.0f} s",
            fix="check the host's load and try again",
            step=step,
            device=device,
            cause=exc,
        ) from None
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        detail = said[-1] if said else f"exit status {proc.returncode}"
        raise LabError(f"`{' '.join(args)}` failed: {detail}", step=step, device=device)
    return proc


def package_env() -> dict[str, str]:
    """The environment for a lab helper process (`python -m fleetdesk.lab...`): this FleetDesk on its path."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def is_mountpoint(path: Path) -> bool:
    """True when `path` is a mount point, read from /proc/self/mountinfo (no extra process)."""
    target = str(path)
    for mount in mounts_under(Path(target)):
        if mount == target:
            return True
    return False


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or under `prefix`, deepest first so they can be unmounted in order."""
    base = str(prefix).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three octal digits after a backslash.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def stop_processes(pids: Sequence[int], grace: float = 2.0) -> None:
    """SIGTERM the processes, then SIGKILL those still alive after `grace` seconds."""
    remaining = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while remaining and time.monotonic() < deadline:
            remaining = [p for p in remaining if _alive(p)]
            if remaining:
                time.sleep(0.02)
        if not remaining:
            return


def unmount_all(prefix: Path) -> None:
    """Unmount everything at or under `prefix`, lazily where a busy mount would block."""
    for point in mounts_under(prefix):
        proc = run(["umount", point], check=False)
        if proc.returncode != 0 and is_mountpoint(Path(point)):
            run(["umount", "-l", point], check=False)
