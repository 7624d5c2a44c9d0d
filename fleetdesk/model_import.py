"""Importing a model end to end (validate, samples, optimize per profile, sign and store) and timing a variant
on real devices of its profile with `fleetdesk-agent bench`. It sits above `fleetdesk.models` (ONNX work) and
`fleetdesk.artifacts` (the store) and uses both; neither of them imports it.

`import_model` is synchronous and long: the CLI and the GUI run it in an executor, with a progress callback and a
threading.Event to cancel. It and `remove_model`, `export_model` and `export_fleet_key` are the operations the CLI
and the window share: each checks the operator's role and audits what it changed (fleetdesk.access), and reads
the keyring and the inventory, so they run off the event loop. `bench_on_devices` is a coroutine on the fleet's
loop; `DeviceBench` lets the worker thread call it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import onnx

from fleetdesk.access import Access
from fleetdesk.agent_client import AgentClient
from fleetdesk.artifacts.fleet_models import fleet_version, share_model
from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.artifacts.store import ArtifactStore, check_name, write_golden, write_reference
from fleetdesk.errors import FleetDeskError
from fleetdesk.models.card import OptimizationCancelled
from fleetdesk.models.importer import DEFAULT_MAX_BYTES, inspect_model
from fleetdesk.models.report import Progress
from fleetdesk.profiles import Profile, ProfileSet
from fleetdesk.transport import shell_join

log = logging.getLogger(__name__)

BENCH_RUNS = 30  # timed inferences per device (after the agent's own warm-up)
BENCH_TIMEOUT_S = 300.0  # per device, the whole bench command (arm64 boards are slow; qemu slower still)
CLEANUP_TIMEOUT_S = 30.0
GOLDEN_SAMPLES = 8  # samples whose expected outputs ship in each artifact (inputs can be large: images)

ProgressCallback = Callable[[Progress], None]


def choose_profiles(names: Sequence[str] | None, catalog: ProfileSet) -> list[Profile]:
    """The profiles named (each once, in order), else every profile FleetDesk knows. Unknown name: ProfileError."""
    if names:
        return [catalog.get(name) for name in dict.fromkeys(names)]
    return [catalog.profiles[name] for name in sorted(catalog.profiles)]


def import_model(path: str | os.PathLike[str], *, access: Access, name: str | None = None,
                 version: str | None = None, samples: str | os.PathLike[str] | None = None,
                 profiles: Sequence[str] | None = None,
                 store: ArtifactStore, catalog: ProfileSet, progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None, device_bench: Callable[..., Mapping[str, float]] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, sample_count: int = 16) -> ModelRecord:
    """Validate, optimize for each profile, sign and store one model; returns its record.

    Fails fast, before any optimization and with nothing written, on an invalid file, an unknown profile, an
    unusable name or a name clash. An unchanged re-import returns the stored record without optimizing again.
    `profiles`: the names given, else those of the caller's inventory, else (None) every known profile.
    The operator needs the release permission; a stored import is audited.
    """
    from fleetdesk.models.optimize import optimize_model
    from fleetdesk.models.samples import load_samples

    access.require("release", "model.import", targets=(f"file:{Path(path).name}",))
    say = progress or (lambda _p: None)
    chosen = choose_profiles(profiles, catalog)
    say(Progress("validate", f"checking {Path(path).name}", 0, 1))
    card = inspect_model(path, name=name, max_bytes=max_bytes)
    model_name = check_name(name or card.name)
    if version is not None:
        check_name(version, "version")
    # On a shared inventory the version is the fleet's: another laptop's name@version is not taken again.
    version = fleet_version(store, model_name, version, card.sha256)
    found = store.existing(model_name, version, card.sha256)
    if found is None and version is not None and store.catalogue is not None:
        # Imported from these bytes on another laptop: the fleet has it; its files are fetched when needed.
        found = next((r for r in store.catalogued(model_name)
                      if r.version == version and r.source_sha256 == card.sha256), None)
        if found is not None:
            say(Progress("store", f"{found.ref} is already in the fleet's models with the same bytes; nothing to do",
                         1, 1))
            return found
    if found is not None:
        _share(store, access, found)  # finishes a share that failed (shared store unmounted) the first time
        say(Progress("store", f"{found.ref} is already stored with the same bytes; nothing to do", 1, 1))
        return found
    _check_cancel(cancel, card.path)
    # The signing key is needed at the end: a locked or missing keyring is said now, before minutes of work.
    store.signer.unlock()
    say(Progress("samples", "loading samples" if samples else "generating samples from the declared shapes", 0, 1))
    sample_set = load_samples(card, samples, count=sample_count)
    work_root = store.root / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=work_root))
    try:
        report = optimize_model(card, sample_set, chosen, work, progress=progress, cancel=cancel,
                                device_bench=device_bench)
        _check_cancel(cancel, card.path)
        say(Progress("store", f"signing and storing {model_name}", 0, 1))
        # The imported model's answers on a few samples travel in every artifact: a rollout's golden-output gate
        # checks the device's variant against them (`fleetdesk-agent check`).
        golden = write_golden(Path(card.path), sample_set.feeds[:GOLDEN_SAMPLES], work / "golden.npz")
        # The operator's samples are what the floor's inputs look like: the device scores its live inputs' drift
        # against their statistics. Generated samples say nothing of the floor, so they give no reference (the
        # device then says drift is off and why).
        reference = None if sample_set.synthetic else write_reference(sample_set.feeds, work / "input_reference.json")
        record = store.add_model(card, report, name=model_name, version=version, source_folder=Path(card.path).parent,
                                 golden=golden, reference=reference)
        access.record("model.import", targets=(f"model:{record.ref}",),
                      after={"source_sha256": record.source_sha256, "artifacts": dict(record.artifacts)})
        _share(store, access, record)
        say(Progress("store", f"stored as {record.ref}", 1, 1))
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _share(store: ArtifactStore, access: Access, record: ModelRecord) -> None:
    """The fleet's side of an import: the signed files to the shared store, the model to the inventory's catalogue
    (fleetdesk.artifacts.fleet_models), so the other laptops list it and fetch its files when they need them."""
    share_model(store, record, access.name, datetime.now(UTC))


def remove_model(store: ArtifactStore, access: Access, ref: str) -> tuple[ModelRecord, list[str]]:
    """Delete a model version and the artifacts no other version uses from this laptop, and take it out of the
    fleet's catalogue (when the store has one): no laptop lists it any more. Copies other laptops fetched and the
    shared store's files stay (a re-import puts it back). Audited (release permission)."""
    access.require("release", "model.remove", targets=(f"model:{ref}",))
    record = store.model(ref)
    gone = store.remove(record.ref)
    uncatalogued = store.catalogue.remove(record.name, record.version) if store.catalogue is not None else False
    access.record("model.remove", targets=(f"model:{record.ref}",),
                  before={"source_sha256": record.source_sha256, "artifacts": dict(record.artifacts)},
                  after={"artifacts_deleted": list(gone), "catalogue": uncatalogued})
    return record, gone


def export_model(store: ArtifactStore, access: Access, ref: str, dest: Path, profile: str | None = None) -> Path:
    """Write a model's artifact (for one profile, or all) as an archive a device can unpack; audited."""
    access.require("release", "model.export", targets=(f"model:{ref}",))
    path = store.export(ref, dest, profile=profile)
    access.record("model.export", targets=(f"model:{ref}", f"file:{path.name}"),
                  after={"profile": profile, "bytes": path.stat().st_size})
    return path


def export_fleet_key(store: ArtifactStore, access: Access) -> bytes:
    """The fleet's public key (PEM), as devices verify artifacts with it; exporting it is an admin's, audited."""
    access.require("administer", "fleet-key.export", targets=("fleet-key",))
    pem = store.public_key_pem()
    access.record("fleet-key.export", targets=("fleet-key",), after={"sha256": hashlib.sha256(pem).hexdigest()})
    return pem


def _check_cancel(cancel: threading.Event | None, path: str) -> None:
    if cancel is not None and cancel.is_set():
        raise OptimizationCancelled("the import was cancelled; nothing was stored", path=path,
                                    fix="start the import again when you want it")


# -- timing on devices -------------------------------------------------------------------------------------------


def model_files(model_path: Path) -> list[str]:
    """The .onnx file's name and the external data files it references (relative to its folder), the .onnx first."""
    model = onnx.load(str(model_path), load_external_data=False)
    found: dict[str, None] = {}

    def tensors(graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            visit(tensor)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    visit(attribute.t)
                for tensor in attribute.tensors:
                    visit(tensor)
                if attribute.HasField("g"):
                    tensors(attribute.g)
                for sub in attribute.graphs:
                    tensors(sub)

    def visit(tensor: onnx.TensorProto) -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location:
                found[PurePosixPath(location.replace("\\", "/")).as_posix()] = None

    tensors(model.graph)
    return [model_path.name, *sorted(found)]


def _files_digest(folder: Path, files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


async def bench_on_devices(fleet: Any, devices: Sequence[Any], model_folder: Path, files: Sequence[str], *,
                           runs: int = BENCH_RUNS, timeout: float = BENCH_TIMEOUT_S,
                           failures: dict[str, str] | None = None) -> dict[str, float]:
    """Time one model on each device with `ROOT/bin/fleetdesk-agent bench`: device name -> p50 ms.

    The files go (verified) to ROOT/tmp/bench-<sha>/ and are removed after; a device that fails is left out
    (its message in `failures`) and never stops the others.
    """
    folder = Path(model_folder)
    digest = await asyncio.to_thread(_files_digest, folder, files)

    async def one(device: Any) -> float:
        reach = await fleet.areach(device)  # the root by the one rule (fleetdesk.reach), read off the loop
        remote = posixpath.join(reach.layout.tmp, f"bench-{digest}")
        profile = reach.profile
        providers = list(profile.execution_providers) if profile else ["CPUExecutionProvider"]
        target = reach.target
        try:
            for name in files:
                await fleet.pool.push(target, folder / name, f"{remote}/{name}")
            agent = AgentClient.pooled(fleet.pool, target, reach.root, device=device.name)
            return (await agent.bench(remote, runs=runs, providers=providers, timeout=timeout)).p50_ms
        finally:
            with contextlib.suppress(FleetDeskError, OSError, asyncio.TimeoutError):
                await fleet.pool.run(target, shell_join(["rm", "-rf", remote]), timeout=CLEANUP_TIMEOUT_S)

    outcomes = await asyncio.gather(*(one(d) for d in devices), return_exceptions=True)
    timed: dict[str, float] = {}
    for device, outcome in zip(devices, outcomes, strict=True):
        if isinstance(outcome, float):
            timed[device.name] = outcome
        elif isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            message = str(outcome) if isinstance(outcome, FleetDeskError) else f"{type(outcome).__name__}: {outcome}"
            log.warning("bench on %s failed: %s", device.name, message)
            if failures is not None:
                failures[device.name] = message
    return timed


def bench_devices(fleet: Any, profiles: Sequence[str]) -> dict[str, list[Any]]:
    """Profile name -> the inventory's devices of that profile that are online and have a provisioned runtime."""
    from fleetdesk.inventory.runtimes import DeviceRuntimes

    runtimes = DeviceRuntimes(fleet.inventory)
    ready = {r.device_id for r in runtimes.all()}
    chosen: dict[str, list[Any]] = {}
    for device in fleet.inventory.devices():
        if device.online and device.profile in profiles and device.id in ready:
            chosen.setdefault(device.profile, []).append(device)
    return chosen


class DeviceBench:
    """The `device_bench` callable optimize_model takes, called from the worker thread: it runs
    `bench_on_devices` on the fleet's event loop (which must keep running) and waits at most `timeout`."""

    def __init__(self, fleet: Any, devices: Mapping[str, Sequence[Any]], loop: asyncio.AbstractEventLoop, *,
                 runs: int = BENCH_RUNS, timeout: float = BENCH_TIMEOUT_S) -> None:
        self.fleet = fleet
        self.devices = {k: list(v) for k, v in devices.items()}
        self.loop = loop
        self.runs = runs
        self.timeout = timeout
        self.failures: dict[str, str] = {}

    def __call__(self, profile: Profile, model_path: Path) -> dict[str, float]:
        devices = self.devices.get(profile.name, [])
        if not devices:
            return {}
        path = Path(model_path)
        files = model_files(path)
        future = asyncio.run_coroutine_threadsafe(
            bench_on_devices(self.fleet, devices, path.parent, files, runs=self.runs, timeout=self.timeout,
                             failures=self.failures), self.loop)
        try:
            # The per-device timeout bounds the run; a little more for the pushes and the clean-up.
            return future.result(self.timeout + 2 * CLEANUP_TIMEOUT_S + 60)
        except concurrent.futures.TimeoutError:
            future.cancel()
            for device in devices:
                self.failures[device.name] = f"bench did not finish within {self.timeout:g} s"
            return {}


__all__ = ["DeviceBench", "bench_devices", "bench_on_devices", "choose_profiles",
           "import_model", "model_files"]
