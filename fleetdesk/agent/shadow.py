"""The model server's shadow candidate: a staged artifact, verified like the active one, loaded beside it in a
process of its own (candidate.py) and fed a share of live requests by one worker thread, off the request path. The
caller is answered by the active model and never waits: a mirrored request that finds the bounded queue full is
dropped and counted.

`fleetdesk-agent shadow start SHA | stop | status` asks the running server (ROOT/run/serve-address.json, as `check`
does) over its localhost HTTP: POST, DELETE and GET /v1/shadow.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import check, procfs, protocol
from .candidate import LOAD_TIMEOUT_S, CandidateFailed, CandidateProcess
from .inference import LoadedModel
from .protocol import AgentError
from .shadowstats import ShadowStats

# One live request in four by default: with the candidate on a thread of the server, mirroring every request cost the
# requests answered meanwhile 9-14 % of their p95 on the lab's x86_64 device and 10-30 % on the arm64 one (under
# qemu), one in four 1-3 % on x86_64 and 1-19 % on arm64; in its own process at SCHED_IDLE one in four measured
# -5 % and +3 % (benchmarks/shadow_latency.py in `make bench`; README, "Shadow on against off"). The plan's default
# (fleetdesk.rollout.policy.ShadowPolicy) is the same.
DEFAULT_SHARE = 0.25
DEFAULT_QUEUE = 16  # mirrored requests waiting for the candidate; a busy device drops beyond this, never blocks
DEFAULT_MARGIN_MB = 256.0  # memory that must stay available after the candidate is loaded (the profile may say more)
STOP_TIMEOUT_S = 30.0  # how long stopping waits for the candidate's run in progress
# The candidate runs in its own process at the lowest priority (fleetdesk/agent/candidate.py, which says why) with one
# onnxruntime intra-op thread: no thread pool of its own spinning beside the active model's.
CANDIDATE_THREADS = 1


class ShadowRefused(Exception):
    """The candidate is not loaded: `code`, a message naming the problem and a `fix` (an error line's fields)."""

    def __init__(self, code: str, message: str, fix: str, file: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.fix, self.file = code, message, fix, file

    def record(self, artifact: str) -> dict[str, Any]:
        return {"state": "refused", "candidate": artifact, "code": self.code, "reason": self.message,
                "fix": self.fix, "file": self.file, "at": round(time.time(), 3)}


def available_mb(meminfo_path: str = "/proc/meminfo") -> float | None:
    """MemAvailable in MiB (free + buffers + cached on kernels without it), None when it cannot be read."""
    try:
        with open(meminfo_path, encoding="ascii") as handle:
            figures = procfs.memory(procfs.parse_meminfo(handle.read()))
    except OSError:
        return None
    value = figures["available_mb"]
    return None if value is None else float(value)


def check_memory(artifact: str, file_bytes: int, margin_mb: float, available: float | None) -> None:
    """ShadowRefused unless `available` MiB minus the candidate's files leaves at least `margin_mb`."""
    need_mb = file_bytes / (1024.0 * 1024.0)
    if available is None:
        raise ShadowRefused("low-memory", f"candidate {artifact} not loaded: free memory cannot be read from "
                            "/proc/meminfo", "run the shadow on a Linux device whose /proc is mounted")
    if available - need_mb < margin_mb:
        raise ShadowRefused("low-memory", f"candidate {artifact} not loaded: {available:.0f} MiB available, its "
                            f"files take {need_mb:.0f} MiB, which would leave "
                            f"{available - need_mb:.0f} MiB, under the margin of {margin_mb:.0f} MiB",
                            "free memory on the device, or skip the shadow step for this device")


def same_signature(active: LoadedModel, candidate: CandidateProcess) -> str | None:
    """Why the candidate cannot shadow the active model (their inputs or outputs differ), or None."""
    ours = [(s.name, s.dtype, s.dims) for s in active.inputs]
    if ours != [(name, dtype, list(dims)) for name, dtype, dims in candidate.inputs]:
        def text(specs: Any) -> str:
            return ", ".join(f"{name} {dtype} {dims}" for name, dtype, dims in specs)
        return f"its inputs ({text(candidate.inputs)}) differ from the active model's ({text(ours)})"
    if active.output_names != candidate.output_names:
        return f"its outputs {candidate.output_names} differ from the active model's {active.output_names}"
    return None


def artifact_bytes(folder: str, files: dict[str, Any]) -> int:
    """The size of the artifact's files a verification read (verified.Verdict.files: real path -> stat key)."""
    inside = os.path.realpath(folder) + os.sep
    return sum(key[2] for path, key in files.items() if key is not None and path.startswith(inside))


class Shadow:
    """One candidate beside the active model: `offer` from request threads, one worker runs and compares."""

    def __init__(self, candidate: CandidateProcess, active: str, share: float,
                 queue_size: int = DEFAULT_QUEUE) -> None:
        self.candidate = candidate
        self.share = share
        self.queue_size = queue_size
        self.stats = ShadowStats(candidate.sha, active, candidate.output_names)
        self.started_at = time.time()
        self.expires_s = math.inf  # the server sets it: stopped by itself this long after its start
        self._queue: queue.Queue[tuple[dict[str, Any], list[Any], float] | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        # Which requests are mirrored: every time the running share crosses a whole request (no randomness, so a
        # share of 0.25 mirrors exactly every fourth request).
        self._credit = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="fleetdesk-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, feeds: dict[str, Any], outputs: list[Any], active_ms: float) -> None:
        """A request the active model answered: mirror it if its share says so and the queue has room."""
        with self._lock:
            if self._closed:
                return
            self._credit += self.share
            if self._credit < 1.0 - 1e-9:
                return
            self._credit -= 1.0
            try:
                self._queue.put_nowait((feeds, outputs, active_ms))
                queued = True
            except queue.Full:
                queued = False
            self.stats.count_offer(queued)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            feeds, active_outputs, active_ms = job
            try:
                outputs, candidate_ms = self.candidate.run(feeds)
            except CandidateFailed as exc:  # counted; the active model is not concerned
                self.stats.record_failure(str(exc))
                continue
            self.stats.record(active_outputs, outputs, active_ms, candidate_ms)

    def stop(self) -> None:
        """Stop mirroring, let the worker finish what is queued (for up to STOP_TIMEOUT_S), and end the
        candidate's process."""
        with self._lock:
            self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)  # the worker empties the queue, so this finds room
            self._thread.join(STOP_TIMEOUT_S)
        self.candidate.close()

    def queued(self) -> int:
        return self._queue.qsize()

    def describe(self, state: str = "running", reason: str = "") -> dict[str, Any]:
        figures = self.stats.snapshot()
        return {"state": state, "reason": reason, "share": self.share, "queue_size": self.queue_size,
                "queued": self.queued(), "priority": self.candidate.priority, "started_at": round(self.started_at, 3),
                "expires_s": self.expires_s if math.isfinite(self.expires_s) else None, **figures}


# --- the agent command: start, stop and read the running server's shadow ------------------------------------



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"),
                        help="start: load ARTIFACT beside the active model and mirror requests to it; stop: unload "
                             "it and print its final figures; status: the figures now")
    parser.add_argument("artifact", nargs="?", default=None, help="(start) the staged artifact's SHA-256")
    parser.add_argument("--share", type=float, default=DEFAULT_SHARE,
                        help=f"(start) share of requests mirrored, in (0, 1] (default {DEFAULT_SHARE:g})")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE,
                        help="(start) mirrored requests that may wait for the candidate; more are dropped")
    parser.add_argument("--expires", type=float, default=None, metavar="S",
                        help="(start) stop by itself S seconds after starting if nothing stopped it (default: the "
                             "server's, an hour): a laptop that went away leaves no candidate loaded")
    parser.add_argument("--margin-mb", type=float, default=None,
                        help="(start) memory that must stay available once it is loaded (default: the server's "
                             "--shadow-margin-mb)")


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    root = str(args.root)
    if args.action == "start":
        if not args.artifact:
            raise AgentError(protocol.BAD_ARGUMENTS, "shadow start needs the candidate artifact's SHA-256",
                             fix="fleetdesk-agent shadow start SHA [--share S]")
        body: dict[str, Any] = {"artifact": args.artifact, "share": args.share, "queue": args.queue}
        if args.margin_mb is not None:
            body["margin_mb"] = args.margin_mb
        if args.expires is not None:
            body["expires_s"] = args.expires
        status, answer = _ask(root, "POST", body)
    else:
        status, answer = _ask(root, "DELETE" if args.action == "stop" else "GET", None)
    if status != 200:
        raise AgentError(str(answer.get("code") or "shadow-failed"), str(answer.get("error")),
                         fix=str(answer.get("fix") or "see the model server's answer above"),
                         file=answer.get("file"))
    emit(protocol.result("shadow", action=args.action, **answer))
    return protocol.EXIT_OK


def _ask(root: str, method: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    address = check.serve_address(root)
    no_server = AgentError("no-server", f"no model server answers for {root} (no {check.SERVE_ADDRESS} in "
                           f"{os.path.join(root, 'run')}, or nothing listens there)",
                           fix="start the model server (fleetdesk-agent serve) with the active model")
    if address is None:
        raise no_server
    host, port, _ = address
    try:
        # As long as the server waits for the candidate's process to load it: starting is what takes time.
        conn = http.client.HTTPConnection(host, port, timeout=LOAD_TIMEOUT_S)
        try:
            data = json.dumps(body).encode("utf-8") if body is not None else None
            conn.request(method, "/v1/shadow", body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read().decode("utf-8"))
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        raise no_server from None
    if not isinstance(answer, dict):
        raise no_server
    return response.status, answer
