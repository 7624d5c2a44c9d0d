"""The `status` command: what this device's agent, runtime, model and server are, in one result line."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from typing import Any

from . import protocol, sensors, state, verified
from .servestats import shadow_headline


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
    """The model server named by ROOT/run/serve.pid: {"pid", "alive", "since"} (since: when it wrote the file,
    as it started); None when there is no pid file."""
    try:
        with open(os.path.join(root, "run", "serve.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
            since = os.fstat(f.fileno()).st_mtime
    except (OSError, ValueError):
        return None
    return {"pid": pid, "alive": pid > 0 and pid_alive(pid), "since": since}


STATS_MAX_AGE_S = 10.0  # serve-stats.json older than this no longer says what the server serves (as telemetry)
STATS_CLOCK_SLACK_S = 0.05  # "t" is rounded to milliseconds; file times may be coarser than time.time()
# After a switch, a stats write this long after it comes from a server loop that has seen the new link: the loop
# checks ROOT/current before each write (serve.py, about once a second) and at once on SIGHUP.
SETTLE_S = 1.5
LOG_TAIL_BYTES = 65536


def artifacts(root: str) -> list[str]:
    """The artifact ids present under ROOT/artifacts (complete or not: `verify` says which are whole)."""
    try:
        names = os.listdir(os.path.join(root, "artifacts"))
    except OSError:
        return []
    return sorted(n for n in names if state.is_sha(n) and os.path.isdir(os.path.join(root, "artifacts", n)))


def serve_stats(root: str) -> dict[str, Any] | None:
    """ROOT/run/serve-stats.json as the server last wrote it, or None."""
    try:
        with open(os.path.join(root, "run", "serve-stats.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def serving(root: str, now: float | None = None) -> dict[str, Any]:
    """Whether the model server runs and which model it has loaded (its statistics file, when fresh)."""
    now = time.time() if now is None else now
    server = serve(root)
    running = bool(server and server["alive"])
    stats = serve_stats(root) if running else None
    t = stats.get("t") if stats else None
    age = round(now - float(t), 1) if isinstance(t, (int, float)) else None
    # Written by this server, not by one killed before it started (whose last write stays fresh for a while, naming
    # a model this one may still be loading): the server writes its pid file before it loads anything.
    ours = server is not None and isinstance(t, (int, float)) and float(t) >= server["since"] - STATS_CLOCK_SLACK_S
    fresh = age is not None and age <= STATS_MAX_AGE_S and ours
    refused = stats.get("refused") if stats and fresh else None
    shadow = stats.get("shadow") if stats and fresh else None
    drift = stats.get("drift") if stats and fresh else None
    return {"running": running, "pid": server["pid"] if server else None,
            "model": stats.get("model") if stats and fresh else None,
            "provider": stats.get("provider") if stats and fresh else None, "stats_age_s": age,
            # The artifact the server would not load (its signature or a file's hash did not match): which file, why.
            "refused": refused if isinstance(refused, dict) else None,
            # The shadow candidate's headline figures and the input drift per input (issue 24), as the server wrote.
            "shadow": shadow_headline(shadow) if isinstance(shadow, dict) else None,
            "drift": drift if isinstance(drift, dict) else None}


def load_failure(root: str, sha: str) -> str | None:
    """The reason of the server's last "model-failed" event for `sha` in ROOT/log/serve.log (the supervisor
    sends the server's JSON lines there), or None."""
    try:
        with open(os.path.join(root, "log", "serve.log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("event") in ("model-failed", "model-refused") and obj.get("model") == sha:
            return str(obj.get("reason") or "")[:2000] or None
        if isinstance(obj, dict) and obj.get("event") == "model-loaded" and obj.get("model") == sha:
            return None
    return None


def wait_loaded(root: str, sha: str, since: float, timeout: float, poll: float = 0.2) -> dict[str, Any] | None:
    """After ROOT/current moved to `sha` at `since`: wait until the running server reports `sha` loaded.

    {"loaded": True, "seconds"} or {"loaded": False, "reason"}; None when no server runs (nothing to wait for);
    {"loaded": None, "reason"} when the server keeps no fresh statistics (nothing to watch).
    A server that reports no model in a statistics write SETTLE_S after the switch failed to load it.
    """
    started = time.monotonic()
    first = serving(root)
    if not first["running"]:
        return None
    if first["stats_age_s"] is None or first["stats_age_s"] > STATS_MAX_AGE_S:
        return {"loaded": None, "reason": "the model server writes no fresh statistics, so its model is unknown"}
    while True:
        view = serving(root)
        if not view["running"]:
            return None
        stats = serve_stats(root) or {}
        t = stats.get("t")
        if isinstance(t, (int, float)) and t >= since:
            if stats.get("model") == sha:
                return {"loaded": True, "seconds": round(time.monotonic() - started, 2)}
            refused = stats.get("refused")
            if isinstance(refused, dict) and refused.get("artifact") == sha:
                # It failed its verification; whatever the server keeps serving, it is not this.
                return {"loaded": False, "reason": verified.refusal_text(refused), "file": refused.get("file"),
                        "fix": refused.get("fix")}
            if stats.get("model") is None and t >= since + SETTLE_S:
                reason = load_failure(root, sha) or "the model server has no model loaded after the switch"
                return {"loaded": False, "reason": reason}
        if time.monotonic() - started >= timeout:
            served = stats.get("model")
            return {"loaded": False, "reason": f"the model server did not load it within {timeout:g} s "
                                               f"(it serves {served or 'no model'})"}
        time.sleep(poll)


def collect(root: str) -> dict[str, Any]:
    """The status result. What is due is settled first (an activation past its deadline whose server and watchdog
    did not run, a switch a crash interrupted), so what is reported is what is true. `last_revert` says which
    activation went back to what, why, when ("at", epoch seconds) and by what ("by": model server, watchdog,
    boot, or the agent command that found it)."""
    st: dict[str, Any] = {}
    if os.path.isdir(root):
        state.settle_due(root, "status")
        st = state.read_state(root)
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
        serving=serving(root),
        artifacts=artifacts(root),
        keys=os.path.isfile(os.path.join(root, "keys", "fleet.pub")),
        disk_free_mb=disk["free_mb"] if disk else None,
        agent_path=os.path.dirname(os.path.abspath(__file__)),
        executable=sys.executable,
    )
