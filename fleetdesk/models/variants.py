"""Building the variants of a model, one function per recipe step: offline graph optimization, INT8
dynamic and static (QDQ) quantization, FP16. Each writes `model.onnx` (and its external data, when
needed) into an empty output folder and returns the names it wrote, the .onnx first.

The functions raise VariantBuildError; the optimizer turns that into a FAILED variant.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import external_data_helper

from fleetdesk.models.card import OptimizationCancelled, VariantBuildError
from fleetdesk.models.importer import shown
from fleetdesk.models.samples import SampleSet

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Protobuf cannot hold one message of 2 GiB; above this a result is written with external data
# (onnx docs, "ONNX external data"). The margin leaves room for the graph around the weights.
EXTERNAL_DATA_ABOVE = 1800 * 1024**2

def files_of(folder: Path) -> tuple[str, ...]:
    """`model.onnx` then the external data files it names, as written in `folder`."""
    model = onnx.load_model(str(folder / MODEL_FILE), load_external_data=False)
    locations = sorted({
        entry.value
        for tensor in external_data_helper._get_all_tensors(model)  # initializers and Constant attributes
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    })
    return (MODEL_FILE, *locations)


def wants_external_data(source: Path) -> bool:
    """Write a variant with external data when its source has some, or would be near protobuf's limit."""
    model = onnx.load_model(str(source), load_external_data=False)
    has_external = any(
        tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in external_data_helper._get_all_tensors(model)
    )
    return has_external or _total_size(source, model) > EXTERNAL_DATA_ABOVE


def _total_size(source: Path, model: onnx.ModelProto) -> int:
    size = source.stat().st_size
    seen = set()
    for tensor in external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                size += (source.parent / entry.value).stat().st_size
    return size


def _fail(step: str, source: Path, exc: BaseException, fix: str) -> VariantBuildError:
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return VariantBuildError(f"{step} of {shown(source.name)} failed: {text}", path=str(source), fix=fix, cause=exc)


def _clean(out: Path) -> None:
    """Keep only the model and its data in a variant's folder (quantization leaves helper files)."""
    keep = set(files_of(out))
    for entry in out.iterdir():
        if entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _check(out: Path, step: str, source: Path) -> tuple[str, ...]:
    """The written model passes the full ONNX checker; by path, so external data is resolved next to it."""
    try:
        onnx.checker.check_model(str(out / MODEL_FILE), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise _fail(step, source, exc, "Report this model to the FleetDesk developers; use another recipe "
                    "step for it meanwhile.") from exc
    _clean(out)
    return files_of(out)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger; the operator reads our reasons instead."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- "graph": offline graph optimization ----------------------------------------------------------


def optimize_graph(source: Path, out: Path) -> tuple[str, ...]:
    """onnxruntime's graph optimizations applied offline and saved (SessionOptions.optimized_model_filepath).

    Level ORT_ENABLE_BASIC, on purpose. onnxruntime's "Graph Optimizations" page
    (docs/performance/model-optimizations/graph-optimizations.md) says basic optimizations are
    semantics-preserving rewrites (constant folding, redundant-node elimination, Conv+BN/Add/Mul
    fusions) that "run before graph partitioning and thus apply to all the execution providers",
    while extended and layout optimizations run after partitioning, only for the nodes assigned
    to the session's provider, and an offline model saved with them must run with "the exact same
    options (e.g., execution providers, optimization level) and hardware" (layout: e.g. AVX2). A
    model saved here on the laptop's CPU provider must run on a Pi's ARM cores and under
    TensorRT/CUDA on a Jetson, so only the basic level is portable; the device's own session still
    applies the extended and layout levels online for its provider and CPU. The output is
    therefore the same for every profile.
    """
    out.mkdir(parents=True, exist_ok=True)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out / MODEL_FILE)
    if wants_external_data(source):
        # Session config keys from onnxruntime_session_options_config_keys.h.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA_FILE)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's pybind errors share no base class
        raise _fail("graph optimization", source, exc, "Use the model without graph optimization "
                    "(remove \"graph\" from the profile's recipe).") from exc
    return _check(out, "graph optimization", source)


# -- importing onnxruntime's tools without PyTorch -------------------------------------------------

_tools_lock = threading.Lock()


def _import_ort_tools() -> None:
    """Import onnxruntime.tools (quant_pre_process lives under it) without letting it import torch.

    Its __init__ imports torch whenever torch is installed (onnxruntime 1.31.1, tools/__init__.py:
    `if importlib.util.find_spec("torch"): from .pytorch_export_helpers import ...`), which costs seconds and
    hundreds of MB in a worker thread and stalls the GUI's loop. FleetDesk never needs that helper, so while the
    package is first imported, a None in sys.modules makes find_spec answer "not installed" (importlib docs:
    find_spec returns None for a None entry). A torch that is already imported is left alone.
    """
    import sys

    with _tools_lock:
        if "onnxruntime.tools" in sys.modules or "torch" in sys.modules:
            return
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import onnxruntime.tools  # noqa: F401
        finally:
            if sys.modules.get("torch", 0) is None:
                del sys.modules["torch"]


def preload() -> None:
    """Import the quantization and FP16 tooling now (about 0.3 s, sympy included).

    For the GUI, before its window runs: a first import in the optimizer's worker thread holds the interpreter
    lock long enough to stall the window's loop (seen at 100-120 ms in the lab GUI test).
    """
    _import_ort_tools()
    import onnxruntime.quantization
    import onnxruntime.quantization.shape_inference
    import onnxruntime.tools.symbolic_shape_infer
    import onnxruntime.transformers.float16  # noqa: F401


# -- quantization pre-processing ------------------------------------------------------------------


def prepare_for_quantization(source: Path, out: Path) -> tuple[Path, str]:
    """quant_pre_process (symbolic and ONNX shape inference, graph optimization) as onnxruntime's
    quantization guide recommends before quantizing; returns the model to quantize and a note.

    Symbolic shape inference fails on some exported graphs (an assertion in its Reshape handler on
    torch's MultiheadAttention export, seen with onnxruntime 1.31.1); then it is retried without that
    step, and if pre-processing fails altogether the original model is quantized as it is. The
    guide also says the optimization step cannot write models over 2 GB, so it is skipped for those.
    """
    _import_ort_tools()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.mkdir(parents=True, exist_ok=True)
    target = out / MODEL_FILE
    external = wants_external_data(source)
    large = _total_size(source, onnx.load_model(str(source), load_external_data=False)) > EXTERNAL_DATA_ABOVE
    last: BaseException | None = None
    for skip_symbolic in (False, True):
        try:
            with _quiet_quantizer():
                quant_pre_process(str(source), str(target), skip_optimization=large, skip_symbolic_shape=skip_symbolic,
                                  save_as_external_data=external, all_tensors_to_one_file=True,
                                  external_data_location=DATA_FILE if external else None)
            return target, ("pre-processed without symbolic shape inference (it failed on this graph)"
                            if skip_symbolic else "")
        except Exception as exc:  # the pre-processor raises AssertionError, onnx and onnxruntime errors
            last = exc
            for entry in out.iterdir():
                entry.unlink()
    text = " ".join(str(last).split())[:200] or type(last).__name__
    return source, f"quantized without pre-processing (it failed: {text})"


# -- "int8-dynamic" -------------------------------------------------------------------------------


def quantize_int8_dynamic(source: Path, out: Path) -> tuple[str, ...]:
    """INT8 weights, activations quantized at run time (onnxruntime.quantization.quantize_dynamic).

    Weights are signed (QInt8): dynamic quantization's activations are uint8, so this is the U8S8
    format. onnxruntime's quantization guide ("Data type selection") says U8S8 uses VPMADDUBSW on
    x86-64 AVX2/AVX512 without VNNI, which can saturate, and that there is no such issue on ARM or
    on x86 with VNNI; the accuracy check on the samples catches a saturated variant, which is then
    rejected with its figures. Per-tensor (per_channel=False): the guide suggests per-channel only
    when accuracy loss is large, and on AVX2/AVX512 it then needs reduce_range as well.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_quantizer():
            quantize_dynamic(str(source), str(out / MODEL_FILE), weight_type=QuantType.QInt8, per_channel=False,
                             use_external_data_format=wants_external_data(source))
    except Exception as exc:  # the quantizer raises anything from ValueError to onnxruntime's own errors
        raise _fail("INT8 dynamic quantization", source, exc,
                    "Remove \"int8-dynamic\" from the profile's recipe for this model.") from exc
    return _check(out, "INT8 dynamic quantization", source)


# -- "int8-static" --------------------------------------------------------------------------------


def _sample_reader(samples: SampleSet, input_names: set[str], cancel: threading.Event | None, path: Path) -> object:
    """A CalibrationDataReader over the samples that stops calibration when cancelled (checked per sample)."""
    from onnxruntime.quantization import CalibrationDataReader

    class SampleReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(samples.feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if cancel is not None and cancel.is_set():
                raise OptimizationCancelled("optimization cancelled during INT8 calibration", path=str(path),
                                            fix="Start the optimization again when you are ready.")
            feed = next(self._feeds, None)
            return None if feed is None else {name: value for name, value in feed.items() if name in input_names}

    return SampleReader()


def quantize_int8_static(source: Path, out: Path, samples: SampleSet, *,
                         cancel: threading.Event | None = None) -> tuple[str, ...]:
    """INT8 weights and activations with calibrated ranges, QDQ format (quantize_static).

    S8S8 in QDQ (activations and weights QInt8): onnxruntime's quantization guide ("Data type
    selection") calls it "the default setting" that "balances performance and accuracy" and "should
    be the first choice", and the only format its GPU path runs (TensorRT). MinMax calibration over
    the samples; per-tensor weights (see quantize_int8_dynamic). `source` should already be
    pre-processed (prepare_for_quantization), so optimization inside the quantizer stays off.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load_model(str(source), load_external_data=False)
    names = {value.name for value in model.graph.input}
    reader = _sample_reader(samples, names, cancel, source)
    try:
        with _quiet_quantizer():
            quantize_static(str(source), str(out / MODEL_FILE), reader,
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=False,
                            calibrate_method=CalibrationMethod.MinMax, calibration_providers=["CPUExecutionProvider"],
                            use_external_data_format=wants_external_data(source))
    except OptimizationCancelled:
        raise
    except Exception as exc:
        raise _fail("INT8 static quantization", source, exc,
                    "Give real sample inputs with --samples, or remove \"int8-static\" from the profile's recipe "
                    "for this model.") from exc
    return _check(out, "INT8 static quantization", source)


# -- "fp16" ---------------------------------------------------------------------------------------


def convert_fp16(source: Path, out: Path) -> tuple[str, ...]:
    """FP16 weights and compute with FP32 inputs and outputs (keep_io_types=True), for GPU profiles.

    onnxruntime.transformers.float16.convert_float_to_float16 (the same converter onnxconverter_common
    ships; onnxruntime 1.31.1 carries it). The model is passed in memory: given a path, the converter
    writes a temporary file next to the operator's model. Ops the converter keeps in FP32 get Cast
    nodes around them.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out.mkdir(parents=True, exist_ok=True)
    external = wants_external_data(source)
    try:
        model = onnx.load_model(str(source), load_external_data=True)
        # onnx's in-memory shape inference cannot take a model over 2 GB; such models skip it.
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=external)
        del model
        _sort_nodes(converted.graph)  # the converter appends its input Casts last; the checker wants order
        if external:
            onnx.save_model(converted, str(out / MODEL_FILE), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
        else:
            onnx.save_model(converted, str(out / MODEL_FILE))
    except Exception as exc:
        raise _fail("FP16 conversion", source, exc,
                    "Remove \"fp16\" from the profile's recipe for this model.") from exc
    return _check(out, "FP16 conversion", source)


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the graph's nodes so each comes after the producers of its inputs (Kahn's algorithm, stable)."""
    import heapq

    producer = {output: index for index, node in enumerate(graph.node) for output in node.output if output}
    consumers: list[list[int]] = [[] for _ in graph.node]
    pending = [0] * len(graph.node)
    for index, node in enumerate(graph.node):
        for needed in {producer[name] for name in _node_inputs(node) if name in producer} - {index}:
            consumers[needed].append(index)
            pending[index] += 1
    ready = [index for index, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers[index]:
            pending[consumer] -= 1
            if pending[consumer] == 0:
                heapq.heappush(ready, consumer)
    if len(order) < len(graph.node):  # a cycle: leave the graph as it is, the checker names the problem
        return
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _node_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """A node's inputs, with the outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            for inner in subgraph.node:
                yield from _node_inputs(inner)


def build_variant(recipe: str, source: Path, out: Path, samples: SampleSet, *,
                  cancel: threading.Event | None = None) -> tuple[str, ...]:
    """Build one recipe step from `source` into the empty folder `out`; the names written, the .onnx first."""
    if recipe == "graph":
        return optimize_graph(source, out)
    if recipe == "int8-dynamic":
        return quantize_int8_dynamic(source, out)
    if recipe == "int8-static":
        return quantize_int8_static(source, out, samples, cancel=cancel)
    if recipe == "fp16":
        return convert_fp16(source, out)
    raise ValueError(f"unknown recipe step {recipe!r}")


def folder_size(folder: Path, files: tuple[str, ...]) -> int:
    return sum(os.path.getsize(folder / name) for name in files)
