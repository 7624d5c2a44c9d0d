"""The bridge's side of the model store: import, verify, export and remove signed models, and push artifacts.

`ModelsPart` is one part of `FleetBridge` (fleetdesk.gui.bridge): it owns the artifact store and the model signals,
and reads and reports devices through the devices part.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

from fleetdesk import model_import
from fleetdesk.artifacts.fleet_models import ON_LAPTOP, fleet_models
from fleetdesk.artifacts.records import ModelRecord, VerifyResult
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.config import Settings
from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.records import Device
from fleetdesk.models.report import Progress
from fleetdesk.rollout.push import PushOutcome, PushProgress, push_model

from .activities import Activity, human_duration, window_loop
from .bridge_context import BridgeContext
from .bridge_devices import DevicesPart

T = TypeVar("T")


class ModelsPart(QObject):
    """The model store's operations; the devices part gives the devices they are timed on and pushed to."""

    model_imported = Signal(object)  # ModelRecord, just imported and signed
    # list[ModelRecord]: this laptop's store and the fleet's catalogue; dict: ref -> where the files are of those
    # not on this laptop (fleetdesk.artifacts.fleet_models: "on the shared store", "not available: ...")
    models_changed = Signal(list, dict)
    model_removed = Signal(str)  # the ref of a model version deleted from the store

    def __init__(self, context: BridgeContext, devices: DevicesPart) -> None:
        super().__init__()
        self._context = context
        self.fleet = context.fleet
        self.activities = context.activities
        self._devices = devices
        self._store: ArtifactStore | None = None  # the signed artifact store, opened on first use

    def artifact_store(self) -> ArtifactStore:
        """The signed artifact store under the user data directory (FLEETDESK_DATA_DIR), opened on first use; with
        the inventory's catalogue, so models imported on other laptops are listed and deployed too."""
        if self._store is None:
            self._store = ArtifactStore.default(Settings.load(), self.fleet.inventory)
        return self._store

    def profile_names(self) -> list[str]:
        """Every device profile FleetDesk knows (shipped and the operator's)."""
        return sorted(self.fleet.profiles.profiles)

    def fleet_profiles(self, device_ids: Sequence[int] = ()) -> list[str]:
        """The profiles of these devices (of every device in the inventory if none), each once."""
        known = self._devices.known()
        devices = [known[i] for i in device_ids if i in known] if device_ids else list(known.values())
        return sorted({d.profile for d in devices if d.profile})

    def bench_devices(self, profiles: Sequence[str]) -> list[Device]:
        """Devices that can time variants now: trusted, online, not busy, of one of these profiles."""
        return [d for d in self._devices.known().values()
                if d.profile in profiles and self._devices.view(d).status == "online"]

    async def _models(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # Store work reads, hashes and signs files (and may wait on the keyring): never on the loop.
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def load_models(self) -> Activity:
        """Read the store's model records and the fleet's catalogue and announce them (`models_changed`)."""
        async def job(activity: Activity) -> list[ModelRecord]:
            activity.report(None, "reading the artifact store")
            models = await self._models(lambda: fleet_models(self.artifact_store()))
            records = [m.record for m in models]
            self.models_changed.emit(records, {m.record.ref: m.where for m in models if m.where != ON_LAPTOP})
            return records

        return self.activities.start("Read the model store", job, summarize=lambda records: f"{len(records)} model(s)")

    def import_model(self, path: str, *, name: str | None = None, version: str | None = None,
                     samples: str | None = None, profiles: Sequence[str] = (), time_on_devices: bool = False,
                     then: Callable[[ModelRecord], None] | None = None) -> Activity:
        """Import, optimize for each profile and sign one model (`fleetdesk model import`), in a worker thread.

        Progress (stage, step n of m, elapsed, time left) goes to the activity; cancelling the activity sets
        the import's cancel event and waits for the worker to stop: a cancelled import writes nothing.
        """
        chosen = tuple(profiles)
        loop = window_loop()
        cancel = threading.Event()
        benches: list[model_import.DeviceBench] = []

        async def job(activity: Activity) -> ModelRecord:
            started = time.monotonic()
            bench = None
            if time_on_devices:  # online devices of the chosen profiles with a provisioned runtime
                ready = await self._context.db(model_import.bench_devices, self.fleet, chosen)
                if ready:
                    bench = model_import.DeviceBench(self.fleet, ready, loop)
                    benches.append(bench)

            def on_progress(progress: Progress) -> None:
                if not cancel.is_set():
                    activity.report(progress.done / progress.total if progress.total else None,
                                    progress_text(progress, time.monotonic() - started))

            def progress(step: Progress) -> None:  # called in the worker thread
                loop.call_soon_threadsafe(on_progress, step)

            store = await self._models(self.artifact_store)
            activity.report(None, f"checking {os.path.basename(path)}")
            work = loop.run_in_executor(None, functools.partial(
                model_import.import_model, path, access=self.fleet.access, name=name, version=version, samples=samples,
                profiles=chosen or None,
                store=store, catalog=self.fleet.profiles, progress=progress, cancel=cancel, device_bench=bench))
            try:
                record = await asyncio.shield(work)
            except asyncio.CancelledError:
                cancel.set()
                activity.detail = "cancelling: waiting for the current step to stop"
                activity.changed.emit()
                with contextlib.suppress(Exception):
                    await asyncio.shield(work)  # the worker stops at its next step and writes nothing
                raise
            self.model_imported.emit(record)
            if then is not None:
                then(record)
            return record

        def summarize(record: ModelRecord) -> str:
            report = record.report
            if report is None:
                return f"imported as {record.ref}"
            chosen_text = ", ".join(f"{p.profile}: {p.chosen}" for p in report.profiles)
            failures = [f"{d}: {why}" for b in benches for d, why in b.failures.items()]
            return f"imported as {record.ref} ({chosen_text})" + (
                "; accuracy checked on synthetic samples only" if report.synthetic else "") + (
                "; not timed on " + "; ".join(failures[:2]) if failures else "")

        return self.activities.start(f"Import {os.path.basename(path)}", job, summarize=summarize)

    def verify_models(self, ref: str = "", then: Callable[[list[VerifyResult]], None] | None = None) -> Activity:
        """Check every byte and the signature of a model's artifacts (every model's with no ref)."""
        async def job(activity: Activity) -> list[VerifyResult]:
            activity.report(None, "hashing files and checking signatures")
            results = await self._models(lambda: self.artifact_store().verify(ref or None))
            if then is not None:
                then(list(results))
            return list(results)

        def summarize(results: list[VerifyResult]) -> str:
            bad = [r for r in results if not r.ok]
            return (f"{len(results)} artifact(s) intact and signed" if not bad else
                    f"{len(bad)} of {len(results)} artifact(s) FAILED: {bad[0].ref}: {'; '.join(bad[0].problems[:2])}")

        return self.activities.start(f"Verify {ref or 'every model'}", job, summarize=summarize)

    def export_model(self, ref: str, dest: str, profile: str | None = None) -> Activity:
        """Write a model's artifacts (or one profile's) to a .tar file the operator chose."""
        async def job(activity: Activity) -> str:
            activity.report(None, f"writing {os.path.basename(dest)}")
            return str(await self._models(lambda: model_import.export_model(self.artifact_store(), self.fleet.access,
                                                                            ref, Path(dest), profile)))

        return self.activities.start(f"Export {ref}", job, summarize=lambda p: f"written to {p}")

    def remove_model(self, ref: str) -> Activity:
        """Delete a model version and the artifacts no other version uses; the view forgets it."""
        async def job(activity: Activity) -> list[str]:
            _, removed = await self._models(lambda: model_import.remove_model(self.artifact_store(), self.fleet.access,
                                                                              ref))
            self.model_removed.emit(ref)
            return list(removed)

        return self.activities.start(f"Remove {ref}", job, summarize=lambda ids: f"{len(ids)} artifact(s) deleted")

    def export_public_key(self, dest: str) -> Activity:
        """Save the fleet's public signing key (PEM) where the operator chose (made on first use)."""
        async def job(activity: Activity) -> str:
            pem = await self._models(lambda: model_import.export_fleet_key(self.artifact_store(), self.fleet.access))
            await self._models(Path(dest).write_bytes, pem)
            return dest

        return self.activities.start("Export the public signing key", job, summarize=lambda p: f"saved to {p}")

    # -- pushing a model -------------------------------------------------------------------------------

    def push_artifacts(self, record: ModelRecord, device_ids: Sequence[int], title: str = "") -> Activity:
        """Push to each device the artifact chosen for its profile (the FP32 baseline when its profile has none):
        the signed folder as the store keeps it (manifest, signature, model files), into ROOT/artifacts/<id>/,
        through the core's push (fleetdesk.rollout.push, as `fleetdesk model push`), which stages as rollouts do:
        each file checked against the signed manifest, resumable, SHA-256 checked on the device, the manifest last,
        and the copy sealed read-only where the login is root."""
        devices = self._devices.chosen(device_ids)

        async def job(activity: Activity) -> dict[str, str]:
            outcomes: dict[str, str] = {}  # device name -> "ok" or the error, in the order devices finish

            def progress(step: PushProgress) -> None:
                activity.report_bytes(step.all_done, step.all_total, f"{len(devices)} device(s)")

            def finished(outcome: PushOutcome) -> None:
                if outcome.error is None:
                    outcomes[outcome.device.name] = "ok"
                    return
                self._devices.note_problem(outcome.device.id, outcome.error)
                self._devices.update(outcome.device)
                outcomes[outcome.device.name] = str(outcome.error)

            store = await self._models(self.artifact_store)  # opened on first use: reads settings, off the loop
            await push_model(self.fleet, store, record, devices, progress=progress, on_outcome=finished)
            failed = {k: v for k, v in outcomes.items() if v != "ok"}
            if failed and len(failed) == len(devices):
                first = next(iter(failed.values()))
                raise FleetDeskError(f"the model reached no device: {first}",
                                     fix="fix the first device's problem, then deploy the model again")
            return outcomes

        def summarize(outcomes: dict[str, str]) -> str:
            ok = [k for k, v in outcomes.items() if v == "ok"]
            failed = [f"{k}: {v}" for k, v in outcomes.items() if v != "ok"]
            return f"verified on {len(ok)} of {len(outcomes)} device(s)" + ("; " + "; ".join(failed[:3]) if failed
                                                                           else "")

        return self.activities.start(title or f"Deploy {record.ref}", job, devices=[d.id for d in devices],
                                     summarize=summarize)


def progress_text(progress: Progress, elapsed: float) -> str:
    """An import's progress as the activity view shows it: the step, how far, time spent and time left."""
    parts = [progress.message]
    if progress.total:
        parts.append(f"step {progress.done} of {progress.total}")
    parts.append(f"{human_duration(elapsed)} elapsed")
    if 0 < progress.done < progress.total:
        parts.append(f"about {human_duration(elapsed / progress.done * (progress.total - progress.done))} left")
    return ", ".join(parts)
