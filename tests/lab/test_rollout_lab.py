"""Staged rollouts on real lab devices through the engine and `fleetdesk rollout`: ipc-02 (x86_64), orin-01
(arm64 under qemu, jetson-orin-nano profile) and gpc-01 (x86_64, ipc-x86-nvidia), provisioned by FleetDesk with
the test store's own key. A whole rollout in wave order; a model that does not load on the canary (paused, the
rest untouched); a failed latency gate (the canary rolled back); `rollout start` SIGKILLed mid-wave and resumed
(nothing half-switched, nothing finished sent again); the rollback of a whole rollout; the shadow step under live
load from a generator on the devices (a different network fails it on the canary before it ever answers, a re-quantized
copy of the running model passes it and is activated); input drift of the generator's requests raising the
laptop's drift alerts and clearing them.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetdesk.agent_client import AgentView
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore, write_golden, write_reference
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.report import (
    BASELINE,
    BASELINE_STATUS,
    CHOSEN,
    OptimizationReport,
    ProfileResult,
    Tolerance,
    Variant,
)
from fleetdesk.models.variants import quantize_int8_dynamic
from fleetdesk.profiles import ProfileSet, load_profiles
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.rollout.policy import Gates, ShadowPolicy, WavePolicy
from fleetdesk.runtime.agentfiles import agent_tree
from fleetdesk.runtime.provision import provision
from fleetdesk.runtime.store import RuntimeStore
from fleetdesk.runtime.wheelhouse import build_runtime
from fleetdesk.telemetry.alerts import DEFAULT_THRESHOLDS, AlertEvent, AlertMonitor
from fleetdesk.telemetry.buffers import TelemetryStore
from fleetdesk.telemetry.hub import TelemetryHub
from tests.fixtures.models.build import save_cnn
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.laptop import LabLaptop
from tests.lab.rollout_fixtures import device_shell, devices_in, rollout_audit

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

# R2's device tests use ipc-01 and rpi4-01; these three are this module's.
X86, ARM, GPU = "ipc-02", "orin-01", "gpc-01"
NAMES = (GPU, X86, ARM)  # by name: gpc-01 is the canary
# The lab's orin-01 is a Debian bookworm stand-in with Python 3.11 where a real JetPack has 3.10: the laptop
# here knows the jetson profile with the lab's Python, so the aarch64 CPU runtime provisions it.
_LOADED = load_profiles()
PROFILES = ProfileSet({**_LOADED.profiles, "jetson-orin-nano": replace(_LOADED.get("jetson-orin-nano"),
                                                                     python=_LOADED.get("rpi4").python)})
PROFILE_OF = {X86: "ipc-x86", ARM: "jetson-orin-nano", GPU: "ipc-x86-nvidia"}
# The test CNN runs in tens of microseconds, where a shared 2-core lab host makes the p95 ratio between two
# runs swing by 7x (seen: 0.024 ms before, 0.18 ms during the soak): the ratio gate is off here (its semantics
# are tested with the gates); the golden-output, serving, error-rate, temperature and memory gates stay on.
GATES = Gates(p95_ratio_max=None)
JOURNEY = [st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED, st.CONFIRMED]


@dataclass
class Laptop(LabLaptop):
    key: FleetSigningKey
    store: ArtifactStore
    models: dict[str, str] = field(default_factory=dict)  # ref -> the artifact every profile gets

    def fleet_profiles(self) -> ProfileSet:
        return PROFILES

    def engine(self, fleet: Fleet, events: list[RolloutEvent] | None = None) -> RolloutEngine:
        engine = RolloutEngine(fleet, self.store, on_event=None if events is None else events.append,
                               lock_dir=self.data_dir / "rollout-locks")
        engine.steps.soak_interval_s = 2.0
        return engine


def add_model(store: ArtifactStore, work: Path, name: str, seed: int, *, loadable: bool = True,
              requantized: bool = False, reference: bool = False) -> str:
    """A small CNN signed into the store with golden outputs; every profile gets the same artifact. With
    loadable=False the profiles' chosen variant is a validly signed file that is not ONNX: it fails to load. With
    requantized=True the network of that seed re-quantized (FleetDesk's INT8 dynamic recipe): other weights, answers
a little off (cosine about 0.99998 to the float model's) and the same top-1 (500 of 500 standard-normal images). With
    reference=True it carries input statistics of 16 standard-normal images, as an import with such samples writes
    them (the inputs LOAD_GENERATOR sends unless told to shift them)."""
    folder = work / f"{name}-src"
    folder.mkdir(parents=True)
    if requantized:
        (work / f"{name}-float").mkdir()
        float_model = save_cnn(work / f"{name}-float" / "model.onnx", seed=seed)
        quantize_int8_dynamic(float_model, folder)
        path = folder / "model.onnx"
    else:
        path = save_cnn(folder / "model.onnx", seed=seed)
    card = inspect_model(path, name=name)
    rng = np.random.default_rng(seed)
    feeds = [{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    golden = write_golden(path, feeds, work / f"{name}-golden.npz")
    base = Variant(BASELINE, CHOSEN if loadable else BASELINE_STATUS, "the model as imported")
    variants: tuple[Variant, ...] = (base,)
    chosen = BASELINE
    if not loadable:
        junk = work / f"{name}-junk"
        junk.mkdir()
        (junk / "model.onnx").write_bytes(b"this is not an ONNX model\n" * 64)
        variants = (base, Variant("graph", CHOSEN, "chosen for the test", ("model.onnx",), str(junk), 1664))
        chosen = "graph"
    report = OptimizationReport(card.sha256, len(feeds), False, "test feeds", Tolerance(), tuple(
        ProfileResult(profile, ("graph",), variants, chosen) for profile in sorted(set(PROFILE_OF.values()))))
    statistics = None
    if reference:
        samples = [{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(16)]
        statistics = write_reference(samples, work / f"{name}-input_reference.json")
    record = store.add_model(card, report, name=name, version="1", source_folder=folder, golden=golden,
                             reference=statistics)
    artifacts = {record.artifacts.get(p, record.baseline) for p in PROFILE_OF.values()}
    assert len(artifacts) == 1
    return artifacts.pop()


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    """The three devices enrolled, provisioned (runtime, agent, keys/fleet.pub of this store's key), and four
    models in the store: m1, m2, m3 (good) and broken (signed, but not ONNX)."""
    data = tmp_path_factory.mktemp("rollout-laptop")
    key = FleetSigningKey(data / "keys")
    laptop = Laptop(data, key, ArtifactStore(data / "artifacts", key))  # the default layout under data/
    work = tmp_path_factory.mktemp("rollout-models")
    for seed, name in enumerate(("m1", "m2", "m3"), start=1):
        laptop.models[f"{name}@1"] = add_model(laptop.store, work, name, seed)
    laptop.models["broken@1"] = add_model(laptop.store, work, "broken", 9, loadable=False)
    laptop.models["m1-int8@1"] = add_model(laptop.store, work, "m1-int8", 1, requantized=True)
    laptop.models["watched@1"] = add_model(laptop.store, work, "watched", 5, reference=True)
    runtimes = RuntimeStore(data / "runtimes")
    x86 = asyncio.run(build_runtime(PROFILES.get("ipc-x86"), runtimes))[0]
    arm = asyncio.run(build_runtime(PROFILES.get("rpi4"), runtimes))[0]  # CPU onnxruntime for aarch64

    async def enrol(fleet_: Fleet) -> None:
        for name in NAMES:
            device = fleet_.inventory.add_device(fleet.device(name)["address"], name=name)
            await fleet_.set_login(device, identity_file=fleet.state["ssh_key"])
            fleet_.trust_from_known_hosts(device, fleet.state["known_hosts"])
        outcomes = await fleet_.probe(fleet_.select(list(NAMES)))
        assert [o.status for o in outcomes] == ["succeeded"] * 3, [o.error for o in outcomes]
        assert {o.device.name: o.device.profile for o in outcomes} == PROFILE_OF
        for names, runtime in (([X86, GPU], x86), ([ARM], arm)):
            # This module's laptop has its own fleet key; the devices still trust the one of the module before.
            done = await provision(fleet_, fleet_.select(names), runtime.id, store=runtimes, signing_key=key,
                                   agent=agent_tree(), replace_fleet_key=True)
            assert [o.status for o in done] == ["succeeded"] * len(names), [o.error for o in done]

    laptop.with_fleet(enrol)
    yield laptop


@pytest.fixture(autouse=True)
def released(laptop: Laptop) -> Iterator[None]:
    """A test that fails halfway leaves its rollout active, and every later test would meet "already in rollout
    N": its rollout is marked aborted in the journal afterwards (devices are not touched: each test starts from
    what the agents say)."""
    yield

    async def release(fleet: Fleet) -> None:
        repo = laptop.engine(fleet, []).repo
        for row in repo.list(active_only=True):
            repo.set_status(row.id, "aborted", reason="left active by a failed test")

    laptop.with_fleet(release)


async def views(fleet: Fleet, store: ArtifactStore) -> dict[str, AgentView]:
    ops = DeviceOps(fleet, store)
    found = await asyncio.gather(*(ops.view(fleet.inventory.device(n)) for n in NAMES))
    return dict(zip(NAMES, found, strict=True))


def plan(model: str, **kwargs: Any) -> RolloutPlan:
    return RolloutPlan(model=model, devices=(), profiles=tuple(sorted(set(PROFILE_OF.values()))),
                       waves=kwargs.pop("waves", (1, "100%")), gates=kwargs.pop("gates", GATES), **kwargs)


def by_name(fleet: Fleet, engine: RolloutEngine, rid: int) -> dict[str, Any]:
    return {fleet.inventory.device(d.device_id).name: d for d in engine.repo.devices(rid)}


def events_of(engine: RolloutEngine, rid: int, device_id: int) -> list[str]:
    return [e.event for e in engine.repo.journal(rid, device_id=device_id)]


async def abort_to_free(engine: RolloutEngine, rid: int) -> None:
    """A paused test rollout would keep its devices from the next one."""
    if engine.repo.get(rid).status in ("paused", "waiting-approval", "running", "planned"):
        await engine.abort(rid)


def test_a_rollout_runs_wave_by_wave_to_done(laptop: Laptop) -> None:
    artifact = laptop.models["m1@1"]
    events: list[RolloutEvent] = []

    async def work(fleet: Fleet) -> None:
        engine = laptop.engine(fleet, events)
        rid = await engine.start(plan("m1@1", policy=WavePolicy(soak_s=3)))
        row = await engine.run(rid)
        assert row.status == "done", row.paused_reason
        rows = by_name(fleet, engine, rid)
        assert {n: r.state for n, r in rows.items()} == {n: st.DONE for n in NAMES}
        for name, r in rows.items():
            assert events_of(engine, rid, r.device_id) == JOURNEY, name
            assert r.gates["passed"] is True and r.gates["values"]["golden_cosine"]["value"] >= 0.99
        # Waves in order: the canary is confirmed before any device of wave 2 starts staging.
        journal = engine.repo.journal(rid)
        canary = rows[GPU].device_id
        confirmed = next(e.id for e in journal if e.device_id == canary and e.event == st.CONFIRMED)
        first_wave2 = min(e.id for e in journal if e.device_id in (rows[X86].device_id, rows[ARM].device_id))
        assert confirmed < first_wave2
        assert rows[GPU].wave == 0 and rows[X86].wave == rows[ARM].wave == 1
        now = await views(fleet, laptop.store)
        for name, view in now.items():
            assert (view.current, view.pending) == (artifact, None), name  # switched and confirmed
            assert view.serving_model == artifact
        # Transfer progress came with bytes/s; the audit trail has who started it.
        progress = [e for e in events if e.kind == "progress"]
        assert progress and all(e.bytes_total > 0 for e in progress)
        assert any(e.bytes_done == e.bytes_total and e.rate_bytes_s > 0 for e in progress)
        assert [(a.operator, a.action) for a in rollout_audit(engine, rid)] == [(engine.actor, "rollout.start")]

    laptop.with_fleet(work)


def test_a_model_that_fails_to_load_pauses_after_the_canary(laptop: Laptop) -> None:
    async def work(fleet: Fleet) -> None:
        before = await views(fleet, laptop.store)
        engine = laptop.engine(fleet)
        rid = await engine.start(plan("broken@1"))
        row = await engine.run(rid)
        assert row.status == "paused" and "1 of 1 device(s) in wave 1 failed" in row.paused_reason
        rows = by_name(fleet, engine, rid)
        assert rows[GPU].state == st.FAILED and "load" in rows[GPU].error
        assert events_of(engine, rid, rows[GPU].device_id) == [st.STAGE, st.STAGED_OK, st.ACTIVATE, st.STEP_FAILED]
        assert (rows[X86].state, rows[ARM].state) == (st.PENDING, st.PENDING)
        assert events_of(engine, rid, rows[X86].device_id) == events_of(engine, rid, rows[ARM].device_id) == []
        after = await views(fleet, laptop.store)
        for name in NAMES:
            assert (after[name].current, after[name].pending) == (before[name].current, None), name
        assert laptop.models["broken@1"] not in after[X86].artifacts  # never even staged there
        await abort_to_free(engine, rid)

    laptop.with_fleet(work)


def test_a_failed_latency_gate_rolls_the_canary_back_and_pauses(laptop: Laptop) -> None:
    async def work(fleet: Fleet) -> None:
        before = await views(fleet, laptop.store)
        engine = laptop.engine(fleet)
        rid = await engine.start(plan("m2@1", gates=replace(GATES, p95_ms_max=0.0001)))
        row = await engine.run(rid)
        assert row.status == "paused", row
        rows = by_name(fleet, engine, rid)
        canary = rows[GPU]
        assert canary.state == st.ROLLED_BACK and "p95 latency" in canary.error
        assert events_of(engine, rid, canary.device_id) == [st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED,
                                                           st.GATES_FAILED, st.ROLLED_BACK_OK]
        assert canary.gates["values"]["p95_ms"]["ok"] is False and canary.gates["values"]["p95_ms"]["bound"] == 0.0001
        assert canary.previous_artifact == before[GPU].current
        after = await views(fleet, laptop.store)
        assert (after[GPU].current, after[GPU].pending) == (before[GPU].current, None)
        assert (rows[X86].state, rows[ARM].state) == (st.PENDING, st.PENDING)
        await abort_to_free(engine, rid)
        assert engine.repo.get(rid).status == "aborted"
        assert {r.state for r in engine.repo.devices(rid)} == {st.ROLLED_BACK, st.SKIPPED}

    laptop.with_fleet(work)


# Runs on a device (its python3, standard library only): POSTs random 1x3x32x32 images to the model server, as a
# camera's client would, until the shadow it saw running has stopped (so that no request meets the activation
# after it), argv[2] seconds passed, or the test asks it to stop (ROOT/run/loadgen.stop). The pixels are normal
# with standard deviation 1 around the mean in ROOT/run/loadgen.mean (0 without it), read before every batch.
LOAD_GENERATOR = r"""
import base64, http.client, json, os, random, struct, sys, time
root, until = sys.argv[1], time.time() + float(sys.argv[2])
seen = False
while time.time() < until and not os.path.exists(os.path.join(root, "run", "loadgen.stop")):
    try:
        with open(os.path.join(root, "run", "serve-address.json")) as f:
            address = json.load(f)
        host = "127.0.0.1" if address["host"] in ("", "0.0.0.0", "::") else address["host"]
        conn = http.client.HTTPConnection(host, int(address["port"]), timeout=10)
        try:
            with open(os.path.join(root, "run", "loadgen.mean")) as f:
                mean = float(f.read())
        except (OSError, ValueError):
            mean = 0.0
        for _ in range(10):
            data = struct.pack("<3072f", *(random.gauss(mean, 1) for _ in range(3072)))
            body = {"inputs": {"image": {"dtype": "float32", "shape": [1, 3, 32, 32],
                                         "data_b64": base64.b64encode(data).decode()}}}
            conn.request("POST", "/v1/infer", json.dumps(body), {"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.request("GET", "/v1/health")
        shadow = json.loads(conn.getresponse().read()).get("shadow") or {}
        conn.close()
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        time.sleep(0.2)
        continue
    running = shadow.get("state") == "running"
    if seen and not running:
        break
    seen = seen or running
"""


def load_generator(lab: LabFleet, name: str, seconds: float) -> None:
    """Start LOAD_GENERATOR on the device, detached from the SSH session that starts it."""
    # `;`, not `&&`: the `&` would background the whole list, whose output is the SSH channel, and ssh would wait.
    device_shell(lab, name, "rm -f /opt/fleetdesk/run/loadgen.stop /opt/fleetdesk/run/loadgen.mean; "
                            "setsid nohup python3 -c "
                            f"{shlex.quote(LOAD_GENERATOR)} /opt/fleetdesk {seconds:g} </dev/null >/dev/null 2>&1 &")


def stop_load(lab: LabFleet, *names: str) -> None:
    """Every load generator on these devices stops after its current batch (at most a few seconds)."""
    for name in names:
        device_shell(lab, name, "mkdir -p /opt/fleetdesk/run && touch /opt/fleetdesk/run/loadgen.stop")
    time.sleep(3.0)


def test_the_shadow_step_fails_a_different_network_before_it_answers_and_passes_the_same_one(
        fleet: LabFleet, laptop: Laptop) -> None:
    running, different, same = (laptop.models[m] for m in ("m1@1", "m2@1", "m1-int8@1"))
    shadow = ShadowPolicy(share=0.5, min_requests=30, min_agreement=0.98, max_wait_s=90,
                          p95_ratio_max=None)  # the lab's shared cores make sub-millisecond ratios noise

    def shadow_plan(model: str, **kwargs: Any) -> RolloutPlan:
        return RolloutPlan(model=model, devices=tuple(ids.values()), waves=(1, "100%"), gates=GATES,
                           step_timeout_s=180.0, **kwargs)

    ids: dict[str, int] = {}

    async def work(fleet_: Fleet) -> None:
        ids.update({n: fleet_.inventory.device(n).id for n in (GPU, X86)})  # gpc-01 first by name: the canary
        events: list[RolloutEvent] = []
        engine = laptop.engine(fleet_, events)
        # Both devices run m1 first (whatever the tests before left on them): the model the candidates shadow.
        rid = await engine.start(shadow_plan("m1@1"))
        assert (await engine.run(rid)).status == "done"
        for name in (GPU, X86):
            load_generator(fleet, name, 150)

        rid = await engine.start(shadow_plan("m2@1", shadow=shadow))
        row = await engine.run(rid)
        assert row.status == "paused" and "1 of 1 device(s) in wave 1 failed" in row.paused_reason
        rows = by_name(fleet_, engine, rid)
        canary = rows[GPU]
        assert canary.state == st.FAILED and canary.error.startswith("shadow: the candidate's top-1 agreement")
        assert events_of(engine, rid, canary.device_id) == [st.STAGE, st.STAGED_OK, st.SHADOW, st.SHADOW_FAILED]
        verdict = canary.gates["shadow"]
        assert verdict["passed"] is False and verdict["values"]["shadow_agreement"]["value"] < 0.98
        assert verdict["values"]["shadow_requests"]["value"] >= 30
        figures = verdict["figures"]
        assert (figures["candidate"], figures["active"]) == (different, running)
        assert figures["compared"] >= 30 and figures["failed"] == 0
        assert figures["outputs"]["logits"]["cosine"]["count"] == figures["compared"]
        # The journal holds the same figures; the device never switched and holds no candidate in memory.
        failed = engine.repo.journal(rid, device_id=canary.device_id)[-1]
        assert failed.detail["figures"]["compared"] == figures["compared"] and failed.detail["judged"] is True
        # While it ran, the engine's events carried its figures (what the Rollouts tab plots live).
        live = [e.figures for e in events if e.rollout_id == rid and e.device_id == canary.device_id and e.figures]
        compared = [f["compared"] for f in live]
        assert live and compared == sorted(compared) and compared[-1] <= figures["compared"], live
        assert any(f["agreement"] is not None for f in live), live
        now = await views(fleet_, laptop.store)
        assert (now[GPU].current, now[GPU].pending, now[GPU].serving_model) == (running, None, running)
        assert (await DeviceOps(fleet_, laptop.store).shadow_status(fleet_.inventory.device(GPU)))["state"] == "stopped"
        assert rows[X86].state == st.PENDING and now[X86].current == running
        await abort_to_free(engine, rid)

        # The same network re-quantized passes the canary's shadow and is activated; wave 2 does not shadow.
        load_generator(fleet, GPU, 150)
        rid = await engine.start(shadow_plan("m1-int8@1", shadow=replace(shadow, waves="canary")))
        row = await engine.run(rid)
        assert row.status == "done", row.paused_reason
        rows = by_name(fleet_, engine, rid)
        assert events_of(engine, rid, rows[GPU].device_id) == [st.STAGE, st.STAGED_OK, st.SHADOW, st.SHADOW_PASSED,
                                                              *JOURNEY[2:]]
        assert events_of(engine, rid, rows[X86].device_id) == JOURNEY
        passed = rows[GPU].gates["shadow"]
        assert passed["passed"] is True and passed["values"]["shadow_agreement"]["value"] >= 0.98, passed
        assert rows[GPU].gates["values"]["golden_cosine"]["ok"]  # the health gates ran after it, as always
        now = await views(fleet_, laptop.store)
        assert now[GPU].current == now[X86].current == same

    try:
        laptop.with_fleet(work)
    finally:
        stop_load(fleet, GPU, X86)


def test_a_device_without_memory_for_the_candidate_skips_the_shadow_as_the_plan_says(fleet: LabFleet,
                                                                                     laptop: Laptop) -> None:
    # The canary's profile asks for more free memory beside a candidate than any device has: its server answers 507.
    greedy = ProfileSet({**PROFILES.profiles, PROFILE_OF[GPU]: replace(PROFILES.get(PROFILE_OF[GPU]),
                                                                     shadow_margin_mb=10_000_000)})

    async def work() -> None:
        fleet_ = Fleet(open_inventory(laptop.db_url), greedy)
        try:
            stop_load(fleet, GPU, X86)  # no request reaches these devices in this test
            ids = tuple(fleet_.inventory.device(n).id for n in (GPU, X86))
            engine = laptop.engine(fleet_)
            # Both devices run m1 first (whatever the tests before left on them): the model a candidate shadows.
            rid = await engine.start(RolloutPlan(model="m1@1", devices=ids, waves=("100%",), gates=GATES,
                                                 step_timeout_s=180.0))
            assert (await engine.run(rid)).status == "done"
            before = (await views(fleet_, laptop.store))[GPU].current
            shadow = ShadowPolicy(min_requests=5, max_wait_s=8, on_skip="fail")
            rid = await engine.start(RolloutPlan(model="m3@1", devices=ids, waves=(1, "100%"), gates=GATES,
                                                 step_timeout_s=180.0, shadow=shadow))
            row = await engine.run(rid)
            assert row.status == "paused"
            canary = by_name(fleet_, engine, rid)[GPU]
            assert canary.state == st.FAILED and "under the margin of 10000000 MiB" in canary.error
            assert events_of(engine, rid, canary.device_id) == [st.STAGE, st.STAGED_OK, st.SHADOW, st.SHADOW_FAILED]
            skipped = canary.gates["shadow"]
            assert skipped["code"] == "low-memory" and skipped["values"]["shadow_skipped"]["ok"] is False
            assert (await views(fleet_, laptop.store))[GPU].current == before
            # Not a verdict on the candidate: resuming (memory freed, say) tries the device again.
            await engine.resume(rid)
            assert by_name(fleet_, engine, rid)[GPU].state == st.PENDING
            await engine.abort(rid)

            x86_before = (await views(fleet_, laptop.store))[X86].current
            rid = await engine.start(RolloutPlan(model="m3@1", devices=ids, waves=(1, "100%"), gates=GATES,
                                                 step_timeout_s=180.0, shadow=replace(shadow, on_skip="pass")))
            row = await engine.run(rid)
            rows = by_name(fleet_, engine, rid)
            assert rows[GPU].state == st.DONE, rows[GPU].error
            assert events_of(engine, rid, rows[GPU].device_id) == [st.STAGE, st.STAGED_OK, st.SHADOW,
                                                                  st.SHADOW_PASSED, *JOURNEY[2:]]
            passed = rows[GPU].gates["shadow"]
            assert passed["passed"] is True and "10000000 MiB" in passed["skipped"]
            # Wave 2's device has the shipped profile and the memory, but no request comes to it: the time bound
            # ends its shadow with too few requests, and it keeps its model.
            assert row.status == "paused" and "1 of 1 device(s) in wave 2 failed" in row.paused_reason
            assert rows[X86].state == st.FAILED and "only 0 mirrored request(s) were compared in" in rows[X86].error
            assert (await views(fleet_, laptop.store))[X86].current == x86_before
            await abort_to_free(engine, rid)
        finally:
            await fleet_.close()

    asyncio.run(work())


def test_sigkill_mid_wave_then_resume(laptop: Laptop, tmp_path: Path) -> None:
    """`fleetdesk rollout start` is SIGKILLed while wave 2 verifies; recover + run finish it: no device is left
    half-switched and nothing already on a device is sent again."""
    artifact = laptop.models["m2@1"]
    env = dict(os.environ, FLEETDESK_DATA_DIR=str(laptop.data_dir), FLEETDESK_CONFIG_DIR=str(tmp_path / "config"))
    argv = [sys.executable, "-m", "fleetdesk", "--db", laptop.db_url, "rollout", "start", "m2@1",
            *[a for p in sorted(set(PROFILE_OF.values())) for a in ("--profile", p)], "--waves", "1,100%",
            "--soak", "20", "--p95-ratio", "-1"]
    log = open(tmp_path / "start.log", "wb")  # the child writes to it; closed below
    child = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    db = laptop.data_dir / "fleetdesk.db"
    killed_in: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and child.poll() is None:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
                rows = con.execute("SELECT d.device_id, d.wave, d.state FROM rollout_devices d JOIN rollouts r "
                                   "ON r.id = d.rollout_id WHERE r.model_ref = 'm2@1' AND r.status = 'running'"
                                   ).fetchall()
            if any(wave == 1 and state == st.VERIFYING for _, wave, state in rows):
                os.kill(child.pid, signal.SIGKILL)
                killed_in = {device_id: state for device_id, _, state in rows}
                break
            time.sleep(0.5)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        log.close()
    assert killed_in, (tmp_path / "start.log").read_text()[-3000:]

    async def work(fleet: Fleet) -> None:
        engine = laptop.engine(fleet)
        (rid,) = [r.id for r in engine.repo.list(active_only=True) if r.model_ref == "m2@1"]
        before = {d.device_id: d for d in engine.repo.devices(rid)}
        assert engine.repo.get(rid).status == "running"  # as the killed process left it
        assert await engine.recover() == [rid]
        row = await engine.run(rid)
        assert row.status == "done", row.paused_reason
        after = {d.device_id: d for d in engine.repo.devices(rid)}
        for device_id, d in after.items():
            journal = engine.repo.journal(rid, device_id=device_id)
            assert d.state == st.DONE
            # One staging per device: whatever was verified on a device before the kill was not sent again.
            assert [e.event for e in journal].count(st.STAGED_OK) == 1
            if before[device_id].state not in (st.PENDING, st.STAGING):
                assert d.bytes_sent == before[device_id].bytes_sent
        now = await views(fleet, laptop.store)
        for name, view in now.items():
            assert (view.current, view.pending) == (artifact, None), name
        # The devices killed mid-verification were reconciled through the journal, not re-activated blindly.
        mid = [i for i, s in killed_in.items() if s == st.VERIFYING]
        for device_id in mid:
            events = [e.event for e in engine.repo.journal(rid, device_id=device_id)]
            assert events.count(st.ACTIVATE) == 1 and events[-2:] == [st.PASSED, st.CONFIRMED]

    laptop.with_fleet(work)


def test_rollback_of_a_whole_rollout(laptop: Laptop) -> None:
    async def work(fleet: Fleet) -> None:
        before = await views(fleet, laptop.store)
        engine = laptop.engine(fleet)
        rid = await engine.start(plan("m3@1", waves=("100%",)))
        assert (await engine.run(rid)).status == "done"
        switched = await views(fleet, laptop.store)
        assert {v.current for v in switched.values()} == {laptop.models["m3@1"]}
        row = await engine.rollback(rid)
        assert row.status == "rolled-back"
        rows = by_name(fleet, engine, rid)
        after = await views(fleet, laptop.store)
        for name in NAMES:
            assert rows[name].state == st.ROLLED_BACK
            assert events_of(engine, rid, rows[name].device_id)[-2:] == [st.ROLLBACK, st.ROLLED_BACK_OK]
            assert (after[name].current, after[name].pending) == (before[name].current, None), name
        audit = rollout_audit(engine, rid)
        assert (audit[0].action, audit[0].outcome) == ("rollout.rollback", "ok")
        assert set(devices_in(audit[0])) == {r.device_id for r in rows.values()}
        # Rolling back again changes nothing on the devices (it never swaps them forward).
        again = await engine.rollback(rid)
        assert again.status == "rolled-back"
        assert {n: v.current for n, v in (await views(fleet, laptop.store)).items()} == \
            {n: v.current for n, v in after.items()}

    laptop.with_fleet(work)


def test_inputs_moved_two_reference_deviations_raise_the_drift_alert_and_it_clears_when_they_return(
        fleet: LabFleet, laptop: Laptop) -> None:
    """ipc-02 runs a model that carries its samples' input statistics and serves a generator's requests; the laptop
    streams its telemetry and judges it with the default drift alerts, as the window does. Inputs like the samples
    raise nothing; their mean moved by 2 reference standard deviations raises both drift alerts within the
    device's window (512 sampled requests) and the 30 s hold; back to the samples' mean, both clear."""
    drift_rules = [t for t in DEFAULT_THRESHOLDS if t.metric.startswith("drift_")]
    seen: list[tuple[float, float | None, float | None]] = []  # (time, PSI, shift) of each sample

    async def work(fleet_: Fleet) -> dict[str, Any]:
        device = fleet_.inventory.device(X86)
        engine = laptop.engine(fleet_)
        rid = await engine.start(RolloutPlan(model="watched@1", devices=(device.id,), waves=("100%",), gates=GATES))
        assert (await engine.run(rid)).status == "done"
        load_generator(fleet, X86, 600)
        monitor = AlertMonitor(drift_rules)
        hub = TelemetryHub(fleet_, TelemetryStore())
        events: list[AlertEvent] = []
        last = [0.0]

        def judge() -> None:
            buffer = hub.store.buffer(device.id)
            sample = buffer.latest if buffer is not None else None
            if sample is not None and sample.t > last[0]:
                last[0] = sample.t
                seen.append((time.monotonic(), sample.drift_psi, sample.drift_shift_sd))
                events.extend(monitor.check(device.id, sample))

        async def until(predicate: Any, what: str, timeout: float) -> float:
            start = time.monotonic()
            while not predicate():
                assert time.monotonic() - start < timeout, f"{what} within {timeout:g} s; seen: {seen[-20:]}"
                await asyncio.sleep(0.5)
                judge()
            return time.monotonic() - start

        hub.start([device])
        try:
            # The samples' inputs: the window fills (20 sampled requests a second at most) and scores stay low.
            await until(lambda: len(seen) >= 40 and seen[-1][1] is not None, "drift scored on the samples' inputs",
                        120)
            calm = [psi for _, psi, _ in seen[-10:] if psi is not None]
            assert calm and max(calm) < 0.1 and not events, (calm, events)
            device_shell(fleet, X86, "echo 2.0 > /opt/fleetdesk/run/loadgen.mean")
            raised = await until(lambda: {e.metric for e in events if e.kind == "raised"} == {
                "drift_psi", "drift_shift_sd"}, "both drift alerts raised", 180)
            device_shell(fleet, X86, "echo 0 > /opt/fleetdesk/run/loadgen.mean")
            cleared = await until(lambda: {e.metric for e in events if e.kind == "cleared"} == {
                "drift_psi", "drift_shift_sd"}, "both drift alerts cleared", 180)
        finally:
            await hub.close()
        return {"raised_s": raised, "cleared_s": cleared, "events": events}

    try:
        found = laptop.with_fleet(work)
    finally:
        stop_load(fleet, X86)
    peak = max(shift for _, _, shift in seen if shift is not None)
    assert 1.5 < peak < 2.5, peak  # the device measured the move the generator made
    print(f"\ndrift: raised {found['raised_s']:.0f} s after the inputs moved by 2 std (peak shift {peak:.2f}), "
          f"cleared {found['cleared_s']:.0f} s after they returned")
