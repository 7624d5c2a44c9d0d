"""One device's telemetry channel: one streaming SSH command, the agent's when it is installed, else the
agentless reader; reconnected with exponential backoff for as long as it runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleetdesk.agent_client import AgentClient, AgentLine, AgentStream, agent_command, agent_launcher
from fleetdesk.errors import FleetDeskError, RemoteCommandError, TransportError
from fleetdesk.reach import DEFAULT_ROOT, DeviceReach
from fleetdesk.telemetry.agentless import AgentlessParser, agentless_command
from fleetdesk.text import visible_text
from fleetdesk.transport.pool import SSHPool
from fleetdesk.transport.session import ConnectionLostError
from fleetdesk.transport.shell import shell_quote

log = logging.getLogger(__name__)

MODES = ("connecting", "agent", "agentless", "reconnecting", "stopped")
# The first line the stream command prints says which reader runs; neither can start with it.
_MODE_LINE = "@fleetdesk-mode "
# After the agent failed to start (no samples, an error line), the agentless reader runs instead, and the
# agent is tried again at the first reconnect after this long.
AGENT_RETRY_AFTER = 600.0


@dataclass(frozen=True)
class StreamState:
    """Where one device's telemetry stream stands, as the GUI shows it."""

    device_id: int
    mode: str = "connecting"  # one of MODES
    retry_in: float | None = None  # seconds to the next attempt, while reconnecting
    last_error: FleetDeskError | None = None
    samples: int = 0  # samples received since the stream started
    bad_lines: int = 0  # lines that were not telemetry (counted and logged, never fatal)


class Backoff:
    """Exponential backoff with jitter: about 1, 2, 4 ... seconds, never above `cap`.

    Each delay is drawn from [d * (1 - jitter), d], so a fleet that lost its switch at once does not come
    back in one wave. `reset()` after a healthy stretch starts again from `first`.
    """

    def __init__(self, first: float = 1.0, cap: float = 30.0, *, factor: float = 2.0, jitter: float = 0.25,
                 rng: random.Random | None = None) -> None:
        if not 0 < first <= cap or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < first <= cap, factor >= 1 and 0 <= jitter < 1")
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self.attempts = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return delay * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0


def stream_command(root: str, interval: float, sources: Sequence[str] = (), *, agent: bool = True) -> str:
    """The one command the channel runs: the agent's telemetry if ROOT/bin/fleetdesk-agent is there, else the
    agentless loop. Its first line names the one that runs."""
    agentless = f"echo '{_MODE_LINE}agentless'; {agentless_command(root, interval)}"
    if not agent:
        return agentless
    argv = agent_command(root, "telemetry", "--interval", f"{interval:g}",
                         *(("--sources", ",".join(sources)) if sources else ()))
    launcher = shell_quote(agent_launcher(root))
    return f"if [ -x {launcher} ]; then echo '{_MODE_LINE}agent'; exec {argv}; else {agentless}; fi"


class DeviceStream:
    """Runs one device's channel until cancelled: connect, read lines, hand samples on, reconnect after backoff.

    `on_sample(obj)` gets each sample object (the agent's, or the agentless reader's of the same shape) and may
    raise ValueError for one it cannot use (counted as a bad line). `on_state` hears every change of mode.
    A channel that is silent for `stall_timeout` seconds is taken as lost (a cut cable sends no RST): the
    pooled connection is dropped so the next attempt opens a new one. `reach()` gives the device's handle (its
    SSH target and root), asked again at every connect: pinned keys and ~/.ssh/config may have changed.
    """

    HEALTHY_AFTER = 60.0  # seconds of samples after which the backoff starts from 1 s again

    def __init__(self, pool: SSHPool, device_id: int, name: str, reach: Callable[[], Awaitable[DeviceReach]], *,
                 on_sample: Callable[[dict[str, Any]], None], on_state: Callable[[StreamState], None],
                 sources: Sequence[str] = (), interval: float = 1.0,
                 stall_timeout: float | None = None, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.device_id = device_id
        self.name = name
        self.root = DEFAULT_ROOT  # the device's root as its handle says, read again at every connect
        self.sources = tuple(sources)
        self.interval = interval
        self.stall_timeout = stall_timeout if stall_timeout is not None else max(20.0, 5.0 * interval)
        self.backoff = backoff or Backoff()
        self._reach = reach
        self._on_sample = on_sample
        self._on_state = on_state
        self._clock = clock
        self._state = StreamState(device_id)
        self._agent_failed_at: float | None = None

    @property
    def state(self) -> StreamState:
        return self._state

    def _set(self, **changes: Any) -> None:
        before = self._state
        self._state = replace(before, **changes)
        if (before.mode, before.retry_in, before.last_error) != (self._state.mode, self._state.retry_in,
                                                                 self._state.last_error):
            self._on_state(self._state)

    async def run(self) -> None:
        self._on_state(self._state)
        try:
            while True:
                self._set(mode="connecting", retry_in=None)
                first_sample_at: list[float] = []
                try:
                    error = await self._once(first_sample_at)
                except FleetDeskError as exc:
                    error = exc
                except Exception as exc:  # a bug must not end a device's telemetry for the rest of the day
                    log.exception("%s: telemetry stream failed unexpectedly", visible_text(self.name))
                    error = TransportError(f"unexpected error in the telemetry stream: {exc!r}", device=self.name,
                                           step="stream", cause=exc)
                if first_sample_at and self._clock() - first_sample_at[0] >= self.HEALTHY_AFTER:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
                if error is not None:
                    # The error may quote the device's stderr: what reaches a terminal is never obeyed there.
                    log.info("%s: telemetry stream: %s; again in %.1f s", visible_text(self.name),
                             visible_text(str(error)), delay)
                self._set(mode="reconnecting", retry_in=delay, last_error=error)
                await asyncio.sleep(delay)
        finally:
            self._set(mode="stopped", retry_in=None)

    async def _once(self, first_sample_at: list[float]) -> FleetDeskError | None:
        """One connection's worth of streaming; returns why it ended (None: the command ended cleanly)."""
        reach = await self._reach()
        target, self.root = reach.target, reach.root
        use_agent = self._agent_failed_at is None or self._clock() - self._agent_failed_at >= AGENT_RETRY_AFTER
        command = stream_command(self.root, self.interval, self.sources, agent=use_agent)
        agentless: AgentlessParser | None = None
        mode: str | None = None
        agent_error: FleetDeskError | None = None
        samples_before = self._state.samples
        agent = AgentClient.pooled(self.pool, target, self.root, device=self.name)
        async with agent.stream("telemetry", shell=command) as lines:
            stream = lines.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.stall_timeout):
                        line = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    self.pool.abort(target)
                    raise ConnectionLostError(
                        f"no telemetry from {target.host} for {self.stall_timeout:g} s", device=self.name,
                        step="stream", fix="check the device and the network; FleetDesk keeps trying") from None
                if mode is None:
                    text = line.text
                    if text.startswith(_MODE_LINE) and text[len(_MODE_LINE):] in ("agent", "agentless"):
                        mode = text[len(_MODE_LINE):]
                        if mode == "agentless":
                            agentless = AgentlessParser(self.root, device=self.name)
                        self._set(mode=mode, retry_in=None)
                    else:
                        self._bad(text, "before the stream said which reader runs")
                    continue
                obj = agentless.feed(line.text) if agentless is not None else self._agent_line(line, lines)
                if agentless is not None:
                    self._set(bad_lines=self._state.bad_lines + agentless.bad_lines)
                    agentless.bad_lines = 0
                if isinstance(obj, FleetDeskError):
                    agent_error = obj
                elif obj is not None:
                    self._sample(obj, first_sample_at)
        got_samples = self._state.samples > samples_before
        if mode == "agent" and not got_samples:
            self._agent_failed_at = self._clock()  # the agent is there but does not stream: read agentless
        if agent_error is not None:
            return agent_error
        if lines.exit_status == 0:
            return None
        how = f"exit status {lines.exit_status}" if lines.exit_status is not None else f"signal {lines.exit_signal}"
        last = (lines.stderr_tail.strip().splitlines() or [""])[-1]
        return RemoteCommandError(f"the telemetry command ended with {how}" + (f" ({last[:200]})" if last else ""),
                                  exit_status=lines.exit_status, stderr=lines.stderr_tail, device=self.name,
                                  step="telemetry", fix="see the device's error output; FleetDesk keeps trying")

    def _agent_line(self, line: AgentLine, lines: AgentStream) -> dict[str, Any] | FleetDeskError | None:
        if line.data is None:
            self._bad(line.text, line.why)
            return None
        if line.kind == "sample":
            return line.data
        if line.kind == "error":
            return lines.error(line)
        if line.kind == "event":
            log.info("%s: agent event: %.200s", visible_text(self.name), visible_text(line.text))
        return None

    def _sample(self, obj: dict[str, Any], first_sample_at: list[float]) -> None:
        try:
            self._on_sample(obj)
        except ValueError as exc:
            self._bad(json.dumps(obj)[:200], str(exc))
            return
        if not first_sample_at:
            first_sample_at.append(self._clock())
        self._state = replace(self._state, samples=self._state.samples + 1)

    def _bad(self, line: str, why: str) -> None:
        log.info("%s: telemetry: %s: %.120s", visible_text(self.name), visible_text(why), visible_text(line))
        self._state = replace(self._state, bad_lines=self._state.bad_lines + 1)
