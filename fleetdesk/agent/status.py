"""The `status` command: what this device's agent, runtime, model and server are, in one result line."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from typing import Any

from . import protocol, sensors, state


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path).rstrip("/")) or None
    except OSError:
        return None


def agent_version(root: str) -> str:
    """ROOT/agent/current's target name (the version provisioning installed), else "dev"."""
    return _link_name(os.path.join(root, "agent", "current")) or "dev"


def runtime(root: str) -> dict[str, Any] | None:
    """ROOT/runtimes/current's target name and its installed.json (what provisioning proved), when present."""
    name = _link_name(os.path.join(root, "runtimes", "current"))
    if name is None:
        return None
    installed: Any = None
    try:
        with open(os.path.join(root, "runtimes", name, "installed.json"), encoding="utf-8") as f:
            installed = json.load(f)
    except (OSError, ValueError):
        installed = None
    return {"id": name, "installed": installed}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    except OSError:
        return False
    return True


def serve(root: str) -> dict[str, Any] | None:
    """The model server named by ROOT/run/serve.pid: {"pid", "alive"}; None when there is no pid file."""
    try:
        with open(os.path.join(root, "run", "serve.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return {"pid": pid, "alive": pid > 0 and pid_alive(pid)}


def collect(root: str) -> dict[str, Any]:
    """The status result. A pending activation past its deadline (its watchdog died with a reboot) is settled
    first, so what is reported is what is true."""
    st: dict[str, Any] = {}
    if os.path.isdir(root):
        st = state.read_state(root)
        pending = st.get("pending")
        if isinstance(pending, dict) and time.time() >= float(pending.get("deadline", 0)):
            with state.locked(root):
                st = state.read_state(root)
                state.settle_expired(root, st, time.time(), "status")
    pending = st.get("pending") if isinstance(st.get("pending"), dict) else None
    if pending is not None:
        pending = dict(pending, seconds_left=round(max(0.0, float(pending.get("deadline", 0)) - time.time()), 1))
    disk = sensors.disk(root)
    return protocol.result(
        "status",
        agent_version=agent_version(root),
        protocol=protocol.PROTOCOL_VERSION,
        python=platform.python_version(),
        machine=platform.machine(),
        hostname=socket.gethostname(),
        root=root,
        active=state.link_target(root, "current"),
        previous=state.link_target(root, "previous"),
        pending=pending,
        last_revert=st.get("reverted") if isinstance(st.get("reverted"), dict) else None,
        runtime=runtime(root),
        serve=serve(root),
        keys=os.path.isfile(os.path.join(root, "keys", "fleet.pub")),
        disk_free_mb=disk["free_mb"] if disk else None,
        agent_path=os.path.dirname(os.path.abspath(__file__)),
        executable=sys.executable,
    )
