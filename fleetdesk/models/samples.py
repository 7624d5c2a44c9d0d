"""Sample inputs for calibration and accuracy checks: the operator's .npy/.npz files, or inputs
generated from the model's declared shapes (and then every accuracy figure says "synthetic").
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetdesk.models.card import Dim, ModelCard, SamplesError, TensorSpec
from fleetdesk.models.importer import shown

GENERATED_SOURCE = "generated from the declared input shapes"
SAMPLE_SUFFIXES = (".npy", ".npz")
# Integers are generated in [0, INT_HIGH): small enough to be a valid index or class id for most
# models that take integer inputs (token ids, category codes), so generated inputs do not crash them.
INT_HIGH = 10
# A sample file bigger than this is refused before it is read (a wrong file picked, not a sample).
MAX_FILE_BYTES = 1024**3


@dataclass(frozen=True)
class SampleSet:
    """Inputs the model is run on: one feed (input name -> array) per sample, batch 1 or the model's fixed batch."""

    feeds: tuple[dict[str, np.ndarray], ...]
    synthetic: bool  # generated from declared shapes, not the operator's data
    source: str  # the operator's folder, or GENERATED_SOURCE

    def __len__(self) -> int:
        return len(self.feeds)


def load_samples(card: ModelCard, folder: str | os.PathLike[str] | None, *, count: int = 16,
                 seed: int = 0) -> SampleSet:
    """The operator's samples from `folder` (at most `count`, in file-name order), or `count` generated ones.

    In the folder, a .npz maps input names to arrays; a .npy is the one input of a single-input
    model (np.savez's default key "arr_0" counts as that input too). An array is one sample (with or
    without the batch axis) or a stack of samples along a new first axis; with a symbolic batch
    dimension an array of rank N is split into N[0] samples of batch 1. Dtypes must match the
    model's, or widen safely (int32 -> int64, float16 -> float32); anything else is a SamplesError
    naming the file, the input, what was expected and found, and the fix.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if folder is None:
        return generate_samples(card, count=count, seed=seed)
    return _read_folder(card, Path(os.path.abspath(os.fspath(folder))), count)


# -- generated -----------------------------------------------------------------------------------


def generate_samples(card: ModelCard, *, count: int = 16, seed: int = 0) -> SampleSet:
    """`count` feeds from the declared shapes (symbolic dims -> 1): floats N(0, 1), ints in [0, 10), bools."""
    rng = np.random.default_rng(seed)
    specs = [(spec, _generated_shape(card, spec), _numpy_dtype(card, spec)) for spec in card.inputs]
    feeds = []
    for _ in range(count):
        feed = {}
        for spec, shape, dtype in specs:
            if dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                feed[spec.name] = rng.integers(0, INT_HIGH, shape).astype(dtype)
        feeds.append(feed)
    return SampleSet(tuple(feeds), synthetic=True, source=GENERATED_SOURCE)


def _generated_shape(card: ModelCard, spec: TensorSpec) -> tuple[int, ...]:
    if spec.shape is None:
        raise SamplesError(
            f"cannot generate inputs for {shown(card.name)}: input {shown(spec.name)} declares no shape",
            path=card.path,
            fix="Give a folder of sample inputs (.npy/.npz) with --samples, or export the model with input shapes.",
        )
    return tuple(dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape)


def _numpy_dtype(card: ModelCard, spec: TensorSpec) -> np.dtype:
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise SamplesError(
            f"input {shown(spec.name)} of {shown(card.name)} is {spec.dtype}, which FleetDesk cannot feed",
            path=card.path,
            fix="Optimize a model whose inputs are numeric tensors (float, int or bool).",
        )
    return dtype


# -- the operator's folder -----------------------------------------------------------------------


def _read_folder(card: ModelCard, folder: Path, count: int) -> SampleSet:
    where = str(folder)
    try:
        info = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name) if stat.S_ISDIR(info.st_mode) else None
    except OSError as exc:
        raise SamplesError(
            f"the samples folder {shown(where)} cannot be read: {exc.strerror or exc}",
            path=where, fix="Check the path and that you can read the folder, then try again.", cause=exc,
        ) from exc
    if entries is None:
        raise SamplesError(
            f"{shown(where)} is not a folder", path=where,
            fix="Give the folder that holds the .npy/.npz sample files, not a file.",
        )
    files = [entry for entry in entries if entry.name.lower().endswith(SAMPLE_SUFFIXES)]
    if not files:
        raise SamplesError(
            f"the samples folder {shown(where)} holds no .npy or .npz files", path=where,
            fix="Save sample inputs with numpy (np.save / np.savez) into the folder, or leave the samples out "
            "to check accuracy on generated inputs.",
        )
    feeds: list[dict[str, np.ndarray]] = []
    for entry in files:
        if len(feeds) >= count:
            break
        feeds.extend(_read_file(card, folder, entry))
    return SampleSet(tuple(feeds[:count]), synthetic=False, source=where)


def _read_file(card: ModelCard, folder: Path, entry: os.DirEntry[str]) -> list[dict[str, np.ndarray]]:
    path = folder / entry.name
    label = shown(entry.name)
    where = str(path)
    # The file must be a regular file inside the folder: a symlink that leads elsewhere is refused.
    real = Path(os.path.realpath(path))
    if real.parent != Path(os.path.realpath(folder)):
        raise SamplesError(f"{label} is a link to a file outside the samples folder", path=where,
                           fix="Copy the sample file itself into the folder.")
    try:
        info = real.stat()
    except OSError as exc:
        raise SamplesError(f"{label} cannot be read: {exc.strerror or exc}", path=where,
                           fix="Check the file's permissions, then try again.", cause=exc) from exc
    if not stat.S_ISREG(info.st_mode):
        raise SamplesError(f"{label} is not a regular file", path=where, fix="Remove it from the samples folder.")
    if info.st_size > MAX_FILE_BYTES:
        raise SamplesError(f"{label} is {info.st_size / 1024**3:.1f} GiB, over the 1 GiB limit for one sample file",
                           path=where, fix="Split the samples over several smaller files.")
    arrays = _load_arrays(card, path, label)
    per_input = {name: _as_samples(card, label, where, name, array) for name, array in arrays.items()}
    counts = {name: len(samples) for name, samples in per_input.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{shown(name)}: {n}" for name, n in counts.items())
        raise SamplesError(f"{label} holds different numbers of samples per input ({listing})", path=where,
                           fix="Save the same number of samples for every input in one .npz file.")
    total = next(iter(counts.values()))
    return [{name: per_input[name][index] for name in per_input} for index in range(total)]


def _load_arrays(card: ModelCard, path: Path, label: str) -> dict[str, np.ndarray]:
    where = str(path)
    names = [spec.name for spec in card.inputs]
    try:
        # allow_pickle=False: a pickled (object) array can run code when loaded; it is refused instead.
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
        else:
            arrays = None
            array = loaded
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _unreadable(label, where, exc) from exc
    if arrays is None:
        if not isinstance(array, np.ndarray):
            raise SamplesError(f"{label} is not a numpy array file", path=where, fix="Save samples with np.save.")
        if len(names) != 1:
            raise SamplesError(
                f"{label} is one array but {shown(card.name)} takes {len(names)} inputs ({_listing(names)})",
                path=where,
                fix="Save one .npz per sample set with an array per input: np.savez(file, **{name: array}).",
            )
        return {names[0]: array}
    if not arrays:
        raise SamplesError(f"{label} holds no arrays", path=where, fix="Save at least one sample per input.")
    if len(names) == 1 and set(arrays) == {"arr_0"}:
        return {names[0]: arrays["arr_0"]}
    unknown = [key for key in arrays if key not in names]
    if unknown:
        raise SamplesError(
            f"{label} holds {_listing(unknown)}, which {shown(card.name)} does not take "
            f"(its inputs: {_listing(names)})",
            path=where, fix="Name each array in the .npz after the model input it feeds.",
        )
    missing = [name for name in names if name not in arrays]
    if missing:
        raise SamplesError(f"{label} has no array for input {_listing(missing)}", path=where,
                           fix="Save an array for every model input in each .npz file.")
    return {name: arrays[name] for name in names}


def _unreadable(label: str, where: str, exc: BaseException) -> SamplesError:
    text = str(exc)
    if "allow_pickle" in text or "Object arrays" in text:
        return SamplesError(f"{label} holds pickled Python objects, not plain numeric arrays", path=where,
                            fix="Save numeric arrays (np.save(file, array.astype(np.float32))); FleetDesk never "
                            "loads pickled data.", cause=exc)
    return SamplesError(f"{label} is not a readable numpy file ({' '.join(text.split())[:200]})", path=where,
                        fix="Save samples with np.save (.npy) or np.savez (.npz) and copy the file again.", cause=exc)


def _listing(names: list[str]) -> str:
    return ", ".join(shown(name) for name in names)


def _as_samples(card: ModelCard, label: str, where: str, name: str, array: np.ndarray) -> list[np.ndarray]:
    """Split one array into per-sample arrays of the input's full shape, checking dtype, shape and values."""
    spec = next(spec for spec in card.inputs if spec.name == name)
    expected = _numpy_dtype(card, spec)
    what = f"{label}, input {shown(name)}"
    if array.dtype != expected:
        if array.dtype.kind in "biuf" and np.can_cast(array.dtype, expected, casting="safe"):
            array = array.astype(expected)
        else:
            raise SamplesError(
                f"{what}: expected {expected.name}, found {array.dtype}", path=where,
                fix=f"Convert before saving: array.astype(np.{expected.name}) (only lossless widenings are "
                "converted automatically).",
            )
    if expected.kind == "f" and array.size and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise SamplesError(f"{what}: {bad} values are NaN or infinite", path=where,
                           fix="Remove or repair the samples with NaN/inf values; accuracy cannot be judged on them.")
    if spec.shape is None:  # any rank accepted: the whole array is one sample
        return [array]
    shape = spec.shape
    rank = len(shape)
    if array.ndim == rank + 1:
        stack = list(array)
    elif array.ndim == rank and rank and _symbolic(shape[0]):
        stack = [array[index:index + 1] for index in range(array.shape[0])]
    elif array.ndim == rank:
        stack = [array]
    elif array.ndim == rank - 1 and _symbolic(shape[0]):
        stack = [array[np.newaxis]]
    else:
        raise SamplesError(
            f"{what}: expected shape {_shape_text(shape)}, found {list(array.shape)}", path=where,
            fix="Save one sample with the input's shape, or a stack of samples along a new first axis.",
        )
    for sample in stack:
        if not _fits(sample.shape, shape):
            raise SamplesError(
                f"{what}: expected shape {_shape_text(shape)}, found {list(sample.shape)} per sample", path=where,
                fix="Resize or reshape the samples to the model's input shape before saving.",
            )
    return [np.ascontiguousarray(sample) for sample in stack]


def _symbolic(dim: Dim) -> bool:
    return not isinstance(dim, int) or dim <= 0


def _fits(found: tuple[int, ...], declared: tuple[Dim, ...]) -> bool:
    return len(found) == len(declared) and all(_symbolic(d) or d == f for f, d in zip(found, declared, strict=True))


def _shape_text(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"
