"""Streaming a long-running command's output, on both engines against the real sshd on 127.0.0.1:
lines as they come, the exit status after EOF, a lost connection, killing on close, no pool slot taken.
Then the telemetry hub over the same sshd: a stand-in agent, the agentless reader, reconnects."""

from __future__ import annotations

import asyncio
import logging
import shlex
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from fleetdesk.errors import UnreachableError
from fleetdesk.transport import SSHPool, SSHTarget
from fleetdesk.transport.session import MAX_LINE_BYTES, ConnectionLostError

Make = Callable[..., SSHTarget]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _wait_until(check: Callable[[], Coroutine[Any, Any, bool]], what: str, limit: float = 20.0) -> None:
    """Poll a condition (a bounded wait, not a timing claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        assert loop.time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.1)


def test_lines_arrive_in_order_and_the_exit_status_follows_eof(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool, pool.stream(make_target(), "printf 'one\\ntwo\\n'; printf 'no newline'; "
                                                                "exit 3") as lines:
            got = [line async for line in lines]
            assert got == ["one", "two", "no newline"]
            assert (lines.exit_status, lines.exit_signal) == (3, None)
    run(go())


def test_lines_come_as_they_are_written_not_at_the_end(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool, pool.stream(make_target(), "echo first; sleep 30; echo never") as lines:
            # The command is still sleeping: the first line must be readable now.
            assert await asyncio.wait_for(lines.__anext__(), 10) == "first"
    run(go())


def test_bytes_that_are_not_utf8_and_stderr_floods_do_not_stall_or_crash(make_target: Make) -> None:
    # 3 MB on stderr, more than the SSH window (2 MB): unread, it would stop stdout too.
    command = "head -c 3000000 /dev/zero >&2; printf 'ok\\377end\\n'; echo boom >&2; exit 1"

    async def go() -> None:
        async with SSHPool() as pool, pool.stream(make_target(), command) as lines:
            assert [line async for line in lines] == ["ok\ufffdend"]
            assert lines.exit_status == 1
            assert lines.stderr_tail.endswith("boom\n")
    run(go())


def test_a_line_without_end_is_cut_at_the_limit(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool, pool.stream(make_target(), f"head -c {MAX_LINE_BYTES + 10} /dev/zero "
                                                                "| tr '\\0' x; echo; echo after") as lines:
            got = [line async for line in lines]
            assert [len(x) for x in got] == [MAX_LINE_BYTES, 10, 5] and got[-1] == "after"
    run(go())


def test_leaving_the_block_kills_the_command_on_the_device(make_target: Make) -> None:
    marker = f"fleetdesk-stream-{uuid.uuid4().hex}"
    # The marker is in the command line of the loop's shell, so pgrep -f finds exactly it.
    command = f"sh -c {shlex.quote(f'while :; do echo {marker}; sleep 0.2; done')}"

    async def go() -> None:
        target = make_target()
        async with SSHPool() as pool:
            async with pool.stream(target, command) as lines:
                assert await lines.__anext__() == marker

            async def gone() -> bool:
                found = await pool.run(target, f"pgrep -f {shlex.quote('do echo ' + marker)}")
                return found.exit_status == 1

            await _wait_until(gone, "the streamed command to end")
    run(go())


def test_a_dropped_connection_raises_connection_lost_and_the_pool_reconnects(make_target: Make) -> None:
    async def go() -> None:
        target = make_target()
        async with SSHPool() as pool:
            with pytest.raises(ConnectionLostError) as caught:
                async with pool.stream(target, "while :; do echo tick; sleep 0.1; done") as lines:
                    async for line in lines:
                        assert line == "tick"
                        pool.abort(target)  # the cable is cut under the stream
            assert isinstance(caught.value, UnreachableError)
            assert caught.value.device == target.device and caught.value.step == "stream"
            async with pool.stream(target, "echo back") as lines:
                assert [line async for line in lines] == ["back"]
    run(go())


def test_streams_take_no_operation_slot(make_target: Make) -> None:
    async def go() -> None:
        target = make_target()
        async with SSHPool(max_operations=1) as pool:
            async with pool.stream(target, "while :; do echo a; sleep 0.2; done") as first, \
                    pool.stream(target, "while :; do echo b; sleep 0.2; done") as second:
                assert await first.__anext__() == "a" and await second.__anext__() == "b"
                result = await asyncio.wait_for(pool.run(target, "echo run"), 20)
                assert result.stdout == "run\n"
    run(go())


def test_a_command_killed_by_a_signal_reports_it(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool, pool.stream(make_target(), "echo x; kill -9 $$") as lines:
            assert [line async for line in lines] == ["x"]
            assert lines.exit_status is None and lines.exit_signal is not None
    run(go())



# -- the telemetry hub over the same sshd ---------------------------------------------------------------------

# A stand-in for the agent's `telemetry` command (the real agent runs in the lab test): the sample lines the
# agent prints, with the values made from the sequence number so the test can check they arrived unchanged.
STANDIN_AGENT = r"""#!/bin/sh
echo "$@" > "$(dirname "$0")/../args"
i=0
while :; do
  i=$((i + 1))
  {extra}
  printf '{"type":"sample","v":1,"t":%s,"seq":%d,"cpu":{"total":%d},"mem":{"total_mb":1000,"used_mb":250}}\n' \
    "$(date +%s)" "$i" "$((i % 100))"
  sleep 0.2
done
"""


class HubBench:
    """An inventory with one device (this test's sshd), a profile whose root is a temp folder, and a Fleet."""

    def __init__(self, tmp_path: Any, sshd: Any, transport: str) -> None:
        from fleetdesk.fleet import Fleet
        from fleetdesk.inventory import ProbeFacts, open_inventory
        from fleetdesk.profiles import ProfileSet
        from fleetdesk.profiles.schema import MatchRules, Profile

        self.root = tmp_path / "device root"  # a space: the root is quoted wherever it goes
        self.root.mkdir()
        profile = Profile(name="bench-box", display_name="Bench box", family="bench", arch="x86_64",
                          python="cp311", device_root=str(self.root), priority=0, match=MatchRules(),
                          execution_providers=(), wheels=(), ssh_ciphers=(), telemetry_sources=("procfs", "thermal"),
                          recipe=())
        inventory = open_inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
        device = inventory.add_device(sshd.host, port=sshd.port, name=f"bench-{transport}")
        inventory.set_connection(device.id, transport=transport, identity_file=sshd.client_key)
        inventory.pin_host_key(device.id, sshd.ed25519_line)
        self.device = inventory.save_probe(device.id, ProbeFacts(), profile="bench-box")
        (tmp_path / "ssh_config").write_text("")
        self.fleet = Fleet(inventory, ProfileSet(profiles={"bench-box": profile}),
                           ssh_config=tmp_path / "ssh_config")

    def install_agent(self, extra: str = "", script: str | None = None) -> None:
        path = self.root / "bin" / "fleetdesk-agent"
        path.parent.mkdir(exist_ok=True)
        path.write_text(script if script is not None else STANDIN_AGENT.replace("{extra}", extra or ":"))
        path.chmod(0o755)

    def hub(self, history: Any = None, **kw: Any) -> Any:
        from fleetdesk.telemetry.buffers import TelemetryStore
        from fleetdesk.telemetry.hub import TelemetryHub
        from fleetdesk.telemetry.stream import Backoff

        kw.setdefault("backoff", lambda: Backoff(first=0.1, cap=0.5))
        return TelemetryHub(self.fleet, TelemetryStore(), history, interval=0.2, **kw)


@pytest.fixture
def bench(tmp_path: Any, sshd: Any, transport: str) -> Any:
    return HubBench(tmp_path, sshd, transport)


async def _until(check: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    async def ok() -> bool:
        return check()
    await _wait_until(ok, what, limit)


def test_the_hub_streams_the_agent_into_the_store(bench: HubBench) -> None:
    bench.install_agent()

    async def go() -> None:
        hub = bench.hub()
        seen: list[str] = []
        hub.on_state = lambda s: seen.append(s.mode)
        hub.start([bench.device])
        buffer = lambda: hub.store.buffer(bench.device.id)  # noqa: E731
        await _until(lambda: buffer() is not None and len(buffer()) >= 3, "three samples")
        state = hub.state(bench.device.id)
        assert state.mode == "agent" and state.samples >= 3 and state.last_error is None
        latest = buffer().latest
        assert latest.mem_pct == 25.0 and latest.cpu_pct == float(latest.cpu_pct) and latest.cpu_pct >= 1
        await hub.close()
        assert hub.state(bench.device.id).mode == "stopped"
        assert seen[:2] == ["connecting", "agent"] and seen[-1] == "stopped"
        await bench.fleet.close()
        # The agent was asked for the profile's interval and sources.
        assert (bench.root / "args").read_text().split() == ["telemetry", "--interval", "0.2", "--sources",
                                                             "procfs,thermal"]
    run(go())


def test_without_an_agent_the_hub_reads_proc_agentless(bench: HubBench) -> None:
    with open("/proc/meminfo") as f:
        mem_total_kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal:")))
    with open("/proc/stat") as f:
        cores = sum(1 for line in f if line.startswith("cpu") and line[3].isdigit())

    async def go() -> None:
        hub = bench.hub()
        hub.start([bench.device])
        buffer = lambda: hub.store.buffer(bench.device.id)  # noqa: E731
        # Two frames at least: CPU % needs two readings of /proc/stat.
        await _until(lambda: buffer() is not None and buffer().latest.cpu_pct is not None, "a CPU figure")
        sample = buffer().latest
        assert hub.state(bench.device.id).mode == "agentless"
        assert sample.mem_total_mb == mem_total_kb // 1024
        assert 0 <= sample.cpu_pct <= 100 and len(sample.cpu_per_core) == cores
        assert sample.sources["mem"] == "agentless:/proc/meminfo" and sample.sources["cpu"] == "agentless:/proc/stat"
        assert hub.state(bench.device.id).bad_lines == 0
        await hub.close()
        await bench.fleet.close()
    run(go())


def test_an_agent_that_fails_is_reported_and_the_agentless_reader_takes_over(bench: HubBench) -> None:
    bench.install_agent(script="#!/bin/sh\necho '{\"type\":\"error\",\"code\":\"bad-arguments\",\"message\":"
                               "\"unknown telemetry source x\",\"fix\":\"name sources from: procfs\"}'\nexit 2\n")

    async def go() -> None:
        hub = bench.hub()
        errors: list[Any] = []
        hub.on_state = lambda s: errors.append(s.last_error) if s.mode == "reconnecting" else None
        hub.start([bench.device])
        await _until(lambda: hub.state(bench.device.id).mode == "agentless"
                     and hub.state(bench.device.id).samples > 0, "agentless samples")
        assert errors and "unknown telemetry source x" in errors[0].message
        assert errors[0].fix == "name sources from: procfs" and errors[0].device == bench.device.name
        await hub.close()
        await bench.fleet.close()
    run(go())


def test_lines_that_are_not_samples_are_counted_and_skipped(bench: HubBench) -> None:
    bench.install_agent(extra="echo 'not json'; echo '{\"type\":\"sample\"}'; echo '[1]'")

    async def go() -> None:
        hub = bench.hub()
        hub.start([bench.device])
        await _until(lambda: hub.state(bench.device.id).samples >= 2, "two samples")
        state = hub.state(bench.device.id)
        # Three bad lines per good one: not JSON, a sample without a time, not an object.
        assert state.bad_lines >= 3 * (state.samples - 1) and state.mode == "agent"
        await hub.close()
        await bench.fleet.close()
    run(go())


def test_a_dropped_connection_reconnects_and_the_incident_is_logged(bench: HubBench) -> None:
    from fleetdesk.telemetry.history import TelemetryHistory

    bench.install_agent()

    async def go() -> None:
        history = TelemetryHistory.open(bench.fleet.inventory, flush_every=0.2)
        hub = bench.hub(history)
        modes: list[str] = []
        hub.on_state = lambda s: modes.append(s.mode)
        hub.start([bench.device])
        await _until(lambda: hub.state(bench.device.id).samples >= 2, "samples")
        target = bench.fleet.reach(bench.device).target
        bench.fleet.pool.abort(target)
        await _until(lambda: "reconnecting" in modes, "the stream to notice")
        lost = hub.state(bench.device.id).samples
        await _until(lambda: hub.state(bench.device.id).samples >= lost + 3, "samples again")
        assert modes[-1] == "agent" and modes.count("agent") == 2
        await hub.close()
        await history.close()
        kinds = [(e.kind, e.message.split(":")[0]) for e in history.events(bench.device.id)]
        assert ("stream", "telemetry stream lost") in kinds and ("stream", "telemetry stream back (agent)") in kinds
        assert sum(m.samples for m in history.history(bench.device.id)) == hub.state(bench.device.id).samples
        await bench.fleet.close()
    run(go())


def test_a_silent_stream_is_taken_as_lost(bench: HubBench) -> None:
    # One sample, then silence with the connection up: what a cut cable looks like from here. The silence
    # ends by itself soon after the test (an abort does not signal the command on the device).
    bench.install_agent(script="#!/bin/sh\nprintf '{\"type\":\"sample\",\"t\":%s}\\n' \"$(date +%s)\"\nsleep 15\n")

    async def go() -> None:
        hub = bench.hub(stall_timeout=1.0)
        errors: list[Any] = []
        hub.on_state = lambda s: errors.append(s.last_error) if s.mode == "reconnecting" else None
        hub.start([bench.device])
        await _until(lambda: bool(errors), "the stall to be noticed")
        assert isinstance(errors[0], ConnectionLostError) and "no telemetry" in errors[0].message
        await hub.close()
        await bench.fleet.close()
    run(go())


def test_stopping_a_device_kills_its_command_and_keeps_its_buffer(bench: HubBench) -> None:
    bench.install_agent()
    # The stand-in's command line holds this test's own root folder: nothing else on the machine matches it.
    pattern = shlex.quote(f"{bench.root}/bin/fleetdesk-agent telemetry")

    async def go() -> None:
        hub = bench.hub()
        hub.start([bench.device])
        await _until(lambda: hub.state(bench.device.id).samples >= 1, "a sample")
        target = bench.fleet.reach(bench.device).target
        assert (await bench.fleet.pool.run(target, f"pgrep -f {pattern}")).exit_status == 0
        hub.stop([bench.device.id])
        await _until(lambda: hub.state(bench.device.id).mode == "stopped", "stopped")

        async def gone() -> bool:
            return (await bench.fleet.pool.run(target, f"pgrep -f {pattern}")).exit_status == 1

        await _wait_until(gone, "the agent to end on the device")
        assert hub.store.buffer(bench.device.id) is not None and hub.streaming() == []
        await hub.close()
        await bench.fleet.close()
    run(go())


# What a broken or hostile device may print: a terminal title change and a screen clear (escape sequences a
# terminal obeys), and a right-to-left override inside an agent event that turns "exe.png" into "gnp.exe".
HOSTILE_AGENT = r"""#!/bin/sh
printf 'junk \033]0;owned\007\033[2J\n'
printf '{"type":"event","what":"\342\200\256gnp.exe"}\n'
printf 'fatal \033[31mred\033[0m\n' >&2
exit 3
"""


def test_device_output_reaches_the_log_escaped_never_obeyed(bench: HubBench, caplog: pytest.LogCaptureFixture) -> None:
    bench.install_agent(script=HOSTILE_AGENT)
    caplog.set_level(logging.INFO, logger="fleetdesk.telemetry")

    async def go() -> None:
        hub = bench.hub()
        errors: list[Any] = []
        hub.on_state = lambda s: errors.append(s.last_error) if s.mode == "reconnecting" else None
        hub.start([bench.device])
        await _until(lambda: bool(errors) and hub.state(bench.device.id).bad_lines >= 1, "the agent to fail")
        await hub.close()
        await bench.fleet.close()
    run(go())
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fleetdesk.telemetry"))
    # Each of the three lines was logged, spelled out...
    assert "junk \\x1b]0;owned\\x07\\x1b[2J" in logged
    assert "\\u202egnp.exe" in logged
    assert "fatal \\x1b[31mred\\x1b[0m" in logged
    # ...and nothing a terminal would act on reached the log.
    assert not any(ch in logged for ch in "\x1b\x07\u202e")
