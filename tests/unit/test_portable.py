"""The laptop side runs on Windows too (issue 22: the Windows installer cannot be built here, so the code keeps
itself portable): nothing outside the lab and the device agent calls a POSIX-only module or function unless it
stands in a branch for the platform or falls back when the import fails. And the one lock between processes
holds against a second process and is dropped when its holder dies.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetdesk.files import exclusive_lock

PACKAGE = Path(__file__).resolve().parents[2] / "fleetdesk"
# Linux-only by design: the lab builds network namespaces; the agent runs on the devices.
DEVICE_OR_LAB = ("lab", "agent")
POSIX_MODULES = {"fcntl", "pwd", "grp", "termios", "resource", "posix", "pty", "tty"}
POSIX_OS = {"getuid", "geteuid", "getgid", "getegid", "getgroups", "fork", "forkpty", "setsid", "killpg", "getpgid",
            "statvfs", "fstatvfs", "chown", "lchown", "fchown", "setuid", "setgid", "mkfifo", "sync", "getloadavg",
            "WNOHANG", "O_NOFOLLOW"}
POSIX_SIGNAL = {"SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGPIPE", "SIGALRM", "SIGQUIT", "SIGSTOP",
                "SIGCONT", "alarm", "setitimer", "pthread_kill", "pthread_sigmask"}


def _guarded(parents: list[ast.AST]) -> bool:
    """Inside `if sys.platform ...` / `if os.name ...` (either branch), or a `try` that catches ImportError."""
    for node in parents:
        if isinstance(node, ast.If) and any(isinstance(n, ast.Attribute) and n.attr in ("platform", "name")
                                            and isinstance(n.value, ast.Name) and n.value.id in ("sys", "os")
                                            for n in ast.walk(node.test)):
            return True
        if isinstance(node, ast.Try) and any(
                h.type is not None and any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                                           for n in ast.walk(h.type)) for h in node.handlers):
            return True
    return False


def _posix_only_uses(source: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        what = None
        if isinstance(node, ast.Import):
            what = next((a.name for a in node.names if a.name.split(".")[0] in POSIX_MODULES), None)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_MODULES:
            what = node.module
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                node.attr in {"os": POSIX_OS, "signal": POSIX_SIGNAL}.get(node.value.id, ())):
            what = f"{node.value.id}.{node.attr}"
        if what is not None and not _guarded(parents):
            found.append((node.lineno, what))  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(ast.parse(source), [])
    return found


def test_the_rule_finds_unguarded_posix_calls_and_lets_guarded_ones_pass() -> None:
    bad = "import fcntl\nimport os, signal\nos.getuid()\nsignal.SIGKILL\n"
    assert [w for _, w in _posix_only_uses(bad)] == ["fcntl", "os.getuid", "signal.SIGKILL"]
    good = ("import sys, os\nif sys.platform == 'win32':\n    import msvcrt\nelse:\n    import fcntl\n"
            "try:\n    import pwd\n    pwd.getpwuid(os.getuid())\nexcept ImportError:\n    pass\n"
            "SCRIPT = 'os.getuid()'\n")
    assert _posix_only_uses(good) == []


def test_the_laptop_side_calls_no_posix_only_function_unguarded() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in DEVICE_OR_LAB:
            continue
        found += [f"fleetdesk/{rel}:{line}: {what}" for line, what in _posix_only_uses(path.read_text("utf-8"))]
    assert not found, ("POSIX-only calls on the laptop side (Windows has none of them): put each in a platform "
                       "branch or an ImportError fallback, or in fleetdesk/files.py:\n" + "\n".join(found))


HOLDER = """
import sys, time
from fleetdesk.files import exclusive_lock
with exclusive_lock(sys.argv[1]) as held:
    print("held" if held else "not held", flush=True)
    time.sleep(120)
"""


def test_the_lock_keeps_a_second_process_out_until_its_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with exclusive_lock(lock, blocking=False) as held:
            assert held is False, "a second process took a lock another process holds"
        holder.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        holder.wait(30)
        deadline = time.monotonic() + 10
        while True:
            with exclusive_lock(lock, blocking=False) as held:
                if held:
                    break
            if time.monotonic() > deadline:
                pytest.fail("the lock of a killed process was never dropped")
            time.sleep(0.05)
        with exclusive_lock(lock) as held:  # blocking, free: taken at once
            assert held is True
    finally:
        holder.kill()
        holder.wait()
