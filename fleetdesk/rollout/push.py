"""Pushing a model to devices without activating it: the window's Deploy and `fleetdesk model push`.

Each device gets the artifact chosen for its profile (plan.artifact_for) through the one staging path rollouts
use, DeviceOps.stage: every file checked against the signed manifest before it is sent, resumable, SHA-256
checked on the device, the manifest last, the copy sealed read-only where the login is root. Nothing switches:
activating is a rollout's business.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetdesk.artifacts.records import MANIFEST_NAME, SIGNATURE_NAME, ModelRecord
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import FleetDeskError, UnreachableError
from fleetdesk.inventory.records import Device
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.plan import artifact_for

if TYPE_CHECKING:
    from fleetdesk.fleet import Fleet

__all__ = ["PushOutcome", "PushProgress", "PushResult", "push_model"]

SUCCEEDED, FAILED, UNREACHABLE = "succeeded", "failed", "unreachable"


@dataclass(frozen=True)
class PushProgress:
    """How far a push is: the device whose bytes moved, and the whole push's bytes (for one progress bar)."""

    device: Device
    done: int  # bytes of this device's artifact in place, sent now or found there
    total: int  # this device's artifact, every file
    all_done: int  # the same over every device of the push
    all_total: int


@dataclass(frozen=True)
class PushOutcome:
    """One device's push: the artifact it got, the bytes sent and those it already held, or why it failed."""

    device: Device
    artifact: str  # the artifact id chosen for its profile
    status: str  # succeeded, failed or unreachable (unreachable is not failed: the device may come back)
    bytes_total: int  # the artifact's bytes, every file
    bytes_sent: int = 0  # what crossed the wire this time
    seconds: float = 0.0
    already_there: bool = False  # the device held the whole artifact, verified: nothing was sent
    error: FleetDeskError | None = None

    @property
    def bytes_reused(self) -> int:
        """Bytes the device already held (a whole copy, or a partial one resumed) and were not sent again."""
        return max(0, self.bytes_total - self.bytes_sent) if self.status == SUCCEEDED else 0

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device.name, "device_id": self.device.id, "profile": self.device.profile,
                "artifact": self.artifact, "status": self.status, "bytes_total": self.bytes_total,
                "bytes_sent": self.bytes_sent, "bytes_reused": self.bytes_reused, "already_there": self.already_there,
                "seconds": round(self.seconds, 3), "error": self.error.to_dict() if self.error else None}


@dataclass(frozen=True)
class PushResult:
    """Every device's outcome, in the order the devices were given; one failure does not hide the others."""

    model_ref: str
    outcomes: tuple[PushOutcome, ...]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(o.status == s for o in self.outcomes) for s in (SUCCEEDED, FAILED, UNREACHABLE)}

    @property
    def ok(self) -> bool:
        return all(o.status == SUCCEEDED for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_ref, "outcomes": [o.to_dict() for o in self.outcomes], "summary": self.counts}


def _chosen_artifacts(store: ArtifactStore, record: ModelRecord,
                      devices: Sequence[Device]) -> dict[int, tuple[str, int]]:
    """Device id -> (the artifact its profile gets, that artifact's bytes on disk: manifest, signature, files).
    Reads the store: run it off the loop. An artifact missing from the store is an error before anything moves."""
    chosen: dict[int, tuple[str, int]] = {}
    for device in devices:
        artifact = store.artifact(artifact_for(record, device.profile))
        names = [MANIFEST_NAME, SIGNATURE_NAME, *(f.path for f in artifact.files)]
        chosen[device.id] = (artifact.id, sum(os.path.getsize(os.path.join(artifact.folder, *n.split("/")))
                                              for n in names))
    return chosen


async def push_model(fleet: Fleet, store: ArtifactStore, record: ModelRecord, devices: Sequence[Device], *,
                     ops: DeviceOps | None = None, progress: Callable[[PushProgress], None] | None = None,
                     on_outcome: Callable[[PushOutcome], None] | None = None) -> PushResult:
    """Stage `record`'s artifact for each device's profile on every device at once, activating nothing.

    A file of the store that no longer hashes as its signed manifest says is refused before any byte of it is
    sent (the device's outcome: failed, code bad-artifact); a second push of the same model sends 0 bytes.
    `progress` hears every byte count; `on_outcome` hears each device as it finishes.

    The operator needs the deploy permission over every device; the push is audited once, with each device's
    outcome, when it ends."""
    targets = (f"model:{record.ref}", *(f"device:{d.id}" for d in devices))
    await asyncio.to_thread(fleet.access.require, "deploy", "model.push", devices=devices, targets=targets)
    ops = ops or DeviceOps(fleet, store)
    chosen = await asyncio.to_thread(_chosen_artifacts, store, record, devices)
    all_total = sum(size for _, size in chosen.values())
    done: dict[int, int] = {}

    def progress_of(device: Device) -> Callable[[int, int], None]:
        def heard(sent: int, total: int) -> None:
            done[device.id] = sent
            if progress is not None:
                progress(PushProgress(device, sent, total, sum(done.values()), all_total))
        return heard

    async def one(device: Device) -> PushOutcome:
        artifact_id, size = chosen[device.id]
        try:
            staged = await ops.stage(device, artifact_id, progress=progress_of(device))
        except FleetDeskError as exc:
            status = UNREACHABLE if isinstance(exc, UnreachableError) else FAILED
            outcome = PushOutcome(device, artifact_id, status, size, error=exc)
        else:
            outcome = PushOutcome(device, artifact_id, SUCCEEDED, staged.bytes_total or size, staged.bytes_sent,
                                  staged.seconds, staged.already_there)
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    outcomes = await asyncio.gather(*(one(d) for d in devices))
    result = PushResult(record.ref, tuple(outcomes))
    await asyncio.to_thread(fleet.access.record, "model.push", outcome="ok" if result.ok else "failed",
                            targets=targets, after={"counts": result.counts, "artifacts": {
                                str(o.device.id): [o.artifact, o.status, o.bytes_sent] for o in outcomes}})
    return result
