"""`check ARTIFACT`: run the model on the sample inputs its artifact carries and compare with the golden outputs
stored beside them (made on the laptop by the model as imported), as cosine similarity per output.

The golden file is an .npz named by the manifest's "golden" key (layout in fleetdesk/artifacts/store_files.py,
write_golden): "input_names" and "output_names" (string arrays), then "s<i>_i<j>" / "s<i>_o<k>" per sample.
numpy and onnxruntime are imported only when the command runs (like bench), and not at all when the running
model server has that very model loaded: it answers GET /v1/check itself (serve.py) with the same `compare`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from . import inference, protocol, state

NO_GOLDEN = "no-golden"  # the artifact carries no golden outputs (made before they were shipped, or by hand)
SERVE_ADDRESS = "serve-address.json"  # in ROOT/run: where the running model server listens
SERVER_TIMEOUT_S = 300.0  # the server's check runs every sample; a large model on a small device takes a while


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="an artifact's sha256 under ROOT/artifacts, or an artifact directory")
    parser.add_argument("--providers", default=",".join(inference.DEFAULT_PROVIDERS),
                        help="execution providers in order of preference, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


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


class CheckFailed(Exception):
    """Why a check could not give a result: an error line's code, message and fix."""

    def __init__(self, code: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.code, self.message, self.fix = code, message, fix

    def to_dict(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message, "fix": self.fix}


def golden_of(root: str, artifact: str) -> tuple[str, str]:
    """(artifact folder, its golden .npz) for an artifact id or folder; CheckFailed when either is missing."""
    folder = artifact if "/" in artifact else state.artifact_dir(root, artifact)
    if not os.path.isdir(folder):
        raise CheckFailed(protocol.NOT_FOUND, f"artifact {artifact!r} is not on this device ({folder})",
                          "push the artifact to the device first (it lands in ROOT/artifacts/SHA)")
    path = golden_path(folder)
    if path is None or not os.path.isfile(path):
        raise CheckFailed(NO_GOLDEN, f"artifact {os.path.basename(os.path.normpath(folder))} carries no golden "
                          "outputs", "import the model again with this FleetDesk (new artifacts carry golden.npz), "
                                     "or switch the golden-output gate off for this rollout")
    return folder, path


def compare(np: Any, model: Any, path: str) -> dict[str, Any]:
    """Run a loaded model (inference.LoadedModel) on the golden file's samples: the result line's fields."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        input_names = [str(n) for n in arrays["input_names"].tolist()]
        output_names = [str(n) for n in arrays["output_names"].tolist()]
        count = len({k.split("_", 1)[0] for k in arrays if k.startswith("s") and "_i" in k})
    except (OSError, ValueError, KeyError) as exc:
        raise CheckFailed(protocol.BAD_ARTIFACT, f"the golden outputs {path} cannot be read: {exc}",
                          "push the artifact again (the copy on the device is damaged)") from None
    if count == 0:
        raise CheckFailed(protocol.BAD_ARTIFACT, f"the golden outputs {path} hold no samples",
                          "import the model again with sample inputs")
    index = {name: i for i, name in enumerate(model.output_names)}
    missing = [n for n in output_names if n not in index]
    if missing:
        raise CheckFailed("golden-mismatch", f"the model has no output {missing[0]!r} that the golden outputs "
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
        raise CheckFailed(protocol.BAD_ARTIFACT, f"the golden outputs {path} lack {exc}",
                          "import the model again; the golden file is incomplete") from None
    except Exception as exc:  # onnxruntime's own exception types
        raise CheckFailed("inference-failed", f"model {model.sha} failed on {model.provider}: "
                          f"{inference.one_line(exc)}", "check that the model runs with onnxruntime on the laptop "
                                                        "on the same samples") from None
    return {"artifact": model.sha, "provider": model.provider, "samples": count, "outputs": output_names,
            "min_cosine": round(min(scores), 6), "mean_cosine": round(sum(scores) / len(scores), 6),
            "max_abs_diff": round(worst_abs, 6)}


def ask_server(root: str, sha: str, timeout: float = SERVER_TIMEOUT_S) -> dict[str, Any] | None:
    """The running model server's own check of `sha` when it has exactly that model loaded: no new process
    imports onnxruntime and loads the model again (seconds on a small device). None when no server answers
    for it; CheckFailed with the server's error otherwise."""
    address = serve_address(root)
    if address is None:
        return None
    try:
        host, port, _pid = address
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/v1/check?artifact=" + urllib.parse.quote(sha))
            response = conn.getresponse()
            body = json.loads(response.read().decode("utf-8"))
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return None  # no server there (any more), or not one that checks: the command loads the model itself
    if response.status == 200 and isinstance(body, dict):
        return body
    if response.status == 422 and isinstance(body, dict):
        raise CheckFailed(str(body.get("code")), str(body.get("error")), str(body.get("fix")))
    return None  # 409: it serves another model (or none); 404: an older server without /v1/check


def serve_address(root: str) -> tuple[str, int, int] | None:
    """(host, port, pid) of the model server, from ROOT/run/serve-address.json (serve.py writes it)."""
    try:
        with open(os.path.join(root, "run", SERVE_ADDRESS), encoding="utf-8") as f:
            data = json.load(f)
        host, port, pid = str(data["host"]), int(data["port"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    wildcard = host in ("", "0.0.0.0", "::")  # noqa: S104 - a server listening on every address answers on loopback
    return ("127.0.0.1" if wildcard else host), port, pid


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    root = str(args.root)
    try:
        folder, path = golden_of(root, args.artifact)
        sha = os.path.basename(os.path.normpath(folder))
        answer = ask_server(root, sha) if state.is_sha(sha) else None
        if answer is not None:
            emit(protocol.result("check", **answer, via="server"))
            return protocol.EXIT_OK
        try:
            _, np = inference.import_runtime()
        except inference.RuntimeMissing as exc:
            raise CheckFailed("no-runtime", str(exc), "run `fleetdesk provision DEVICE`") from None
        providers = [p.strip() for p in str(args.providers).split(",") if p.strip()]
        try:
            sha, model_path = inference.resolve_model(root, folder)
            model = inference.load_model(sha, model_path, providers, args.threads)
        except (inference.ModelLoadError, OSError) as exc:
            raise CheckFailed("model-load-failed", str(exc), "check that the model opens with onnxruntime on the "
                                                             "laptop, or list other --providers") from None
        emit(protocol.result("check", **compare(np, model, path), via="process"))
        return protocol.EXIT_OK
    except CheckFailed as exc:
        emit(exc.to_dict())
        return protocol.EXIT_ERROR
