"""Sample inputs: the operator's .npy/.npz folder (good and bad files) and generated inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fleetdesk.models.card import ModelCard, SamplesError
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.samples import GENERATED_SOURCE, load_samples
from tests.fixtures.models.build import save_cnn


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    """Input "image" float32 [batch, 3, 32, 32]."""
    return inspect_model(save_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    """Three inputs: "x" float32 [batch, 4], "ids" int64 [batch, 3], "mask" bool [batch, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["ids_f", "mask_f"], ["y"]),
         helper.make_node("Identity", ["x"], ["x_out"])],
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return inspect_model(path)


def _image(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# -- generated ---------------------------------------------------------------------------------


def test_generated_samples_follow_the_declared_shapes_and_say_they_are_synthetic(mixed: ModelCard) -> None:
    samples = load_samples(mixed, None, count=5, seed=3)
    assert samples.synthetic and samples.source == GENERATED_SOURCE and len(samples) == 5
    feed = samples.feeds[0]
    assert feed["x"].shape == (1, 4) and feed["x"].dtype == np.float32
    assert feed["ids"].dtype == np.int64 and feed["ids"].min() >= 0 and feed["ids"].max() < 10
    assert feed["mask"].dtype == np.bool_ and feed["mask"].shape == (1, 3)


def test_generated_samples_are_the_same_for_a_seed_and_differ_between_seeds(cnn: ModelCard) -> None:
    first = load_samples(cnn, None, count=3, seed=7)
    again = load_samples(cnn, None, count=3, seed=7)
    other = load_samples(cnn, None, count=3, seed=8)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(first.feeds, again.feeds, strict=True))
    assert not np.array_equal(first.feeds[0]["image"], other.feeds[0]["image"])
    assert first.feeds[0]["image"].shape == (1, 3, 32, 32)


# -- the operator's folder: good files ----------------------------------------------------------


def test_a_stack_in_an_npz_becomes_one_sample_each_with_batch_one(cnn: ModelCard, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stack = _image(rng, 4, 3, 32, 32)
    np.savez(tmp_path / "a.npz", image=stack)
    samples = load_samples(cnn, tmp_path)
    assert not samples.synthetic and samples.source == str(tmp_path)
    assert len(samples) == 4
    assert all(feed["image"].shape == (1, 3, 32, 32) for feed in samples.feeds)
    assert np.array_equal(samples.feeds[2]["image"][0], stack[2])


def test_npy_files_single_samples_without_batch_axis_and_count_limit(cnn: ModelCard, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "01.npy", _image(rng, 3, 32, 32))  # one image, no batch axis
    np.save(tmp_path / "02.npy", _image(rng, 1, 3, 32, 32))  # one image with its batch axis
    np.savez(tmp_path / "03.npz", _image(rng, 5, 1, 3, 32, 32))  # np.savez's default key, a stack of batches
    samples = load_samples(cnn, tmp_path, count=6)
    assert len(samples) == 6  # 1 + 1 + the first 4 of the stack
    assert {feed["image"].shape for feed in samples.feeds} == {(1, 3, 32, 32)}


def test_safe_widening_is_converted(mixed: ModelCard, tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.ones((2, 4), np.float16), ids=np.arange(6, dtype=np.int32).reshape(2, 3),
             mask=np.ones((2, 3), bool))
    samples = load_samples(mixed, tmp_path)
    assert len(samples) == 2
    assert samples.feeds[1]["ids"].dtype == np.int64 and samples.feeds[1]["ids"].tolist() == [[3, 4, 5]]
    assert samples.feeds[0]["x"].dtype == np.float32


# -- the operator's folder: bad files -----------------------------------------------------------


def _error(card: ModelCard, folder: Path) -> SamplesError:
    with pytest.raises(SamplesError) as caught:
        load_samples(card, folder)
    assert caught.value.fix
    return caught.value


def test_an_empty_folder_says_so_and_how_to_go_on(cnn: ModelCard, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a sample")
    error = _error(cnn, tmp_path)
    assert "no .npy or .npz" in error.message and "generated inputs" in error.fix


def test_a_narrowing_dtype_names_file_input_expected_found_and_fix(cnn: ModelCard, tmp_path: Path) -> None:
    np.save(tmp_path / "images.npy", np.zeros((2, 3, 32, 32)))  # float64, numpy's default
    error = _error(cnn, tmp_path)
    assert "images.npy" in error.message and "image" in error.message
    assert "expected float32, found float64" in error.message
    assert "astype(np.float32)" in error.fix
    assert error.path == str(tmp_path / "images.npy")


def test_a_wrong_shape_is_named(cnn: ModelCard, tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 16, 16), np.float32))
    error = _error(cnn, tmp_path)
    assert "expected shape [batch, 3, 32, 32]" in error.message and "[1, 3, 16, 16]" in error.message


def test_pickled_object_arrays_are_refused_without_loading_them(cnn: ModelCard, tmp_path: Path) -> None:
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, {"b": 2}]
    np.save(tmp_path / "evil.npy", objects, allow_pickle=True)
    error = _error(cnn, tmp_path)
    assert "pickled" in error.message and "evil.npy" in error.message


def test_nan_values_are_refused(cnn: ModelCard, tmp_path: Path) -> None:
    images = np.zeros((1, 3, 32, 32), np.float32)
    images[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", images)
    assert "1 values are NaN or infinite" in _error(cnn, tmp_path).message


def test_npz_keys_must_name_the_inputs(mixed: ModelCard, tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((1, 4), np.float32), idz=np.zeros((1, 3), np.int64))
    error = _error(mixed, tmp_path)
    assert "idz" in error.message and "ids" in error.message
    (tmp_path / "a.npz").unlink()
    np.savez(tmp_path / "b.npz", x=np.zeros((1, 4), np.float32), ids=np.zeros((1, 3), np.int64))
    assert "no array for input mask" in _error(mixed, tmp_path).message


def test_one_npy_for_a_model_with_several_inputs_is_refused(mixed: ModelCard, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    assert "takes 3 inputs" in _error(mixed, tmp_path).message


def test_hostile_file_names_are_shown_escaped(cnn: ModelCard, tmp_path: Path) -> None:
    name = "evil\x1b[31m\u202e.npy"
    np.save(tmp_path / name, np.zeros((1, 3, 32, 32), np.float64))
    error = _error(cnn, tmp_path)
    assert "\x1b" not in error.message and "\u202e" not in error.message
    assert "evil\\u001b[31m\\u202e.npy" in error.message


def test_damaged_files_links_out_and_non_folders(cnn: ModelCard, tmp_path: Path) -> None:
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert "not a readable numpy file" in _error(cnn, tmp_path).message
    (tmp_path / "cut.npy").unlink()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.npy"
    np.save(outside, np.zeros((1, 3, 32, 32), np.float32))
    (tmp_path / "link.npy").symlink_to(outside)
    assert "outside the samples folder" in _error(cnn, tmp_path).message
    assert "is not a folder" in _error(cnn, outside).message
