"""Checking a variant against the original: its outputs on the samples (accuracy) and its local latency.

Local timing is on this laptop's CPU execution provider with one intra-op thread and batch 1, so
every variant is timed under the same conditions whatever else the laptop is doing on its other cores.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from fleetdesk.models.report import Accuracy
from fleetdesk.models.samples import SampleSet

LOCAL_THREADS = 1
LOCAL_TIMING = f"CPUExecutionProvider, {LOCAL_THREADS} intra-op thread, batch 1, median of the timed runs"


def session(model_path: str | Path, *, threads: int = LOCAL_THREADS) -> onnxruntime.InferenceSession:
    """A CPU session with a fixed thread count and all of onnxruntime's online optimizations (its default)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _feed(sess: onnxruntime.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {value.name for value in sess.get_inputs()}
    return {name: value for name, value in feed.items() if name in names}


def run_outputs(model_path: str | Path, samples: SampleSet) -> list[list[np.ndarray]]:
    """The model's outputs for each sample: one list of output arrays (in the model's output order) per sample."""
    sess = session(model_path)
    return [[np.asarray(value) for value in sess.run(None, _feed(sess, feed))] for feed in samples.feeds]


def time_local(model_path: str | Path, samples: SampleSet, *, runs: int = 30, warmup: int = 3,
               budget_s: float = 3.0) -> float:
    """Median latency in ms of one inference on this laptop (see LOCAL_TIMING), cycling through the samples.

    At most `runs` timed runs, fewer when they would take longer than `budget_s` (a large model),
    but never fewer than 5.
    """
    if not samples.feeds:
        raise ValueError("no samples to time the model on")
    sess = session(model_path)
    feeds = [_feed(sess, feed) for feed in samples.feeds]
    for index in range(warmup):
        sess.run(None, feeds[index % len(feeds)])
    times: list[float] = []
    started = time.perf_counter()
    for index in range(runs):
        begin = time.perf_counter()
        sess.run(None, feeds[index % len(feeds)])
        times.append((time.perf_counter() - begin) * 1000.0)
        if len(times) >= 5 and time.perf_counter() - started > budget_s:
            break
    return statistics.median(times)


def is_classifier_output(array: np.ndarray) -> bool:
    """The rule for top-1 agreement: a float output of rank 2, [N, C] with C > 1 classes (scores or logits)."""
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm_a = float(np.linalg.norm(a))
    norm_b = float(np.linalg.norm(b))
    if norm_a == 0.0 and norm_b == 0.0:
        return 1.0  # both all zeros: the same answer
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return float(np.dot(a, b) / (norm_a * norm_b))


def compare(reference_outputs: Sequence[Sequence[np.ndarray]], variant_outputs: Sequence[Sequence[np.ndarray]],
            synthetic: bool) -> Accuracy:
    """How far a variant's outputs are from the reference's over the same samples.

    max abs error: over every element of every output of every sample. cosine: the LOWEST cosine
    similarity of any one output on any one sample (flattened). top-1 agreement: over every row of
    every classifier-like output (see is_classifier_output) the share whose arg-max agrees; None
    when no output looks like a classifier. Non-finite values in the variant make the max abs error
    infinite and the cosine 0. Raises ValueError when the outputs do not line up (count or shapes).
    """
    if len(reference_outputs) != len(variant_outputs):
        raise ValueError(f"{len(variant_outputs)} samples' outputs against {len(reference_outputs)} reference ones")
    max_abs = 0.0
    lowest_cosine = 1.0
    agree = rows = 0
    for sample, (reference, variant) in enumerate(zip(reference_outputs, variant_outputs, strict=True)):
        if len(reference) != len(variant):
            raise ValueError(f"sample {sample}: the variant has {len(variant)} outputs, the original {len(reference)}")
        for index, (ref, var) in enumerate(zip(reference, variant, strict=True)):
            if ref.shape != var.shape:
                raise ValueError(f"sample {sample}, output {index}: shape {list(var.shape)} "
                                 f"instead of {list(ref.shape)}")
            a = np.asarray(ref, dtype=np.float64).ravel()
            b = np.asarray(var, dtype=np.float64).ravel()
            if not np.isfinite(b).all():
                max_abs = float("inf")
                lowest_cosine = min(lowest_cosine, 0.0)
            elif a.size:
                max_abs = max(max_abs, float(np.max(np.abs(a - b))))
                lowest_cosine = min(lowest_cosine, _cosine(a, b))
            if is_classifier_output(np.asarray(ref)):
                agree += int(np.count_nonzero(np.argmax(ref, axis=1) == np.argmax(var, axis=1)))
                rows += ref.shape[0]
    samples = len(reference_outputs)
    return Accuracy(max_abs_error=max_abs, cosine=lowest_cosine, top1_agreement=(agree / rows) if rows else None,
                    samples=samples, synthetic=synthetic)
