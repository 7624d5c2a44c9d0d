"""The active model on the device: where its .onnx file is, the session and its execution provider,
and the tensors a request carries (checked against the model, decoded from and encoded to JSON).

onnxruntime and numpy exist only in the runtime venv: they are imported inside functions, so this
module itself imports with the standard library alone (Python >= 3.8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from .state import MANIFEST_NAME, _manifest_entries, sha256_file

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

# onnxruntime's NodeArg.type strings ("tensor(float)") and the numpy dtype names a request uses.
# Source: onnxruntime/python/onnxruntime_pybind_mlvalue.cc (the ONNX element types numpy can hold).
ORT_TO_DTYPE = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class RuntimeMissing(Exception):
    """onnxruntime or numpy cannot be imported by the Python that runs the agent."""


class ModelLoadError(Exception):
    """The model file cannot be found or no execution provider could open it; `file`: the artifact's file at fault."""

    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


class RequestError(Exception):
    """A request the server answers with an HTTP error status and a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def import_runtime() -> tuple[Any, Any]:
    """(onnxruntime, numpy), or RuntimeMissing naming what is missing and which Python looked."""
    import sys

    try:
        import numpy
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissing(
            f"onnxruntime/numpy cannot be imported by {sys.executable} ({sys.version.split()[0]}): {exc}"
        ) from exc
    return onnxruntime, numpy


# --- Where the model is ------------------------------------------------------------------------------------


def active_artifact(root: str) -> str | None:
    """The real path of the artifact directory ROOT/current points at, or None when there is none."""
    link = os.path.join(root, "current")
    if not os.path.lexists(link):
        return None
    target = os.path.realpath(link)
    return target if os.path.isdir(target) else None


def model_file(artifact: str) -> str:
    """The .onnx inside an artifact directory, chosen among the files its manifest.json lists (only a listed file
    was signed): the one the "model" key names, or with no "model" key the only listed *.onnx."""
    manifest = os.path.join(artifact, MANIFEST_NAME)
    try:
        with open(manifest, encoding="utf-8") as handle:
            data = json.load(handle)
        listed = [os.path.normpath(rel) for rel, _ in _manifest_entries(data)]
    except FileNotFoundError:
        raise ModelLoadError(f"{artifact} has no {MANIFEST_NAME}: only signed artifacts are served") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{manifest} cannot be read: {exc}", file=MANIFEST_NAME) from exc
    name = data.get("model")
    if isinstance(name, str) and name:
        rel = os.path.normpath(name)
        if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
            # The manifest names a file inside the artifact, never one elsewhere on the device.
            raise ModelLoadError(f"{manifest} names a model outside its artifact: {name!r}", file=MANIFEST_NAME)
        if rel not in listed:
            raise ModelLoadError(f"{manifest} names {name!r} as the model, but its signed file list does not "
                                 "list it, so it is never loaded", file=name)
    else:
        candidates = sorted(r for r in listed if r.endswith(".onnx"))
        if len(candidates) != 1:
            raise ModelLoadError(
                "{} lists {} .onnx files ({}) and no \"model\" key says which to serve".format(
                    manifest, len(candidates), ", ".join(candidates) or "none"), file=MANIFEST_NAME)
        rel = candidates[0]
    path = os.path.join(artifact, rel)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{manifest} names {rel!r}, which is not in {artifact}", file=rel)
    return path


def _only_onnx(folder: str) -> str:
    candidates = sorted(name for name in os.listdir(folder) if name.endswith(".onnx"))
    if len(candidates) != 1:
        raise ModelLoadError("{} holds {} .onnx files ({}) and no manifest.json says which is the model".format(
            folder, len(candidates), ", ".join(candidates) or "none"))
    return os.path.join(folder, candidates[0])


def resolve_model(root: str, what: str) -> tuple[str, str]:
    """(identity, .onnx path) for a sha under ROOT/artifacts, an artifact directory or an .onnx file."""
    under_root = os.path.join(root, "artifacts", what)
    if "/" not in what and os.path.isdir(under_root):
        return what, model_file(under_root)
    if os.path.isdir(what):
        if os.path.isfile(os.path.join(what, MANIFEST_NAME)):
            return os.path.basename(os.path.normpath(what)), model_file(what)
        # A folder of loose model files (the laptop's `model bench` of a model not yet imported): timed, never served.
        return os.path.basename(os.path.normpath(what)), _only_onnx(what)
    if os.path.isfile(what):
        return sha256_file(what), what
    raise ModelLoadError(f"no artifact {what!r}: neither {under_root} nor a file or directory")




# --- The session and its provider ---------------------------------------------------------------------------


def open_session(
    path: str, providers: Sequence[str], threads: int | None = None
) -> tuple[Any, str, list[dict[str, str]]]:
    """(session, chosen provider, skipped) for the first provider in `providers` that opens `path`.

    A provider is skipped when this onnxruntime build lacks it, when creating the session with it
    fails, or when onnxruntime silently fell back to another one (it does so when e.g. the CUDA
    libraries are missing). Each skipped one is reported with its reason.
    """
    ort, _ = import_runtime()
    available = list(ort.get_available_providers())
    skipped: list[dict[str, str]] = []
    wanted = [p for p in providers if p]
    for index, provider in enumerate(wanted):
        if provider not in available:
            skipped.append({"provider": provider, "reason": "not in this onnxruntime build ({})".format(
                ", ".join(available))})
            continue
        # The rest of the list stays behind it, so nodes the chosen provider cannot run go to the next one
        # (TensorRT -> CUDA -> CPU, as onnxruntime's TensorRT documentation recommends).
        chain = [p for p in wanted[index:] if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings (e.g. cpuinfo under qemu) go nowhere useful here
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(path, options, providers=chain)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
            skipped.append({"provider": provider, "reason": f"session failed: {one_line(exc)}"})
            continue
        used = session.get_providers()
        if not used or used[0] != provider:
            skipped.append({"provider": provider, "reason": "onnxruntime fell back to {}".format(
                used[0] if used else "nothing")})
            continue
        return session, provider, skipped
    raise ModelLoadError("no execution provider could open {}: {}".format(
        path, "; ".join("{}: {}".format(s["provider"], s["reason"]) for s in skipped) or "none requested"))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] if text else type(exc).__name__


# --- Tensors ------------------------------------------------------------------------------------------------


class TensorSpec:
    """One input or output as the model declares it; dims are ints or None where dynamic."""

    __slots__ = ("_shape", "dims", "dtype", "name", "ort_type")

    def __init__(self, name: str, ort_type: str, shape: Sequence[Any]) -> None:
        self.name = name
        self.ort_type = ort_type
        self.dtype = ORT_TO_DTYPE.get(ort_type)  # None: not a tensor numpy can carry (e.g. a sequence)
        self.dims = [d if isinstance(d, int) and d >= 0 else None for d in (shape or [])]
        self._shape = list(shape or [])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype or self.ort_type, "shape": self._shape}

    def shape_text(self) -> str:
        # Dynamic dims show their symbolic name when the model gives one ("batch"), else "?".
        parts = [str(d) if d is not None else (s if isinstance(s, str) else "?")
                 for d, s in zip(self.dims, self._shape)]
        return "[{}]".format(",".join(parts))

    def expects(self) -> str:
        return f"{self.dtype or self.ort_type} {self.shape_text()}"


class LoadedModel:
    """A session with its identity, provider and declared inputs/outputs."""

    def __init__(self, sha: str, path: str, session: Any, provider: str, skipped: list[dict[str, str]]) -> None:
        self.sha = sha
        self.path = path
        self.session = session
        self.provider = provider
        self.skipped = skipped
        self.inputs = [TensorSpec(i.name, i.type, i.shape) for i in session.get_inputs()]
        self.outputs = [TensorSpec(o.name, o.type, o.shape) for o in session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]
        # Requests can be stacked along axis 0 only when every input and output has a dynamic first dim.
        self.batchable = bool(self.inputs) and all(
            spec.dims and spec.dims[0] is None for spec in self.inputs + self.outputs)

    def describe(self) -> dict[str, Any]:
        return {"model": self.sha, "provider": self.provider, "batchable": self.batchable,
                "inputs": [s.describe() for s in self.inputs], "outputs": [s.describe() for s in self.outputs]}

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        outputs: list[Any] = self.session.run(self.output_names, feeds)  # onnxruntime is untyped: its list of arrays
        return outputs


def load_model(sha: str, path: str, providers: Sequence[str], threads: int | None = None) -> LoadedModel:
    session, provider, skipped = open_session(path, providers, threads)
    return LoadedModel(sha, path, session, provider, skipped)


def decode_inputs(model: LoadedModel, payload: Any) -> dict[str, Any]:
    """The numpy arrays of a request body, checked against the model; RequestError(400) naming what is wrong."""
    _, np = import_runtime()
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise RequestError(400, 'the body must be a JSON object {"inputs": {NAME: {"dtype", "shape", "data_b64"}}}')
    given = payload["inputs"]
    declared = {spec.name: spec for spec in model.inputs}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise RequestError(400, "unknown input {}: the model's inputs are {}".format(
            ", ".join(repr(n) for n in unknown), _inputs_text(model)))
    missing = [spec for spec in model.inputs if spec.name not in given]
    if missing:
        raise RequestError(400, "missing input {}: the model's inputs are {}".format(
            ", ".join(repr(s.name) for s in missing), _inputs_text(model)))
    return {spec.name: _decode_one(np, spec, given[spec.name]) for spec in model.inputs}


def _inputs_text(model: LoadedModel) -> str:
    return ", ".join(f"{s.name} {s.expects()}" for s in model.inputs)


def _decode_one(np: Any, spec: TensorSpec, value: Any) -> Any:
    where = f"input {spec.name!r}"
    if not isinstance(value, dict):
        raise RequestError(400, f'{where} must be an object {{"dtype", "shape", "data_b64" or "data"}}')
    dtype = value.get("dtype", spec.dtype)
    if dtype != spec.dtype:
        raise RequestError(400, f"{where}: the model expects dtype {spec.dtype or spec.ort_type}, "
                                f"the request has {json.dumps(dtype)}")
    shape = value.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(400, f'{where}: "shape" must be a list of non-negative integers, got {json.dumps(shape)}')
    if len(shape) != len(spec.dims):
        raise RequestError(400, f"{where}: the model expects rank {len(spec.dims)} {spec.shape_text()}, "
                                f"the request has shape {json.dumps(shape)}")
    for axis, want in enumerate(spec.dims):
        if want is not None and want != shape[axis]:
            raise RequestError(400, f"{where}: the model expects shape {spec.shape_text()}, the request has "
                                    f"{json.dumps(shape)} (axis {axis} must be {want})")
    np_dtype = np.dtype(spec.dtype).newbyteorder("<")
    count = 1
    for d in shape:
        count *= d
    if "data_b64" in value:
        try:
            raw = base64.b64decode(value["data_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise RequestError(400, f'{where}: "data_b64" is not valid base64: {exc}') from exc
        need = count * np_dtype.itemsize
        if len(raw) != need:
            raise RequestError(400, f"{where}: shape {json.dumps(shape)} of {spec.dtype} needs {need} bytes, "
                                    f'"data_b64" holds {len(raw)}')
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(spec.dtype, copy=False)
    if "data" in value:
        try:
            array = np.array(value["data"], dtype=spec.dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RequestError(400, f'{where}: "data" is not a nested list of {spec.dtype} numbers: '
                                    f"{one_line(exc)}") from exc
        if list(array.shape) != shape:
            if array.size == count and array.ndim <= 1:
                return array.reshape(shape)  # a flat list in C order is accepted as well
            raise RequestError(400, f'{where}: "data" has shape {json.dumps(list(array.shape))}, not the declared '
                                    f"{json.dumps(shape)} ({array.size} values for {count})")
        return array
    raise RequestError(400, f'{where} has neither "data_b64" nor "data"')


def encode_tensor(name: str, array: Any) -> dict[str, Any]:
    """An output as {"dtype", "shape", "data_b64"} (little-endian, C order), RequestError(500) if not a tensor."""
    _, np = import_runtime()
    if not isinstance(array, np.ndarray):
        raise RequestError(500, f"output {name!r} is a {type(array).__name__}, not a tensor this server can send")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "data_b64": base64.b64encode(little.tobytes()).decode("ascii")}


def input_key(model_sha: str, feeds: dict[str, Any]) -> str:
    """The sha256 of the canonical input: the model, then each input's name, dtype, shape and bytes."""
    digest = hashlib.sha256(model_sha.encode("utf-8"))
    for name in sorted(feeds):
        array = feeds[name]
        head = "\0{}\0{}\0{}\0".format(name, array.dtype.str, ",".join(str(d) for d in array.shape))
        digest.update(head.encode("utf-8"))
        digest.update(array.tobytes())  # tobytes() is C order whatever the array's layout
    return digest.hexdigest()


def synthetic_inputs(model: LoadedModel, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Inputs of the declared shapes (dynamic first dim -> batch, other dynamic dims -> 1) for benchmarks."""
    _, np = import_runtime()
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.inputs:
        if spec.dtype is None:
            raise ModelLoadError(f"input {spec.name!r} is a {spec.ort_type}, which a synthetic benchmark cannot fill")
        shape = [(batch if axis == 0 else 1) if d is None else d for axis, d in enumerate(spec.dims)]
        if spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            # Integer inputs are usually indices (token ids, classes): zeros are valid for any vocabulary.
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds
