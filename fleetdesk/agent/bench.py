"""`bench ARTIFACT`: latency of a model on this device with synthetic inputs of its declared shapes,
on the first execution provider (of the profile's order) that opens it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from . import inference, protocol
from .servestats import percentile

# At most this many progress events per run, whatever --runs is (they cross an SSH channel).
PROGRESS_EVENTS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="an artifact's sha256 under ROOT/artifacts, an artifact directory or an .onnx")
    parser.add_argument("--runs", type=int, default=50, help="timed inferences")
    parser.add_argument("--warmup", type=int, default=5, help="untimed inferences first")
    parser.add_argument("--providers", default=",".join(inference.DEFAULT_PROVIDERS),
                        help="execution providers in order of preference, comma-separated")
    parser.add_argument("--batch", type=int, default=1, help="rows for a dynamic first dimension")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def _error(emit: Callable[[dict[str, Any]], None], code: str, message: str, fix: str) -> int:
    emit({"type": "error", "code": code, "message": message, "fix": fix})
    return 2


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        return _error(emit, protocol.BAD_ARGUMENTS, "--runs and --batch must be >= 1 and --warmup >= 0",
                      "pass values in those ranges")
    try:
        inference.import_runtime()
    except inference.RuntimeMissing as exc:
        return _error(emit, "no-runtime", str(exc), "run `fleetdesk provision DEVICE`")
    providers = [p.strip() for p in str(args.providers).split(",") if p.strip()]
    try:
        sha, path = inference.resolve_model(str(args.root), args.artifact)
        model = inference.load_model(sha, path, providers, args.threads)
        feeds = inference.synthetic_inputs(model, batch=args.batch)
    except inference.ModelLoadError as exc:
        code = protocol.NOT_FOUND if str(exc).startswith("no artifact") else "model-load-failed"
        if code == protocol.NOT_FOUND:
            fix = "push the artifact to the device first (it lands in ROOT/artifacts/SHA), or give a path on it"
        else:
            fix = "check that the model opens with onnxruntime on the laptop, or list other --providers"
        return _error(emit, code, str(exc), fix)
    except OSError as exc:
        return _error(emit, "model-load-failed", f"cannot read {args.artifact}: {exc}",
                      "check the artifact's files on the device")
    try:
        for _ in range(args.warmup):
            model.run(feeds)
        every = max(1, args.runs // PROGRESS_EVENTS)
        times: list[float] = []
        for index in range(args.runs):
            started = time.perf_counter()
            model.run(feeds)
            times.append((time.perf_counter() - started) * 1000.0)
            if (index + 1) % every == 0 or index + 1 == args.runs:
                emit({"type": "event", "event": "progress", "done": index + 1, "total": args.runs})
    except Exception as exc:  # onnxruntime's own exception types
        return _error(emit, "inference-failed", f"model {sha} failed on {model.provider}: {inference.one_line(exc)}",
                      "check that the model runs with onnxruntime on the laptop; its inputs may need real data")
    ordered = sorted(times)
    emit({"type": "result", "command": "bench", "artifact": sha, "provider": model.provider,
          "skipped": model.skipped, "runs": args.runs, "batch": args.batch,
          "p50_ms": round(percentile(ordered, 0.50) or 0.0, 4), "p95_ms": round(percentile(ordered, 0.95) or 0.0, 4),
          "p99_ms": round(percentile(ordered, 0.99) or 0.0, 4), "mean_ms": round(sum(times) / len(times), 4),
          "inputs": "synthetic"})
    return 0
