"""Timing model variants on real lab devices with `fleetdesk-agent bench`: ipc-01 (x86_64) and rpi4-01 (aarch64
under qemu), provisioned offline by FleetDesk itself. One device failing leaves the others' figures; the worker
thread's adapter reaches the loop; an import with device timing records each variant's on-device p50.
"""

from __future__ import annotations

import asyncio
import functools
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.fleet import Fleet
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.model_import import DeviceBench, bench_devices, bench_on_devices, import_model, model_files
from fleetdesk.profiles import load_profiles
from fleetdesk.runtime.agentfiles import agent_tree
from fleetdesk.runtime.provision import provision
from fleetdesk.runtime.store import RuntimeStore
from fleetdesk.runtime.wheelhouse import build_runtime
from tests.fixtures.models.build import save_cnn, save_mlp_external
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.laptop import LabLaptop

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

X86, ARM = "ipc-01", "rpi4-01"
# ipc-02, recorded with a runtime under a root that has no agent (nothing on the device is changed outside /tmp):
# its bench must fail alone.
BROKEN = "ipc-02"
BROKEN_ROOT = "/tmp/fleetdesk-bench-test/no agent's root"
PROFILES = load_profiles()
RUNS = 5  # timed inferences per device: qemu makes the arm64 board slow


@dataclass
class Laptop(LabLaptop):
    key: FleetSigningKey


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    """ipc-01 and rpi4-01 enrolled and provisioned (again: a device that has the runtime gets 0 bytes)."""
    data = tmp_path_factory.mktemp("bench-laptop")
    store = RuntimeStore(data / "runtimes")
    for profile in ("ipc-x86", "rpi4"):  # pip's cache answers after the first build
        asyncio.run(build_runtime(PROFILES.get(profile), store))
    laptop = Laptop(data, FleetSigningKey(data / "keys"))

    async def enrol(fleet_: Fleet) -> None:
        for name in (X86, ARM):
            device = fleet_.inventory.add_device(fleet.device(name)["address"], name=name)
            await fleet_.set_login(device, identity_file=fleet.state["ssh_key"])
            fleet_.trust_from_known_hosts(device, fleet.state["known_hosts"])
        outcomes = await fleet_.probe(fleet_.select([X86, ARM]))
        assert [o.status for o in outcomes] == ["succeeded", "succeeded"], [o.error for o in outcomes]
        # This module's laptop has its own fleet key; the devices still trust the one of the module before.
        provisioned = await provision(fleet_, fleet_.select([X86, ARM]), store=store, signing_key=laptop.key,
                                      agent=agent_tree(), replace_fleet_key=True)
        assert [o.status for o in provisioned] == ["succeeded", "succeeded"], [o.error for o in provisioned]

    laptop.with_fleet(enrol)
    yield laptop


def remote_listing(lab: LabFleet, name: str) -> str:
    result = lab.ssh(lab.device(name), "ls -A /opt/fleetdesk/tmp 2>/dev/null; true")
    return str(result.stdout)


def test_bench_times_the_model_on_each_device_and_cleans_up(fleet: LabFleet, laptop: Laptop, tmp_path: Path) -> None:
    model = save_cnn(tmp_path / "model.onnx")
    failures: dict[str, str] = {}

    async def work(fleet_: Fleet) -> dict[str, float]:
        return await bench_on_devices(fleet_, fleet_.select([X86, ARM]), tmp_path, model_files(model), runs=RUNS,
                                      failures=failures)

    timed = laptop.with_fleet(work)
    assert failures == {}
    assert set(timed) == {X86, ARM} and all(ms > 0 for ms in timed.values())
    for name in (X86, ARM):
        assert "bench-" not in remote_listing(fleet, name)  # the pushed copy was removed


def test_external_data_travels_and_one_failing_device_does_not_stop_the_others(fleet: LabFleet, laptop: Laptop,
                                                                              tmp_path: Path) -> None:
    model = save_mlp_external(tmp_path / "mlp.onnx")
    assert model_files(model) == ["mlp.onnx", "mlp.weights"]

    async def work(fleet_: Fleet) -> dict[str, float]:
        inventory = fleet_.inventory
        if not any(d.name == BROKEN for d in inventory.devices()):
            broken = inventory.add_device(fleet.device(BROKEN)["address"], name=BROKEN)
            await fleet_.set_login(broken, identity_file=fleet.state["ssh_key"])
            fleet_.trust_from_known_hosts(broken, fleet.state["known_hosts"])
            await fleet_.probe([inventory.device(BROKEN)])
            DeviceRuntimes(inventory).record(broken.id, runtime_id="none", agent_version="none",
                                             device_root=BROKEN_ROOT,
                                             onnxruntime="none", providers=["CPUExecutionProvider"], python="3.11")
        return await bench_on_devices(fleet_, fleet_.select([BROKEN, X86]), tmp_path, model_files(model), runs=RUNS,
                                      failures=failures)

    failures: dict[str, str] = {}
    timed = laptop.with_fleet(work)
    assert set(timed) == {X86} and timed[X86] > 0
    assert set(failures) == {BROKEN} and "fleetdesk-agent" in failures[BROKEN]
    result = fleet.ssh(fleet.device(BROKEN), shlex.join(["ls", "-A", f"{BROKEN_ROOT}/tmp"]))
    assert result.stdout.strip() == ""  # the failing device's copy was removed too
    fleet.ssh(fleet.device(BROKEN), shlex.join(["rm", "-rf", "/tmp/fleetdesk-bench-test"]))


def test_the_worker_thread_adapter_and_an_import_timed_on_the_device(laptop: Laptop, tmp_path: Path,
                                                                     keyring_daemon: KeyringDaemon) -> None:
    (tmp_path / "src").mkdir()
    model = save_cnn(tmp_path / "src" / "cnn.onnx")
    store = ArtifactStore(tmp_path / "store", laptop.key)

    async def work(fleet_: Fleet) -> Any:
        inventory = fleet_.inventory
        if any(d.name == BROKEN for d in inventory.devices()):
            inventory.set_online(inventory.device(BROKEN).id, False)
        devices = bench_devices(fleet_, ["ipc-x86"])
        assert [d.name for d in devices["ipc-x86"]] == [X86]  # online, with a runtime; never the offline one
        bench = DeviceBench(fleet_, devices, asyncio.get_running_loop(), runs=RUNS)
        loop = asyncio.get_running_loop()
        direct = await loop.run_in_executor(None, bench, PROFILES.get("ipc-x86"), model)
        record = await loop.run_in_executor(None, functools.partial(
            import_model, model, access=fleet_.access, name="cnn", profiles=["ipc-x86"], store=store,
            catalog=PROFILES,
            device_bench=bench))
        return direct, record, bench.failures

    direct, record, failures = laptop.with_fleet(work)
    assert set(direct) == {X86} and failures == {}
    result = record.report.profile("ipc-x86")
    timed = [v for v in result.variants if v.status != "failed"]
    assert timed and all(set(v.device_latency_ms) == {X86} for v in timed)
    assert all(r.ok for r in store.verify(record.ref))
