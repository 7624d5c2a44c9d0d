"""optimize_model: one build per recipe step, per-profile verdicts with reasons, the choice, progress, cancel."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from fleetdesk.models.card import ModelCard, OptimizationCancelled
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.optimize import optimize_model
from fleetdesk.models.report import (
    ACCEPTED,
    BASELINE,
    BASELINE_STATUS,
    CHOSEN,
    FAILED,
    REJECTED,
    OptimizationReport,
    Progress,
    Tolerance,
)
from fleetdesk.models.samples import load_samples
from fleetdesk.profiles import Profile
from fleetdesk.profiles.loader import load_profiles
from tests.fixtures.models.build import save_mlp_external
from tests.fixtures.models.torch_models import export_cnn


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    return inspect_model(export_cnn(tmp_path_factory.mktemp("torch")))


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    return load_profiles().profiles


def _bench(figures: Mapping[str, float], device: str = "dev-01"):
    """A device_bench that answers the p50 we state for each variant (an input to the rule, not a measurement)."""
    def bench(profile: Profile, model_path: Path) -> dict[str, float]:
        recipe = model_path.parent.name if model_path.name == "model.onnx" else BASELINE
        return {device: figures[recipe]} if recipe in figures else {}
    return bench


def test_cpu_profile_device_figures_decide_and_slower_int8_is_rejected_naming_both(cnn, profiles, tmp_path) -> None:
    samples = load_samples(cnn, None, count=6)
    bench = _bench({BASELINE: 10.0, "graph": 9.9, "int8-static": 4.0, "int8-dynamic": 31.0}, device="rpi4-01")
    # A tolerance both int8 variants meet whatever the installed onnxruntime's quantizer makes of this CNN (1.32's
    # dynamic int8 drifts to cosine 0.9898): this test is about the speed rule; the next but one is about accuracy.
    loose = Tolerance(max_abs_error=0.1, min_cosine=0.95, min_top1_agreement=0.5)
    report = optimize_model(cnn, samples, [profiles["rpi4"]], tmp_path, device_bench=bench, tolerance=loose)
    result = report.profile("rpi4")
    assert result is not None and result.chosen == "int8-static"
    assert [v.recipe for v in result.variants] == [BASELINE, "graph", "int8-static", "int8-dynamic"]
    dynamic = result.variant("int8-dynamic")
    assert dynamic.status == REJECTED
    assert "slower than FP32 on rpi4-01" in dynamic.reason and "31 ms" in dynamic.reason and "10 ms" in dynamic.reason
    assert result.variant(BASELINE).status == BASELINE_STATUS
    assert result.variant("graph").status == ACCEPTED and result.variant("graph").reason
    static = result.chosen_variant
    assert static.status == CHOSEN and static.device_latency_ms == {"rpi4-01": 4.0}
    assert "generated inputs only" in static.reason  # the samples were synthetic
    assert static.size_bytes <= 0.30 * cnn.size_bytes
    assert Path(static.folder, static.files[0]).is_file() and static.accuracy.top1_agreement is not None
    assert set(static.tool_versions) >= {"onnxruntime", "onnx", "numpy"}
    assert report.synthetic and report.samples == 6
    assert OptimizationReport.from_dict(report.to_dict()) == report


def test_within_noise_the_smaller_wins(cnn, profiles, tmp_path) -> None:
    samples = load_samples(cnn, None, count=4)
    bench = _bench({BASELINE: 10.0, "graph": 9.5, "int8-static": 9.8, "int8-dynamic": 9.9})
    result = optimize_model(cnn, samples, [profiles["ipc-x86"]], tmp_path, device_bench=bench).profiles[0]
    assert result.chosen in ("int8-static", "int8-dynamic")  # within 5 % of graph's 9.5 ms and 4x smaller
    assert "within 5% of the fastest" in result.chosen_variant.reason


def test_a_variant_outside_the_tolerance_is_rejected_with_its_figures(cnn, profiles, tmp_path) -> None:
    strict = Tolerance(max_abs_error=1e-9, min_cosine=0.999999999, min_top1_agreement=1.0)
    result = optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["rpi4"]], tmp_path,
                            tolerance=strict).profiles[0]
    for recipe in ("int8-static", "int8-dynamic"):
        variant = result.variant(recipe)
        assert variant.status == REJECTED
        assert "less accurate than the tolerance on 4 generated samples" in variant.reason
        assert "max abs error" in variant.reason and "cosine" in variant.reason
    assert result.chosen in (BASELINE, "graph")  # graph optimization is exact enough (same arithmetic)


def test_gpu_profile_without_device_figures_chooses_fp16_on_accuracy_and_size(cnn, profiles, tmp_path) -> None:
    result = optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["ipc-x86-nvidia"]],
                            tmp_path).profiles[0]
    assert result.chosen == "fp16"
    assert "not measured on a GPU device" in result.chosen_variant.reason
    assert result.variant("int8-static").status == ACCEPTED  # INT8 is not chosen on a GPU unmeasured


def test_gpu_profile_with_device_figures_rejects_a_slower_fp16(cnn, profiles, tmp_path) -> None:
    bench = _bench({BASELINE: 2.0, "graph": 2.0, "fp16": 2.6, "int8-static": 1.2}, device="gpc-01")
    result = optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["ipc-x86-nvidia"]], tmp_path,
                            device_bench=bench).profiles[0]
    assert result.variant("fp16").status == REJECTED and "2.6 ms against 2 ms" in result.variant("fp16").reason
    assert result.chosen == "int8-static"


def test_each_step_is_built_once_for_all_profiles(cnn, profiles, tmp_path) -> None:
    built: list[str] = []

    def watch(step: Progress) -> None:
        if step.stage == "build" and step.message.startswith("built "):
            built.append(step.message)

    report = optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["rpi4"], profiles["ipc-x86"]],
                            tmp_path, progress=watch)
    assert sorted(built) == ["built INT8 dynamic", "built INT8 static", "built graph-optimized FP32"]
    first, second = report.profiles
    assert first.variant("int8-static").sha256 == second.variant("int8-static").sha256
    assert first.variant("int8-static").folder == second.variant("int8-static").folder


def test_progress_counts_up_to_its_total(cnn, profiles, tmp_path) -> None:
    steps: list[Progress] = []
    optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["rpi4"]], tmp_path, progress=steps.append,
                   device_bench=_bench({}))
    done = [step.done for step in steps]
    assert done == sorted(done) and steps[-1].done == steps[-1].total
    assert {step.total for step in steps} == {steps[-1].total}
    assert {"check", "build", "time-local", "time-device"} <= {step.stage for step in steps}


def test_cancel_stops_at_the_next_step_and_writes_only_the_workdir(cnn, profiles, tmp_path) -> None:
    cancel = threading.Event()
    workdir = tmp_path / "work"
    before = sorted(p.name for p in Path(cnn.path).parent.iterdir())

    def stop_after_the_first_build(step: Progress) -> None:
        if step.message.startswith("built "):
            cancel.set()

    with pytest.raises(OptimizationCancelled):
        optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["rpi4"]], workdir,
                       progress=stop_after_the_first_build, cancel=cancel)
    assert sorted(p.name for p in Path(cnn.path).parent.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_broken_step_fails_alone(cnn, profiles, tmp_path) -> None:
    (tmp_path / "int8-dynamic").write_text("a file where the step's folder goes")  # the step cannot write
    result = optimize_model(cnn, load_samples(cnn, None, count=4), [profiles["rpi4"]], tmp_path).profiles[0]
    broken = result.variant("int8-dynamic")
    assert broken.status == FAILED and broken.reason.startswith("failed: ") and broken.accuracy is None
    assert result.variant("int8-static").status in (CHOSEN, ACCEPTED, REJECTED)
    assert result.variant("int8-static").accuracy is not None


def test_external_data_models_are_optimized_and_hashed_like_an_import(profiles, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    card = inspect_model(save_mlp_external(tmp_path / "in" / "mlp.onnx"))
    mlp_profile = replace(profiles["rpi4"], recipe=("graph", "int8-dynamic"))
    result = optimize_model(card, load_samples(card, None, count=4), [mlp_profile], tmp_path / "w").profiles[0]
    baseline = result.variant(BASELINE)
    assert baseline.files == ("mlp.onnx", "mlp.weights") and baseline.sha256 == card.sha256
    for recipe in ("graph", "int8-dynamic"):
        variant = result.variant(recipe)
        assert variant.status != FAILED, variant.reason
        assert variant.files == ("model.onnx", "model.onnx.data")
        assert inspect_model(Path(variant.folder, variant.files[0])).sha256 == variant.sha256
