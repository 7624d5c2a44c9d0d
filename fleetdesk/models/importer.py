"""Validating an ONNX model file and describing it as a ModelCard.

`inspect_model` is synchronous and CPU/disk bound: the GUI and the CLI run it in an executor.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import cast

import onnx
import onnxruntime
from google.protobuf.message import DecodeError
from onnx import external_data_helper, shape_inference

from fleetdesk.files import sha256_file
from fleetdesk.models.card import (
    CorruptModelError,
    EmptyModelError,
    ExternalDataError,
    ExternalDataMissingError,
    ExternalDataOutsideError,
    ExternalFile,
    ModelCard,
    ModelCheckError,
    ModelNotFoundError,
    ModelRuntimeError,
    ModelTooLargeError,
    NotAModelFileError,
    NotOnnxError,
    TruncatedModelError,
    element_bits,
    input_specs,
    operator_counts,
    output_specs,
    parameter_count,
)
from fleetdesk.models.runtime_support import check_versions, quiet_options

DEFAULT_MAX_BYTES = 2 * 1024**3

# Protobuf cannot serialize or parse one message of 2 GiB or more; larger models keep their
# weights in external data files (onnx docs, "ONNX external data").
_PROTOBUF_LIMIT = 2 * 1024**3 - 1

_EXPORT_FIX = "Export the model to ONNX (from PyTorch: torch.onnx.export) or check that you picked the right file."

# ModelProto's top-level fields (onnx/onnx.proto) and their wire types (0 varint, 2 bytes).
# Used only to tell "not ONNX at all" from "an ONNX file that stops early" when protobuf fails.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_MODEL_FIELD_NAMES = {
    2: "producer name", 3: "producer version", 4: "domain", 6: "description",
    7: "graph", 8: "opset imports", 14: "metadata", 20: "training info", 25: "functions",
}


def shown(text: str) -> str:
    """A file name as it may be printed: control and bidi characters escaped, the rest kept."""
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return _bytes(size)


def inspect_model(
    path: str | os.PathLike[str], *, name: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> ModelCard:
    """Validate an ONNX model file and describe it; raise a ModelError naming the problem and the fix.

    Checks, in order: the file (exists, regular, readable, not empty, within `max_bytes` with its
    external data), that it decodes as ONNX, that the installed onnxruntime reads its IR version
    and opset, that external data files are inside the model's folder and long enough, the full
    ONNX checker, strict shape inference, and finally that onnxruntime creates a CPU session.
    Memory: the .onnx file is read once (hashed and decoded from the same bytes); weights above
    64 KiB are dropped from the decoded model before onnxruntime loads the file by path, and
    external data files are only hashed, never loaded into Python. Nothing is written anywhere.
    """
    model_path = Path(os.path.abspath(os.fspath(path)))
    label = shown(model_path.name)
    size = _check_file(model_path, label, max_bytes)
    data, file_sha256 = _read(model_path, label)
    model = _parse(data, model_path, label)
    del data  # from here on the file is read by path: at most one copy of embedded weights in memory
    check_versions(model, model_path, label)

    folder = model_path.parent
    externals = _external_data(model, folder, model_path, label)
    total = size + sum(ext_size for ext_size in externals.values())
    if total > max_bytes:
        raise ModelTooLargeError(
            f"{label} with its external data is {_size_text(total)}, over the import limit of {_size_text(max_bytes)}",
            path=str(model_path),
            fix="Import a smaller model (a quantized or pruned export) or raise the import size limit.",
        )
    external_files = tuple(
        ExternalFile(location, ext_size, _data_sha256(folder / location, model_path))
        for location, ext_size in sorted(externals.items())
    )

    _check_graph(model_path, label)
    _drop_weight_bytes(model)  # the card needs shapes, not values
    inferred = _infer_shapes(model, model_path, label)
    _check_session(model_path, label)

    return ModelCard(
        path=str(model_path),
        name=name if name else model_path.stem,
        sha256=_combined_digest(file_sha256, external_files),
        file_sha256=file_sha256,
        size_bytes=total,
        ir_version=model.ir_version,
        opset={(entry.domain or "ai.onnx"): entry.version for entry in model.opset_import},
        producer=(model.producer_name, model.producer_version),
        inputs=input_specs(model.graph),
        outputs=output_specs(model.graph, inferred.graph),
        operators=operator_counts(model),
        parameter_count=parameter_count(model.graph),
        external_files=external_files,
    )


def model_sha256(folder: Path, files: Sequence[str]) -> str:
    """ModelCard.sha256 of the model files[0] and its external data files files[1:] (names relative to `folder`), read
    from disk: the optimizer names each variant it builds by the rule that names an imported model."""
    model_path = folder / files[0]
    externals = tuple(ExternalFile(name, (folder / name).stat().st_size, _data_sha256(folder / name, model_path))
                      for name in sorted(files[1:]))
    return _combined_digest(_data_sha256(model_path, model_path), externals)


def _combined_digest(file_sha256: str, external_files: tuple[ExternalFile, ...]) -> str:
    # Documented on ModelCard.sha256.
    if not external_files:
        return file_sha256
    text = file_sha256 + "\n" + "".join(f"{ext.sha256}  {ext.location}\n" for ext in external_files)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the file ------------------------------------------------------------------------------------


def _check_file(model_path: Path, label: str, max_bytes: int) -> int:
    where = str(model_path)
    try:
        info = model_path.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(
            f"{label} does not exist (looked in {shown(str(model_path.parent))})",
            path=where,
            fix="Check the path, or drop the .onnx file itself onto FleetDesk.",
        ) from None
    except OSError as exc:
        raise NotAModelFileError(
            f"{label} cannot be read: {exc.strerror or exc}",
            path=where,
            fix="Check that the drive is mounted and you have access to the file, then import again.",
            cause=exc,
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        inside = sorted(p.name for p in model_path.glob("*.onnx"))[:3]
        hint = f" (it holds {', '.join(shown(n) for n in inside)})" if inside else ""
        raise NotAModelFileError(
            f"{label} is a folder, not a model file{hint}",
            path=where,
            fix="Pick the .onnx file inside the folder; its external data files are found next to it.",
        )
    if not stat.S_ISREG(info.st_mode):
        raise NotAModelFileError(
            f"{label} is not a regular file (a device, pipe or socket)",
            path=where,
            fix="Save the model to a file and import that file.",
        )
    if info.st_size == 0:
        raise EmptyModelError(
            f"{label} is empty (0 bytes)",
            path=where,
            fix="The export or copy did not finish: export the model again, or copy it again from its source.",
        )
    if info.st_size > max_bytes:
        raise ModelTooLargeError(
            f"{label} is {_size_text(info.st_size)}, over the import limit of {_size_text(max_bytes)}",
            path=where,
            fix="Import a smaller model (a quantized or pruned export) or raise the import size limit.",
        )
    if info.st_size > _PROTOBUF_LIMIT:
        raise ModelTooLargeError(
            f"{label} is {_size_text(info.st_size)} in one file; ONNX files cannot exceed 2 GiB",
            path=where,
            fix="Save the weights as external data: onnx.save_model(model, path, save_as_external_data=True).",
        )
    return info.st_size


def _read(model_path: Path, label: str) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256, read once."""
    try:
        data = model_path.read_bytes()
    except PermissionError as exc:
        raise NotAModelFileError(
            f"{label} cannot be read: permission denied",
            path=str(model_path),
            fix="Give your user read access to the file (chmod u+r) or copy it somewhere you can read, then import.",
            cause=exc,
        ) from exc
    except OSError as exc:
        raise NotAModelFileError(
            f"{label} cannot be read: {exc.strerror or exc}",
            path=str(model_path),
            fix="Check the drive and the file, then import again.",
            cause=exc,
        ) from exc
    return data, hashlib.sha256(data).hexdigest()


def _data_sha256(file: Path, model_path: Path) -> str:
    """sha256_file, with an unreadable file said as data of the model at `model_path`."""
    try:
        return sha256_file(file)
    except OSError as exc:
        raise ExternalDataError(
            f"{shown(file.name)}, the external data of {shown(model_path.name)}, cannot be read: {exc.strerror or exc}",
            path=str(model_path),
            fix="Give your user read access to the data files next to the model, then import again.",
            cause=exc,
        ) from exc


# -- decoding ------------------------------------------------------------------------------------


def _parse(data: bytes, model_path: Path, label: str) -> onnx.ModelProto:
    where = str(model_path)
    try:
        model = onnx.load_model(io.BytesIO(data), load_external_data=False)
    except DecodeError as exc:
        verdict = _wire_verdict(data)
        if verdict is None:
            raise NotOnnxError(
                f"{label} is not an ONNX model: {_what_it_is(data)}",
                path=where,
                fix=_EXPORT_FIX,
                cause=exc,
            ) from exc
        if verdict.startswith("ends"):
            raise TruncatedModelError(
                f"{label} is truncated: the file {verdict}",
                path=where,
                fix="The copy or download did not finish: copy the file again and compare its size with the original.",
                cause=exc,
            ) from exc
        raise CorruptModelError(
            f"{label} is damaged: {verdict}",
            path=where,
            fix="Copy the file again from its source, or export the model again.",
            cause=exc,
        ) from exc
    if not model.HasField("graph") and model.ir_version > 0:
        raise TruncatedModelError(
            f"{label} is truncated: the file ends after {_bytes(len(data))}, before the model's graph",
            path=where,
            fix="The copy or download did not finish: copy the file again and compare its size with the original.",
        )
    if not model.HasField("graph"):
        raise NotOnnxError(f"{label} is not an ONNX model: it holds no graph", path=where, fix=_EXPORT_FIX)
    if not model.opset_import:
        raise CorruptModelError(
            f"{label} is damaged: it has a graph but no opset imports (a truncated copy can end like this)",
            path=where,
            fix="Copy the file again from its source, or export the model again.",
        )
    return model


def _what_it_is(data: bytes) -> str:
    head = data[:8]
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive (a PyTorch .pt/.pth checkpoint is one)"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (a Keras .h5 model is one)"
    if head.startswith(b"\x80") and len(data) > 1 and data[1] in range(2, 6):
        return "it is a Python pickle (a PyTorch checkpoint is one)"
    text = ""
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = data[: 4096 - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text.rstrip("\x00")):
        return "it is a text file"
    return "its bytes are not an ONNX protobuf"


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None


def _wire_verdict(data: bytes) -> str | None:
    """Why protobuf failed, for a file that begins like an ONNX ModelProto; None when it does not.

    Walks the top-level fields: a file whose first field is not a ModelProto field is not ONNX;
    one that runs out of bytes inside a field is truncated; one whose top level is whole is damaged inside.
    """
    pos, fields = 0, 0
    while pos < len(data):
        key = _varint(data, pos)
        if key is None:
            return f"ends after {_bytes(len(data))}, inside a field header" if fields else None
        number, wire = key[0] >> 3, key[0] & 7
        if _MODEL_FIELDS.get(number) != wire:
            return "its bytes stop making sense as ONNX part-way through" if fields else None
        pos = key[1]
        value = _varint(data, pos)
        if value is None:
            return f"ends after {_bytes(len(data))}, inside a field header"
        pos = value[1]
        if wire == 2:
            end = pos + value[0]
            if end > len(data):
                part = _MODEL_FIELD_NAMES.get(number, "header")
                missing = _bytes(end - len(data))
                return f"ends after {_bytes(len(data))}, inside the model's {part} ({missing} more expected)"
            pos = end
        fields += 1
    return "its graph does not decode" if fields else None


# -- external data -------------------------------------------------------------------------------


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _stored_bytes(tensor: onnx.TensorProto) -> int | None:
    """How many bytes the tensor's raw data takes, when whole bytes per element make that exact."""
    bits = element_bits(tensor.data_type)
    if bits == 0:
        return None
    elements: int = math.prod(tensor.dims)  # protobuf's dims are untyped here
    return (elements * bits + 7) // 8


def _external_data(model: onnx.ModelProto, folder: Path, model_path: Path, label: str) -> dict[str, int]:
    """Each external data file the model names (location -> size), after checking it is safe and long enough."""
    where = str(model_path)
    real_folder = os.path.realpath(folder)
    needed: dict[str, list[tuple[int, str]]] = {}  # location -> (end offset, tensor name) of each tensor in it
    for tensor in _model_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        tensor_name = shown(tensor.name) or "(unnamed)"
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except ValueError as exc:  # an offset or length that is not a number
            raise ExternalDataError(
                f"{label} has a malformed external data entry for tensor {tensor_name}: {_one_line(exc)}",
                path=where,
                fix="The model file is damaged or was edited by hand: export the model again.",
                cause=exc,
            ) from exc
        location = info.location or ""
        outside = (
            not location
            or PurePosixPath(location).is_absolute()
            or PureWindowsPath(location).is_absolute()
            or PureWindowsPath(location).drive != ""
            or ".." in re.split(r"[\\/]", location)
        )
        target = os.path.realpath(os.path.join(real_folder, location)) if location else real_folder
        if not outside and os.path.commonpath([real_folder, target]) != real_folder:
            outside = True  # a symlink inside the folder that leads out of it
        if outside:
            raise ExternalDataOutsideError(
                f"{label} points the data of tensor {tensor_name} at {shown(location) or '(no location)'}, "
                "outside the model's folder",
                path=where,
                fix="Keep external data files in the model's folder: move the file next to the model and save the "
                "model again with a plain file name as location (onnx.save_model(..., save_as_external_data=True, "
                "location='weights.bin')). FleetDesk refuses other paths so a model cannot read other files.",
            )
        offset = info.offset or 0
        # onnx sets length to None in __init__ without an annotation, so it types as always None; the tensor's
        # external_data may give it, and then it is an int.
        given_length = cast(int | None, info.length)
        length = given_length if given_length is not None else _stored_bytes(tensor)
        expected = _stored_bytes(tensor)
        if given_length is not None and expected is not None and given_length != expected:
            raise ExternalDataError(
                f"{label} says tensor {tensor_name} takes {given_length} bytes in {shown(location)}, "
                f"but its shape and type need {expected}",
                path=where,
                fix="The model file is damaged or was edited by hand: export the model again.",
            )
        end = offset + (length or 0)
        # "./w.bin" and "w.bin" are one file: key it (and show it on the card) in one spelling.
        needed.setdefault(PurePosixPath(location).as_posix(), []).append((end, tensor_name))

    sizes: dict[str, int] = {}
    for location, tensors in needed.items():
        end, tensor_name = max(tensors)
        file = os.path.join(real_folder, location)
        if not os.path.exists(file):
            names = tensors[0][1] + (f" and {len(tensors) - 1} more" if len(tensors) > 1 else "")
            raise ExternalDataMissingError(
                f"{label} keeps the data of tensor{'s' if len(tensors) > 1 else ''} {names} in {shown(location)}, "
                f"which is missing from {shown(str(folder))}",
                path=where,
                fix=f"Copy {shown(location)} next to the model (external data files live in the model's folder), "
                "then import again.",
            )
        if os.path.islink(file):
            # onnx's checker refuses any symlinked data file (it could be swapped after the check).
            raise ExternalDataError(
                f"{label} keeps tensor data in {shown(location)}, which is a symbolic link",
                path=where,
                fix=f"Replace the link {shown(location)} with the file itself (cp --dereference), then import again.",
            )
        if not os.path.isfile(file):
            raise ExternalDataError(
                f"{label} keeps tensor data in {shown(location)}, which is not a regular file",
                path=where,
                fix="Replace it with the data file written when the model was saved, then import again.",
            )
        size = os.path.getsize(file)
        if size < end:
            raise ExternalDataError(
                f"{shown(location)} is shorter than {label} needs: tensor {tensor_name} ends at byte {end}, "
                f"the file has {size}",
                path=where,
                fix="The data file is truncated or from another export: copy it again together with the model.",
            )
        sizes[location] = size
    return sizes


# -- checker, shape inference, onnxruntime ------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An error's text on one line: the checker breaks one sentence over several lines."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


_CHECK_FIX = (
    "Export the model again with a current exporter (torch.onnx.export), or repair it; "
    "onnx.checker.check_model(path, full_check=True) shows the same error."
)


def _check_graph(model_path: Path, label: str) -> None:
    """The full ONNX checker (it runs strict shape inference too), by path.

    By path, the checker reads the file itself and resolves external data against the model's folder
    without loading it; in memory, check_model would serialize the whole model again first.
    """
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelCheckError(
            f"{label} fails the ONNX checker: {_one_line(exc)}", path=str(model_path), fix=_CHECK_FIX, cause=exc
        ) from exc


# Tensors above this size are weights, not shapes: shape inference does not need their values.
_SHAPE_DATA_LIMIT = 64 * 1024


def _drop_weight_bytes(model: onnx.ModelProto) -> None:
    for tensor in _model_tensors(model):
        if len(tensor.raw_data) > _SHAPE_DATA_LIMIT:
            tensor.ClearField("raw_data")


def _infer_shapes(model: onnx.ModelProto, model_path: Path, label: str) -> onnx.ModelProto:
    """The model with inferred shapes (strict: an inconsistency is an error), for the outputs' dimensions."""
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ModelCheckError(
            f"{label} fails ONNX shape inference: {_one_line(exc)}", path=str(model_path), fix=_CHECK_FIX, cause=exc
        ) from exc


_ORT_LOCATION = re.compile(r"\S+\.(?:cc|h|cpp):\d+ ")


def _runtime_reason(exc: BaseException) -> str:
    """onnxruntime's message without its "[ONNXRuntimeError] : 1 : FAIL : file.cc:12 signature(...)" prefix."""
    text = _one_line(exc)
    match = _ORT_LOCATION.search(text)
    if match:
        rest = text[match.end():]
        depth = 0
        for index, ch in enumerate(rest):  # skip the C++ signature up to its closing parenthesis
            depth += (ch == "(") - (ch == ")")
            if ch == ")" and depth == 0:
                return rest[index + 1:].strip() or text
    else:
        text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return text


def _check_session(model_path: Path, label: str) -> None:
    """The final proof: onnxruntime creates a CPU session for the model.

    By path, so onnxruntime reads the weights (embedded or external) itself, once; Python holds
    none of the large ones by then.
    """
    try:
        session = onnxruntime.InferenceSession(str(model_path), quiet_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's pybind errors have no common base class
        raise ModelRuntimeError(
            f"onnxruntime {onnxruntime.__version__} cannot load {label} on CPU: {_runtime_reason(exc)}",
            path=str(model_path),
            fix="Export the model with operators and types onnxruntime runs on CPU (see its operator list), "
            "or update onnxruntime.",
            cause=exc,
        ) from exc
    del session
