"""The steps of a rollout on one device, through its agent over the fleet's SSH pool: stage an artifact
(resumable, verified, optionally paced), activate it with a deadline, measure the health gates, confirm,
roll back, and ask the agent what it really runs (to reconcile after a crash).

Errors: a device that does not answer raises UnreachableError (the engine records LOST); anything else that
stops a step raises RolloutStepError with the agent's error code or one of ours (STEP_FAILED).
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from fleetdesk.agent_client import AgentClient, AgentReply, AgentView
from fleetdesk.artifacts.records import MANIFEST_NAME, SIGNATURE_NAME, Artifact
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import (
    ArtifactStoreError,
    AuthFailedError,
    CommandTimeoutError,
    DatabaseUnreachableError,
    DiskFullError,
    FleetDeskError,
    HostKeyChangedError,
    HostKeyUnknownError,
    RolloutStepError,
    UnreachableError,
)
from fleetdesk.inventory.records import Device
from fleetdesk.reach import DeviceReach
from fleetdesk.rollout.gates import GOLDEN, MEMORY, P95, SERVING, TEMPERATURE, GateSample
from fleetdesk.rollout.policy import Gates
from fleetdesk.runtime.sealing import SEAL_FUNCTIONS, seal_command
from fleetdesk.telemetry.sample import refusal_text
from fleetdesk.transport import shell_join
from fleetdesk.transport.push import BLOCK_SIZE, push_file
from fleetdesk.transport.session import ByteRange, DeviceSession, RemoteLines
from fleetdesk.transport.target import SSHTarget

__all__ = ["DeviceOps", "StageResult"]

STEP_TIMEOUT_S = 600.0  # one agent command (a bench on an emulated Pi is slow)
LOAD_WAIT_S = 120.0  # how long `activate` waits for the model server to load the new model
BENCH_RUNS = 30
PACE_SLICE_S = 0.25  # a capped push sends about this much time's worth of bytes per SFTP batch

# Device side, python3 (the agent needs it anyway). argv: root folder name... -> "free present manifest unsealed".
# Free space where the artifact goes (its nearest existing folder), the bytes already there under the final
# names or as resumable partial files (capped at each file's size), whether the manifest (pushed last) is there,
# and whether a copy with its manifest still waits to be sealed (login is root; see runtime/sealing.py).
_SPACE_PY = SEAL_FUNCTIONS + r"""
import os, sys
root, folder, names = sys.argv[1], sys.argv[2], sys.argv[3::2]
sizes = [int(s) for s in sys.argv[4::2]]
probe = folder
while not os.path.isdir(probe) and probe not in ("", "/"):
    probe = os.path.dirname(probe)
st = os.statvfs(probe or "/")
present = 0
for name, size in zip(names, sizes):
    head, tail = os.path.split(os.path.join(folder, name))
    best = 0
    for path in (os.path.join(head, tail), os.path.join(head, "." + tail + ".fleetdesk-partial")):
        try:
            best = max(best, min(os.path.getsize(path), size))
        except OSError:
            pass
    present += best
manifest = os.path.isfile(os.path.join(folder, "manifest.json"))
print(st.f_bavail * st.f_frsize, present, int(manifest), int(manifest and os.geteuid() == 0 and not sealed(folder)))
"""


@dataclass(frozen=True)
class StageResult:
    bytes_sent: int  # what crossed the wire this time
    seconds: float
    already_there: bool  # the device held the whole artifact, verified: nothing was sent
    bytes_total: int = 0  # the artifact's size
    files: int = 0


@dataclass(frozen=True)
class Staging:
    """One artifact on its way to one device: what `prepare` found, for `transfer`."""

    device: Device
    artifact_id: str
    folder: Path  # the artifact in the laptop's store
    remote: str  # ROOT/artifacts/<id> on the device
    # (path in the artifact, size, the SHA-256 the signed manifest gives it), the manifest last: what the store's
    # copy must hash to before it is sent (the manifest's own is the artifact id; the signature has none).
    files: tuple[tuple[str, int, str | None], ...]
    total: int
    complete: bool = False  # the device holds the whole artifact and it verified: nothing to send


class _PacedSession:
    """A DeviceSession whose SFTP writes keep to `rate` bytes/s on average: the ranges go in slices of about
    PACE_SLICE_S worth of bytes, with a sleep after each until the elapsed time matches the bytes sent.
    Everything else is the pool's session as is. (pool.push has no cap of its own.)"""

    def __init__(self, inner: DeviceSession, rate: int) -> None:
        self.inner = inner
        self.target = inner.target
        self.rate = rate

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    async def run(self, command: str, *, timeout: float | None) -> Any:
        return await self.inner.run(command, timeout=timeout)

    async def write_ranges(self, remote_path: str, local_path: str, ranges: Sequence[ByteRange], *,
                           truncate_to: int | None, requests_in_flight: int,
                           on_written: Callable[[int], None]) -> None:
        budget = max(BLOCK_SIZE, int(self.rate * PACE_SLICE_S))
        pieces = [(off + i, min(BLOCK_SIZE, length - i))
                  for off, length in ranges for i in range(0, length, BLOCK_SIZE)]
        started, sent, index = time.monotonic(), 0, 0
        while index < len(pieces):
            batch: list[ByteRange] = []
            size = 0
            while index < len(pieces) and (not batch or size + pieces[index][1] <= budget):
                batch.append(pieces[index])
                size += pieces[index][1]
                index += 1
            await self.inner.write_ranges(remote_path, local_path, batch, truncate_to=truncate_to,
                                          requests_in_flight=requests_in_flight, on_written=on_written)
            sent += size
            ahead = sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    def abort(self) -> None:
        self.inner.abort()

    async def close(self) -> None:
        await self.inner.close()

    def stream(self, command: str) -> RemoteLines:
        return self.inner.stream(command)


class DeviceOps:
    """`ops = DeviceOps(fleet, store); await ops.stage(device, artifact_id)`; one instance serves every device."""

    def __init__(self, fleet: Any, store: ArtifactStore, *, step_timeout_s: float = STEP_TIMEOUT_S,
                 load_wait_s: float = LOAD_WAIT_S, bench_runs: int = BENCH_RUNS) -> None:
        self.fleet = fleet
        self.store = store
        self.step_timeout_s = step_timeout_s
        self.load_wait_s = load_wait_s
        self.bench_runs = bench_runs

    # -- plumbing ------------------------------------------------------------------------------------------

    async def _reach(self, device: Device, step: str) -> DeviceReach:
        """The device's handle (target, layout), read off the loop; a refusal (a jump host) as _step_error says."""
        try:
            return cast(DeviceReach, await self.fleet.areach(device))
        except FleetDeskError as exc:
            raise self._step_error(exc, device, step) from None

    def _providers(self, device: Device) -> str:
        profile = self.fleet.profiles.profiles.get(device.profile) if device.profile else None
        return ",".join(profile.execution_providers) if profile else "CPUExecutionProvider"

    @staticmethod
    def _step_error(exc: FleetDeskError, device: Device, step: str) -> FleetDeskError:
        """UnreachableError stays (LOST), and so does the inventory's database going away (the engine rides it out);
        any other transport failure becomes a RolloutStepError."""
        if isinstance(exc, DatabaseUnreachableError):
            return exc
        if isinstance(exc, (UnreachableError, RolloutStepError)):
            if exc.device is None:
                exc.device = device.name
            if exc.step is None:
                exc.step = step
            return exc
        if isinstance(exc, DiskFullError):
            code = "disk-full"
        elif isinstance(exc, CommandTimeoutError):
            code = "timeout"
        elif isinstance(exc, AuthFailedError):
            code = "auth-failed"
        elif isinstance(exc, (HostKeyChangedError, HostKeyUnknownError)):
            code = "host-key"
        else:
            code = "transfer-failed" if step == "stage" else "command-failed"
        return RolloutStepError(f"{step}: {exc.message}", code=code, device=device.name, step=step, cause=exc,
                                fix=exc.fix or "see the message; the device keeps the model it ran")

    # -- the audit trail's checkpoints ---------------------------------------------------------------------

    async def witness(self, device: Device, seq: int, digest: str, signature: str, *,
                      timeout: float = 30.0) -> dict[str, Any]:
        """Hand the device a checkpoint of the audit trail to keep (`fleetdesk-agent witness`)."""
        return await self._agent(device, "witness", "witness", "--seq", str(seq), "--hash", digest,
                                 "--signature", signature, timeout=timeout)

    async def checkpoints(self, device: Device, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The checkpoints the device holds, lowest entry first."""
        found = (await self._agent(device, "witness", "witness", "--list", timeout=timeout)).get("checkpoints")
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    async def _run(self, device: Device, command: str, step: str, timeout: float) -> Any:
        try:
            return await self.fleet.pool.run((await self._reach(device, step)).target, command, timeout=timeout)
        except FleetDeskError as exc:
            raise self._step_error(exc, device, step) from None

    async def _reply(self, device: Device, step: str, *args: str, timeout: float) -> AgentReply:
        """Run the agent's ARGS on the device (fleetdesk.agent_client); transport failures as _step_error says."""
        try:
            reach = await self._reach(device, step)
            client = AgentClient.pooled(self.fleet.pool, reach.target, reach.root, device=device.name)
            return await client.run(*args, timeout=timeout)
        except FleetDeskError as exc:
            raise self._step_error(exc, device, step) from None

    async def _agent(self, device: Device, step: str, *args: str, timeout: float | None = None) -> dict[str, Any]:
        """Run `ROOT/bin/fleetdesk-agent ARGS` and return its result line; its error line -> RolloutStepError."""
        reply = await self._reply(device, step, *args, timeout=timeout or self.step_timeout_s)
        return reply.result(step)

    def _artifact(self, device: Device, artifact_id: str, step: str) -> Artifact:
        try:
            return self.store.artifact(artifact_id)
        except ArtifactStoreError as exc:
            raise RolloutStepError(f"{step}: {exc.message}", code="not-in-store", device=device.name, step=step,
                                   fix=exc.fix, cause=exc) from None

    # -- staging -------------------------------------------------------------------------------------------

    async def stage(self, device: Device, artifact_id: str, *, bandwidth_bytes_s: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> StageResult:
        """Copy the artifact to ROOT/artifacts/<id>/ (files already there are skipped, partial ones resumed).
        Each file is sent only when the store's copy hashes as the signed manifest says, and lands only when the
        device's SHA-256 of it agrees; the agent checks the signature and every hash again before it activates.
        The manifest goes last: a folder with a manifest is a complete copy, and where the login is root it is then
        sealed (root-owned, read-only; a partial copy stays writable so that it resumes). prepare + transfer; the engine
        calls them one by one, so that only the transfer holds one of its transfer slots."""
        started = time.monotonic()
        staging = await self.prepare(device, artifact_id)
        if staging.complete:
            (progress or (lambda _done, _total: None))(staging.total, staging.total)
            return StageResult(0, time.monotonic() - started, True, staging.total, len(staging.files))
        sent = await self.transfer(staging, bandwidth_bytes_s=bandwidth_bytes_s, progress=progress)
        return StageResult(sent, time.monotonic() - started, False, staging.total, len(staging.files))

    async def prepare(self, device: Device, artifact_id: str) -> Staging:
        """Before any byte moves: what the device already holds of the artifact, and whether it has room for the
        rest (RolloutStepError code disk-full when not). A whole copy that verifies is `complete`."""
        artifact = self._artifact(device, artifact_id, "stage")
        folder = Path(artifact.folder)
        order = [f.path for f in artifact.files] + [SIGNATURE_NAME, MANIFEST_NAME]
        sizes = [(folder / rel).stat().st_size for rel in order]
        total = sum(sizes)
        layout = (await self._reach(device, "stage")).layout
        remote = layout.artifact_dir(artifact.id)
        listing = [str(x) for pair in zip(order, sizes, strict=True) for x in pair]
        check = await self._run(device, shell_join(["python3", "-c", _SPACE_PY, layout.root, remote, *listing]),
                                "stage", 120)
        try:
            free, present, has_manifest, unsealed = (int(x) for x in check.stdout.split()[:4])
        except ValueError:
            raise RolloutStepError(f"stage: cannot inspect {remote} on the device "
                                   f"({(check.stderr.strip() or check.stdout.strip())[:200]})", code="command-failed",
                                   device=device.name, step="stage",
                                   fix=f"check that {device.name} has python3 and its FleetDesk root is writable "
                                       "(fleetdesk provision sets both up)") from None
        hashes = {f.path: f.sha256 for f in artifact.files} | {MANIFEST_NAME: artifact.id}
        staging = Staging(device, artifact.id, folder, remote,
                          tuple((rel, size, hashes.get(rel)) for rel, size in zip(order, sizes, strict=True)), total)
        if has_manifest:
            try:
                await self._agent(device, "stage", "verify", artifact.id)
            except RolloutStepError:
                pass  # a damaged or partial copy: the pushes repair it, each verified by its hash
            else:
                if unsealed:  # staged before sealing was done, or its modes were changed since
                    await self._seal(device, remote)
                return replace(staging, complete=True)
        needed = total - present
        if free < needed:
            raise RolloutStepError(
                f"stage: not enough space for artifact {artifact.id[:12]} ({artifact.name}@{artifact.version}) "
                f"under {layout.root}: {needed} bytes needed, {free} free", code="disk-full",
                device=device.name, step="stage",
                fix=f"free at least {needed - free} bytes on {device.name} (old artifacts under "
                    f"{layout.artifacts}, logs), or give its profile a device_root on a larger filesystem")
        return staging

    async def transfer(self, staging: Staging, *, bandwidth_bytes_s: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> int:
        """Push what the device lacks of the artifact, manifest last; the bytes sent. A store whose copy of any
        file no longer matches the signed manifest is refused before any byte of the artifact is sent (code
        bad-artifact)."""
        device = staging.device
        if bandwidth_bytes_s is not None and bandwidth_bytes_s <= 0:
            raise RolloutStepError(f"stage: a bandwidth cap of {bandwidth_bytes_s} bytes/s sends nothing",
                                   code="bad-arguments", device=device.name, step="stage",
                                   fix="give a positive cap, or none")
        # Every file first, so that a damaged one leaves nothing of the artifact on the device (the digests are the
        # pool's, computed once per file version and used by the pushes below).
        for rel, _size, sha256 in staging.files:
            await self._check_source(staging, rel, sha256)
        say = progress or (lambda _done, _total: None)
        sent, done_before = 0, 0
        for rel, size, _sha256 in staging.files:
            def one(done: int, _total: int, base: int = done_before) -> None:
                say(base + done, staging.total)

            result = await self._push(device, staging.folder / rel, posixpath.join(staging.remote, rel),
                                      bandwidth_bytes_s, one)
            sent += result.bytes_sent
            done_before += size
        # The manifest is in: the copy is complete, and no longer anyone's to change but root's.
        await self._seal(device, staging.remote)
        return sent

    async def _seal(self, device: Device, folder: str) -> None:
        """The artifact folder root-owned and read-only where the login is root (elsewhere nothing changes)."""
        result = await self._run(device, seal_command(folder), "stage", 120)
        if result.exit_status != 0:
            root = (await self._reach(device, "stage")).root
            raise RolloutStepError(f"stage: could not make {folder} read-only: "
                                   f"{(result.stderr.strip() or result.stdout.strip())[-300:]}",
                                   code="command-failed", device=device.name, step="stage",
                                   fix=f"check the filesystem under {root} on {device.name} (a "
                                       "read-only or full disk?), then stage again")

    async def _check_source(self, staging: Staging, rel: str, sha256: str | None) -> None:
        """The store's file hashes as its signed manifest says (the pool's digest, computed once per file version
        and used by the push itself), or the push would carry damaged bytes the device would only refuse later."""
        if sha256 is None:
            return
        try:
            digest = await self.fleet.pool.digest(staging.folder / rel)
        except FleetDeskError as exc:
            raise self._step_error(exc, staging.device, "stage") from None
        if digest.sha256 != sha256:
            raise RolloutStepError(
                f"stage: the store's copy of {rel!r} in artifact {staging.artifact_id[:12]} hashes to "
                f"{digest.sha256[:12]}, not {sha256[:12]} as its signed manifest says; nothing of it was sent",
                code="bad-artifact", device=staging.device.name, step="stage",
                fix="run `fleetdesk model verify` to find the damage, then remove and import the model again")

    async def _push(self, device: Device, local: Path, remote: str, rate: int | None,
                    progress: Callable[[int, int], None]) -> Any:
        pool = self.fleet.pool
        try:
            target: SSHTarget = (await self._reach(device, "stage")).target
            if rate is None:
                return await pool.push(target, local, remote, mode=0o644, progress=progress)
            # Paced: the same resumable, verified push over a session that spaces its writes out. It bypasses
            # the pool's operation bound; the engine's max_parallel bounds transfers.
            digest = await pool.digest(local)
            session = _PacedSession(await pool.session(target), rate)
            return await push_file(session, digest, remote, mode=0o644, progress=progress,
                                   requests_in_flight=pool.requests_in_flight)
        except DiskFullError as exc:
            raise RolloutStepError(f"stage: {exc.message}", code="disk-full", device=device.name, step="stage",
                                   cause=exc, fix=exc.fix) from None
        except FleetDeskError as exc:
            raise self._step_error(exc, device, "stage") from None

    async def remove_artifact(self, device: Device, artifact_id: str) -> None:
        """Delete ROOT/artifacts/<id> unless the device runs it, keeps it to go back to, or waits to confirm it."""
        view = await self.view(device)
        pending = view.pending.get("sha") if view.pending else None
        if artifact_id in (view.current, view.previous, pending):
            raise RolloutStepError(f"remove: artifact {artifact_id[:12]} is in use on the device (current, previous "
                                   "or pending)", code="in-use", device=device.name, step="remove",
                                   fix="roll the device to another model first")
        self._artifact(device, artifact_id, "remove")  # a valid id: it becomes a path
        layout = (await self._reach(device, "remove")).layout
        await self._run(device, shell_join(["rm", "-rf", "--", layout.artifact_dir(artifact_id)]), "remove", 120)

    # -- the agent's view ----------------------------------------------------------------------------------

    async def view(self, device: Device) -> AgentView:
        return AgentView.of(await self._agent(device, "status", "status", timeout=120))

    # -- activation ----------------------------------------------------------------------------------------

    async def activate(self, device: Device, artifact_id: str, confirm_within_s: float) -> dict[str, Any]:
        """Switch to the artifact; the agent reverts by itself unless confirmed within `confirm_within_s`, and
        at once (error model-load-failed) if its server cannot load it."""
        return await self._agent(device, "activate", "activate", artifact_id, "--confirm-within",
                                 f"{confirm_within_s:g}", "--wait-load", f"{self.load_wait_s:g}",
                                 timeout=self.load_wait_s + 120)

    async def confirm(self, device: Device, artifact_id: str) -> dict[str, Any]:
        """Keep the activation. Code "deadline-passed": the agent had already gone back by itself."""
        return await self._agent(device, "confirm", "confirm", artifact_id, timeout=120)

    async def rollback(self, device: Device) -> dict[str, Any]:
        return await self._agent(device, "rollback", "rollback", timeout=self.load_wait_s + 120)

    # -- the shadow step ------------------------------------------------------------------------------------

    async def shadow_start(self, device: Device, artifact_id: str, share: float, expires_s: float) -> dict[str, Any]:
        """Load the staged artifact beside the active model and mirror `share` of live requests to it (the agent's
        `shadow start`, which asks the running model server), keeping the profile's shadow_margin_mb of memory free
        (the agent's default when the profile names none). The server stops it by itself `expires_s` after its
        start if nothing stopped it (this laptop went away). Codes: low-memory (the device cannot hold both),
        not-ready / no-server (no active model served), not-found (not staged), and the verification's."""
        profile = self.fleet.profiles.profiles.get(device.profile) if device.profile else None
        margin = profile.shadow_margin_mb if profile is not None else None
        return await self._agent(device, "shadow", "shadow", "start", artifact_id, "--share", f"{share:g}",
                                 "--expires", f"{expires_s:g}",
                                 *(("--margin-mb", str(margin)) if margin is not None else ()),
                                 timeout=self.load_wait_s + 120)

    async def shadow_status(self, device: Device) -> dict[str, Any]:
        """The running shadow's figures (state "running"), else what the last one came to (stopped, refused)."""
        return await self._agent(device, "shadow", "shadow", "status", timeout=120)

    async def shadow_stop(self, device: Device) -> dict[str, Any]:
        """Stop mirroring and unload the candidate; its final figures. Code not-found: none runs."""
        return await self._agent(device, "shadow", "shadow", "stop", timeout=120)

    # -- measuring -----------------------------------------------------------------------------------------

    async def baseline(self, device: Device, artifact_id: str | None = None) -> GateSample:
        """The model the device runs now (before activation), for the p95 ratio; model None when it runs none."""
        view = await self.view(device)
        if view.current is None:
            return GateSample(time.time(), False, None, None, 0, 0, None, None, None,
                              notes={P95: "the device runs no model"})
        p95, why = await self._bench(device, view.current)
        return GateSample(time.time(), view.serving and view.serving_model == view.current, view.current, p95, 0, 0,
                          None, None, None, notes={P95: why} if why else {})

    async def measure(self, device: Device, artifact_id: str, gates: Gates) -> GateSample:
        """One measurement of every gate that is on. Agent errors become notes (the gate then fails with
        them); only an unreachable device raises."""
        notes: dict[str, str] = {}
        # The agent's status, a telemetry sample and the golden check are independent: asked at once (three
        # channels of the device's one connection). The latency bench runs alone afterwards, so that the check's
        # inference does not slow what it times.
        asked = await asyncio.gather(self.view(device), self._telemetry(device),
                                     self._golden(device, artifact_id) if gates.golden_min_cosine is not None
                                     else _nothing(), return_exceptions=True)
        for answer in asked:
            if isinstance(answer, BaseException):
                raise answer
        view, sample, (cosine, golden_note) = asked
        if golden_note:
            notes[GOLDEN] = golden_note
        refused = view.refused if view.refused and view.refused.get("artifact") == artifact_id else None
        # A refused artifact fails the gate even while the copy verified at its load still answers from memory:
        # its files on the device no longer verify, so after a restart the device would serve nothing.
        serving = view.serving and view.serving_model == artifact_id and refused is None
        if refused is not None:
            notes[SERVING] = refusal_text(refused)
        elif not view.serving:
            notes[SERVING] = "the model server is not running"
        elif view.serving_model != artifact_id:
            notes[SERVING] = (f"the model server serves {view.serving_model}" if view.serving_model
                              else "the model server has no model loaded")
        requests = errors = 0
        temperature = memory = None
        if "error" in sample:
            notes[TEMPERATURE] = notes[MEMORY] = f"telemetry failed: {sample['error']}"
        temps = [v for v in (sample.get("temps") or {}).values() if isinstance(v, (int, float))]
        if isinstance((sample.get("gpu") or {}).get("temp_c"), (int, float)):
            temps.append(sample["gpu"]["temp_c"])
        temperature = max(temps) if temps else None
        mem = sample.get("mem") or {}
        if mem.get("total_mb") and isinstance(mem.get("available_mb"), (int, float)):
            memory = round(100.0 * mem["available_mb"] / mem["total_mb"], 2)
        inference = sample.get("inference") or {}
        requests, errors = int(inference.get("requests") or 0), int(inference.get("errors") or 0)
        p95 = None
        if gates.p95_ms_max is not None or gates.p95_ratio_max is not None:
            p95, why = await self._bench(device, artifact_id)
            if why:
                notes[P95] = why
        return GateSample(time.time(), serving, view.serving_model, p95, requests, errors, temperature, memory,
                          cosine, notes=notes)

    async def _telemetry(self, device: Device) -> dict[str, Any]:
        """One telemetry sample (schema in fleetdesk/telemetry/sample.py), or {"error": why}."""
        reply = await self._reply(device, "measure", "telemetry", "--count", "1", "--interval", "0.5", timeout=120)
        return reply.sample("measure")

    async def _golden(self, device: Device, artifact_id: str) -> tuple[float | None, str]:
        """The lowest cosine of the artifact's outputs against its golden ones (the agent's `check`, which the
        running server answers when it has the artifact loaded), or None and why not."""
        try:
            check = await self._agent(device, "measure", "check", artifact_id, "--providers", self._providers(device))
        except RolloutStepError as exc:
            return None, f"{exc.code}: {exc.message}"
        return float(check["min_cosine"]), ""

    async def _bench(self, device: Device, artifact_id: str) -> tuple[float | None, str]:
        try:
            result = await self._agent(device, "measure", "bench", artifact_id, "--runs", str(self.bench_runs),
                                       "--providers", self._providers(device))
        except RolloutStepError as exc:
            return None, f"the benchmark failed ({exc.code}): {exc.message}"
        return float(result["p95_ms"]), ""


async def _nothing() -> tuple[None, str]:
    return None, ""
