"""Shared pieces for the rollout lab tests: a laptop (data folder, signing key, artifact store), models signed into
its store with golden outputs, and lab devices enrolled and provisioned with that store's key (runtime, agent,
keys/fleet.pub), so the agents accept the store's artifacts.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from fleetdesk.agent_client import AgentView
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore, write_golden
from fleetdesk.fleet import Fleet
from fleetdesk.inventory.audit import AuditEntry, AuditFilter
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.report import BASELINE, CHOSEN, OptimizationReport, ProfileResult, Tolerance, Variant
from fleetdesk.models.samples import GENERATED_SOURCE, generate_samples
from fleetdesk.profiles import ProfileSet
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.engine import RolloutEngine, RolloutEvent
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.rollout.policy import Gates
from fleetdesk.runtime.agentfiles import agent_tree
from fleetdesk.runtime.provision import provision
from fleetdesk.runtime.store import RuntimeStore
from fleetdesk.runtime.wheelhouse import build_runtime
from tests.fixtures.models.build import save_cnn, small_mlp
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.laptop import LabLaptop


@dataclass
class Laptop(LabLaptop):
    key: FleetSigningKey
    store: ArtifactStore
    profiles: ProfileSet
    models: dict[str, str] = field(default_factory=dict)  # "name@version" -> the artifact every profile gets

    def fleet_profiles(self) -> ProfileSet:
        return self.profiles

    def engine(self, fleet: Fleet, events: list[RolloutEvent] | Callable[[RolloutEvent], None] | None = None, *,
               bench_runs: int = 5) -> RolloutEngine:
        on_event = events.append if isinstance(events, list) else events
        return RolloutEngine(fleet, self.store, ops=DeviceOps(fleet, self.store, bench_runs=bench_runs),
                             on_event=on_event, lock_dir=self.data_dir / "rollout-locks")


def lab_plan(fleet: Fleet, model: str, names: Sequence[str], *, gates: Gates, **kwargs: Any) -> RolloutPlan:
    """A plan over the named devices with the lab tests' defaults: one wave, the agent's confirmation deadline at
    120 s and every step bounded at 180 s (generous: the lab's arm64 devices run under qemu)."""
    ids = tuple(fleet.inventory.device(n).id for n in names)
    return RolloutPlan(model=model, devices=ids, waves=kwargs.pop("waves", ("100%",)), gates=gates,
                       confirm_within_s=kwargs.pop("confirm_within_s", 120.0),
                       step_timeout_s=kwargs.pop("step_timeout_s", 180.0), **kwargs)


def rollout_audit(engine: RolloutEngine, rollout_id: int) -> list[AuditEntry]:
    """The audit trail's entries about one rollout, newest first (read synchronously, for assertions)."""
    return engine.fleet.access.audit.entries(AuditFilter(target=f"rollout:{rollout_id}", action="rollout."),
                                             limit=None)


def devices_in(entry: AuditEntry) -> list[int]:
    """The device ids an audit entry names among its targets."""
    return [int(t.split(":", 1)[1]) for t in entry.targets if t.startswith("device:")]


def quick(engine: RolloutEngine) -> RolloutEngine:
    """The engine's waits shortened for tests: soak samples and unreachable polls every second, a 0.5 s transfer
    backoff, a transfer with no byte moving for 5 s counted as stalled."""
    engine.steps.soak_interval_s = 1.0
    engine.unreachable_poll_s = 1.0
    engine.steps.backoff_s = 0.5
    engine.steps.stall_timeout_s = 5.0
    return engine


def new_laptop(data: Path, profiles: ProfileSet) -> Laptop:
    key = FleetSigningKey(data / "keys")
    return Laptop(data, key, ArtifactStore(data / "artifacts", key), profiles)


def add_model(laptop: Laptop, path: Path, name: str, profiles: Sequence[str]) -> str:
    """Store a model as imported (its baseline artifact, chosen for every profile) with golden outputs on
    generated samples; returns the artifact id and remembers it as laptop.models["name@1"]."""
    card = inspect_model(path, name=name)
    base = Variant(BASELINE, CHOSEN, "the model as imported", local_latency_ms=1.0)
    report = OptimizationReport(card.sha256, 4, True, GENERATED_SOURCE, Tolerance(), tuple(
        ProfileResult(p, ("graph",), (base,), BASELINE) for p in sorted(set(profiles))))
    golden = write_golden(path, generate_samples(card, count=4).feeds, path.parent / "golden.npz")
    record = laptop.store.add_model(card, report, name=name, version="1", source_folder=path.parent, golden=golden)
    laptop.models[f"{name}@1"] = record.baseline
    return record.baseline


def small_model(laptop: Laptop, work: Path, name: str, seed: int, profiles: Sequence[str]) -> str:
    folder = work / name
    folder.mkdir(parents=True)
    return add_model(laptop, save_cnn(folder / "model.onnx", seed=seed), name, profiles)


def big_model(laptop: Laptop, work: Path, name: str, seed: int, profiles: Sequence[str]) -> str:
    """About 13 MB of weights in an external file: a transfer long enough to cut or fill a disk in the middle."""
    folder = work / name
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx.save_model(small_mlp(hidden=40_000, seed=seed), path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.weights", size_threshold=0)
    return add_model(laptop, path, name, profiles)


def provision_devices(lab: LabFleet, laptop: Laptop, names: Sequence[str], runtime_profile: dict[str, str]) -> None:
    """Enrol `names`, probe them, and provision each with the runtime built for runtime_profile[name] and the
    laptop's key. Afterwards every device holds none of the store's artifacts and runs no model."""
    runtimes = RuntimeStore(laptop.data_dir / "runtimes")
    built = {p: asyncio.run(build_runtime(laptop.profiles.get(p), runtimes))[0]
             for p in sorted(set(runtime_profile.values()))}
    root = "/opt/fleetdesk"
    for name in names:  # start clean: none of an earlier test store's artifacts, no model
        result = lab.ssh(lab.device(name), f"rm -rf {root}/artifacts {root}/current {root}/previous {root}/state.json")
        assert result.exit_status == 0, result.stderr

    async def enrol(fleet: Fleet) -> None:
        for name in names:
            device = fleet.inventory.add_device(lab.device(name)["address"], name=name)
            await fleet.set_login(device, identity_file=lab.state["ssh_key"])
            fleet.trust_from_known_hosts(device, lab.state["known_hosts"])
        outcomes = await fleet.probe(fleet.select(list(names)))
        assert [o.status for o in outcomes] == ["succeeded"] * len(names), [o.error for o in outcomes]
        for profile, runtime in built.items():
            chosen = [n for n in names if runtime_profile[n] == profile]
            # Each test module's laptop has its own fleet key, and the device still trusts the previous module's.
            done = await provision(fleet, fleet.select(chosen), runtime.id, store=runtimes,
                                   signing_key=laptop.key, agent=agent_tree(), replace_fleet_key=True)
            assert [o.status for o in done] == ["succeeded"] * len(chosen), [o.error for o in done]

    laptop.with_fleet(enrol)


async def agent_view(fleet: Fleet, laptop: Laptop, name: str) -> AgentView:
    return await DeviceOps(fleet, laptop.store).view(fleet.inventory.device(name))


def device_shell(lab: LabFleet, name: str, command: str) -> str:
    """Run a command on a lab device from synchronous code that may be inside an event loop (an engine event
    callback): through the ssh client, not asyncio."""
    argv = ["ssh", "-i", lab.state["ssh_key"], "-o", f"UserKnownHostsFile={lab.state['known_hosts']}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", f"root@{lab.device(name)['address']}", command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{command}: {proc.stderr}"
    return proc.stdout
