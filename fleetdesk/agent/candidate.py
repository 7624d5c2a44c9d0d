"""The shadow candidate in a process of its own, at the lowest CPU priority the device gives it.

Why a process: in the model server's process the candidate's runs competed with the requests for the same cores, and
the requests answered meanwhile paid for it (callers' p95 1.19x the shadow-off figure at the default share on the
lab's arm64 device, 7 rounds of 40 s on a quiet host, benchmarks/shadow_latency.py, 2026-12-08). Lowering the priority
of a thread does not help: it holds the GIL between runs, and a starved holder stalls every request thread (5.7x).
A process shares no GIL with the server; at SCHED_IDLE (else nice 19) the kernel runs it on what the requests leave,
so on a busy device it falls behind, and the shadow's bounded queue drops mirrored requests and counts them, as the
shadow step promises ("dropped first").

The server starts it with the verified model file; it loads the model at normal priority (a load must not starve),
then lowers its own and answers one request at a time over its stdin and stdout: frames of a 4-byte length and a
pickle, both ends FleetDesk's own code. It ends when its stdin ends, which is also what happens when the server dies.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from .inference import load_model, one_line

_LENGTH = struct.Struct(">I")
LOAD_TIMEOUT_S = 300.0  # python, numpy and onnxruntime start and the model loads: slow on a Pi


class CandidateFailed(Exception):
    """The candidate's process could not load the model, or ended; the message says which and why."""


def write_frame(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the other end closed the pipe")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the pipe inside a frame")
    return pickle.loads(data)  # noqa: S301 - a private pipe between the server and the child it started


def lowest_priority() -> str:
    """Ask the kernel to run this process only when nothing else wants the CPU; which priority it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):  # not Linux, or a kernel or emulator without it
        pass
    try:
        return f"nice {os.nice(19 - os.nice(0))}"
    except OSError:
        return "unchanged"


class CandidateProcess:
    """The server's handle on the candidate's process: `run(feeds)` answers as LoadedModel.run does."""

    def __init__(self, sha: str, path: str, providers: Sequence[str], threads: int,
                 load_timeout: float = LOAD_TIMEOUT_S) -> None:
        self.sha = sha
        self.path = path
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._errors = tempfile.TemporaryFile()  # what the process says on stderr, read if it fails
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._process = subprocess.Popen(
            # __name__: the agent is the package fleetdesk.agent here and fleetdesk_agent on a device.
            [sys.executable, "-m", __name__, sha, path, json.dumps(list(providers)), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors, env=env, close_fds=True)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._to, self._from = self._process.stdin, self._process.stdout
        try:
            ready, _, _ = select.select([self._from], [], [], load_timeout)
            if not ready:
                raise CandidateFailed(f"it did not load within {load_timeout:g} s")
            kind, detail = read_frame(self._from)
            if kind != "loaded":
                raise CandidateFailed(str(detail))
        except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError) as exc:
            said = self._said(exc)
            self.close()
            raise CandidateFailed(f"its process ended while it loaded: {said}") from None
        except CandidateFailed:
            self.close()
            raise
        self.inputs: list[tuple[str, str | None, list[int | None]]] = detail["inputs"]
        self.output_names: list[str] = detail["outputs"]
        self.threads: int = detail["threads"]
        self.priority: str = detail["priority"]
        self.pid = self._process.pid

    def _said(self, exc: BaseException) -> str:
        """The last line the process wrote on stderr (a traceback's), else what the pipe said."""
        try:
            self._errors.seek(0)
            lines = self._errors.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):  # closed: the shadow stopped while this run waited
            lines = []
        return lines[-1] if lines else one_line(exc)

    def run(self, feeds: dict[str, Any]) -> tuple[list[Any], float]:
        """The candidate's outputs for `feeds` and the milliseconds its run took in its process (its wait for the
        CPU before the run is not counted: that is the priority it was given, not the model's speed)."""
        with self._lock:
            try:
                write_frame(self._to, feeds)
                kind, detail, ms = read_frame(self._from)
            except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError) as exc:
                raise CandidateFailed(f"the candidate's process ended: {self._said(exc)}") from None
        if kind != "ok":
            raise CandidateFailed(str(detail))
        return detail, ms

    def ended(self) -> bool:
        return self._process.poll() is not None

    def close(self) -> None:
        """End the process. Killed, not asked: the shadow has stopped feeding it, and a polite end could wait
        behind a write to a process that the kernel is not running."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._to, self._from, self._errors):
            try:
                stream.close()
            except OSError:
                pass


def main(argv: list[str]) -> int:
    sha, path, providers, threads = argv[1], argv[2], json.loads(argv[3]), int(argv[4])
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever a library prints stays out of the frames
    try:
        model = load_model(sha, path, providers, threads)
    except Exception as exc:  # onnxruntime's own types: the server reports it, the active model is not concerned
        write_frame(answers, ("failed", one_line(exc)))
        return 1
    priority = lowest_priority()
    write_frame(answers, ("loaded", {
        "inputs": [(s.name, s.dtype, s.dims) for s in model.inputs], "outputs": model.output_names,
        "threads": model.session.get_session_options().intra_op_num_threads, "priority": priority}))
    while True:
        try:
            feeds = read_frame(requests)
        except EOFError:
            return 0
        started = time.monotonic()
        try:
            outputs = model.run(feeds)
        except Exception as exc:
            write_frame(answers, ("error", f"onnxruntime failed to run candidate {sha}: {one_line(exc)}", 0.0))
            continue
        write_frame(answers, ("ok", outputs, (time.monotonic() - started) * 1000.0))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
