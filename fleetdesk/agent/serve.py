"""`serve`: the on-device ONNX Runtime model server for the active model, on a localhost HTTP port.

It keeps running with no model or a broken one (not ready, with the reason), reloads when ROOT/current
moves or on SIGHUP, micro-batches and caches as configured, and writes ROOT/run/serve-stats.json.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import check, inference, protocol, state
from .batching import MicroBatcher, ResultCache
from .candidate import CandidateFailed, CandidateProcess
from .drift import SAMPLE_INTERVAL_S, DriftWatch, ReferenceMissing, load_reference
from .inference import LoadedModel, ModelLoadError, RequestError, RuntimeMissing
from .protocol import AgentError
from .servestats import ServeStats, shadow_headline, stats_document, write_atomically
from .shadow import (
    CANDIDATE_THREADS,
    DEFAULT_MARGIN_MB,
    DEFAULT_QUEUE,
    DEFAULT_SHARE,
    Shadow,
    ShadowRefused,
    artifact_bytes,
    available_mb,
    check_memory,
    same_signature,
)
from .shadowstats import DRIFT_WINDOW
from .verified import VerifiedArtifacts, refusal

DEFAULT_PORT = 8750
STATS_INTERVAL_S = 1.0
# A shadow that nothing stops within this many seconds of its start stops by itself (POST /v1/shadow "expires_s";
# the laptop asks for its time bound and a margin): a laptop that died mid-shadow leaves no candidate loaded.
SHADOW_EXPIRES_S = 3600.0
# A request thread never waits for the batch worker longer than this (a wedged provider answers 500).
RUN_TIMEOUT_S = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free one, see the event)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    parser.add_argument("--model", default=None,
                        help="serve this artifact (its SHA-256, or its folder under ROOT/artifacts) instead of "
                             "ROOT/current; it is verified against the fleet key like any other")
    parser.add_argument("--providers", default=",".join(inference.DEFAULT_PROVIDERS),
                        help="execution providers in order of preference, comma-separated (the profile's order)")
    parser.add_argument("--max-batch", type=int, default=8, help="rows per micro-batch (1: no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first request of a batch waits for companions")
    parser.add_argument("--cache-size", type=int, default=0, help="LRU cache entries keyed by input hash (0: off)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    parser.add_argument("--drift-window", type=int, default=DRIFT_WINDOW,
                        help="sampled requests in the sliding window of input drift statistics")
    parser.add_argument("--drift-interval-ms", type=float, default=SAMPLE_INTERVAL_S * 1000.0,
                        help="at most one request per this interval is sampled for input drift (0: every one the "
                             "drift worker keeps up with)")
    parser.add_argument("--shadow-margin-mb", type=float, default=DEFAULT_MARGIN_MB,
                        help="memory that must stay available after a shadow candidate is loaded (POST /v1/shadow "
                             "may ask for more with margin_mb)")


class Served:
    """What answers requests for one loaded model: the model, its batcher (if batching applies), its cache, and the
    drift watch of its inputs (None with the reason when its artifact carries no reference statistics)."""

    def __init__(self, model: LoadedModel, max_batch: int, max_wait_s: float, cache_size: int,
                 stats: ServeStats, drift: DriftWatch | None = None, drift_reason: str = "") -> None:
        self.model = model
        self.drift = drift
        self.drift_reason = drift_reason
        self.cache = ResultCache(cache_size)
        self.batcher: MicroBatcher | None = None
        if model.batchable and max_batch > 1:
            _, np = inference.import_runtime()
            self.batcher = MicroBatcher(model.run, lambda arrays: np.concatenate(arrays, axis=0),
                                        max_batch, max_wait_s, on_run=stats.record_run)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.drift is not None:
            self.drift.close()

    def drift_state(self) -> dict[str, Any]:
        if self.drift is None:
            return {"state": "off", "reason": self.drift_reason}
        return self.drift.describe()


class Ticket:
    """One inference request's hold on the model that was served when it began (a swap does not split it)."""

    __slots__ = ("announced", "served")

    def __init__(self, served: Served | None) -> None:
        self.served = served
        self.announced = False


class ModelServer:
    """The server's state, independent of HTTP: which model is served, and answering each endpoint."""

    def __init__(self, root: str, providers: list[str], model_path: str | None = None, max_batch: int = 8,
                 max_wait_ms: float = 5.0, cache_size: int = 0, threads: int | None = None,
                 shadow_margin_mb: float = DEFAULT_MARGIN_MB, drift_window: int = DRIFT_WINDOW,
                 drift_interval_ms: float = SAMPLE_INTERVAL_S * 1000.0) -> None:
        self.root = root
        self.providers = providers
        self.model_path = model_path
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.cache_size = cache_size
        self.threads = threads
        self.stats = ServeStats()
        self.served: Served | None = None
        self.reason = "starting"
        self.skipped: list[dict[str, str]] = []
        self._target: str | None = None
        self._folder: str | None = None  # the artifact folder of the model loaded (its golden outputs are there)
        self._loaded_once = False
        self.verified = VerifiedArtifacts(root)
        # The last artifact this server would not load (which file failed and why), until one loads.
        self.refused: dict[str, Any] | None = None
        self.shadow_margin_mb = shadow_margin_mb
        self.drift_window = drift_window
        self.drift_interval_s = drift_interval_ms / 1000.0
        self.shadow: Shadow | None = None
        # What the last shadow came to when none runs: its final figures, or why its candidate was refused.
        self.shadow_last: dict[str, Any] | None = None
        self._shadow_lock = threading.Lock()  # one start or stop at a time

    # --- which model --------------------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> dict[str, Any] | None:
        """Load the model again if ROOT/current points elsewhere (or when forced), or when the artifact last refused
        may have been repaired; the event to report, if any. Every load is verified first (verified.py)."""
        target = self._wanted()
        if self._loaded_once and not force and target == self._target and self.refused is None:
            return None
        retry = self._loaded_once and not force and target == self._target
        self._loaded_once = True
        self._target = target
        if target is None:
            self.refused = None
            self._swap(None, "no active model: {} does not point at an artifact; activate one "
                             "(`fleetdesk-agent activate SHA`)".format(os.path.join(self.root, "current")), [])
            return {"type": "event", "event": "model-unloaded", "reason": self.reason}
        sha = os.path.basename(os.path.normpath(target))
        try:
            path, files = self._verified_model(target)
        except AgentError as exc:
            return self._refuse(sha, exc, quiet=retry)
        self.refused = None
        try:
            model = inference.load_model(sha, path, self.providers, self.threads)
        except Exception as exc:  # whatever a model does to onnxruntime, the server stays up, not ready
            text = str(exc) if isinstance(exc, (ModelLoadError, RuntimeMissing, OSError)) else repr(exc)
            self._swap(None, f"model {sha} failed to load: {text}", [])
            return {"type": "event", "event": "model-failed", "model": sha, "reason": self.reason}
        try:
            drift: DriftWatch | None = DriftWatch(load_reference(target, files), self.drift_window,
                                                  self.drift_interval_s)
            drift_reason = ""
        except ReferenceMissing as exc:
            drift, drift_reason = None, str(exc)
        self._swap(Served(model, self.max_batch, self.max_wait_s, self.cache_size, self.stats, drift, drift_reason),
                   "", model.skipped)
        self._folder = target
        return {"type": "event", "event": "model-loaded", "model": model.sha, "provider": model.provider,
                "skipped": model.skipped, "batchable": model.batchable}

    def _verified_model(self, target: str) -> tuple[str, dict[str, Any]]:
        """(the .onnx to load, the versions of the files verified) of an artifact folder, verified against the fleet
        key (verified.py); AgentError naming the file otherwise. Only a file the signed manifest lists is loaded."""
        sha = os.path.basename(os.path.normpath(target))
        try:
            verdict = self.verified.verify(target)
            path = inference.model_file(target)
        except ModelLoadError as exc:  # the signed manifest names no model it lists
            raise AgentError(protocol.BAD_ARTIFACT, str(exc), file=exc.file or state.MANIFEST_NAME,
                             fix="rebuild the artifact on the laptop (fleetdesk model import) and push it again"
                             ) from None
        if not verdict.covers(path):  # the manifest changed between its verification and this read
            raise AgentError(protocol.BAD_ARTIFACT, f"artifact {sha}: {os.path.relpath(path, target)!r} was not "
                             "verified", fix="send SIGHUP to the model server to verify it again",
                             file=os.path.relpath(path, target))
        return path, dict(verdict.files)

    def _wanted(self) -> str | None:
        """The artifact folder to serve: --model's (an artifact id or folder), else the one ROOT/current points at."""
        if not self.model_path:
            return inference.active_artifact(self.root)
        under_root = os.path.join(self.root, "artifacts", self.model_path)
        return under_root if state.is_sha(self.model_path) else self.model_path

    def _refuse(self, sha: str, exc: AgentError, quiet: bool) -> dict[str, Any] | None:
        """The artifact failed its verification: the model in memory (verified when it was loaded) keeps serving,
        or nothing does; health, statistics and status name the file and why. `quiet`: a retry that found the
        same failure is not reported again."""
        before = self.refused
        self.refused = refusal(sha, exc, time.time())
        served = self.served
        if served is None:
            self._swap(None, "model {} refused: {}{}".format(
                sha, f"{exc.file}: " if exc.file else "", exc.message), [])
        if quiet and before is not None and all(before.get(k) == self.refused.get(k)
                                                for k in ("artifact", "file", "reason")):
            self.refused["at"] = before["at"]
            return None
        return {"type": "event", "event": "model-refused", "model": sha, "file": exc.file, "reason": exc.message,
                "fix": exc.fix, "serving": served.model.sha if served else None}

    def _swap(self, served: Served | None, reason: str, skipped: list[dict[str, str]]) -> None:
        old, self.served = self.served, served  # one reference assignment: requests see old or new
        self.reason = reason
        self.skipped = skipped
        if old is not None:
            old.close()  # requests already queued on the old model still get their answers
        shadow = self.shadow
        if shadow is not None and (served is None or served.model.sha != shadow.stats.active):
            # Its figures compare the candidate with the model it was started beside, no other.
            self.stop_shadow("the active model changed from {} to {}".format(
                shadow.stats.active, served.model.sha if served else "none"))

    def close(self) -> None:
        self._swap(None, "stopped", [])

    # --- the shadow candidate -------------------------------------------------------------------------------

    def start_shadow(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """POST /v1/shadow {"artifact": SHA, "share": 0..1, "queue": N, "margin_mb": MiB}: load the staged artifact
        SHA beside the active model (verified, memory checked) and mirror that share of requests to it; a running
        shadow is replaced. 200 with the shadow's state; 4xx with code, reason and fix (kept in shadow_last)."""
        try:
            request = json.loads(body.decode("utf-8") or "{}")
        except (UnicodeDecodeError, ValueError) as exc:
            return 400, {"error": f"the body is not JSON: {exc}"}
        if not isinstance(request, dict):
            request = {}
        artifact: Any = request.get("artifact")
        share: Any = request.get("share", DEFAULT_SHARE)
        size: Any = request.get("queue", DEFAULT_QUEUE)
        margin: Any = request.get("margin_mb", self.shadow_margin_mb)
        expires: Any = request.get("expires_s", SHADOW_EXPIRES_S)
        if not (isinstance(artifact, str) and state.is_sha(artifact) and _number(share) and 0 < share <= 1
                and isinstance(size, int) and not isinstance(size, bool) and size >= 1
                and _number(margin) and margin >= 0 and _number(expires) and expires > 0):
            return 400, {"error": 'the body must be {"artifact": SHA-256 of a staged artifact, "share": a number in '
                                  '(0, 1], "queue": an integer >= 1, "margin_mb": a number >= 0, "expires_s": a '
                                  'number > 0}; all but "artifact" may be left out', "code": protocol.BAD_ARGUMENTS}
        served = self.served
        if served is None:
            return 409, {"error": f"no active model to shadow: {self.reason}", "code": "not-ready"}
        # Loaded outside the lock: a load takes seconds on a small device, and the main loop's model switch (which
        # stops a shadow) must not wait for it. A running shadow keeps running until the new one is in place.
        try:
            shadow = self._load_candidate(served, artifact, float(share), size, float(margin))
        except ShadowRefused as exc:
            self.shadow_last = exc.record(artifact)
            return (422 if exc.code != "low-memory" else 507), {"error": exc.message, "code": exc.code,
                                                                "fix": exc.fix, "file": exc.file}
        with self._shadow_lock:
            now = self.served
            if now is None or now.model.sha != served.model.sha:
                return 409, {"error": f"the active model changed while candidate {artifact} loaded; nothing is "
                                      "shadowed", "code": "not-ready", "fix": "start the shadow again"}
            old, self.shadow = self.shadow, shadow
            shadow.expires_s = float(expires)
            shadow.start()
            self.shadow_last = None
        if old is not None:
            old.stop()
        return 200, shadow.describe()

    def _load_candidate(self, served: Served, artifact: str, share: float, size: int, margin_mb: float) -> Shadow:
        folder = state.artifact_dir(self.root, artifact)
        if not os.path.isdir(folder):
            raise ShadowRefused(protocol.NOT_FOUND, f"candidate {artifact} is not staged on this device ({folder})",
                                "stage the artifact on the device first (it lands in ROOT/artifacts/SHA)")
        if artifact == served.model.sha:
            raise ShadowRefused(protocol.BAD_ARGUMENTS, f"candidate {artifact} is the active model itself",
                                "shadow another artifact than the one ROOT/current points at")
        path, files = self._verified_candidate(folder, artifact)
        check_memory(artifact, artifact_bytes(folder, files), margin_mb, available_mb())
        try:
            candidate = CandidateProcess(artifact, path, self.providers, CANDIDATE_THREADS)
        except CandidateFailed as exc:  # whatever a model does to onnxruntime, the active model keeps serving
            raise ShadowRefused("load-failed", f"candidate {artifact} failed to load: {exc}",
                                "check that the model opens with onnxruntime on this device") from None
        try:
            # Its process opened the file by name after the verification: the files must still be the ones verified
            # (the verdict's cache makes this a few stat calls when nothing changed).
            if self._verified_candidate(folder, artifact)[1] != files:
                raise ShadowRefused("changed", f"candidate {artifact} changed on disk while it loaded",
                                    "start the shadow again; if it recurs, find what writes to ROOT/artifacts")
            mismatch = same_signature(served.model, candidate)
            if mismatch:
                raise ShadowRefused(protocol.BAD_ARGUMENTS,
                                    f"candidate {artifact} cannot shadow {served.model.sha}: {mismatch}",
                                    "shadow a model with the same inputs and outputs")
        except ShadowRefused:
            candidate.close()
            raise
        return Shadow(candidate, served.model.sha, share, size)

    def _verified_candidate(self, folder: str, artifact: str) -> tuple[str, dict[str, Any]]:
        """_verified_model for a candidate: a failure is the shadow's refusal, naming the file."""
        try:
            return self._verified_model(folder)
        except AgentError as exc:
            raise ShadowRefused(exc.code, f"candidate {artifact} refused: {exc.message}", exc.fix or "",
                                file=exc.file) from None

    def stop_shadow(self, reason: str = "stopped", *, only: Shadow | None = None) -> tuple[int, dict[str, Any]]:
        """DELETE /v1/shadow: stop mirroring and unload the candidate; 200 with its final figures (kept in
        shadow_last), 404 when none runs (or, with `only`, when another one runs now)."""
        with self._shadow_lock:
            if only is not None and self.shadow is not only:
                return 404, {"error": "that shadow is no longer running", "code": protocol.NOT_FOUND}
            shadow, self.shadow = self.shadow, None
            if shadow is None:
                return 404, {"error": "no shadow is running", "code": protocol.NOT_FOUND, "last": self.shadow_last}
            shadow.stop()
            self.shadow_last = shadow.describe("stopped", reason)
            return 200, self.shadow_last

    def expire_shadow(self) -> dict[str, Any] | None:
        """Stop a shadow nothing stopped within its expiry (the laptop that started it is gone): its candidate does
        not stay loaded beside the model for good. The event to report, or None."""
        shadow = self.shadow
        if shadow is None or time.time() - shadow.started_at < shadow.expires_s:
            return None
        status, last = self.stop_shadow(f"expired: nothing stopped it within {shadow.expires_s:g} s of its start "
                                        "(the FleetDesk that started it is gone); the candidate was unloaded",
                                        only=shadow)
        if status != 200:
            return None
        return {"type": "event", "event": "shadow-expired", "candidate": last.get("candidate"),
                "reason": last.get("reason")}

    def shadow_state(self) -> dict[str, Any] | None:
        """The running shadow's figures, else what the last one came to (stopped or refused), else None."""
        shadow = self.shadow
        return shadow.describe() if shadow is not None else self.shadow_last

    # --- endpoints ----------------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        served = self.served
        body = {"ready": served is not None, "model": served.model.sha if served else None,
                "provider": served.model.provider if served else None,
                "reason": self.reason if served is None else "", "skipped": self.skipped, "refused": self.refused,
                "shadow": shadow_headline(self.shadow_state()),
                "drift": _drift_summary(served.drift_state()) if served else None}
        return (200 if served is not None else 503), body

    def model_info(self) -> tuple[int, dict[str, Any]]:
        served = self.served
        if served is None:
            return 503, {"error": f"not ready: {self.reason}"}
        return 200, served.model.describe()

    def check(self, artifact: str) -> tuple[int, dict[str, Any]]:
        """GET /v1/check?artifact=SHA: the agent's `check` on the model loaded here (check.compare), when that is
        SHA; 409 when another model (or none) is loaded, 422 with code and fix when the check cannot be made."""
        served, folder = self.served, self._folder
        if served is None or served.model.sha != artifact or folder is None:
            return 409, {"error": f"the server has {served.model.sha if served else 'no model'} loaded, not "
                                  f"{artifact}", "code": "not-loaded"}
        _, np = inference.import_runtime()
        try:
            _, path = check.golden_of(self.root, folder)
            return 200, check.compare(np, served.model, path)
        except check.CheckFailed as exc:
            return 422, {"error": exc.message, "code": exc.code, "fix": exc.fix}

    def stats_body(self) -> dict[str, Any]:
        served = self.served
        body = self.stats_file()
        body.update({"ready": served is not None, "reason": self.reason if served is None else "",
                     "runs": self.stats.runs, "max_batch": self.max_batch,
                     "max_wait_ms": self.max_wait_s * 1000.0, "batching": bool(served and served.batcher),
                     "drift": served.drift_state() if served else None})
        return body

    def stats_file(self) -> dict[str, Any]:
        served = self.served
        return stats_document(self.stats.snapshot(), served.model.sha if served else None,
                              served.model.provider if served else None, len(served.cache) if served else 0,
                              self.refused, self.shadow_state(),
                              # Per input only: telemetry carries this file every second; channels are in /v1/stats.
                              _drift_summary(served.drift_state()) if served else None)

    def begin(self) -> Ticket:
        """A POST /v1/infer starts: fix which model answers it, and tell its batcher one is on the way."""
        ticket = Ticket(self.served)
        if ticket.served is not None and ticket.served.batcher is not None:
            ticket.served.batcher.expect()
            ticket.announced = True
        return ticket

    def end(self, ticket: Ticket) -> None:
        if ticket.announced and ticket.served is not None and ticket.served.batcher is not None:
            ticket.served.batcher.forget()  # it never reached the batcher
        ticket.announced = False

    def infer(self, body: bytes, ticket: Ticket | None = None) -> tuple[int, dict[str, Any]]:
        """(status, answer) of one POST /v1/infer; every failure is a JSON error, never an exception."""
        started = time.monotonic()
        ticket = ticket if ticket is not None else Ticket(self.served)
        try:
            answer = self._infer(body, ticket, started)
        except RequestError as exc:
            self.stats.record_request(None, ok=False)
            return exc.status, {"error": exc.message}
        ms = (time.monotonic() - started) * 1000.0
        answer["ms"] = round(ms, 3)
        self.stats.record_request(ms, ok=True, cached=answer["cached"])
        return 200, answer

    def _infer(self, body: bytes, ticket: Ticket, started: float) -> dict[str, Any]:
        served = ticket.served
        if served is None:
            raise RequestError(503, f"no model is ready: {self.reason}")
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RequestError(400, f"the body is not JSON: {exc}") from exc
        model = served.model
        feeds = inference.decode_inputs(model, payload)
        if served.drift is not None:
            served.drift.offer(feeds)  # one clock read; now and then a queue put for the drift worker
        key = inference.input_key(model.sha, feeds) if served.cache.size else None
        hit = served.cache.get(key) if key else None
        if hit is not None:
            return {"outputs": hit, "model": model.sha, "batch": 0, "cached": True}
        try:
            if served.batcher is not None:
                outputs, batch = served.batcher.submit(feeds, timeout=RUN_TIMEOUT_S, expected=ticket.announced)
                ticket.announced = False
            else:
                outputs = model.run(feeds)
                first = next(iter(feeds.values()))
                batch = int(first.shape[0]) if first.ndim else 1
                self.stats.record_run(batch)
        except Exception as exc:  # onnxruntime's own exception types; the message is what the caller needs
            raise RequestError(500, f"onnxruntime failed to run model {model.sha}: {inference.one_line(exc)}") from exc
        encoded = {name: inference.encode_tensor(name, outputs[i]) for i, name in enumerate(model.output_names)}
        if key:
            served.cache.put(key, encoded)
        shadow = self.shadow
        if shadow is not None and shadow.stats.active == model.sha:
            # Queued for the shadow worker, never waited for: the answer below goes out as it would without.
            shadow.offer(feeds, outputs, (time.monotonic() - started) * 1000.0)
        return {"outputs": encoded, "model": model.sha, "batch": batch, "cached": False}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: an application sends many requests on one connection
    server_version = "fleetdesk-agent"
    timeout = 60  # a client that stops sending mid-request frees its thread
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's delayed ACK
    # (40 ms on Linux) and every answer takes 40 ms more: measured here, 44 ms per request with one client.
    disable_nagle_algorithm = True
    server: _HTTPServer  # run() serves this handler with no other server

    @property
    def app(self) -> ModelServer:
        return self.server.app

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stdout carries the agent's JSON lines; an access log would only fill the device's disk

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/health":
            self._send(*self.app.health())
        elif path == "/v1/model":
            self._send(*self.app.model_info())
        elif path == "/v1/stats":
            self._send(200, self.app.stats_body())
        elif path == "/v1/shadow":
            shadow = self.app.shadow_state()
            self._send(200 if shadow is not None else 404, shadow or {"error": "no shadow has run",
                                                                      "code": protocol.NOT_FOUND})
        elif path == "/v1/check":
            query = urllib.parse.parse_qs(self.path.partition("?")[2])
            self._send(*self.app.check((query.get("artifact") or [""])[0]))
        elif path == "/v1/infer":
            self._send(405, {"error": "use POST for /v1/infer"})
        else:
            self._send(404, {"error": f"no endpoint {json.dumps(path)}: there are /v1/health, /v1/model, "
                                      "/v1/stats, /v1/check?artifact=SHA, /v1/shadow, POST /v1/infer, "
                                      "POST /v1/shadow and DELETE /v1/shadow"})

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/v1/shadow":
            self._send(404, {"error": f"DELETE goes to /v1/shadow (stop the shadow), not {json.dumps(path)}"},
                       close=True)
            return
        self._send(*self.app.stop_shadow())

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/shadow":
            body = self._read_body()
            if body is not None:
                self._send(*self.app.start_shadow(body))
            return
        if path != "/v1/infer":
            self._send(404 if path not in ("/v1/health", "/v1/model", "/v1/stats", "/v1/check") else 405,
                       {"error": f"POST goes to /v1/infer or /v1/shadow, not {json.dumps(path)}"})
            self.close_connection = True  # its body, if any, was not read
            return
        ticket = self.app.begin()
        try:
            body = self._read_body()
            if body is None:
                return
            self._send(*self.app.infer(body, ticket))
        finally:
            self.app.end(ticket)

    def _read_body(self) -> bytes | None:
        limit = int(self.server.max_body_bytes)
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "send the body with a Content-Length, not Transfer-Encoding")
            return None
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(411 if length_text is None else 400, "the request needs a valid Content-Length")
            return None
        if length > limit:
            self.app.stats.record_request(None, ok=False)
            self._refuse(413, f"the body is {length} bytes, more than --max-body-mb allows ({limit} bytes); "
                              "send smaller requests or restart serve with a larger --max-body-mb", limit)
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _refuse(self, status: int, message: str, drain_limit: int = 0) -> None:
        """Answer before reading the body, then close; drain at most `drain_limit` bytes so the client
        can read the answer instead of a connection reset (no more than the limit is ever read)."""
        self._send(status, {"error": message}, close=True)
        if drain_limit:
            try:
                self.connection.settimeout(1.0)
                left = drain_limit
                while left > 0:
                    chunk = self.connection.recv(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass

    def _send(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away; nothing to answer


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    # Set by run() as soon as the socket is bound, before any request is served.
    app: ModelServer
    max_body_bytes: int


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _drift_summary(drift: dict[str, Any]) -> dict[str, Any]:
    """The drift in /v1/health and serve-stats.json: per input its scores (the channels' figures are in /v1/stats)."""
    if "inputs" not in drift:
        return drift
    inputs = {name: {"requests": d["requests"], "psi": d["psi"], "mean_shift_std": d["mean_shift_std"]}
              for name, d in drift["inputs"].items()}
    return dict(drift, inputs=inputs)


def _error(emit: Callable[[dict[str, Any]], None], code: str, message: str, fix: str) -> int:
    emit({"type": "error", "code": code, "message": message, "fix": fix})
    return 2


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    root = str(args.root)
    # The device's server (not one of another --model) owns the confirmation deadline: it is supervised, so a
    # logout or a reboot does not end it for good. At start, before anything that can fail, it settles what a
    # reboot let expire; then once a tick (below) it reverts an unconfirmed activation whose deadline passed.
    owns_deadline = args.model is None
    settle_errors: list[str] = []
    if owns_deadline:
        _keep_deadline(root, emit, settle_errors)
    try:
        inference.import_runtime()
    except RuntimeMissing as exc:
        return _error(emit, "no-runtime", str(exc), "run `fleetdesk provision DEVICE`")
    if (args.max_batch < 1 or args.max_wait_ms < 0 or args.cache_size < 0 or args.max_body_mb <= 0
            or args.shadow_margin_mb < 0 or args.drift_window < 1 or args.drift_interval_ms < 0):
        return _error(emit, protocol.BAD_ARGUMENTS, "--max-batch and --drift-window must be >= 1, --max-wait-ms, "
                      "--cache-size, --shadow-margin-mb and --drift-interval-ms >= 0, --max-body-mb > 0",
                      "pass values in those ranges")
    providers = [p.strip() for p in str(args.providers).split(",") if p.strip()]
    app = ModelServer(root, providers, model_path=args.model, max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, cache_size=args.cache_size, threads=args.threads,
                      shadow_margin_mb=args.shadow_margin_mb, drift_window=args.drift_window,
                      drift_interval_ms=args.drift_interval_ms)
    try:
        httpd = _HTTPServer((args.host, args.port), _Handler)
    except OSError as exc:
        fix = ("stop the other server on that port or pass another --port" if exc.errno == errno.EADDRINUSE
               else "check --host and --port")
        return _error(emit, "port-unavailable", f"cannot listen on {args.host}:{args.port}: {exc}", fix)
    httpd.app = app
    httpd.max_body_bytes = int(args.max_body_mb * 1024 * 1024)

    flags = {"stop": False, "reload": False}
    wake = threading.Event()  # set by the signal handlers: the loop sleeps until the next tick or a signal
    _install_signals(flags, wake)
    run_dir = os.path.join(root, "run")
    os.makedirs(run_dir, exist_ok=True)
    pid_file = os.path.join(run_dir, "serve.pid")
    with open(pid_file, "w", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    address_file = os.path.join(run_dir, check.SERVE_ADDRESS)
    if args.model is None:  # a server of another model (--model) is not the one `check` should ask
        write_atomically(address_file, {"host": args.host, "port": httpd.server_address[1], "pid": os.getpid()})
    stats_path = os.path.join(run_dir, "serve-stats.json")
    # HTTP answers first (health says "loading") so that a large model's load does not look like a dead server.
    app.reason = "loading the model"
    # poll_interval only bounds how long shutdown() waits for the loop; every wakeup costs CPU on a small device.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 1.0},
                              name="fleetdesk-http", daemon=True)
    thread.start()
    try:
        first = app.refresh(force=True)
        health = app.health()[1]
        emit({"type": "event", "event": "serving", "host": args.host, "port": httpd.server_address[1],
              "pid": os.getpid(), "ready": health["ready"], "model": health["model"],
              "provider": health["provider"], "reason": health["reason"], "skipped": health["skipped"],
              "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "cache_size": args.cache_size})
        if first is not None and first["event"] in ("model-failed", "model-refused"):
            _report(emit, first)
        next_tick = 0.0
        while not flags["stop"]:
            if flags["reload"]:
                flags["reload"] = False
                _report(emit, app.refresh(force=True))
                # At once, not at the next tick: `activate --wait-load` watches this file for the new model.
                _write_stats(app, stats_path)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + STATS_INTERVAL_S
                if owns_deadline:
                    _keep_deadline(root, emit, settle_errors)
                _report(emit, app.refresh())
                _report(emit, app.expire_shadow())
                _write_stats(app, stats_path)
            # Signals only set flags and `wake`: acted on at once, and no wakeup in between (idle costs nothing).
            wake.wait(max(0.0, next_tick - time.monotonic()))
            wake.clear()
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.close()
        _write_stats(app, stats_path)
        _remove_pid_file(pid_file)
        if args.model is None and (check.serve_address(root) or (0, 0, 0))[2] == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(address_file)  # only its own: a newer server may have written the file since
    snapshot = app.stats.snapshot()
    _report(emit, {"type": "result", "command": "serve", "requests": snapshot["requests"],
                   "errors": snapshot["errors"], "cache_hits": snapshot["cache_hits"], "runs": snapshot["runs"]})
    return 0


def _keep_deadline(root: str, emit: Callable[[dict[str, Any]], None], errors: list[str]) -> None:
    """Revert an unconfirmed activation whose deadline passed (or finish a switch a crash interrupted); the loop's
    next refresh loads what ROOT/current then names. A state.json that cannot be read is reported once, not every
    tick, and never stops the server."""
    try:
        record = state.settle_due(root, state.MODEL_SERVER)
    except AgentError as exc:
        if exc.message not in errors:
            errors.append(exc.message)
            _report(emit, {"type": "event", "event": "settle-failed", "message": exc.message, "fix": exc.fix})
        return
    errors.clear()
    if record is not None:
        _report(emit, {"type": "event", "event": "reverted", **record})


def _report(emit: Callable[[dict[str, Any]], None], event: dict[str, Any] | None) -> None:
    """Emit, but a reader that went away (a closed SSH channel) never stops the server."""
    if event is not None:
        try:
            emit(event)
        except (OSError, ValueError):
            pass


def _write_stats(app: ModelServer, path: str) -> None:
    try:
        write_atomically(path, app.stats_file())
    except OSError:
        pass  # a full disk must not take inference down; the next tick tries again


def _install_signals(flags: dict[str, bool], wake: threading.Event) -> None:
    def stop(signum: int, frame: Any) -> None:
        flags["stop"] = True
        wake.set()

    def reload(signum: int, frame: Any) -> None:
        flags["reload"] = True
        wake.set()

    try:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
    except ValueError:
        pass  # not the main thread (run() called from a test's thread): no signals, the caller stops it


def _remove_pid_file(path: str) -> None:
    try:
        with open(path, encoding="utf-8") as handle:
            mine = handle.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError:
        pass
