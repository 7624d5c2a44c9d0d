"""Live telemetry from the lab: agentless from a device without the agent, the real agent (pushed by the test) on
an x86 PC and on an arm64 Jetson under qemu, a cut link that reconnects, and the minute history in the inventory.

Only ipc-01, orin-01 and gpc-01 are used. The agent goes under a root of this test's own (the profile's layout,
another folder), so provisioning tests running against the same devices keep their /opt/fleetdesk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetdesk.fleet import Fleet as FleetDesk
from fleetdesk.inventory import ProbeFacts, open_inventory
from fleetdesk.inventory.records import Device
from fleetdesk.profiles import ProfileSet, load_profiles
from fleetdesk.telemetry.buffers import TelemetryStore
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.hub import TelemetryHub
from fleetdesk.telemetry.stream import Backoff
from fleetdesk.transport import shell_quote
from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab
T = TypeVar("T")

ROOT = "/opt/fleetdesk-telemetry-test"
AGENT_DIR = Path(__file__).resolve().parents[2] / "fleetdesk" / "agent"
DEVICES = ("ipc-01", "orin-01", "gpc-01")
# The wrapper as the device layout defines it: the runtime's venv python when there is one, else python3.
WRAPPER = f"""#!/bin/sh
ROOT={shell_quote(ROOT)}
PY=python3
if [ -x "$ROOT/runtimes/current/venv/bin/python" ]; then PY="$ROOT/runtimes/current/venv/bin/python"; fi
PYTHONPATH="$ROOT/agent/current" exec "$PY" -m fleetdesk_agent --root "$ROOT" "$@"
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _pinned(fleet: Fleet, address: str) -> list[str]:
    keys = []
    for line in Path(fleet.state["known_hosts"]).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and address in parts[0].split(","):
            keys.append(f"{parts[1]} {parts[2]}")
    return keys


class Bench:
    """An inventory holding the three lab devices (trusted, with their profiles), and what opens a FleetDesk
    Fleet on it whose profiles put the device root at ROOT."""

    def __init__(self, fleet: Fleet, home: Path) -> None:
        self.lab = fleet
        self.home = home
        self.db_url = f"sqlite:///{home / 'inventory.db'}"
        (home / "ssh_config").write_text("")
        shipped = load_profiles()
        self.profiles = ProfileSet({name: dataclasses.replace(p, device_root=ROOT)
                                    for name, p in shipped.profiles.items()})
        with open_inventory(self.db_url) as inventory:
            for name in DEVICES:
                lab_device = fleet.device(name)
                device = inventory.add_device(lab_device["address"], name=name)
                inventory.set_connection(device.id, identity_file=fleet.state["ssh_key"])
                for key in _pinned(fleet, lab_device["address"]):
                    inventory.pin_host_key(device.id, key, source="known_hosts")
                inventory.save_probe(device.id, ProbeFacts(arch=lab_device["arch"]), profile=lab_device["profile"])

    def open(self) -> FleetDesk:
        return FleetDesk(open_inventory(self.db_url), self.profiles, ssh_config=self.home / "ssh_config")


@pytest.fixture(scope="module")
def bench(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    bench = Bench(fleet, tmp_path_factory.mktemp("telemetry"))
    for name in DEVICES:
        result = fleet.ssh(fleet.device(name), f"rm -rf {shell_quote(ROOT)}")
        assert result.exit_status == 0, result.stderr

    async def install() -> None:
        async with bench.open() as desk:
            for name in ("ipc-01", "orin-01"):
                target = desk.reach(desk.inventory.device(name)).target
                for path in sorted(AGENT_DIR.glob("*.py")):
                    await desk.pool.push(target, path, f"{ROOT}/agent/dev/fleetdesk_agent/{path.name}")
                await desk.pool.run(target, (
                    f"mkdir -p {shell_quote(ROOT + '/bin')} && ln -sfn dev {shell_quote(ROOT + '/agent/current')} && "
                    f"printf %s {shell_quote(WRAPPER)} > {shell_quote(ROOT + '/bin/fleetdesk-agent')} && "
                    f"chmod 755 {shell_quote(ROOT + '/bin/fleetdesk-agent')}"), check=True)

    run(install())
    yield bench
    for name in DEVICES:
        fleet.ssh(fleet.device(name), f"rm -rf {shell_quote(ROOT)}")


async def _until(check: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    """Poll a condition (a bounded wait, not a timing claim: qemu makes the arm64 device slow)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        assert loop.time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.2)


def _device(desk: FleetDesk, name: str) -> Device:
    return desk.inventory.device(name)


def test_gpc01_without_the_agent_streams_agentless_and_its_memory_matches(bench: Bench, fleet: Fleet) -> None:
    meminfo = fleet.ssh(fleet.device("gpc-01"), "grep MemTotal /proc/meminfo").stdout
    total_mb = int(meminfo.split()[1]) // 1024
    cores = int(fleet.ssh(fleet.device("gpc-01"), "grep -c '^cpu[0-9]' /proc/stat").stdout)

    async def go() -> None:
        async with bench.open() as desk:
            gpc = _device(desk, "gpc-01")
            hub = TelemetryHub(desk, TelemetryStore())
            hub.start([gpc])
            buffer = lambda: hub.store.buffer(gpc.id)  # noqa: E731
            await _until(lambda: buffer() is not None and buffer().latest.cpu_pct is not None, "a CPU figure")
            sample = buffer().latest
            state = hub.state(gpc.id)
            await hub.close()
        assert state.mode == "agentless" and state.bad_lines == 0
        assert sample.mem_total_mb == total_mb
        assert sample.sources["mem"] == "agentless:/proc/meminfo"
        assert len(sample.cpu_per_core) == cores
        assert sample.temps and sample.disk_pct is not None
    run(go())


def test_the_agent_streams_from_an_x86_pc_and_an_arm64_jetson(bench: Bench, fleet: Fleet) -> None:
    async def go() -> None:
        async with bench.open() as desk:
            devices = [_device(desk, "ipc-01"), _device(desk, "orin-01")]
            hub = TelemetryHub(desk, TelemetryStore())
            hub.start(devices)

            def two_with_cpu(device: Device) -> bool:
                buffer = hub.store.buffer(device.id)
                return buffer is not None and len(buffer) >= 2 and buffer.latest.cpu_pct is not None

            await _until(lambda: all(two_with_cpu(d) for d in devices), "samples from both devices", 180)
            states = {d.name: hub.state(d.id) for d in devices}
            latest = {d.name: hub.store.buffer(d.id).latest for d in devices}
            await hub.close()
        for name in ("ipc-01", "orin-01"):
            assert states[name].mode == "agent" and states[name].last_error is None, states[name]
            assert states[name].bad_lines == 0
            assert latest[name].sources["cpu"] == "/proc/stat"  # the agent's own reading, not agentless
            assert latest[name].mem_total_mb is not None
        # The Jetson's profile names tegrastats: the GPU comes from the lab's tegrastats stand-in.
        orin = latest["orin-01"]
        assert orin.sources.get("gpu") == "tegrastats" and orin.gpu_pct is not None
        assert "cpu-thermal" in orin.temps
    run(go())


def test_a_cut_link_reconnects_and_the_minutes_are_stored(bench: Bench, fleet: Fleet) -> None:
    async def go() -> None:
        async with bench.open() as desk:
            ipc = _device(desk, "ipc-01")
            history = TelemetryHistory.open(desk.inventory, flush_every=1.0)
            hub = TelemetryHub(desk, TelemetryStore(), history, stall_timeout=5.0,
                               backoff=lambda: Backoff(first=0.5, cap=4.0))
            modes: list[str] = []
            hub.on_state = lambda s: modes.append(s.mode)
            hub.start([ipc])
            await _until(lambda: hub.state(ipc.id).samples >= 3, "samples before the cut")
            await asyncio.to_thread(fleet.fault, "ipc-01", "cut")
            try:
                await _until(lambda: hub.state(ipc.id).mode == "reconnecting", "the cut to be noticed")
                assert hub.state(ipc.id).last_error is not None
            finally:
                await asyncio.to_thread(fleet.fault, "ipc-01", "restore")
            before = hub.state(ipc.id).samples
            await _until(lambda: hub.state(ipc.id).mode == "agent" and hub.state(ipc.id).samples >= before + 3,
                         "samples after the link came back")
            total = hub.state(ipc.id).samples
            await hub.close()
            await history.close()
            minutes = history.history(ipc.id)
            events = [e.message for e in history.events(ipc.id)]
        assert modes.count("agent") >= 2 and "reconnecting" in modes
        assert sum(m.samples for m in minutes) == total and minutes[-1].avg["cpu_pct"] is not None
        assert any(m.startswith("telemetry stream lost: ") for m in events)
        assert "telemetry stream back (agent)" in events
    run(go())


def test_the_cli_prints_one_json_object_per_sample(bench: Bench, fleet: Fleet) -> None:
    env = dict(os.environ, HOME=str(bench.home), FLEETDESK_DB=bench.db_url)
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "--ssh-config", str(bench.home / "ssh_config"),
                           "telemetry", "gpc-01", "--seconds", "4", "--json"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) >= 2 and {line["device"] for line in lines} == {"gpc-01"}
    assert all(line["mode"] in ("agent", "agentless") and line["sample"]["mem_total_mb"] for line in lines)
