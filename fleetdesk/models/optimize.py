"""Optimizing an imported model for each device profile: build every recipe step once, check its
accuracy and speed, and choose per profile the fastest variant that still gives the same answers.

`optimize_model` is synchronous and CPU bound: the GUI and the CLI run it in an executor, with a
progress callback and a threading.Event to cancel.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from fleetdesk.models.card import ModelCard, ModelRuntimeError, OptimizationCancelled
from fleetdesk.models.evaluate import LOCAL_TIMING, compare, run_outputs, time_local
from fleetdesk.models.importer import model_sha256, shown
from fleetdesk.models.report import (
    ACCEPTED,
    BASELINE,
    BASELINE_STATUS,
    CHOSEN,
    FAILED,
    RECIPES,
    REJECTED,
    Accuracy,
    OptimizationReport,
    ProfileResult,
    Progress,
    Tolerance,
    Variant,
)
from fleetdesk.models.samples import SampleSet
from fleetdesk.models.variants import build_variant, folder_size, prepare_for_quantization
from fleetdesk.profiles.schema import Profile

# Latencies within 5 % of each other are the same speed: repeated local runs of one model on this
# 2-core laptop differ by a few percent, so a smaller margin would choose on noise.
NOISE = 0.05
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
NAMES = {BASELINE: "FP32", "graph": "graph-optimized FP32", "int8-dynamic": "INT8 dynamic",
         "int8-static": "INT8 static", "fp16": "FP16"}

DEFAULT_TOLERANCE = Tolerance()

DeviceBench = Callable[[Profile, Path], Mapping[str, float]]


@dataclass
class _Built:
    """One recipe step's result on the laptop, shared by every profile whose recipe names the step."""

    recipe: str
    folder: Path
    files: tuple[str, ...] = ()
    size_bytes: int = 0
    sha256: str = ""
    accuracy: Accuracy | None = None
    local_ms: float | None = None
    failure: str = ""  # why the step failed; empty when it worked
    notes: list[str] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        return self.folder / self.files[0]


class _Steps:
    """Progress and cancel at every step boundary."""

    def __init__(self, total: int, progress: Callable[[Progress], None] | None, cancel: threading.Event | None,
                 card: ModelCard) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._cancel = cancel
        self._card = card

    def check(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise OptimizationCancelled(
                f"optimization of {shown(self._card.name)} cancelled", path=self._card.path,
                fix="Start the optimization again when you are ready; nothing was stored.",
            )

    def announce(self, stage: str, message: str) -> None:
        """Say what starts now (done stays), then check for cancel."""
        self.check()
        if self._progress is not None:
            self._progress(Progress(stage, message, self.done, self.total))

    def finish(self, stage: str, message: str) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress(Progress(stage, message, self.done, self.total))


def tool_versions() -> dict[str, str]:
    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "local_timing": LOCAL_TIMING}


def is_gpu_profile(profile: Profile) -> bool:
    return bool(profile.accelerators) or any(ep in GPU_PROVIDERS for ep in profile.execution_providers)


def optimize_model(
    card: ModelCard,
    samples: SampleSet,
    profiles: Sequence[Profile],
    workdir: Path,
    *,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    device_bench: DeviceBench | None = None,
) -> OptimizationReport:
    """Every profile's variants of the model, checked and timed, with one chosen per profile.

    Each distinct recipe step is built once under `workdir/<step>/` and serves every profile that
    names it. A variant is chosen when it is within `tolerance` of the original on the samples and
    not slower than FP32 on the measured target (the profile's devices through `device_bench`,
    device name -> p50 ms, when it returns figures for both; else this laptop's CPU). Of those the
    fastest wins; variants within NOISE (5 %) of the fastest count as ties and the smallest of them
    wins. On a GPU profile without device figures latency is not judged (the laptop's CPU says
    nothing about CUDA or TensorRT): FP16 and FP32 variants are chosen on accuracy and size, and
    INT8 is kept as accepted but not chosen. Only `workdir` is written; cancel raises
    OptimizationCancelled at the next step boundary or calibration sample.
    """
    started = time.monotonic()
    workdir = Path(workdir)
    source = Path(card.path)
    recipes = [step for step in RECIPES if any(step in profile.recipe for profile in profiles)]
    quantizing = any(step.startswith("int8") for step in recipes)
    per_profile = sum(1 + ((len(profile.recipe) + 1) if device_bench is not None else 0) for profile in profiles)
    steps = _Steps(2 + int(quantizing) + 3 * len(recipes) + per_profile, progress, cancel, card)
    versions = tool_versions()

    steps.announce("check", f"{shown(card.name)}: running the original on {len(samples)} samples")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        reference = run_outputs(source, samples)
    except Exception as exc:  # onnxruntime's errors share no base class
        raise ModelRuntimeError(
            f"onnxruntime cannot run {shown(source.name)} on the samples: {' '.join(str(exc).split())[:300]}",
            path=card.path, fix="Check that the samples match the model's inputs (shapes and types).", cause=exc,
        ) from exc
    steps.finish("check", f"{shown(card.name)}: reference outputs ready")
    steps.announce("time-local", "timing FP32 on this laptop")
    baseline_ms = time_local(source, samples)
    steps.finish("time-local", f"FP32: {baseline_ms:.3g} ms on this laptop")

    quantize_from, prepare_note = source, ""
    if quantizing:
        steps.announce("build", "preparing the model for INT8 quantization")
        quantize_from, prepare_note = _prepare(source, workdir / "quant-prep")
        steps.finish("build", "prepared for quantization")

    built: dict[str, _Built] = {}
    for recipe in recipes:
        made = _build(recipe, source if not recipe.startswith("int8") else quantize_from, workdir, samples, steps)
        if prepare_note.startswith("quantized without") and recipe.startswith("int8") and not made.failure:
            made.notes.append(prepare_note)
        _check_and_time(made, reference, samples, steps)
        built[recipe] = made

    results = []
    for profile in profiles:
        results.append(_profile_result(card, profile, built, baseline_ms, versions, tolerance, samples, steps,
                                       device_bench))
    return OptimizationReport(
        model_sha256=card.sha256, samples=len(samples), synthetic=samples.synthetic, samples_source=samples.source,
        tolerance=tolerance, profiles=tuple(results), seconds=time.monotonic() - started,
    )


# -- building and checking each recipe step once -------------------------------------------------


def _prepare(source: Path, out: Path) -> tuple[Path, str]:
    shutil.rmtree(out, ignore_errors=True)
    return prepare_for_quantization(source, out)


def _build(recipe: str, source: Path, workdir: Path, samples: SampleSet, steps: _Steps) -> _Built:
    out = workdir / recipe
    made = _Built(recipe, out)
    label = NAMES[recipe]
    detail = f" (calibrating on {len(samples)} samples)" if recipe == "int8-static" else ""
    steps.announce("build", f"building {label}{detail}")
    shutil.rmtree(out, ignore_errors=True)
    try:
        made.files = build_variant(recipe, source, out, samples, cancel=steps._cancel)
    except OptimizationCancelled:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-written is left behind
        raise
    except Exception as exc:  # any failure of one step is that variant's result, never the whole run's
        shutil.rmtree(out, ignore_errors=True)
        made.failure = str(exc) if str(exc) else type(exc).__name__
        steps.finish("build", f"{label} failed")
        return made
    made.size_bytes = folder_size(out, made.files)
    made.sha256 = model_sha256(out, made.files)
    steps.finish("build", f"built {label}")
    return made


def _check_and_time(made: _Built, reference: list[list[np.ndarray]], samples: SampleSet, steps: _Steps) -> None:
    label = NAMES[made.recipe]
    steps.announce("check", f"checking {label} against the original")
    if not made.failure:
        try:
            made.accuracy = compare(reference, run_outputs(made.model_path, samples), samples.synthetic)
        except ValueError as exc:
            made.failure = f"its outputs do not line up with the original's: {exc}"
        except Exception as exc:  # onnxruntime cannot run it
            made.failure = f"onnxruntime {onnxruntime.__version__} cannot run it: {' '.join(str(exc).split())[:300]}"
    steps.finish("check", f"checked {label}")
    steps.announce("time-local", f"timing {label} on this laptop")
    if not made.failure:
        made.local_ms = time_local(made.model_path, samples)
    steps.finish("time-local", f"{label}: {made.local_ms:.3g} ms" if made.local_ms is not None else f"{label}: -")


# -- per profile: figures, verdicts, the choice --------------------------------------------------


def _device_figures(profile: Profile, model_path: Path, device_bench: DeviceBench | None, steps: _Steps,
                    label: str) -> tuple[dict[str, float], str]:
    if device_bench is None:
        return {}, ""
    steps.announce("time-device", f"{profile.name}: timing {label} on the profile's devices")
    try:
        figures = {str(device): float(ms) for device, ms in dict(device_bench(profile, model_path)).items()}
        note = ""
    except OptimizationCancelled:
        raise
    except Exception as exc:  # a device that cannot bench leaves the local figure to decide
        figures, note = {}, f"timing on devices failed ({' '.join(str(exc).split())[:200]})"
    steps.finish("time-device", f"{profile.name}: timed {label}")
    return figures, note


def _profile_result(card: ModelCard, profile: Profile, built: Mapping[str, _Built], baseline_ms: float,
                    versions: Mapping[str, str], tolerance: Tolerance, samples: SampleSet, steps: _Steps,
                    device_bench: DeviceBench | None) -> ProfileResult:
    source = Path(card.path)
    base_devices, base_note = _device_figures(profile, source, device_bench, steps, NAMES[BASELINE])
    baseline = Variant(
        recipe=BASELINE, status=BASELINE_STATUS, reason="",
        files=(source.name, *(ext.location for ext in card.external_files)), folder=str(source.parent),
        size_bytes=card.size_bytes, sha256=card.sha256, accuracy=None,
        local_latency_ms=baseline_ms, device_latency_ms=base_devices, tool_versions=versions,
    )
    candidates: list[Variant] = []
    notes: dict[str, list[str]] = {BASELINE: [base_note] if base_note else []}
    for recipe in profile.recipe:
        made = built[recipe]
        devices: dict[str, float] = {}
        note = ""
        if not made.failure:
            devices, note = _device_figures(profile, made.model_path, device_bench, steps, NAMES[recipe])
        notes[recipe] = [*made.notes, *([note] if note else [])]
        candidates.append(Variant(
            recipe=recipe, status=FAILED if made.failure else ACCEPTED,
            reason=f"failed: {made.failure}" if made.failure else "",
            files=made.files, folder=str(made.folder) if not made.failure else "", size_bytes=made.size_bytes,
            sha256=made.sha256, accuracy=made.accuracy, local_latency_ms=made.local_ms, device_latency_ms=devices,
            tool_versions=versions,
        ))
    steps.announce("check", f"{profile.name}: choosing a variant")
    variants, chosen = choose(profile, baseline, candidates, tolerance)
    variants = [_with_notes(v, notes.get(v.recipe, []), samples) for v in variants]
    steps.finish("check", f"{profile.name}: {NAMES[chosen]} chosen")
    return ProfileResult(profile=profile.name, recipe=tuple(profile.recipe), variants=tuple(variants), chosen=chosen)


def _with_notes(variant: Variant, notes: list[str], samples: SampleSet) -> Variant:
    extra = [note for note in notes if note]
    if variant.status == CHOSEN and samples.synthetic:
        extra.append("accuracy was checked on generated inputs only; give real samples with --samples to be sure")
    if not extra:
        return variant
    return replace(variant, reason=variant.reason + " (" + "; ".join(extra) + ")")


def passes(accuracy: Accuracy, tolerance: Tolerance) -> bool:
    """Tolerance's rule: max abs error OR cosine within bounds, AND top-1 agreement for classifiers."""
    close = accuracy.max_abs_error <= tolerance.max_abs_error or accuracy.cosine >= tolerance.min_cosine
    top1 = accuracy.top1_agreement is None or accuracy.top1_agreement >= tolerance.min_top1_agreement
    return close and top1


def _accuracy_failure(accuracy: Accuracy, tolerance: Tolerance) -> str:
    kind = "generated" if accuracy.synthetic else "your"
    parts = []
    if not (accuracy.max_abs_error <= tolerance.max_abs_error or accuracy.cosine >= tolerance.min_cosine):
        parts.append(f"max abs error {accuracy.max_abs_error:.3g} > {tolerance.max_abs_error:g} and "
                     f"cosine {accuracy.cosine:.4f} < {tolerance.min_cosine:g}")
    if accuracy.top1_agreement is not None and accuracy.top1_agreement < tolerance.min_top1_agreement:
        parts.append(f"top-1 agreement {accuracy.top1_agreement:.0%} < {tolerance.min_top1_agreement:.0%}")
    return f"rejected: less accurate than the tolerance on {accuracy.samples} {kind} samples: {'; '.join(parts)}"


def _target(baseline: Variant, candidates: Sequence[Variant], gpu: bool) -> tuple[tuple[str, ...], str] | None:
    """The one target every variant of a profile is compared on: (devices, words), devices () meaning this laptop.

    The devices that timed FP32 and every variant that was built; else this laptop's CPU; else
    (a GPU profile without device figures) None: the laptop's CPU does not stand for a GPU.
    """
    devices = set(baseline.device_latency_ms)
    for variant in candidates:
        if variant.status != FAILED:
            devices &= set(variant.device_latency_ms)
    if devices:
        names = sorted(devices)
        return tuple(names), f"on {', '.join(shown(d) for d in names)}" + (
            " (slowest p50)" if len(names) > 1 else " (p50)")
    if gpu:
        return None
    return (), "on this laptop's CPU"


def _latency(variant: Variant, devices: tuple[str, ...]) -> float | None:
    if devices:
        return max(variant.device_latency_ms[d] for d in devices)
    return variant.local_latency_ms


def _pct(size: int, baseline: Variant) -> str:
    return f"{size / baseline.size_bytes:.0%} of FP32's size" if baseline.size_bytes else f"{size} bytes"


def choose(profile: Profile, baseline: Variant, candidates: Sequence[Variant],
           tolerance: Tolerance) -> tuple[list[Variant], str]:
    """Statuses and reasons for one profile's variants (baseline first) and the chosen recipe (see optimize_model)."""
    gpu = is_gpu_profile(profile)
    target = _target(baseline, candidates, gpu)
    devices, where = target if target is not None else ((), "")
    base_ms = _latency(baseline, devices) if target is not None else None
    verdicts: dict[str, Variant] = {}
    eligible: list[Variant] = []
    for variant in candidates:
        if variant.status == FAILED:
            verdicts[variant.recipe] = variant
            continue
        if variant.accuracy is None or not passes(variant.accuracy, tolerance):
            reason = _accuracy_failure(variant.accuracy, tolerance) if variant.accuracy else "rejected: not checked"
            verdicts[variant.recipe] = replace(variant, status=REJECTED, reason=reason)
            continue
        ms = _latency(variant, devices) if target is not None else None
        if ms is not None and base_ms is not None and ms > base_ms * (1 + NOISE):
            verdicts[variant.recipe] = replace(variant, status=REJECTED, reason=(
                f"rejected: slower than FP32 {where}: {ms:.3g} ms against {base_ms:.3g} ms ({ms / base_ms:.2f}x)"))
            continue
        eligible.append(variant)

    pool = [baseline, *eligible]
    by_latency = base_ms is not None and all(_latency(v, devices) is not None for v in eligible)
    if by_latency:
        speeds = {v.recipe: float(_latency(v, devices) or 0.0) for v in pool}

        def speed(v: Variant) -> float:
            return speeds[v.recipe]

        fastest = min(pool, key=speed)
        near = [v for v in pool if speed(v) <= speed(fastest) * (1 + NOISE)]
        winner = min(near, key=lambda v: (v.size_bytes, speed(v)))
        figures_base = speed(baseline)
        for variant in eligible:
            ms = speed(variant)
            if variant is winner:
                why = ("the fastest" if winner is fastest else
                       f"within {NOISE:.0%} of the fastest ({NAMES[fastest.recipe]}, {speed(fastest):.3g} ms) "
                       "and the smallest of those")
                verdicts[variant.recipe] = replace(variant, status=CHOSEN, reason=(
                    f"chosen: {why} {where}: {ms:.3g} ms against FP32's {figures_base:.3g} ms "
                    f"({ms / figures_base:.2f}x), {_pct(variant.size_bytes, baseline)}"))
            else:
                verdicts[variant.recipe] = replace(variant, status=ACCEPTED, reason=(
                    f"accepted but not chosen: accurate and not slower than FP32 {where} ({ms:.3g} ms, "
                    f"{_pct(variant.size_bytes, baseline)}), but {NAMES[winner.recipe]} was faster or smaller"))
        base_reason = f"the imported model, what every variant is checked against: {figures_base:.3g} ms {where}"
    else:
        # A GPU profile without device figures: latency is not judged. INT8 on a GPU pays off only
        # with INT8 Tensor Cores (onnxruntime quantization guide, "Quantization on GPU"), so it is
        # not chosen unmeasured; FP16 and FP32 variants are chosen on accuracy and size.
        unmeasured = ("latency was not measured on a GPU device (this laptop's CPU does not stand for "
                      f"{', '.join(profile.execution_providers[:2])}); bench it on a device of profile {profile.name} "
                      "to choose by speed")
        plain = [v for v in pool if not v.recipe.startswith("int8")]
        winner = min(plain, key=lambda v: (v.size_bytes, v.recipe != BASELINE))
        for variant in eligible:
            if variant is winner:
                verdicts[variant.recipe] = replace(variant, status=CHOSEN, reason=(
                    f"chosen on accuracy and size ({_pct(variant.size_bytes, baseline)}): {unmeasured}"))
            elif variant.recipe.startswith("int8"):
                verdicts[variant.recipe] = replace(variant, status=ACCEPTED, reason=(
                    f"accepted but not chosen: accurate ({_pct(variant.size_bytes, baseline)}), but INT8 is faster "
                    "only on GPUs with INT8 Tensor Cores and " + unmeasured))
            else:
                verdicts[variant.recipe] = replace(variant, status=ACCEPTED, reason=(
                    f"accepted but not chosen: accurate, but {NAMES[winner.recipe]} is smaller "
                    f"({_pct(variant.size_bytes, baseline)} here); {unmeasured}"))
        base_reason = "the imported model, what every variant is checked against"
    if winner is baseline:
        base_reason += "; chosen: no variant was accurate enough and at least as fast" if by_latency else \
            "; chosen: no variant was accurate enough and smaller"
    result = [replace(baseline, reason=base_reason)]
    result += [verdicts[variant.recipe] for variant in candidates]
    return result, winner.recipe
