"""Each recipe step on real architectures exported from PyTorch, accuracy figures on known arrays."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from fleetdesk.models.card import ModelCard, OptimizationCancelled
from fleetdesk.models.evaluate import compare, run_outputs
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.samples import SampleSet, load_samples
from fleetdesk.models.variants import build_variant, folder_size, prepare_for_quantization
from tests.fixtures.models.build import save_mlp_external
from tests.fixtures.models.torch_models import export_cnn, export_transformer

RECIPES = ("graph", "int8-dynamic", "int8-static", "fp16")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelCard]:
    folder = tmp_path_factory.mktemp("torch")
    return {"cnn": inspect_model(export_cnn(folder)), "transformer": inspect_model(export_transformer(folder))}


@pytest.fixture(scope="module")
def built(exported: dict[str, ModelCard], tmp_path_factory: pytest.TempPathFactory,
          ) -> dict[tuple[str, str], tuple[Path, tuple[str, ...], SampleSet]]:
    """Every recipe step built once for both models: (model, recipe) -> (folder, files, samples)."""
    out = {}
    for name, card in exported.items():
        work = tmp_path_factory.mktemp(name)
        samples = load_samples(card, None, count=8)
        prepared, _ = prepare_for_quantization(Path(card.path), work / "prep")
        for recipe in RECIPES:
            source = prepared if recipe.startswith("int8") else Path(card.path)
            folder = work / recipe
            out[(name, recipe)] = (folder, build_variant(recipe, source, folder, samples), samples)
    return out


@pytest.mark.parametrize("model", ["cnn", "transformer"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_writes_a_valid_model_onnxruntime_runs(built, exported, model: str, recipe: str) -> None:
    folder, files, samples = built[(model, recipe)]
    assert files == ("model.onnx",)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]  # no helper files left behind
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    outputs = run_outputs(folder / "model.onnx", samples)
    reference = run_outputs(exported[model].path, samples)
    assert [o[0].shape for o in outputs] == [r[0].shape for r in reference]
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    if recipe == "int8-static":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    if recipe == "int8-dynamic":
        assert ops & {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


def test_int8_variants_of_the_cnn_are_at_most_30_percent_of_fp32(built, exported) -> None:
    fp32 = exported["cnn"].size_bytes
    for recipe in ("int8-dynamic", "int8-static"):
        folder, files, _ = built[("cnn", recipe)]
        assert folder_size(folder, files) <= 0.30 * fp32, recipe


def _weight_bytes(path: Path, *, min_elements: int = 1024) -> int:
    """Bytes of the weight matrices (initializers of at least `min_elements`), biases and scales left out."""
    model = onnx.load(str(path))
    return sum(len(t.raw_data) for t in model.graph.initializer if int(np.prod(t.dims)) >= min_elements)


def test_int8_variants_of_the_transformer_store_every_weight_matrix_in_8_bits(built, exported) -> None:
    # The whole file is ~33 % (dynamic) / ~43 % (static) of FP32 for this 50 k-parameter block: its
    # 100-odd nodes (the exporter's shape arithmetic for the dynamic batch, QDQ pairs around every
    # activation in the static variant) are ~20-40 KB that quantization cannot shrink. The weights
    # themselves, which is what grows with the model, must be at 25 %.
    fp32 = _weight_bytes(Path(exported["transformer"].path))
    for recipe in ("int8-dynamic", "int8-static"):
        folder, files, _ = built[("transformer", recipe)]
        assert _weight_bytes(folder / files[0]) <= 0.26 * fp32, recipe


def test_fp16_is_about_half_and_keeps_float32_inputs_and_outputs(built) -> None:
    folder, files, _ = built[("cnn", "fp16")]
    model = onnx.load(str(folder / files[0]))
    assert {value.type.tensor_type.elem_type for value in [*model.graph.input, *model.graph.output]} == {
        onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


@pytest.mark.parametrize("recipe", RECIPES)
def test_models_with_external_data_keep_external_data(tmp_path: Path, recipe: str) -> None:
    (tmp_path / "in").mkdir()
    card = inspect_model(save_mlp_external(tmp_path / "in" / "mlp.onnx"))
    samples = load_samples(card, None, count=4)
    files = build_variant(recipe, Path(card.path), tmp_path / recipe, samples)
    assert files == ("model.onnx", "model.onnx.data")
    variant = inspect_model(tmp_path / recipe / "model.onnx")  # validates it and its data as an import would
    assert [ext.location for ext in variant.external_files] == ["model.onnx.data"]
    accuracy = compare(run_outputs(card.path, samples), run_outputs(variant.path, samples), synthetic=True)
    assert accuracy.cosine > 0.99


def test_cancel_stops_int8_calibration(exported, tmp_path: Path) -> None:
    card = exported["cnn"]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(OptimizationCancelled):
        build_variant("int8-static", Path(card.path), tmp_path / "s", load_samples(card, None, count=4), cancel=cancel)


# -- accuracy figures on known arrays ----------------------------------------------------------


def test_compare_reports_max_abs_error_lowest_cosine_and_top1() -> None:
    reference = [[np.array([[1.0, 0.0, 0.0]], np.float32)], [np.array([[0.0, 2.0, 1.0]], np.float32)]]
    variant = [[np.array([[1.0, 0.1, 0.0]], np.float32)], [np.array([[0.0, 1.0, 1.5]], np.float32)]]
    accuracy = compare(reference, variant, synthetic=False)
    assert accuracy.max_abs_error == pytest.approx(1.0)
    # sample 2: (0,2,1).(0,1,1.5) = 3.5 over sqrt(5)*sqrt(3.25): the lower of the two cosines
    assert accuracy.cosine == pytest.approx(3.5 / (5**0.5 * 3.25**0.5))
    assert accuracy.top1_agreement == 0.5  # sample 1 agrees (class 0), sample 2 does not (1 vs 2)
    assert accuracy.samples == 2 and accuracy.synthetic is False


def test_compare_has_no_top1_for_outputs_that_are_not_classifiers_and_flags_nan() -> None:
    reference = [[np.ones((1, 16, 64), np.float32)]]
    assert compare(reference, [[np.ones((1, 16, 64), np.float32)]], synthetic=True).top1_agreement is None
    broken = np.ones((1, 16, 64), np.float32)
    broken[0, 0, 0] = np.nan
    accuracy = compare(reference, [[broken]], synthetic=True)
    assert accuracy.max_abs_error == float("inf") and accuracy.cosine == 0.0
    with pytest.raises(ValueError, match="shape"):
        compare(reference, [[np.ones((1, 16, 32), np.float32)]], synthetic=True)


def test_quantization_pre_processing_does_not_drag_in_torch(tmp_path: Path) -> None:
    """onnxruntime.tools imports torch whenever it is installed (it is, here); FleetDesk keeps it out: seconds
    and hundreds of MB in a worker thread would stall the window. A fresh interpreter, so nothing imported it yet."""
    import subprocess
    import sys

    model = save_mlp_external(tmp_path / "mlp.onnx")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fleetdesk.models.variants import prepare_for_quantization\n"
        f"path, note = prepare_for_quantization(Path({str(model)!r}), Path({str(tmp_path / 'prep')!r}))\n"
        "assert path.is_file(), note\n"
        "print('torch imported:', 'torch' in sys.modules, 'ort tools:', 'onnxruntime.tools' in sys.modules)\n"
        "import torch\n"  # and it is still importable afterwards: no sentinel left behind
        "print('torch', torch.__version__.split('+')[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "torch imported: False ort tools: True"
    assert lines[1].startswith("torch 2.")
