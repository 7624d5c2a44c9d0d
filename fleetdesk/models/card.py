"""The model card: what FleetDesk learned about an ONNX model on import, how it is read off the
graph, and the errors of import.

A card is plain data (frozen dataclasses) that crosses layers: the CLI prints it with `--json`,
the GUI shows it, the artifact store copies it into a manifest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from fleetdesk.errors import FleetDeskError

# A dimension is a fixed size (int) or a symbolic name ("batch"); "?" is a dimension with neither.
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, numpy-style dtype, shape.

    `shape` is None when the model does not declare a rank. `dtype` is a numpy/ml_dtypes name
    ("float32", "int64", "bfloat16"); non-tensor values say what they are ("sequence", "map").
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class ExternalFile:
    """A file next to the model that holds tensor data (ONNX external data)."""

    location: str  # as the model names it, relative to the model's folder
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "size_bytes": self.size_bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class ModelCard:
    """What an imported model is: identity, size, versions, signature and contents.

    `sha256` identifies the model with its data: with no external files it is the SHA-256 of the
    model file (what `sha256sum model.onnx` prints). With external files it is the SHA-256 of the
    UTF-8 text made of the model file's hex digest and a newline, then one line
    "<hex digest>  <location>\\n" per external file sorted by location: so renaming the .onnx file
    keeps the digest, and changing any byte of any file changes it. `file_sha256` is the model
    file's own digest either way.

    `opset` maps each imported domain to its version; the default ONNX domain ("" in the file)
    is written "ai.onnx", its other name in the ONNX specification.
    """

    path: str
    name: str
    sha256: str
    file_sha256: str
    size_bytes: int  # the model file plus its external data files
    ir_version: int
    opset: Mapping[str, int] = field(hash=False)
    producer: tuple[str, str]  # (name, version) as the exporter stamped them; empty when absent
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    operators: tuple[tuple[str, int], ...]  # (op_type, count), sorted by op_type; "domain.Op" outside ai.onnx
    parameter_count: int  # elements in all initializers
    external_files: tuple[ExternalFile, ...] = ()

    @property
    def default_opset(self) -> int:
        """The version of the default ONNX domain the model imports (0 when it imports none)."""
        return self.opset.get("ai.onnx", 0)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data, for `--json` and manifests."""
        return {
            "path": self.path,
            "name": self.name,
            "sha256": self.sha256,
            "file_sha256": self.file_sha256,
            "size_bytes": self.size_bytes,
            "ir_version": self.ir_version,
            "opset": dict(self.opset),
            "producer": {"name": self.producer[0], "version": self.producer[1]},
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "operators": dict(self.operators),
            "parameter_count": self.parameter_count,
            "external_files": [ext.to_dict() for ext in self.external_files],
        }


class ModelError(FleetDeskError):
    """A model file cannot be imported; names the file, the problem and the fix."""

    def __init__(self, message: str, *, path: str, fix: str, cause: BaseException | None = None) -> None:
        super().__init__(message, fix=fix, step="import model", cause=cause)
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "path": self.path}


class ModelNotFoundError(ModelError):
    """The path names nothing."""


class NotAModelFileError(ModelError):
    """The path is a folder, a device or a pipe, or cannot be read."""


class EmptyModelError(ModelError):
    """The file has no bytes."""


class ModelTooLargeError(ModelError):
    """The model with its external data is over the import size limit."""


class NotOnnxError(ModelError):
    """The bytes are not an ONNX model at all."""


class CorruptModelError(ModelError):
    """The file starts as an ONNX model but its bytes do not decode."""


class TruncatedModelError(CorruptModelError):
    """The file ends in the middle of the model: a copy or download that did not finish."""


class ModelCheckError(ModelError):
    """The model decodes but the ONNX checker or shape inference rejects it."""


class IrVersionTooNewError(ModelError):
    """The model's IR version is newer than the installed onnxruntime reads."""


class OpsetTooNewError(ModelError):
    """The model's default-domain opset is newer than the installed onnxruntime runs."""


class ExternalDataError(ModelError):
    """An external data file is missing, outside the model's folder, or shorter than the model says."""


class ExternalDataMissingError(ExternalDataError):
    """A file the model keeps tensor data in is not there."""


class ExternalDataOutsideError(ExternalDataError):
    """A tensor's data location leaves the model's folder (absolute path, "..", or a symlink out)."""


class ModelRuntimeError(ModelError):
    """onnxruntime refused to create a session for the model on CPU."""


class SamplesError(ModelError):
    """A sample input file for calibration and accuracy checks is unusable; names the file, the input and the fix."""

    def __init__(self, message: str, *, path: str, fix: str, cause: BaseException | None = None) -> None:
        super().__init__(message, path=path, fix=fix, cause=cause)
        self.step = "load samples"


class VariantBuildError(ModelError):
    """One optimization step (graph, INT8, FP16) could not build or run its variant of the model."""

    def __init__(self, message: str, *, path: str, fix: str, cause: BaseException | None = None) -> None:
        super().__init__(message, path=path, fix=fix, cause=cause)
        self.step = "optimize model"


class OptimizationCancelled(ModelError):
    """The operator cancelled an optimization; nothing outside its work folder was written."""

    def __init__(self, message: str, *, path: str, fix: str, cause: BaseException | None = None) -> None:
        super().__init__(message, path=path, fix=fix, cause=cause)
        self.step = "optimize model"


# -- reading a card's contents off a ModelProto -----------------------------------------------

# TensorProto.DataType -> (numpy / ml_dtypes name, bits per element). Names follow numpy and
# ml_dtypes (the package onnx uses for the types numpy lacks), so they read like numpy dtypes.
_DTYPES: dict[int, tuple[str, int]] = {
    onnx.TensorProto.FLOAT: ("float32", 32),
    onnx.TensorProto.UINT8: ("uint8", 8),
    onnx.TensorProto.INT8: ("int8", 8),
    onnx.TensorProto.UINT16: ("uint16", 16),
    onnx.TensorProto.INT16: ("int16", 16),
    onnx.TensorProto.INT32: ("int32", 32),
    onnx.TensorProto.INT64: ("int64", 64),
    onnx.TensorProto.STRING: ("string", 0),
    onnx.TensorProto.BOOL: ("bool", 8),
    onnx.TensorProto.FLOAT16: ("float16", 16),
    onnx.TensorProto.DOUBLE: ("float64", 64),
    onnx.TensorProto.UINT32: ("uint32", 32),
    onnx.TensorProto.UINT64: ("uint64", 64),
    onnx.TensorProto.COMPLEX64: ("complex64", 64),
    onnx.TensorProto.COMPLEX128: ("complex128", 128),
    onnx.TensorProto.BFLOAT16: ("bfloat16", 16),
    onnx.TensorProto.FLOAT8E4M3FN: ("float8_e4m3fn", 8),
    onnx.TensorProto.FLOAT8E4M3FNUZ: ("float8_e4m3fnuz", 8),
    onnx.TensorProto.FLOAT8E5M2: ("float8_e5m2", 8),
    onnx.TensorProto.FLOAT8E5M2FNUZ: ("float8_e5m2fnuz", 8),
    onnx.TensorProto.UINT4: ("uint4", 4),
    onnx.TensorProto.INT4: ("int4", 4),
}


def element_bits(elem_type: int) -> int:
    """Bits per element of an ONNX element type; 0 when not fixed (strings) or not known."""
    return _DTYPES.get(elem_type, ("", 0))[1]


def dtype_name(elem_type: int) -> str:
    """The numpy-style name of an ONNX element type (TensorProto.DataType)."""
    if elem_type in _DTYPES:
        return _DTYPES[elem_type][0]
    try:
        name: str = onnx.TensorProto.DataType.Name(elem_type)  # protobuf's enum wrapper is untyped here
    except ValueError:
        return f"type{elem_type}"
    return name.lower()


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tensor = getattr(value.type, kind)
        shape: tuple[Dim, ...] | None = None
        if tensor.HasField("shape"):
            shape = tuple(
                dim.dim_value if dim.HasField("dim_value") else (dim.dim_param if dim.HasField("dim_param") else "?")
                for dim in tensor.shape.dim
            )
        dtype = dtype_name(tensor.elem_type)
        return TensorSpec(value.name, dtype if kind == "tensor_type" else f"sparse {dtype}", shape)
    return TensorSpec(value.name, (kind or "unknown").removesuffix("_type"), None)


def input_specs(graph: onnx.GraphProto) -> tuple[TensorSpec, ...]:
    """What a caller feeds the model."""
    # Since IR 4 initializers may also be listed as inputs (overridable defaults): not what a caller feeds.
    weights = {tensor.name for tensor in graph.initializer}
    return tuple(_spec(value) for value in graph.input if value.name not in weights)


def output_specs(graph: onnx.GraphProto, inferred: onnx.GraphProto) -> tuple[TensorSpec, ...]:
    """What the model returns; dimensions the exporter left unknown are taken from shape inference (`inferred`)."""
    known = {value.name: _spec(value) for value in (*inferred.value_info, *inferred.output)}
    specs = []
    for value in graph.output:
        declared = _spec(value)
        found = known.get(value.name)
        if found is not None and found.shape is not None:
            if declared.shape is None:
                declared = TensorSpec(declared.name, declared.dtype, found.shape)
            elif len(found.shape) == len(declared.shape) and "?" in declared.shape:
                merged = tuple(f if d == "?" else d for d, f in zip(declared.shape, found.shape, strict=True))
                declared = TensorSpec(declared.name, declared.dtype, merged)
        specs.append(declared)
    return tuple(specs)


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graph_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_nodes(subgraph)


def operator_counts(model: onnx.ModelProto) -> tuple[tuple[str, int], ...]:
    """How often each operator occurs, subgraphs (If, Loop, Scan bodies) included."""
    counts = Counter(
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        for node in _graph_nodes(model.graph)
    )
    return tuple(sorted(counts.items()))


def parameter_count(graph: onnx.GraphProto) -> int:
    """Elements in all initializers of the graph and its subgraphs."""
    total: int = sum(math.prod(tensor.dims) for tensor in graph.initializer)  # protobuf's dims are untyped here
    total += sum(math.prod(sparse.values.dims) for sparse in graph.sparse_initializer)  # stored values only
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                total += parameter_count(attribute.g)
            for subgraph in attribute.graphs:
                total += parameter_count(subgraph)
    return total
