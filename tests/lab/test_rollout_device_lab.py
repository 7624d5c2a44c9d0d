"""A rollout's steps on real lab devices through DeviceOps and the agent: ipc-01 (x86_64) and rpi4-01 (aarch64
under qemu), provisioned by FleetDesk with this module's signing key. Staging sends an artifact once and then
nothing; a link cut mid-transfer resumes re-sending at most one block; a full disk fails with the space needed;
a tampered artifact is refused before activation, and a store copy damaged on the laptop before it is sent;
activate, measure, confirm, rollback; an activation nobody confirms is reverted by the device itself, and the
agent's view says so.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore, write_golden
from fleetdesk.errors import RolloutStepError, UnreachableError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.report import BASELINE, CHOSEN, OptimizationReport, ProfileResult, Tolerance, Variant
from fleetdesk.models.samples import GENERATED_SOURCE, generate_samples
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.gates import evaluate
from fleetdesk.rollout.policy import Gates
from fleetdesk.runtime.agentfiles import agent_tree
from fleetdesk.runtime.provision import provision
from fleetdesk.runtime.store import RuntimeStore
from fleetdesk.runtime.wheelhouse import build_runtime
from fleetdesk.transport.push import BLOCK_SIZE
from tests.fixtures.models.build import save_cnn, small_mlp
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

X86, ARM = "ipc-01", "rpi4-01"  # the dev lab's devices lent to these tests; no other device is touched
ROOT = "/opt/fleetdesk"
PROFILES = load_profiles()
GATES = Gates(p95_ms_max=10_000.0)  # every gate on; the absolute bound only has to be met by an emulated Pi


@dataclass
class Laptop:
    data_dir: Path
    key: FleetSigningKey
    store: ArtifactStore
    artifacts: dict[str, str]  # model name -> its artifact id

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'fleetdesk.db'}"

    def with_ops(self, work: Callable[[Fleet, DeviceOps], Coroutine[Any, Any, Any]]) -> Any:
        async def go() -> Any:
            fleet = Fleet(open_inventory(self.db_url), PROFILES)
            try:
                return await work(fleet, DeviceOps(fleet, self.store, bench_runs=5))
            finally:
                await fleet.close()

        return asyncio.run(go())


def store_model(store: ArtifactStore, path: Path, name: str) -> str:
    """Store a model as imported (its baseline artifact, chosen for both profiles) with golden outputs."""
    card = inspect_model(path, name=name)
    base = Variant(BASELINE, CHOSEN, "the model as imported", local_latency_ms=1.0)
    report = OptimizationReport(card.sha256, 4, True, GENERATED_SOURCE, Tolerance(), tuple(
        ProfileResult(p, ("graph",), (base,), BASELINE) for p in ("ipc-x86", "rpi4")))
    golden = write_golden(path, generate_samples(card, count=4).feeds, path.parent / "golden.npz")
    record = store.add_model(card, report, name=name, source_folder=path.parent, golden=golden)
    return record.baseline


def save_big_mlp(path: Path) -> Path:
    """About 13 MB of weights in an external file: a transfer long enough to cut in the middle."""
    onnx.save_model(small_mlp(hidden=40_000), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.weights", size_threshold=0)
    return path


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    """ipc-01 and rpi4-01 enrolled and provisioned with this laptop's fleet key; three models in its store."""
    data = tmp_path_factory.mktemp("rollout-laptop")
    runtimes = RuntimeStore(data / "runtimes")
    for profile in ("ipc-x86", "rpi4"):  # pip's cache answers after the first build
        asyncio.run(build_runtime(PROFILES.get(profile), runtimes))
    key = FleetSigningKey(data / "keys")
    store = ArtifactStore(data / "store", key)
    models = {}
    for name, seed in (("good", 0), ("good2", 1)):
        (data / name).mkdir()
        models[name] = store_model(store, save_cnn(data / name / f"{name}.onnx", seed=seed), name)
    (data / "big").mkdir()
    models["big"] = store_model(store, save_big_mlp(data / "big" / "big.onnx"), "big")
    laptop = Laptop(data, key, store, models)

    async def enrol(fleet_: Fleet, _ops: DeviceOps) -> None:
        for name in (X86, ARM):
            device = fleet_.inventory.add_device(fleet.device(name)["address"], name=name)
            await fleet_.set_login(device, identity_file=fleet.state["ssh_key"])
            fleet_.trust_from_known_hosts(device, fleet.state["known_hosts"])
        outcomes = await fleet_.probe(fleet_.select([X86, ARM]))
        assert [o.status for o in outcomes] == ["succeeded", "succeeded"], [o.error for o in outcomes]
        # This module's laptop has its own fleet key; the devices still trust the one of the module before.
        done = await provision(fleet_, fleet_.select([X86, ARM]), store=runtimes, signing_key=key, agent=agent_tree(),
                               replace_fleet_key=True)
        assert [o.status for o in done] == ["succeeded", "succeeded"], [o.error for o in done]

    laptop.with_ops(enrol)
    for name in (X86, ARM):  # start from devices that hold none of this module's artifacts and run no model
        on_device(fleet, name, f"rm -rf {ROOT}/artifacts {ROOT}/current {ROOT}/previous {ROOT}/state.json")
    yield laptop


def on_device(lab: LabFleet, name: str, command: str) -> str:
    result = lab.ssh(lab.device(name), command)
    assert result.exit_status == 0, f"{command}: {result.stderr}"
    return str(result.stdout)


def size_of(laptop: Laptop, artifact_id: str) -> int:
    folder = Path(laptop.store.artifact(artifact_id).folder)
    return sum(p.stat().st_size for p in folder.iterdir())


@pytest.mark.parametrize("name", [X86, ARM])
def test_staging_sends_the_artifact_once_verified_and_then_nothing(fleet: LabFleet, laptop: Laptop,
                                                                   name: str) -> None:
    good = laptop.artifacts["good"]
    seen: list[tuple[int, int]] = []

    async def work(fleet_: Fleet, ops: DeviceOps) -> Any:
        device = fleet_.inventory.device(name)
        first = await ops.stage(device, good, progress=lambda done, total: seen.append((done, total)))
        again = await ops.stage(device, good)
        return first, again, await ops.view(device)

    first, again, view = laptop.with_ops(work)
    total = size_of(laptop, good)
    assert (first.bytes_sent, first.bytes_total, first.already_there, first.files) == (total, total, False, 4)
    assert seen[-1] == (total, total) and all(d <= t for d, t in seen)
    assert (again.bytes_sent, again.already_there) == (0, True)
    assert good in view.artifacts and view.current is None  # staged, never switched
    listing = on_device(fleet, name, shlex.join(["ls", "-A", f"{ROOT}/artifacts/{good}"])).split()
    assert sorted(listing) == ["golden.npz", "good.onnx", "manifest.json", "manifest.json.sig"]


def test_a_cut_mid_transfer_is_unreachable_and_the_next_stage_resumes_resending_at_most_one_block(
        fleet: LabFleet, laptop: Laptop) -> None:
    big = laptop.artifacts["big"]
    total = size_of(laptop, big)
    cut_at: list[int] = []
    acknowledged: list[int] = []  # bytes the device had acknowledged, as progress reported them

    async def cut_midway(fleet_: Fleet, ops: DeviceOps) -> Any:
        device = fleet_.inventory.device(X86)

        def progress(done: int, _total: int) -> None:
            acknowledged.append(done)
            if not cut_at and done > total // 2:
                cut_at.append(done)
                fleet.fault(X86, "cut")
                # A cut link is noticed by SSH keepalives only after a while; drop the connection now instead.
                fleet_.pool.abort(fleet_.reach(device).target)

        with pytest.raises(UnreachableError) as lost:
            await ops.stage(device, big, progress=progress)
        return lost.value

    try:
        lost = laptop.with_ops(cut_midway)
    finally:
        fleet.fault(X86, "restore")
    assert cut_at and lost.device == X86

    async def resume(fleet_: Fleet, ops: DeviceOps) -> Any:
        return await ops.stage(fleet_.inventory.device(X86), big)

    resumed = laptop.with_ops(resume)
    assert not resumed.already_there
    # Bytes the device acknowledged before the cut and that were sent again. (Writes still in flight at the cut
    # that landed anyway are not re-sent either: the resumed push compares block hashes, so this can be < 0.)
    first = max(acknowledged)
    resent = first + resumed.bytes_sent - total
    print(f"\nresume after a cut at {cut_at[0]} of {total} bytes ({first} acknowledged): {resumed.bytes_sent} sent "
          f"on resume, {max(0, resent)} re-sent (block {BLOCK_SIZE})")
    assert resent <= BLOCK_SIZE
    assert on_device(fleet, X86, f"find {ROOT}/artifacts -name '*.fleetdesk-partial' | wc -l").strip() == "0"


def test_a_full_disk_fails_staging_with_the_space_needed_and_sends_nothing(fleet: LabFleet, laptop: Laptop) -> None:
    good2 = laptop.artifacts["good2"]
    on_device(fleet, X86, shlex.join(["rm", "-rf", f"{ROOT}/artifacts/{good2}"]))

    async def work(fleet_: Fleet, ops: DeviceOps) -> Any:
        with pytest.raises(RolloutStepError) as failed:
            await ops.stage(fleet_.inventory.device(X86), good2)
        return failed.value

    fleet.fault(X86, "fill-disk")
    try:
        error = laptop.with_ops(work)
    finally:
        fleet.fault(X86, "free-disk")
    assert (error.code, error.device, error.step) == ("disk-full", X86, "stage")
    assert f"{size_of(laptop, good2)} bytes needed" in error.message and " free" in error.message
    assert "free at least" in (error.fix or "") and X86 in (error.fix or "")
    assert on_device(fleet, X86, shlex.join(["ls", "-A", f"{ROOT}/artifacts"])).split().count(good2) == 0


def test_a_tampered_artifact_is_refused_before_activation_and_staging_again_repairs_it(
        fleet: LabFleet, laptop: Laptop) -> None:
    good = laptop.artifacts["good"]

    async def stage(fleet_: Fleet, ops: DeviceOps) -> Any:
        return await ops.stage(fleet_.inventory.device(X86), good)

    laptop.with_ops(stage)
    model = f"{ROOT}/artifacts/{good}/good.onnx"
    on_device(fleet, X86, f"printf X | dd of={shlex.quote(model)} bs=1 seek=100 conv=notrunc 2>/dev/null")

    async def activate(fleet_: Fleet, ops: DeviceOps) -> Any:
        device = fleet_.inventory.device(X86)
        before = await ops.view(device)
        with pytest.raises(RolloutStepError) as refused:
            await ops.activate(device, good, 60)
        return before, refused.value, await ops.view(device)

    before, refused, after = laptop.with_ops(activate)
    assert refused.code == "bad-artifact" and "'good.onnx'" in refused.message and refused.step == "activate"
    assert (after.current, after.pending) == (before.current, None)  # nothing switched
    repaired = laptop.with_ops(stage)
    assert not repaired.already_there and 0 < repaired.bytes_sent <= BLOCK_SIZE  # only the damaged block


def test_a_store_copy_damaged_on_the_laptop_is_refused_before_any_byte_is_sent(fleet: LabFleet,
                                                                             laptop: Laptop) -> None:
    (laptop.data_dir / "damaged").mkdir()
    damaged = store_model(laptop.store, save_cnn(laptop.data_dir / "damaged" / "damaged.onnx", seed=7), "damaged")
    model = Path(laptop.store.artifact(damaged).folder) / "damaged.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF  # one flipped byte: same size, another hash
    model.write_bytes(bytes(data))

    async def work(fleet_: Fleet, ops: DeviceOps) -> Any:
        with pytest.raises(RolloutStepError) as refused:
            await ops.stage(fleet_.inventory.device(X86), damaged)
        return refused.value

    refused = laptop.with_ops(work)
    assert (refused.code, refused.device, refused.step) == ("bad-artifact", X86, "stage")
    assert "'damaged.onnx'" in refused.message and "nothing of it was sent" in refused.message
    assert "fleetdesk model verify" in (refused.fix or "")
    listing = on_device(fleet, X86, shlex.join(["ls", "-A", f"{ROOT}/artifacts"])).split()
    assert damaged not in listing  # not even a folder or a partial file


@pytest.mark.parametrize("name", [X86, ARM])
def test_activate_measure_confirm_and_roll_back(fleet: LabFleet, laptop: Laptop, name: str) -> None:
    good, good2 = laptop.artifacts["good"], laptop.artifacts["good2"]

    async def work(fleet_: Fleet, ops: DeviceOps) -> Any:
        device = fleet_.inventory.device(name)
        for artifact in (good, good2):
            await ops.stage(device, artifact)
        steps: dict[str, Any] = {}
        answer = await ops.activate(device, good, 300)
        steps["first"] = answer, await ops.view(device)
        first = await ops.measure(device, good, GATES)
        await ops.confirm(device, good)
        steps["confirmed"] = await ops.view(device)
        baseline = await ops.baseline(device, good)
        answer = await ops.activate(device, good2, 300)
        steps["second"] = answer, await ops.view(device)
        second = await ops.measure(device, good2, GATES)
        await ops.confirm(device, good2)
        steps["confirmed2"] = await ops.view(device)
        steps["rollback"] = await ops.rollback(device)
        steps["rolled"] = await ops.view(device)
        return steps, first, baseline, second

    steps, first, baseline, second = laptop.with_ops(work)
    answer, view = steps["first"]
    assert answer["active"] == good and answer["serving"]["loaded"] is True  # the server loaded it before the answer
    assert view.current == good and view.pending["sha"] == good and view.serving_model == good
    result = evaluate(GATES, None, [first])  # first model on this device: there is no previous one to compare with
    assert (first.serving, first.model) == (True, good)
    assert first.golden_cosine is not None and first.golden_cosine > 0.9999
    assert first.temperature_c is not None and first.memory_free_pct is not None and first.p95_ms is not None
    assert not result.passed and "the p95 ratio cannot be computed" in result.reason
    assert steps["confirmed"].pending is None and steps["confirmed"].current == good
    assert baseline.model == good and baseline.p95_ms is not None
    answer, view = steps["second"]
    assert (answer["active"], answer["previous"], view.current, view.previous) == (good2, good, good2, good)
    result = evaluate(GATES, baseline, [second])
    assert set(result.values) == {"serving", "golden_cosine", "error_rate", "p95_ms", "p95_ratio", "temperature_c",
                                  "memory_free_pct"}
    assert result.values["serving"]["ok"] and result.values["golden_cosine"]["ok"]
    print(f"\n{name}: gates on the second model: {result.to_dict()}")
    assert (steps["confirmed2"].current, steps["confirmed2"].pending) == (good2, None)
    assert steps["rollback"]["active"] == good
    rolled = steps["rolled"]
    assert (rolled.current, rolled.previous, rolled.serving_model) == (good, good2, good)


def test_an_activation_nobody_confirms_is_reverted_by_the_device_and_the_view_says_so(
        fleet: LabFleet, laptop: Laptop) -> None:
    good, good2 = laptop.artifacts["good"], laptop.artifacts["good2"]

    async def work(fleet_: Fleet, ops: DeviceOps) -> Any:
        device = fleet_.inventory.device(X86)
        for artifact in (good, good2):
            await ops.stage(device, artifact)
        start = await ops.view(device)
        if start.current != good:
            await ops.activate(device, good, 300)
            await ops.confirm(device, good)
        await ops.activate(device, good2, 3)
        during = await ops.view(device)
        deadline = time.monotonic() + 60
        view = during
        while view.last_revert is None or view.last_revert.get("sha") != good2:
            assert time.monotonic() < deadline, view
            await asyncio.sleep(1)
            view = await ops.view(device)
        with pytest.raises(RolloutStepError) as late:
            await ops.confirm(device, good2)
        return during, view, late.value

    during, view, late = laptop.with_ops(work)
    assert during.current == good2 and during.pending is not None and during.pending["sha"] == good2
    assert (view.current, view.pending) == (good, None)
    assert view.last_revert["to"] == good and view.last_revert["reason"] == "not confirmed within 3 s"
    assert late.code == "deadline-passed"


def test_a_bandwidth_cap_paces_the_transfer_and_an_artifact_in_use_is_never_removed(
        fleet: LabFleet, laptop: Laptop) -> None:
    big, good = laptop.artifacts["big"], laptop.artifacts["good"]
    cap = 4_000_000  # bytes/s: about 3 s for the big artifact, where the lab's link moves it in a fraction of that

    async def work(fleet_: Fleet, ops: DeviceOps) -> Any:
        device = fleet_.inventory.device(X86)
        await ops.remove_artifact(device, big)
        gone = big not in (await ops.view(device)).artifacts
        paced = await ops.stage(device, big, bandwidth_bytes_s=cap)
        view = await ops.view(device)
        with pytest.raises(RolloutStepError) as in_use:
            await ops.remove_artifact(device, view.current or good)
        return gone, paced, in_use.value

    gone, paced, in_use = laptop.with_ops(work)
    total = size_of(laptop, big)
    assert gone and paced.bytes_sent == total and not paced.already_there
    print(f"\ncapped at {cap} B/s: {total} bytes in {paced.seconds:.2f} s ({total / paced.seconds:.0f} B/s)")
    assert paced.seconds >= total / cap  # the pacing's guarantee: never faster than the cap on average
    assert in_use.code == "in-use"
