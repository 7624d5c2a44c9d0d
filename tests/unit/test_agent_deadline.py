"""Who keeps an unconfirmed activation's deadline when no laptop is there: the model server (it owns the deadline
while it runs, and settles at its start what expired while it was down), and the boot path (`fleetdesk-boot`
settles, and gives an activation still inside its window a watchdog again). Each is watched from outside: the
links and the server's own statistics file, never an agent command that would settle it itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.agent import state as agent_state
from fleetdesk.runtime.agentfiles import boot_script
from tests.fixtures.signed import signed_artifact
from tests.unit.test_agent_crash import TEST_KEY, link, one, saved, wait_for

REPO = Path(__file__).resolve().parents[2]


def cnn_artifact(root: Path, tmp_path: Path, seed: int) -> str:
    from tests.fixtures.models.build import save_cnn

    return signed_artifact(root, TEST_KEY, save_cnn(tmp_path / f"cnn-{seed}.onnx", seed=seed).read_bytes())


def start_server(root: Path) -> subprocess.Popen[bytes]:
    """`fleetdesk-agent serve` with its JSON lines in ROOT/log/serve.log, as the device's supervisor runs it."""
    (root / "log").mkdir(exist_ok=True)
    with open(root / "log" / "serve.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "fleetdesk.agent", "--root", str(root), "serve", "--port",
                                 "0"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def served_model(root: Path) -> str | None:
    try:
        model = json.loads((root / "run" / "serve-stats.json").read_text()).get("model")
    except (OSError, ValueError):
        return None
    return str(model) if model else None


def serve_events(root: Path) -> list[dict[str, Any]]:
    events = []
    for line in (root / "log" / "serve.log").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def activate_and_kill_its_watchdog(root: Path, sha: str, within: str) -> dict[str, Any]:
    """An activation whose watchdog is gone, as a logout with KillUserProcesses=yes or a reboot leaves it."""
    res = one(root, "activate", sha, "--confirm-within", within, "--wait-load", "0")
    os.kill(res["pending"]["watchdog_pid"], signal.SIGKILL)
    return dict(res["pending"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def test_the_model_server_reverts_at_the_deadline_when_the_watchdog_is_gone(root: Path, tmp_path: Path) -> None:
    a, b = cnn_artifact(root, tmp_path, 0), cnn_artifact(root, tmp_path, 1)
    one(root, "activate", a)
    server = start_server(root)
    try:
        assert wait_for(lambda: served_model(root) == a, 60)
        pending = activate_and_kill_its_watchdog(root, b, "3")
        assert wait_for(lambda: served_model(root) == b, 60)
        # Watched from outside: the link and what the server has loaded.
        assert wait_for(lambda: link(root) == a and served_model(root) == a, 60)
        reverted = saved(root)["reverted"]
        assert (reverted["sha"], reverted["to"], reverted["by"]) == (b, a, "model server")
        assert reverted["reason"] == "not confirmed within 3 s" and reverted["at"] >= pending["deadline"]
        assert any(e.get("event") == "reverted" and e.get("sha") == b for e in serve_events(root))
        st = one(root, "status")  # asked afterwards: it says what happened, by what, when
        assert st["last_revert"] == reverted and (st["active"], st["pending"]) == (a, None)
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(30)


def test_a_server_started_after_the_deadline_settles_it_before_loading_anything(root: Path, tmp_path: Path) -> None:
    a, b = cnn_artifact(root, tmp_path, 0), cnn_artifact(root, tmp_path, 1)
    one(root, "activate", a)
    pending = activate_and_kill_its_watchdog(root, b, "1")
    assert wait_for(lambda: time.time() > pending["deadline"] + 0.05)
    assert link(root) == b  # nobody has settled it: no server, no watchdog, no command
    server = start_server(root)
    try:
        assert wait_for(lambda: served_model(root) is not None, 60)
        assert (served_model(root), link(root)) == (a, a)  # b was never loaded
        events = [e.get("event") for e in serve_events(root)]
        assert events.index("reverted") < events.index("serving"), events
        assert saved(root)["reverted"]["by"] == "model server"
    finally:
        server.terminate()
        server.wait(30)


def boot(root: Path) -> None:
    """ROOT/bin/fleetdesk-boot as provisioning writes it, with a launcher that runs this checkout's agent; no
    supervisor is installed, so only its first step (settle) runs."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "fleetdesk-agent"
    launcher.write_text(f"#!/bin/sh\nPYTHONPATH={str(REPO)!r} exec {sys.executable!r} -m fleetdesk.agent "
                        f"--root {str(root)!r} \"$@\"\n")
    launcher.chmod(0o755)
    script = bin_dir / "fleetdesk-boot"
    script.write_text(boot_script(str(root)))
    assert subprocess.run(["sh", str(script)], timeout=60, check=False).returncode == 0


def test_the_boot_path_reverts_an_expired_activation(root: Path) -> None:
    a, b = (signed_artifact(root, TEST_KEY, payload) for payload in (b"model A", b"model B"))
    one(root, "activate", a)
    pending = activate_and_kill_its_watchdog(root, b, "1")
    assert wait_for(lambda: time.time() > pending["deadline"] + 0.05)
    boot(root)
    assert link(root) == a and saved(root)["reverted"]["by"] == "boot"
    assert json.loads((root / "log" / "boot.log").read_text().splitlines()[-1])["reverted"]["sha"] == b


def test_the_boot_path_gives_an_activation_inside_its_window_a_watchdog_again(root: Path) -> None:
    a, b = (signed_artifact(root, TEST_KEY, payload) for payload in (b"model A", b"model B"))
    one(root, "activate", a)
    pending = activate_and_kill_its_watchdog(root, b, "4")
    boot(root)
    rearmed = saved(root)["pending"]
    pid = rearmed["watchdog_pid"]
    try:
        assert pid != pending["watchdog_pid"] and agent_state.watchdog_alive(rearmed)
        assert link(root) == b
        # The new watchdog reverts it at the same deadline (links first, then the record: wait for the record).
        assert wait_for(lambda: "reverted" in saved(root), 30) and link(root) == a
        reverted = saved(root)["reverted"]
        assert reverted["by"] == "watchdog" and reverted["at"] >= pending["deadline"]
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
