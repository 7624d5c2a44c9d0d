"""The one client of the on-device agent: how it is run on a device, its JSON lines (fleetdesk/agent/protocol.py)
read once into typed replies, and its error lines turned into FleetDeskErrors.

The agent runs as `ROOT/bin/fleetdesk-agent ARGS`, the launcher provisioning writes (runtime/agentfiles.py): the
runtime venv's Python (else python3), the current agent, `--root ROOT`; with the SSH login's own rights, no sudo.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetdesk.errors import RemoteCommandError, RolloutStepError, UnreachableError
from fleetdesk.transport.pool import SSHPool
from fleetdesk.transport.results import RunResult
from fleetdesk.transport.session import RemoteLines
from fleetdesk.transport.shell import shell_join
from fleetdesk.transport.target import SSHTarget

__all__ = [
    "AgentChannel", "AgentClient", "AgentLine", "AgentReply", "AgentStream", "AgentView", "BenchResult",
    "PoolChannel", "agent_command", "agent_launcher", "parse_output", "read_line",
]

NOT_INSTALLED = 127  # the shell's exit status when the launcher is not there


def agent_launcher(root: str) -> str:
    """ROOT/bin/fleetdesk-agent, the one way the agent is started on a device."""
    return posixpath.join(root, "bin", "fleetdesk-agent")


def agent_command(root: str, *args: str) -> str:
    """The shell line that runs the agent's ARGS under ROOT (every word quoted)."""
    return shell_join([agent_launcher(root), *args])


# -- lines ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentLine:
    """One line the agent printed: its JSON object, or None and why it is not one (a warning, a cut line)."""

    text: str
    data: dict[str, Any] | None
    why: str = ""  # "not a JSON line" or "not a JSON object" when data is None

    @property
    def kind(self) -> str | None:
        """The line's "type": sample, result, event or error (None for a line that is not an object)."""
        return self.data.get("type") if self.data is not None else None


def read_line(text: str) -> AgentLine:
    try:
        obj = json.loads(text)
    except ValueError:
        return AgentLine(text, None, "not a JSON line")
    if not isinstance(obj, dict):
        return AgentLine(text, None, "not a JSON object")
    return AgentLine(text, obj)


def parse_output(stdout: str) -> tuple[dict[str, Any], ...]:
    """The JSON objects of a command's whole output, in order; any other line (e.g. a warning) is skipped."""
    return tuple(line.data for line in map(read_line, stdout.splitlines()) if line.data is not None)


# -- typed results --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentView:
    """What the agent says (its `status`), for reconciling after a crash."""

    current: str | None
    previous: str | None
    pending: dict[str, Any] | None  # {"sha", "deadline"} of an unconfirmed activation
    last_revert: dict[str, Any] | None  # {"sha", "to", "reason", "at"}: the last time it went back by itself
    artifacts: tuple[str, ...]
    serving: bool  # the model server runs
    serving_model: str | None  # what it has loaded, from its fresh statistics
    status: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # the whole status line
    # The artifact the server would not load, because its signature or a file's hash did not verify:
    # {"artifact", "file", "code", "reason", "fix", "at"} (fleetdesk/agent/verified.py); None when none.
    refused: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    @classmethod
    def of(cls, st: dict[str, Any]) -> AgentView:
        """The view of a `status` result line."""
        pending = st.get("pending") if isinstance(st.get("pending"), dict) else None
        serving = st.get("serving")
        if not isinstance(serving, dict):
            serving = {}
        return cls(
            current=st.get("active"), previous=st.get("previous"),
            pending={"sha": pending.get("sha"), "deadline": pending.get("deadline")} if pending else None,
            last_revert=st.get("last_revert") if isinstance(st.get("last_revert"), dict) else None,
            artifacts=tuple(st.get("artifacts") or ()), serving=bool(serving.get("running")),
            serving_model=serving.get("model"), status=st,
            refused=serving.get("refused") if isinstance(serving.get("refused"), dict) else None)


def _ms(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class BenchResult:
    """The agent's `bench` result: latency over `runs` timed inferences with synthetic inputs."""

    p50_ms: float
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    provider: str | None  # the execution provider that ran it
    runs: int | None
    line: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @classmethod
    def of(cls, obj: dict[str, Any]) -> BenchResult:
        return cls(float(obj["p50_ms"]), _ms(obj.get("p95_ms")), _ms(obj.get("p99_ms")), _ms(obj.get("mean_ms")),
                   obj.get("provider"), obj.get("runs"), obj)


@dataclass(frozen=True)
class AgentReply:
    """One agent command that ran to its end: the JSON objects it printed, in order, and how it ended. Its
    methods read the answer the way each kind of caller needs it, with that caller's errors."""

    root: str
    device: str | None
    lines: tuple[dict[str, Any], ...]
    exit_status: int | None
    exit_signal: str | None = None
    stderr: str = ""

    @classmethod
    def of(cls, result: RunResult, root: str, device: str | None = None) -> AgentReply:
        return cls(root, device, parse_output(result.stdout), result.exit_status, result.exit_signal, result.stderr)

    def first(self, kind: str, command: str | None = None) -> dict[str, Any] | None:
        """The first line of this type (and, for a result, of this command), or None."""
        return next((o for o in self.lines if o.get("type") == kind
                     and (command is None or o.get("command") == command)), None)

    def result(self, step: str) -> dict[str, Any]:
        """The command's result line, for a step of a rollout (or any coded caller). Its error line ->
        RolloutStepError with the agent's code, message and fix; no answer -> RolloutStepError (no-agent,
        no-result), or UnreachableError when the agent was stopped before it answered."""
        for obj in self.lines[::-1]:
            if obj.get("type") == "error":
                raise RolloutStepError(f"{step}: {str(obj.get('message'))[:600]}", code=str(obj.get("code")),
                                       device=self.device, step=step,
                                       fix=str(obj.get("fix") or "see the agent's message"))
            if obj.get("type") == "result":
                return obj
        if self.exit_status == NOT_INSTALLED:
            raise RolloutStepError(f"{step}: the FleetDesk agent is not installed under {self.root}", code="no-agent",
                                   device=self.device, step=step,
                                   fix=f"provision the device first (fleetdesk provision {self.device or 'DEVICE'})")
        self._raise_if_stopped(step)
        last = (self.stderr.strip().splitlines() or [""])[-1][:300]
        raise RolloutStepError(f"{step}: the agent printed no result (exit status {self.exit_status})"
                               + (f": {last}" if last else ""), code="no-result", device=self.device, step=step,
                               fix=f"check the agent on the device; provisioning it again (fleetdesk provision "
                                   f"{self.device or 'DEVICE'}) reinstalls it")

    def sample(self, step: str) -> dict[str, Any]:
        """The first telemetry sample (schema in fleetdesk/telemetry/sample.py), or {"error": why}; only an agent
        stopped before it answered raises (UnreachableError)."""
        sample = self.first("sample")
        if sample is not None:
            return sample
        error = self.first("error")
        if error is None:
            self._raise_if_stopped(step)
        return {"error": str(error.get("message")) if error else f"no sample (exit status {self.exit_status})"}

    def selftest(self) -> dict[str, Any]:
        """The selftest's proof (a result whose inference was right); anything else -> RemoteCommandError."""
        error = self.first("error")
        if error is not None:
            raise RemoteCommandError(f"the selftest failed: {error.get('message', '')}", device=self.device,
                                     step="selftest", exit_status=self.exit_status, stderr=self.stderr,
                                     fix=str(error.get("fix") or "provision again"))
        proof = self.first("result", "selftest")
        if proof is None or self.exit_status != 0:
            last = (self.stderr.strip().splitlines() or ["no output"])[-1]
            raise RemoteCommandError(f"the agent's selftest gave no result (exit {self.exit_status}): {last[:300]}",
                                     device=self.device, step="selftest", exit_status=self.exit_status,
                                     stderr=self.stderr, fix="provision again; if it persists, run "
                                     f"`{agent_launcher(self.root)} selftest` on the device and read its error")
        if not proof.get("inference_ok"):
            raise RemoteCommandError("the selftest's inference gave a wrong answer", device=self.device,
                                     step="selftest", fix="import a wheel built for this device and provision again")
        return proof

    def bench(self) -> BenchResult:
        """The `bench` result (progress events come first); its error line or no result -> RemoteCommandError.
        The error names no device: the model bench reports it under the device's name itself."""
        for obj in self.lines[::-1]:
            if obj.get("type") == "result" and obj.get("command") == "bench":
                return BenchResult.of(obj)
            if obj.get("type") == "error":
                raise RemoteCommandError(f"agent bench: {obj.get('code')}: {str(obj.get('message'))[:300]}",
                                         step="bench", fix=str(obj.get("fix") or "see the agent's message"))
        last = (self.stderr.strip().splitlines() or [""])[-1][:300]
        raise RemoteCommandError("agent bench printed no result line" + (f" ({last})" if last else ""), step="bench",
                                 fix="check the agent on the device (fleetdesk provision DEVICE installs it)")

    def _raise_if_stopped(self, step: str) -> None:
        """An agent command that printed no answer because it was killed by a signal, or stopped by one (the
        agent turns SIGTERM/SIGHUP into a quiet exit 0): a device shutting down, so UnreachableError. What the
        step did is unknown until the agent answers again."""
        if self.exit_signal or self.exit_status in (0, None):
            how = f"killed by SIG{self.exit_signal}" if self.exit_signal else "stopped"
            raise UnreachableError(f"{step}: the agent was {how} before it answered (the device may be shutting "
                                   "down or rebooting)", device=self.device, step=step,
                                   fix="wait for the device to come back; the rollout then asks its agent where it "
                                       "stands")


class AgentStream:
    """A long-running agent command read line by line: `async for line in stream` gives each line parsed once
    (AgentLine); `exit_status`, `exit_signal` and `stderr_tail` once it ended."""

    def __init__(self, lines: RemoteLines, command: str, device: str | None = None) -> None:
        self._lines = lines
        self.command = command
        self.device = device

    def __aiter__(self) -> AgentStream:
        return self

    async def __anext__(self) -> AgentLine:
        return read_line(await self._lines.__anext__())

    @property
    def exit_status(self) -> int | None:
        return self._lines.exit_status

    @property
    def exit_signal(self) -> str | None:
        return self._lines.exit_signal

    @property
    def stderr_tail(self) -> str:
        return self._lines.stderr_tail

    def error(self, line: AgentLine) -> RemoteCommandError:
        """The stream's error line as the error that ends it."""
        obj = line.data or {}
        return RemoteCommandError(f"the agent's {self.command} failed: {obj.get('message') or obj.get('code')}",
                                  device=self.device, step=self.command,
                                  fix=str(obj.get("fix") or "see the agent's log on the device"))


# -- the client -----------------------------------------------------------------------------------------------

class AgentChannel(Protocol):
    """Where the agent's commands run: a DeviceSession, or one device of the pool (PoolChannel)."""

    async def run(self, command: str, *, timeout: float | None) -> RunResult: ...

    def stream(self, command: str) -> AbstractAsyncContextManager[RemoteLines]: ...


@dataclass(frozen=True)
class PoolChannel:
    """One device through the fleet's SSH pool (its operation bound, its reconnects)."""

    pool: SSHPool
    target: SSHTarget

    async def run(self, command: str, *, timeout: float | None) -> RunResult:
        return await self.pool.run(self.target, command, timeout=timeout)

    def stream(self, command: str) -> AbstractAsyncContextManager[RemoteLines]:
        return self.pool.stream(self.target, command)


class AgentClient:
    """One device's agent: `client = AgentClient.pooled(fleet.pool, target, root, device=name)`, then
    `(await client.run("status", timeout=120)).result("status")`, or one of the typed calls below.
    Transport errors (unreachable, timeout, auth) come through as the pool raises them."""

    def __init__(self, channel: AgentChannel, root: str, *, device: str | None = None) -> None:
        self.channel = channel
        self.root = root
        self.device = device

    @classmethod
    def pooled(cls, pool: SSHPool, target: SSHTarget, root: str, *, device: str | None = None) -> AgentClient:
        return cls(PoolChannel(pool, target), root, device=device)

    @property
    def launcher(self) -> str:
        return agent_launcher(self.root)

    def command(self, *args: str) -> str:
        return agent_command(self.root, *args)

    async def run(self, *args: str, timeout: float | None) -> AgentReply:
        """Run the agent's ARGS to their end; the reply, parsed (its errors are raised by the reply's readers)."""
        return AgentReply.of(await self.channel.run(self.command(*args), timeout=timeout), self.root, self.device)

    @asynccontextmanager
    async def stream(self, *args: str, shell: str | None = None) -> AsyncIterator[AgentStream]:
        """`async with client.stream("telemetry", "--interval", "1") as lines: async for line in lines: ...`;
        leaving the block stops the command on the device. `shell`: a prepared command line that runs the agent
        with these ARGS in it (e.g. only where it is installed, something else otherwise) in place of the plain
        one; ARGS then only name the command in errors."""
        async with self.channel.stream(shell if shell is not None else self.command(*args)) as lines:
            yield AgentStream(lines, args[0] if args else "agent", self.device)

    # -- typed calls ---------------------------------------------------------------------------------------

    async def status(self, step: str = "status", *, timeout: float | None = 120) -> AgentView:
        return AgentView.of((await self.run("status", timeout=timeout)).result(step))

    async def sample(self, step: str, *, interval: float = 0.5, timeout: float | None = 120) -> dict[str, Any]:
        """One telemetry sample, or {"error": why} (see AgentReply.sample)."""
        return (await self.run("telemetry", "--count", "1", "--interval", f"{interval:g}",
                               timeout=timeout)).sample(step)

    async def selftest(self, *, timeout: float | None) -> dict[str, Any]:
        """Prove the runtime: onnxruntime imports and a tiny model infers right (see AgentReply.selftest)."""
        return (await self.run("selftest", timeout=timeout)).selftest()

    async def bench(self, artifact: str, *, runs: int, providers: Sequence[str],
                    timeout: float | None) -> BenchResult:
        """Time an artifact (a sha256, an artifact folder, a folder of model files or an .onnx) on the device."""
        return (await self.run("bench", artifact, "--runs", str(runs), "--providers", ",".join(providers),
                               timeout=timeout)).bench()
