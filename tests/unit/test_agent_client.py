"""The one agent client, against the real agent: a device root laid out as provisioning lays it (the launcher, the
agent tree under agent/current, a runtime venv's python) and its commands run here by `sh -c`, as a device's login
shell runs them. What the client reads and the errors it raises come from the agent's own lines."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetdesk.agent_client import (
    AgentClient,
    AgentReply,
    AgentView,
    agent_command,
    parse_output,
    read_line,
)
from fleetdesk.errors import RemoteCommandError, RolloutStepError, UnreachableError
from fleetdesk.reach import AGENT_PACKAGE, DeviceLayout
from fleetdesk.runtime.agentfiles import launcher_script
from fleetdesk.transport import RunResult, SSHTarget, shell_quote
from fleetdesk.transport.session import RemoteLines
from tests.fixtures.models.build import save_mlp_external

REPO = Path(__file__).resolve().parents[2]
LOCAL = SSHTarget(device="dev-1", host="127.0.0.1")
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class LocalLines(RemoteLines):
    """A command's stdout line by line, from a local process (the transport's own line splitting)."""

    _proc: asyncio.subprocess.Process
    _drain: asyncio.Task[None]

    async def _open(self) -> None:
        self._proc = await asyncio.create_subprocess_shell(self.command, stdout=asyncio.subprocess.PIPE,
                                                           stderr=asyncio.subprocess.PIPE, env=ENV)
        self._drain = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(65536):
            self._keep_stderr(chunk)

    async def _read_chunk(self) -> bytes:
        assert self._proc.stdout is not None
        chunk = await self._proc.stdout.read(65536)
        if not chunk:
            await self._drain
            code = await self._proc.wait()
            self.exit_status, self.exit_signal = (code, None) if code >= 0 else (None, signal.Signals(-code).name[3:])
        return chunk

    async def _stop(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._drain.cancel()


class LocalChannel:
    """The agent client's channel to "a device" that is this machine."""

    async def run(self, command: str, *, timeout: float | None) -> RunResult:
        proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE, env=ENV)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        code = proc.returncode
        assert code is not None
        return RunResult(LOCAL.device, command, code if code >= 0 else None, out.decode(), err.decode(),
                         exit_signal=signal.Signals(-code).name[3:] if code < 0 else None)

    def stream(self, command: str) -> RemoteLines:
        return LocalLines(LOCAL, command)


def device_root(tmp_path: Path, *, onnxruntime: bool = True, agent: bool = True) -> Path:
    """ROOT as provisioning leaves it: bin/fleetdesk-agent, agent/current/fleetdesk_agent and a runtime venv whose
    python is this test's (without its site-packages, so without onnxruntime, when `onnxruntime` is False)."""
    root = tmp_path / "device root 'q'"
    root.mkdir()
    if not agent:
        return root
    layout = DeviceLayout(str(root))
    shutil.copytree(REPO / "fleetdesk" / "agent", Path(layout.agent_dir("v1")) / AGENT_PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "agent" / "current").symlink_to("v1")
    python = root / "runtimes" / "r1" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {'' if onnxruntime else '-S '}\"$@\"\n")
    python.chmod(0o755)
    (root / "runtimes" / "current").symlink_to("r1")
    launcher = Path(layout.launcher)
    launcher.parent.mkdir()
    launcher.write_text(launcher_script(str(root)))
    launcher.chmod(0o755)
    return root


def client(root: Path) -> AgentClient:
    return AgentClient(LocalChannel(), str(root), device=LOCAL.device)


def test_the_agent_runs_through_the_launcher_provisioning_writes() -> None:
    assert agent_command("/opt/fleet desk", "bench", "x y") == "'/opt/fleet desk/bin/fleetdesk-agent' bench 'x y'"
    assert DeviceLayout("/opt/fleetdesk").launcher == "/opt/fleetdesk/bin/fleetdesk-agent"


def test_the_status_of_a_fresh_device_reads_as_a_view(tmp_path: Path) -> None:
    root = device_root(tmp_path)
    view = run(client(root).status())
    assert isinstance(view, AgentView)
    assert (view.current, view.previous, view.pending, view.artifacts, view.serving) == (None, None, None, (), False)
    assert view.status["root"] == str(root) and view.status["command"] == "status"


def test_an_error_line_becomes_a_rollout_step_error_with_the_agents_code_message_and_fix(tmp_path: Path) -> None:
    root = device_root(tmp_path)
    reply = run(client(root).run("confirm", "a" * 64, timeout=60))
    [line] = reply.lines
    assert line["type"] == "error" and reply.exit_status == 2
    with pytest.raises(RolloutStepError) as caught:
        reply.result("confirm")
    assert caught.value.code == "not-pending" == line["code"]
    assert caught.value.message == f"confirm: {line['message']}"
    assert caught.value.fix == line["fix"] == "confirm the artifact that `activate` switched to (see `status`)"
    assert (caught.value.device, caught.value.step) == ("dev-1", "confirm")


def test_a_device_without_the_agent_is_told_to_be_provisioned(tmp_path: Path) -> None:
    root = device_root(tmp_path, agent=False)
    with pytest.raises(RolloutStepError) as caught:
        run(client(root).status())
    assert caught.value.code == "no-agent"
    assert caught.value.message == f"status: the FleetDesk agent is not installed under {root}"
    assert caught.value.fix == "provision the device first (fleetdesk provision dev-1)"


def test_lines_that_are_not_json_objects_are_skipped_and_say_why(tmp_path: Path) -> None:
    root = device_root(tmp_path)
    real = run(LocalChannel().run(agent_command(str(root), "status"), timeout=60)).stdout
    # A warning printed before the agent's line (a Python deprecation, a login banner), and a JSON non-object.
    stdout = "Warning: something the shell said\n[1, 2]\n" + real
    [status] = parse_output(stdout)
    assert status["type"] == "result" and status["command"] == "status"
    assert read_line("Warning: something the shell said").why == "not a JSON line"
    assert read_line("[1, 2]").why == "not a JSON object" and read_line("[1, 2]").kind is None
    assert read_line(real.splitlines()[0]).kind == "result"
    reply = AgentReply.of(RunResult("dev-1", "status", 0, stdout, ""), str(root), "dev-1")
    assert reply.result("status") == status


def test_an_agent_stopped_before_it_answered_is_unreachable_not_failed(tmp_path: Path) -> None:
    root = device_root(tmp_path)
    # The agent turns SIGTERM into a quiet exit 0 (here once it runs: its first sample, kept from the reply, is
    # out); a device going down may also kill it outright.
    out = tmp_path / "first-sample"
    script = (f"{agent_command(str(root), 'telemetry', '--interval', '5')} > {shell_quote(str(out))} & "
              f"while [ ! -s {shell_quote(str(out))} ]; do sleep 0.05; done; kill -TERM $!; wait $!")
    stopped = AgentReply.of(run(LocalChannel().run(script, timeout=60)), str(root), "dev-1")
    assert (stopped.lines, stopped.exit_status) == ((), 0)
    with pytest.raises(UnreachableError) as caught:
        stopped.result("activate")
    assert caught.value.message == ("activate: the agent was stopped before it answered (the device may be "
                                    "shutting down or rebooting)")
    killed = AgentReply(str(root), "dev-1", (), None, "KILL")
    with pytest.raises(UnreachableError, match="killed by SIGKILL"):
        killed.sample("measure")


def test_one_telemetry_sample(tmp_path: Path) -> None:
    sample = run(client(device_root(tmp_path)).sample("measure"))
    assert sample["type"] == "sample" and sample["seq"] == 1 and sample["mem"]["total_mb"] > 0


def test_the_selftest_proves_the_runtime(tmp_path: Path) -> None:
    proof = run(client(device_root(tmp_path)).selftest(timeout=120))
    assert proof["command"] == "selftest" and proof["inference_ok"] is True


def test_a_selftest_without_onnxruntime_fails_with_the_agents_message_and_fix(tmp_path: Path) -> None:
    root = device_root(tmp_path, onnxruntime=False)
    reply = run(client(root).run("selftest", timeout=120))
    [line] = reply.lines
    assert line["code"] == "no-runtime"
    with pytest.raises(RemoteCommandError) as caught:
        reply.selftest()
    assert caught.value.message == f"the selftest failed: {line['message']}" and "onnxruntime" in line["message"]
    assert caught.value.fix == line["fix"] == "run `fleetdesk provision DEVICE`"
    assert (caught.value.device, caught.value.step, caught.value.exit_status) == ("dev-1", "selftest", 2)


def test_the_bench_of_loose_model_files_gives_its_latency(tmp_path: Path) -> None:
    root = device_root(tmp_path)
    folder = root / "tmp" / "bench-1"
    folder.mkdir(parents=True)
    save_mlp_external(folder / "mlp.onnx")
    timed = run(client(root).bench(str(folder), runs=3, providers=["CPUExecutionProvider"], timeout=120))
    assert 0 < timed.p50_ms and timed.p95_ms is not None and timed.p50_ms <= timed.p95_ms
    assert (timed.runs, timed.provider) == (3, "CPUExecutionProvider")


def test_the_bench_of_a_missing_artifact_fails_with_the_agents_code_and_fix(tmp_path: Path) -> None:
    root = device_root(tmp_path)
    reply = run(client(root).run("bench", "f" * 64, "--runs", "3", timeout=120))
    line = reply.lines[-1]
    assert line["type"] == "error"
    with pytest.raises(RemoteCommandError) as caught:
        reply.bench()
    assert caught.value.message == f"agent bench: {line['code']}: {line['message'][:300]}"
    assert caught.value.fix == line["fix"] and caught.value.step == "bench"


def test_a_telemetry_stream_reads_each_line_as_it_comes(tmp_path: Path) -> None:
    root = device_root(tmp_path)

    async def go() -> None:
        async with client(root).stream("telemetry", "--interval", "0.1", "--count", "3") as lines:
            got = [line async for line in lines]
            assert [line.kind for line in got] == ["sample"] * 3
            assert [line.data["seq"] for line in got if line.data] == [1, 2, 3]
            assert (lines.exit_status, lines.exit_signal) == (0, None)
    run(go())


def test_a_stream_whose_agent_refuses_ends_with_its_error(tmp_path: Path) -> None:
    root = device_root(tmp_path)

    async def go() -> None:
        async with client(root).stream("telemetry", "--interval", "0.1", "--sources", "nonsense") as lines:
            [line] = [line async for line in lines]
            assert line.kind == "error" and lines.exit_status == 2
            error = lines.error(line)
        assert line.data is not None
        assert error.message == "the agent's telemetry failed: unknown telemetry source nonsense"
        assert error.fix == line.data["fix"] and line.data["fix"].startswith("name sources from: procfs")
        assert (error.device, error.step) == ("dev-1", "telemetry")
    run(go())
