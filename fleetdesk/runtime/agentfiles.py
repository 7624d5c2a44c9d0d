"""The files provisioning puts on a device besides the wheels: the agent tree (versioned by its content), the
`fleetdesk-agent` launcher, the supervisor that keeps `serve` running where there is no systemd (with the boot
script that starts it again after a reboot), and the unit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import fleetdesk.agent
from fleetdesk.agent_client import agent_launcher
from fleetdesk.reach import AGENT_PACKAGE, DeviceLayout
from fleetdesk.transport.shell import shell_quote

VERSION_LENGTH = 16
UNIT_NAME = "fleetdesk-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"


@dataclass(frozen=True)
class AgentFile:
    relpath: str  # POSIX path inside the package, e.g. "procfs.py"
    path: Path
    sha256: str
    size: int
    # The bytes as read when the version was computed: what is pushed, even if the source changes meanwhile.
    data: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class AgentTree:
    """Every .py file of fleetdesk/agent and the version they make together (a hash of names and contents)."""

    version: str
    files: tuple[AgentFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def agent_tree(source: Path | None = None) -> AgentTree:
    """Read the agent's source tree (default: the installed fleetdesk/agent); caches and non-Python files are left."""
    folder = Path(source) if source is not None else Path(fleetdesk.agent.__file__).parent
    files = []
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder)
        if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        data = path.read_bytes()
        files.append(AgentFile(rel.as_posix(), path, hashlib.sha256(data).hexdigest(), len(data), data))
    listing = "".join(f"{f.relpath}\0{f.sha256}\n" for f in files)
    return AgentTree(hashlib.sha256(listing.encode()).hexdigest()[:VERSION_LENGTH], tuple(files))


def launcher_script(root: str) -> str:
    """ROOT/bin/fleetdesk-agent: the agent with the runtime venv's Python when there is one, else python3."""
    q = shell_quote(root)
    return f"""#!/bin/sh
# The FleetDesk agent, written by `fleetdesk provision`; JSON lines on stdout (see the agent's protocol).
ROOT={q}
PY="$ROOT/runtimes/current/venv/bin/python"
[ -x "$PY" ] || PY=python3
PYTHONPATH="$ROOT/agent/current${{PYTHONPATH:+:$PYTHONPATH}}"
export PYTHONPATH
exec "$PY" -m {AGENT_PACKAGE} --root "$ROOT" "$@"
"""


def supervisor_script(root: str) -> str:
    """ROOT/bin/fleetdesk-supervise: keeps `fleetdesk-agent serve` running where no systemd does.

    It restarts the server when it exits, waiting longer after each quick exit (1 s doubling to 60 s, reset
    once a run lasted a minute), and stops it on SIGTERM. Started detached (setsid) by provisioning.
    """
    q = shell_quote(root)
    return f"""#!/bin/sh
# Keeps the FleetDesk model server running (no systemd on this device); written by `fleetdesk provision`.
ROOT={q}
mkdir -p "$ROOT/run" "$ROOT/log"
echo $$ > "$ROOT/run/supervise.pid"
child=
stop() {{
  [ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null
  rm -f "$ROOT/run/supervise.pid"
  exit 0
}}
trap stop TERM INT HUP
pause=1
while :; do
  started=$(date +%s)
  "$ROOT/bin/fleetdesk-agent" serve >>"$ROOT/log/serve.log" 2>&1 &
  child=$!
  wait "$child"
  status=$?
  child=
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) serve exited with status $status; restarting in $pause s" \\
    >>"$ROOT/log/supervise.log"
  if [ $(( $(date +%s) - started )) -ge 60 ]; then pause=1; fi
  sleep "$pause" &
  child=$!
  wait "$child"
  child=
  pause=$(( pause * 2 )); [ "$pause" -gt 60 ] && pause=60
done
"""


def boot_script(root: str) -> str:
    """ROOT/bin/fleetdesk-boot: settles the confirmation deadline, then starts the supervisor, detached, unless it
    runs already; always exits 0.

    Run at boot by the hook provisioning installs where no systemd runs (see `boot_hook_line`). First the agent's
    `settle`: an activation whose deadline passed while the device was off is reverted before any server loads
    it, and one still inside its window gets a watchdog again (the server the supervisor starts owns the deadline
    too; with systemd, that server's start is the boot path). The pid file survives a reboot on the device's disk:
    a pid is trusted only when that process is a supervisor.
    """
    q = shell_quote(root)
    return f"""#!/bin/sh
# Starts the FleetDesk supervisor at boot (no systemd on this device); written by `fleetdesk provision`.
ROOT={q}
if [ -x "$ROOT/bin/fleetdesk-agent" ]; then
  mkdir -p "$ROOT/log"
  "$ROOT/bin/fleetdesk-agent" settle >>"$ROOT/log/boot.log" 2>&1 || true
fi
pidfile="$ROOT/run/supervise.pid"
if [ -s "$pidfile" ] && grep -q fleetdesk-supervise "/proc/$(cat "$pidfile")/cmdline" 2>/dev/null; then
  exit 0
fi
rm -f "$pidfile"
[ -x "$ROOT/bin/fleetdesk-supervise" ] || exit 0
cd /
setsid sh "$ROOT/bin/fleetdesk-supervise" </dev/null >/dev/null 2>&1 &
exit 0
"""


def boot_hook_mark(root: str) -> str:
    """The comment that ends the boot hook's line, naming the root: provisioning finds and replaces its own line."""
    return f"# fleetdesk-boot: {shell_quote(root)}"


def boot_hook_line(root: str) -> str:
    """The line for /etc/rc.local (or a crontab after `@reboot`). It cannot fail: rc.local often runs under
    `sh -e`, where a failing line would skip the rest of the operator's file."""
    boot = shell_quote(DeviceLayout(root).boot)
    return f"if [ -x {boot} ]; then {boot} || true; fi  {boot_hook_mark(root)}"


def systemd_unit(root: str) -> str:
    """fleetdesk-agent.service: `fleetdesk-agent serve`, restarted by systemd when it exits. The unit's server
    settles the confirmation deadline at its start (boot) and owns it while it runs: a logout (logind's
    KillUserProcesses=yes) ends the watchdog an SSH session started, never a system unit."""
    # systemd.exec(5): ExecStart takes an absolute path; quoting keeps a root with spaces one word.
    launcher = agent_launcher(root)
    quoted = '"' + launcher.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"""[Unit]
Description=FleetDesk model server (fleetdesk-agent serve)
After=network.target

[Service]
ExecStart={quoted} serve
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
