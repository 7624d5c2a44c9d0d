"""Importing an ONNX model: the card describes the real file, and every bad file is refused with a fix.

The models are real (a small CNN, an MLP with external data), built with onnx.helper in the test,
checked by the real onnx checker and loaded by the real onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from fleetdesk.errors import FleetDeskError
from fleetdesk.models.card import (
    CorruptModelError,
    EmptyModelError,
    ExternalDataError,
    ExternalDataMissingError,
    ExternalDataOutsideError,
    ExternalFile,
    IrVersionTooNewError,
    ModelCheckError,
    ModelError,
    ModelNotFoundError,
    ModelRuntimeError,
    ModelTooLargeError,
    NotAModelFileError,
    NotOnnxError,
    OpsetTooNewError,
    TensorSpec,
    TruncatedModelError,
)
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.runtime_support import onnxruntime_support
from tests.conftest import as_unprivileged
from tests.fixtures.models.build import (
    CNN_PARAMETERS,
    MLP_PARAMETERS,
    PRODUCER,
    mlp_parameters,
    save_cnn,
    save_mlp_external,
    small_cnn,
    small_mlp,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: proof that nothing was written."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))
    }


def refused(path: Path, error: type[ModelError], *, max_bytes: int | None = None) -> ModelError:
    """Import `path`, expect `error`, and check it speaks to an operator: names the file, says the fix."""
    before = snapshot(path.parent)
    with pytest.raises(error) as caught:
        if max_bytes is None:
            inspect_model(path)
        else:
            inspect_model(path, max_bytes=max_bytes)
    exc = caught.value
    assert isinstance(exc, FleetDeskError)
    assert exc.step == "import model"
    assert exc.path == str(path.absolute())
    assert exc.fix and len(exc.fix) > 20
    assert str(exc) == f"{exc.message} — {exc.fix}"
    assert "\n" not in exc.message
    assert exc.to_dict()["path"] == str(path.absolute())
    assert snapshot(path.parent) == before, "a refused import must not write anything"
    return exc


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return save_cnn(tmp_path / "small_cnn.onnx")


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    folder = tmp_path / "mlp"
    folder.mkdir()
    return save_mlp_external(folder / "mlp.onnx")


def set_location(model_path: Path, location: str) -> None:
    """Point every external tensor of the model at `location` (as a hand-edited or hostile file would)."""
    model = onnx.load_model(model_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model_path.write_bytes(model.SerializeToString())


# -- the card of a good model ---------------------------------------------------------------------


def test_the_card_of_a_cnn_describes_the_real_file(cnn: Path) -> None:
    card = inspect_model(cnn)

    assert card.path == str(cnn)
    assert card.name == "small_cnn"
    assert card.sha256 == sha256(cnn) == card.file_sha256
    assert card.size_bytes == cnn.stat().st_size
    assert card.ir_version == 8
    assert card.opset == {"ai.onnx": 17}
    assert card.default_opset == 17
    assert card.producer == PRODUCER
    assert card.inputs == (TensorSpec("image", "float32", ("batch", 3, 32, 32)),)
    # The exporter left the class count unknown ("?"): shape inference found it.
    assert card.outputs == (TensorSpec("logits", "float32", ("batch", 10)),)
    assert card.operators == (("Conv", 1), ("Flatten", 1), ("Gemm", 1), ("GlobalAveragePool", 1), ("Relu", 1))
    assert card.parameter_count == CNN_PARAMETERS == 314
    assert card.external_files == ()


def test_weights_listed_as_inputs_are_not_inputs_of_the_card(cnn: Path) -> None:
    # Older exporters (torch.onnx.export(keep_initializers_as_inputs=True)) list every weight as a graph input.
    model = small_cnn()
    for tensor in model.graph.initializer:
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    cnn.write_bytes(model.SerializeToString())
    card = inspect_model(cnn)
    assert card.inputs == (TensorSpec("image", "float32", ("batch", 3, 32, 32)),)
    assert card.parameter_count == CNN_PARAMETERS


def test_the_card_of_a_cnn_is_plain_json(cnn: Path) -> None:
    card = inspect_model(cnn, name="Line 2 defect detector")
    data = json.loads(json.dumps(card.to_dict()))

    assert data["name"] == "Line 2 defect detector"
    assert data["sha256"] == sha256(cnn)
    assert data["opset"] == {"ai.onnx": 17}
    assert data["producer"] == {"name": PRODUCER[0], "version": PRODUCER[1]}
    assert data["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert data["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert data["operators"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "Relu": 1}
    assert data["parameter_count"] == 314
    assert data["external_files"] == []


def test_the_card_of_a_model_with_external_data_counts_and_hashes_its_data_file(mlp: Path) -> None:
    weights = mlp.parent / "mlp.weights"
    before = snapshot(mlp.parent)
    card = inspect_model(mlp)

    assert snapshot(mlp.parent) == before
    assert card.name == "mlp"
    assert card.file_sha256 == sha256(mlp)
    assert card.external_files == (ExternalFile("mlp.weights", weights.stat().st_size, sha256(weights)),)
    # All four float32 tensors live in the data file, nothing else does.
    assert weights.stat().st_size == MLP_PARAMETERS * 4
    assert card.size_bytes == mlp.stat().st_size + weights.stat().st_size
    # The documented combined digest: the model file's digest, then "<digest>  <location>" per data file.
    expected = hashlib.sha256(f"{sha256(mlp)}\n{sha256(weights)}  mlp.weights\n".encode()).hexdigest()
    assert card.sha256 == expected != card.file_sha256
    assert card.ir_version == 10
    assert card.opset == {"ai.onnx": 21}
    assert card.producer == PRODUCER
    assert card.inputs == (TensorSpec("features", "float32", ("batch", 64)),)
    assert card.outputs == (TensorSpec("scores", "float32", ("batch", 16)),)
    assert card.operators == (("Add", 2), ("MatMul", 2), ("Relu", 1))
    assert card.parameter_count == MLP_PARAMETERS == 10384
    assert card.to_dict()["external_files"] == [
        {"location": "mlp.weights", "size_bytes": MLP_PARAMETERS * 4, "sha256": sha256(weights)}
    ]


def test_a_model_with_large_embedded_weights_is_described_whole(tmp_path: Path) -> None:
    path = tmp_path / "wide_mlp.onnx"
    onnx.save_model(small_mlp(hidden=1024), path)  # fc1.weight alone is 256 KiB, inside the .onnx file
    card = inspect_model(path)
    assert card.sha256 == sha256(path)
    assert card.size_bytes == path.stat().st_size > 64 * 1024 * 4
    assert card.parameter_count == mlp_parameters(1024) == 82960
    assert card.outputs == (TensorSpec("scores", "float32", ("batch", 16)),)
    assert card.external_files == ()


def test_the_digest_follows_the_data_not_the_model_file_name(mlp: Path) -> None:
    original = inspect_model(mlp).sha256
    renamed = mlp.rename(mlp.with_name("renamed.onnx"))
    assert inspect_model(renamed).sha256 == original

    weights = mlp.parent / "mlp.weights"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    weights.write_bytes(bytes(data))
    assert inspect_model(renamed).sha256 != original


def test_a_hostile_file_name_imports_and_is_shown_as_plain_text(tmp_path: Path) -> None:
    folder = tmp_path / "Line 2 — Prüfstand (α) "
    folder.mkdir()
    cnn = save_cnn(folder / "Modèle détection ✓ v2 .onnx")
    card = inspect_model(cnn)
    assert card.name == "Modèle détection ✓ v2 "
    assert card.sha256 == sha256(cnn)

    mlp = save_mlp_external(folder / "réseau ✓.onnx", location="poids données 1.bin")
    card = inspect_model(mlp)
    assert [ext.location for ext in card.external_files] == ["poids données 1.bin"]

    # Control and bidi characters in a name are escaped in messages, so a name cannot forge a line or reorder text.
    hostile = folder / "bad\nname\u202e.onnx"
    hostile.write_text("not a model\n")
    exc = refused(hostile, NotOnnxError)
    assert "bad\\u000aname\\u202e.onnx" in exc.message


def test_a_symlinked_data_file_inside_the_folder_is_refused_as_onnx_does(mlp: Path) -> None:
    store = mlp.parent / "store"
    store.mkdir()
    (mlp.parent / "mlp.weights").rename(store / "mlp.weights")
    (mlp.parent / "mlp.weights").symlink_to(Path("store") / "mlp.weights")
    exc = refused(mlp, ExternalDataError)
    assert not isinstance(exc, ExternalDataOutsideError)
    assert exc.message == "mlp.onnx keeps tensor data in mlp.weights, which is a symbolic link"
    assert "cp --dereference" in exc.fix


def test_the_newest_opset_onnxruntime_runs_is_accepted(tmp_path: Path) -> None:
    support = onnxruntime_support()
    assert support.version == onnxruntime.__version__
    if support.max_opset > onnx.defs.onnx_opset_version():
        pytest.skip(f"onnx {onnx.__version__} does not know opset {support.max_opset} yet")
    path = save_cnn(tmp_path / "newest.onnx", opset=support.max_opset, ir_version=support.max_ir_version)
    card = inspect_model(path)
    assert card.opset == {"ai.onnx": support.max_opset}
    assert card.ir_version == support.max_ir_version


def test_the_model_runs_as_the_card_says(cnn: Path) -> None:
    # The card's signature is the one onnxruntime sees: feeding it what the card declares works.
    card = inspect_model(cnn)
    session = onnxruntime.InferenceSession(str(cnn), providers=["CPUExecutionProvider"])
    spec = card.inputs[0]
    image = np.zeros([2 if isinstance(d, str) else d for d in spec.shape or ()], dtype=spec.dtype)
    (logits,) = session.run([card.outputs[0].name], {spec.name: image})
    assert logits.shape == (2, 10)


# -- refused files --------------------------------------------------------------------------------


def test_a_text_file_is_not_an_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("name,score\nline2,0.93\n")
    exc = refused(path, NotOnnxError)
    assert exc.message == "x.txt is not an ONNX model: it is a text file"
    assert "torch.onnx.export" in exc.fix


def test_a_pytorch_checkpoint_is_not_an_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # a .pt file is a ZIP archive
    exc = refused(path, NotOnnxError)
    assert "model.pt is not an ONNX model" in exc.message
    assert "ZIP archive" in exc.message


def test_random_bytes_are_not_an_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    exc = refused(path, NotOnnxError)
    assert "noise.onnx is not an ONNX model" in exc.message


def test_a_truncated_model_is_named_truncated(cnn: Path) -> None:
    data = cnn.read_bytes()
    cnn.write_bytes(data[: len(data) // 2])
    exc = refused(cnn, TruncatedModelError)
    assert exc.message.startswith("small_cnn.onnx is truncated: the file ends after")
    assert "inside the model's graph" in exc.message
    assert "copy the file again" in exc.fix


def test_a_model_cut_anywhere_is_refused_never_accepted(tmp_path: Path, cnn: Path) -> None:
    data = cnn.read_bytes()
    cut = tmp_path / "cut.onnx"
    for length in range(1, len(data), 41):
        cut.write_bytes(data[:length])
        with pytest.raises((TruncatedModelError, CorruptModelError)) as caught:
            inspect_model(cut)
        assert caught.value.message.startswith("cut.onnx is "), length


def test_a_model_damaged_inside_is_named_damaged(cnn: Path) -> None:
    model = small_cnn()
    graph = model.graph.SerializeToString()
    data = model.SerializeToString()
    start = data.index(graph)
    damaged = bytearray(data)
    damaged[start : start + 16] = b"\xff" * 16  # garbage where the graph's first fields are
    cnn.write_bytes(bytes(damaged))
    exc = refused(cnn, CorruptModelError)
    assert "damaged" in exc.message


def test_a_model_the_checker_rejects_names_the_checkers_reason(cnn: Path) -> None:
    model = small_cnn()
    model.graph.node[1].input[0] = "nowhere"  # Relu reads a tensor nothing produces
    cnn.write_bytes(model.SerializeToString())
    exc = refused(cnn, ModelCheckError)
    assert exc.message.startswith("small_cnn.onnx fails the ONNX checker: ")
    assert "'nowhere'" in exc.message
    assert "onnx.checker.check_model" in exc.fix


def test_a_model_with_inconsistent_shapes_is_refused(cnn: Path) -> None:
    model = small_cnn()
    weight = next(t for t in model.graph.initializer if t.name == "fc.weight")
    weight.CopyFrom(onnx.numpy_helper.from_array(np.zeros((10, 9), np.float32), "fc.weight"))  # 8 features come in
    cnn.write_bytes(model.SerializeToString())
    exc = refused(cnn, ModelCheckError)
    assert "Gemm" in exc.message


def test_an_opset_newer_than_onnxruntime_names_both_numbers(tmp_path: Path) -> None:
    support = onnxruntime_support()
    path = save_cnn(tmp_path / "future.onnx", opset=support.max_opset + 1, ir_version=support.max_ir_version)
    exc = refused(path, OpsetTooNewError)
    assert exc.message == (
        f"future.onnx uses ONNX opset {support.max_opset + 1}, but the installed onnxruntime "
        f"{onnxruntime.__version__} runs opsets up to {support.max_opset}"
    )
    assert f"opset_version={support.max_opset}" in exc.fix


def test_an_ir_version_newer_than_onnxruntime_names_both_numbers(tmp_path: Path) -> None:
    support = onnxruntime_support()
    path = save_cnn(tmp_path / "future-ir.onnx", ir_version=support.max_ir_version + 1)
    exc = refused(path, IrVersionTooNewError)
    assert f"IR version {support.max_ir_version + 1}" in exc.message
    assert f"up to {support.max_ir_version}" in exc.message
    assert f"model.ir_version = {support.max_ir_version}" in exc.fix


def test_an_operator_onnxruntime_cannot_run_on_cpu_is_refused_by_the_final_session(tmp_path: Path) -> None:
    # Valid ONNX (Relu-14 accepts bfloat16), but onnxruntime has no bfloat16 Relu kernel on CPU.
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "bf16",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.BFLOAT16, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BFLOAT16, ["batch", 4])],
    )
    path = tmp_path / "bf16.onnx"
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    exc = refused(path, ModelRuntimeError)
    assert exc.message.startswith(f"onnxruntime {onnxruntime.__version__} cannot load bf16.onnx on CPU: ")
    assert "Could not find an implementation for Relu(14)" in exc.message
    assert "ONNXRuntimeError" not in exc.message  # onnxruntime's status prefix is noise to an operator


def test_missing_external_data_names_the_file(mlp: Path) -> None:
    (mlp.parent / "mlp.weights").unlink()
    exc = refused(mlp, ExternalDataMissingError)
    assert "mlp.weights, which is missing" in exc.message
    assert "Copy mlp.weights next to the model" in exc.fix


@pytest.mark.parametrize("location", ["../mlp.weights", "sub/../../mlp.weights", "..\\mlp.weights", "ABSOLUTE"])
def test_external_data_outside_the_folder_is_refused(mlp: Path, location: str) -> None:
    outside = mlp.parent.parent / "mlp.weights"
    (mlp.parent / "mlp.weights").rename(outside)  # the data really is there: a loader would read it
    set_location(mlp, str(outside) if location == "ABSOLUTE" else location)
    exc = refused(mlp, ExternalDataOutsideError)
    assert "outside the model's folder" in exc.message
    assert "fc1.weight" in exc.message
    assert "move the file next to the model" in exc.fix


def test_a_symlink_out_of_the_folder_is_refused(mlp: Path) -> None:
    outside = mlp.parent.parent / "elsewhere.bin"
    (mlp.parent / "mlp.weights").rename(outside)
    (mlp.parent / "mlp.weights").symlink_to(outside)
    exc = refused(mlp, ExternalDataOutsideError)
    assert "mlp.weights, outside the model's folder" in exc.message


def test_a_malformed_external_data_entry_is_refused(mlp: Path) -> None:
    model = onnx.load_model(mlp, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = "twelve"
    if not any(entry.key == "offset" for entry in model.graph.initializer[0].external_data):
        model.graph.initializer[0].external_data.add(key="offset", value="twelve")
    mlp.write_bytes(model.SerializeToString())
    exc = refused(mlp, ExternalDataError)
    assert exc.message.startswith("mlp.onnx has a malformed external data entry for tensor fc1.weight")


def test_a_short_external_data_file_is_refused(mlp: Path) -> None:
    weights = mlp.parent / "mlp.weights"
    weights.write_bytes(weights.read_bytes()[:1000])
    exc = refused(mlp, ExternalDataError)
    assert exc.message.startswith("mlp.weights is shorter than mlp.onnx needs")
    assert "the file has 1000" in exc.message


def test_a_model_over_the_size_limit_is_refused(cnn: Path) -> None:
    exc = refused(cnn, ModelTooLargeError, max_bytes=1024)
    size = cnn.stat().st_size
    assert 1024 < size < 1024**2
    assert exc.message == f"small_cnn.onnx is {size / 1024:.1f} KiB, over the import limit of 1.0 KiB"
    assert "size limit" in exc.fix


def test_the_size_limit_counts_external_data(mlp: Path) -> None:
    limit = mlp.stat().st_size + 1000  # the .onnx file fits, its 40 KiB of weights do not
    exc = refused(mlp, ModelTooLargeError, max_bytes=limit)
    assert "mlp.onnx with its external data is 41.1 KiB" in exc.message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.touch()
    exc = refused(path, EmptyModelError)
    assert exc.message == "empty.onnx is empty (0 bytes)"
    assert "export the model again" in exc.fix


def test_a_folder_is_refused_and_its_models_are_suggested(tmp_path: Path) -> None:
    # A folder of its own: `refused` snapshots the parent, and pytest's base folder may hold a lab's /proc.
    folder = tmp_path / "exports"
    folder.mkdir()
    save_cnn(folder / "small_cnn.onnx")
    exc = refused(folder, NotAModelFileError)
    assert exc.message == "exports is a folder, not a model file (it holds small_cnn.onnx)"
    assert "Pick the .onnx file" in exc.fix


def test_a_pipe_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stream.onnx"
    os.mkfifo(path)
    exc = refused(path, NotAModelFileError)
    assert "not a regular file" in exc.message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    exc = refused(tmp_path / "gone.onnx", ModelNotFoundError)
    assert exc.message.startswith("gone.onnx does not exist")


def test_an_unreadable_file_is_refused(cnn: Path) -> None:
    cnn.chmod(0)
    said = as_unprivileged(
        "from fleetdesk.models.importer import inspect_model\n"
        "try:\n"
        f"    inspect_model({str(cnn)!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc.message, '|', exc.fix)\n", cnn.parent)
    assert said.startswith("NotAModelFileError") and "permission denied" in said
