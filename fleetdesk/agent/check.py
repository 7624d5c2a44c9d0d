"""`check ARTIFACT`: run the model on the sample inputs its artifact carries and compare with the golden outputs
stored beside them (made on the laptop by the model as imported), as cosine similarity per output.

The golden file is an .npz named by the manifest's "golden" key (layout in fleetdesk/artifacts/store.py,
write_golden): "input_names" and "output_names" (string arrays), then "s<i>_i<j>" / "s<i>_o<k>" per sample.
numpy and onnxruntime are imported only when the command runs (like bench).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from . import inference, protocol, state

NO_GOLDEN = "no-golden"  # the artifact carries no golden outputs (made before they were shipped, or by hand)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="an artifact's sha256 under ROOT/artifacts, or an artifact directory")
    parser.add_argument("--providers", default=",".join(inference.DEFAULT_PROVIDERS),
                        help="execution providers in order of preference, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def _error(emit: Callable[[dict[str, Any]], None], code: str, message: str, fix: str) -> int:
    emit({"type": "error", "code": code, "message": message, "fix": fix})
    return protocol.EXIT_ERROR


def golden_path(folder: str) -> str | None:
    """The golden .npz the artifact's manifest names (inside the folder), or None when it names none."""
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    name = manifest.get("golden") if isinstance(manifest, dict) else None
    if not isinstance(name, str) or not name:
        return None
    path = os.path.normpath(os.path.join(folder, name))
    if not path.startswith(os.path.normpath(folder) + os.sep):
        return None  # a manifest names files inside its artifact only
    return path


def cosine(np: Any, got: Any, want: Any) -> float:
    """Cosine similarity of two tensors flattened as float64; two all-zero tensors agree (1.0)."""
    a = np.asarray(got, dtype=np.float64).ravel()
    b = np.asarray(want, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    try:
        _, np = inference.import_runtime()
    except inference.RuntimeMissing as exc:
        return _error(emit, "no-runtime", str(exc), "run `fleetdesk provision DEVICE`")
    root = str(args.root)
    folder = args.artifact if "/" in args.artifact else state.artifact_dir(root, args.artifact)
    if not os.path.isdir(folder):
        return _error(emit, protocol.NOT_FOUND, f"artifact {args.artifact!r} is not on this device ({folder})",
                      "push the artifact to the device first (it lands in ROOT/artifacts/SHA)")
    path = golden_path(folder)
    if path is None or not os.path.isfile(path):
        return _error(emit, NO_GOLDEN, f"artifact {os.path.basename(os.path.normpath(folder))} carries no golden "
                      "outputs", "import the model again with this FleetDesk (new artifacts carry golden.npz), "
                                 "or switch the golden-output gate off for this rollout")
    providers = [p.strip() for p in str(args.providers).split(",") if p.strip()]
    try:
        sha, model_path = inference.resolve_model(root, folder)
        model = inference.load_model(sha, model_path, providers, args.threads)
    except (inference.ModelLoadError, OSError) as exc:
        return _error(emit, "model-load-failed", str(exc),
                      "check that the model opens with onnxruntime on the laptop, or list other --providers")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        input_names = [str(n) for n in arrays["input_names"].tolist()]
        output_names = [str(n) for n in arrays["output_names"].tolist()]
        count = len({k.split("_", 1)[0] for k in arrays if k.startswith("s") and "_i" in k})
    except (OSError, ValueError, KeyError) as exc:
        return _error(emit, protocol.BAD_ARTIFACT, f"the golden outputs {path} cannot be read: {exc}",
                      "push the artifact again (the copy on the device is damaged)")
    if count == 0:
        return _error(emit, protocol.BAD_ARTIFACT, f"the golden outputs {path} hold no samples",
                      "import the model again with sample inputs")
    index = {name: i for i, name in enumerate(model.output_names)}
    missing = [n for n in output_names if n not in index]
    if missing:
        return _error(emit, "golden-mismatch", f"the model has no output {missing[0]!r} that the golden outputs "
                      f"hold (it has {', '.join(model.output_names)})", "re-import the model; its artifact and "
                                                                        "its golden outputs disagree")
    scores: list[float] = []
    worst_abs = 0.0
    try:
        for s in range(count):
            feeds = {name: arrays[f"s{s:04d}_i{j}"] for j, name in enumerate(input_names)}
            outputs = model.run(feeds)
            for k, name in enumerate(output_names):
                got, want = outputs[index[name]], arrays[f"s{s:04d}_o{k}"]
                scores.append(cosine(np, got, want))
                if np.shape(got) == np.shape(want):
                    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
                    worst_abs = max(worst_abs, float(diff.max()) if diff.size else 0.0)
    except KeyError as exc:
        return _error(emit, protocol.BAD_ARTIFACT, f"the golden outputs {path} lack {exc}",
                      "import the model again; the golden file is incomplete")
    except Exception as exc:  # onnxruntime's own exception types
        return _error(emit, "inference-failed", f"model {sha} failed on {model.provider}: {inference.one_line(exc)}",
                      "check that the model runs with onnxruntime on the laptop on the same samples")
    emit(protocol.result("check", artifact=sha, provider=model.provider, samples=count, outputs=output_names,
                         min_cosine=round(min(scores), 6), mean_cosine=round(sum(scores) / len(scores), 6),
                         max_abs_diff=round(worst_abs, 6)))
    return protocol.EXIT_OK
