"""Every change to the active model survives a power cut at every step: the agent, run as the device runs it (a
subprocess on a real filesystem, real signed artifacts), is SIGKILLed at each step boundary of activate, confirm,
rollback, revert and undoing a failed load in turn (the lab-only crash hook, state.CRASH_AT_ENV), then the next
agent command runs. After each crash: what `current` points at is what state.json says is active or pending; after
the next command, links and state agree exactly; no pending activation is lost; nothing unsigned is active; a late
confirm never answers "confirmed" for a model that is not current.
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetdesk.agent import state as agent_state
from tests.fixtures.signed import signed_artifact

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = Ed25519PrivateKey.generate()  # a throwaway fleet key, never the operator's


def agent(root: Path, *args: str, crash_at: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    env = {k: v for k, v in os.environ.items() if k != agent_state.CRASH_AT_ENV}
    if crash_at is not None:
        env[agent_state.CRASH_AT_ENV] = crash_at
    proc = subprocess.run([sys.executable, "-m", "fleetdesk.agent", "--root", str(root), *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env, check=False)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def one(root: Path, *args: str) -> dict[str, Any]:
    code, lines = agent(root, *args)
    assert len(lines) == 1 and code == (2 if lines[0]["type"] == "error" else 0), (code, lines)
    return lines[0]


def crash(root: Path, step: str, *args: str) -> None:
    code, lines = agent(root, *args, crash_at=step)
    assert code == -signal.SIGKILL, f"the agent did not die at {step}: {code} {lines}"


def crash_python(root: Path, step: str, code: str) -> None:
    """A state function the command line only reaches with a model server running, called as the agent would."""
    env = {**os.environ, agent_state.CRASH_AT_ENV: step}
    proc = subprocess.run([sys.executable, "-c", f"from fleetdesk.agent import state\n{code}"], cwd=REPO, env=env,
                          timeout=60, check=False, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, f"did not die at {step}: {proc.returncode} {proc.stderr}"


def link(root: Path, name: str = "current") -> str | None:
    return agent_state.link_target(str(root), name)


def saved(root: Path) -> dict[str, Any]:
    path = root / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def assert_after_crash(root: Path) -> None:
    """Right after the crash: current is what the state says is active, pending, or being switched to."""
    st = saved(root)
    allowed = {st.get("active")}
    if isinstance(st.get("pending"), dict):
        allowed.add(st["pending"]["sha"])
    if isinstance(st.get("switching"), dict):
        allowed.add(st["switching"]["current"])
    assert link(root) in allowed, (link(root), st)
    assert_signed(root)


def assert_settled(root: Path) -> dict[str, Any]:
    """After the next command: links and state agree exactly."""
    st = saved(root)
    assert "switching" not in st, st
    pending = st.get("pending")
    if isinstance(pending, dict):
        assert (link(root), link(root, "previous")) == (pending["sha"], pending["previous"]), st
        assert st["active"] == pending["previous"]
    else:
        assert link(root) == st["active"], st
    assert_signed(root)
    return st


def assert_signed(root: Path) -> None:
    current = link(root)
    if current is not None:
        agent_state.verify_artifact(str(root), current)  # raises for anything unsigned or damaged


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / agent_state.CRASH_MARKER).write_text("the crash-point test's root\n")
    return folder


def artifacts(root: Path, *names: str) -> list[str]:
    return [signed_artifact(root, TEST_KEY, f"model {name}".encode()) for name in names]


def kill_watchdogs(root: Path, pids: set[int]) -> None:
    """The watchdogs activations started here (a test ends before their 60 s deadlines)."""
    for pid in pids:
        try:
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def watchdog_pids(root: Path) -> set[int]:
    pending = saved(root).get("pending")
    return {pending["watchdog_pid"]} if isinstance(pending, dict) and "watchdog_pid" in pending else set()


ACTIVATE_STEPS = ["activate:state", "activate:previous", "activate:current", "activate:watchdog"]


@pytest.mark.parametrize("step", ACTIVATE_STEPS)
def test_activate_with_a_deadline_killed_at_each_step(root: Path, step: str) -> None:
    z, a, b = artifacts(root, "Z", "A", "B")
    one(root, "activate", z)
    one(root, "activate", a)  # current A, previous Z
    crash(root, step, "activate", b, "--confirm-within", "60")
    pids = watchdog_pids(root)
    try:
        assert_after_crash(root)
        st = saved(root)
        assert st["pending"]["sha"] == b  # recorded before any link moved: never lost
        status = one(root, "status")
        st = assert_settled(root)
        if isinstance(st.get("pending"), dict):  # the switch had finished: it waits for its confirmation
            assert step in ("activate:current", "activate:watchdog") and status["pending"]["sha"] == b
            assert one(root, "confirm", b)["changed"] is True
            assert (link(root), link(root, "previous")) == (b, a)
        else:  # it had not: undone, and said so
            assert step in ("activate:state", "activate:previous")
            assert (link(root), link(root, "previous")) == (a, z)
            assert status["last_revert"]["sha"] == b and status["last_revert"]["to"] == a
            assert "interrupted" in status["last_revert"]["reason"] and status["last_revert"]["by"] == "status"
            err = one(root, "confirm", b)
            assert err["type"] == "error" and err["code"] == "deadline-passed"
            assert link(root) == a
        assert_settled(root)
    finally:
        kill_watchdogs(root, pids)


@pytest.mark.parametrize("step", ["activate:state", "switch:current", "switch:previous", "switch:state"])
def test_activate_without_a_deadline_killed_at_each_step_is_finished_by_the_next_command(root: Path,
                                                                                        step: str) -> None:
    a, b = artifacts(root, "A", "B")
    one(root, "activate", a)
    crash(root, step, "activate", b)
    assert_after_crash(root)
    one(root, "status")
    st = assert_settled(root)
    assert (link(root), link(root, "previous")) == (b, a)
    assert [e["event"] for e in st["history"]] == ["activated", "activated"]


def test_confirm_killed_after_its_write_answers_its_retry(root: Path) -> None:
    a, b = artifacts(root, "A", "B")
    one(root, "activate", a)
    res = one(root, "activate", b, "--confirm-within", "60")
    try:
        crash(root, "confirm:state", "confirm", b)
        assert_after_crash(root)
        assert one(root, "confirm", b) == {"type": "result", "command": "confirm", "confirmed": b, "changed": False}
        st = assert_settled(root)
        assert st.get("pending") is None and link(root) == b
    finally:
        kill_watchdogs(root, {res["pending"]["watchdog_pid"]})


@pytest.mark.parametrize("step", ["rollback:state", "switch:current", "switch:previous", "switch:state"])
def test_rollback_killed_at_each_step_is_finished_by_the_next_command(root: Path, step: str) -> None:
    a, b = artifacts(root, "A", "B")
    one(root, "activate", a)
    one(root, "activate", b)
    crash(root, step, "rollback")
    assert_after_crash(root)
    one(root, "status")
    st = assert_settled(root)
    assert (link(root), link(root, "previous")) == (a, b)
    assert st["history"][-1]["event"] == "rolled-back"


REVERT_STEPS = ["revert:current", "revert:previous", "revert:state"]


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_rollback_of_a_pending_activation_killed_mid_revert_then_a_late_confirm(root: Path, step: str) -> None:
    z, a, b = artifacts(root, "Z", "A", "B")
    one(root, "activate", z)
    one(root, "activate", a)
    res = one(root, "activate", b, "--confirm-within", "60")
    try:
        crash(root, step, "rollback")
        assert_after_crash(root)
        err = one(root, "confirm", b)  # the laptop's late confirmation is the next command
        assert err["type"] == "error" and err["code"] == "deadline-passed", err
        st = assert_settled(root)
        assert (link(root), link(root, "previous")) == (a, z) and st["reverted"]["sha"] == b
    finally:
        kill_watchdogs(root, {res["pending"]["watchdog_pid"]})


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_a_deadline_revert_killed_at_each_step_then_a_late_confirm(root: Path, step: str) -> None:
    z, a, b = artifacts(root, "Z", "A", "B")
    one(root, "activate", z)
    one(root, "activate", a)
    res = one(root, "activate", b, "--confirm-within", "2")
    os.kill(res["pending"]["watchdog_pid"], signal.SIGKILL)  # `status` is the one that reverts here
    deadline = res["pending"]["deadline"]
    assert wait_for(lambda: time.time() > deadline + 0.05)
    crash(root, step, "status")
    assert_after_crash(root)
    err = one(root, "confirm", b)
    assert err["type"] == "error" and err["code"] == "deadline-passed", err
    assert "not confirmed within 2 s" in err["message"]
    st = assert_settled(root)
    assert (link(root), link(root, "previous")) == (a, z) and st["reverted"]["sha"] == b


@pytest.mark.parametrize("step", ["undo:state", "switch:current", "switch:previous", "switch:state"])
def test_undoing_a_failed_load_killed_at_each_step_is_finished_by_the_next_command(root: Path, step: str) -> None:
    z, a, b = artifacts(root, "Z", "A", "B")
    for sha in (z, a, b):
        one(root, "activate", sha)  # current B, previous A; B's activation remembers Z as what was before A
    crash_python(root, step, f"state.undo_failed_load({str(root)!r}, {b!r}, 'the test said so')")
    assert_after_crash(root)
    status = one(root, "status")
    st = assert_settled(root)
    assert (link(root), link(root, "previous")) == (a, z)
    assert status["last_revert"]["sha"] == b and status["last_revert"]["by"] == "activate"
    assert st["history"][-1]["event"] == "reverted"


def test_the_crash_hook_does_nothing_without_the_lab_marker(root: Path) -> None:
    (root / agent_state.CRASH_MARKER).unlink()
    a, b = artifacts(root, "A", "B")
    one(root, "activate", a)
    code, lines = agent(root, "activate", b, crash_at="switch:current")
    assert code == 0 and lines[0]["active"] == b and link(root) == b
