"""What the installed onnxruntime loads: the newest IR version and default-domain opset (asked of it once), the
check that refuses a model stamped newer, and the quiet session options every load here uses. Kept apart from
importer.py, which runs the checks in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
from onnx import helper

from fleetdesk.models.card import IrVersionTooNewError, OpsetTooNewError


@dataclass(frozen=True)
class RuntimeSupport:
    """The newest model versions the installed onnxruntime loads."""

    version: str
    max_ir_version: int
    max_opset: int  # default ONNX domain


_support_lock = threading.Lock()
_support: RuntimeSupport | None = None


def onnxruntime_support() -> RuntimeSupport:
    """Ask the installed onnxruntime which IR version and default-domain opset it loads, once.

    onnxruntime's documented version matrix (docs/Versioning.md, "Version matrix", mirrored at
    onnxruntime.ai/docs/reference/compatibility.html) lists per release the opset it implements
    and the IR version it supports, and says every release runs opsets back to 7. The table lags
    releases and a build may differ (the env var ALLOW_RELEASED_ONNX_OPSET_ONLY=0 admits newer
    opsets), so rather than copy it we ask the runtime itself: it refuses a model stamped with a
    newer opset ("Current official support for domain ai.onnx is till opset N", model_load_utils.h)
    or IR version ("Unsupported model IR version: X, max supported IR version: N", model.cc).
    Both limits are monotonic, so a binary search over one-node models finds each in ~8 tries
    (measured here with onnxruntime 1.31.1: IR 13, opset 26, in about 6 ms).
    """
    global _support
    with _support_lock:
        if _support is None:
            _support = RuntimeSupport(
                version=onnxruntime.__version__,
                max_ir_version=_highest(lambda ir: _loads(ir_version=ir, opset=7), low=3),
                max_opset=_highest(lambda opset: _loads(ir_version=7, opset=opset), low=7),
            )
        return _support


def _highest(loads: Callable[[int], bool], *, low: int, high: int = 256) -> int:
    if not loads(low):
        raise RuntimeError(f"onnxruntime {onnxruntime.__version__} does not load a version-{low} probe model")
    while high - low > 1:  # invariant: loads(low), not loads(high)
        middle = (low + high) // 2
        if loads(middle):
            low = middle
        else:
            high = middle
    return low


def _loads(*, ir_version: int, opset: int) -> bool:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    try:
        options = quiet_options()
        options.log_severity_level = 4  # a probe's refusal is the expected answer: not even an error
        onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own pybind classes (Fail, InvalidGraph, ...), no common base
        return False
    return True


def quiet_options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a refused model is reported by us, not on stderr
    # Loading is the proof wanted; optimizing the graph would only spend time.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def check_versions(model: onnx.ModelProto, model_path: Path, label: str) -> None:
    support = onnxruntime_support()
    if model.ir_version > support.max_ir_version:
        newest = support.max_ir_version
        raise IrVersionTooNewError(
            f"{label} is stored with ONNX IR version {model.ir_version}, but the installed onnxruntime "
            f"{support.version} reads IR versions up to {newest}",
            path=str(model_path),
            fix=f"Save the model with IR version {newest} (set model.ir_version = {newest} before onnx.save; "
            "newer onnx packages stamp a newer IR by default), or update onnxruntime.",
        )
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset > support.max_opset:
        newest = support.max_opset
        raise OpsetTooNewError(
            f"{label} uses ONNX opset {opset}, but the installed onnxruntime {support.version} runs opsets "
            f"up to {newest}",
            path=str(model_path),
            fix=f"Export the model again with opset {newest} or lower (torch.onnx.export(..., opset_version={newest})) "
            "or convert it with onnx.version_converter; or update onnxruntime.",
        )
