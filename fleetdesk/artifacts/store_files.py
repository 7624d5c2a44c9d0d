"""How the artifact store puts bytes on disk: hashing, copying and writing with fsync, the fixed tar members of
an export, the golden file, the input reference statistics, and the error a full disk gives. Kept apart from
store.py, which decides what goes where.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tarfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from fleetdesk.agent.shadowstats import reference_document
from fleetdesk.artifacts.records import MANIFEST_NAME, SIGNATURE_NAME
from fleetdesk.errors import ArtifactStoreError, StoreFullError

_BLOCK = 1 << 20


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def full_disk_error(exc: OSError, what: str) -> ArtifactStoreError:
    if exc.errno == errno.ENOSPC:
        return StoreFullError(f"the disk filled while {what}; nothing of it was kept", step="store model",
                              fix="free space in the FleetDesk data folder (fleetdesk model remove REF drops "
                                  "models you no longer need) and import again", cause=exc)
    return ArtifactStoreError(f"cannot {what}: {exc.strerror or exc}", step="store model", cause=exc,
                              fix="check the FleetDesk data folder's permissions and free space")


def write_golden(model_path: Path, feeds: Sequence[Mapping[str, Any]], dest: Path) -> Path:
    """The golden file for `add_model`: each feed (input name -> array) and the outputs of the model at
    `model_path` on it (onnxruntime, CPU: the reference the laptop checked every variant against).

    Layout (read by fleetdesk/agent/check.py): "input_names", "output_names" (string arrays), and per sample i
    "s<i:04d>_i<j>" for the j-th input, "s<i:04d>_o<k>" for the k-th output. No pickled objects.
    """
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    arrays: dict[str, Any] = {"input_names": np.array(inputs, dtype=str), "output_names": np.array(outputs, dtype=str)}
    for s, feed in enumerate(feeds):
        for j, name in enumerate(inputs):
            arrays[f"s{s:04d}_i{j}"] = np.asarray(feed[name])
        for k, value in enumerate(session.run(outputs, {n: feed[n] for n in inputs})):
            arrays[f"s{s:04d}_o{k}"] = np.asarray(value)
    dest = Path(dest)
    with open(dest, "wb") as f:
        np.savez_compressed(f, **arrays)
    return dest


def write_reference(feeds: Sequence[Mapping[str, Any]], dest: Path) -> Path:
    """The input reference file for `add_model`: per input, per channel (axis 1) the statistics of the operator's
    samples that the device's model server scores live inputs against (fleetdesk/agent/drift.py). The same code
    computes both sides (fleetdesk.agent.shadowstats), so a sample stream like the reference scores 0."""
    import numpy as np

    stacked = {name: np.concatenate([np.asarray(feed[name]) for feed in feeds], axis=0) if np.ndim(feeds[0][name])
               else np.asarray([feed[name] for feed in feeds]) for name in feeds[0]}
    dest = Path(dest)
    dest.write_text(json.dumps(reference_document(stacked), separators=(",", ":")), encoding="utf-8")
    return dest


def check_relative(rel: str) -> None:
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel or rel in (MANIFEST_NAME, SIGNATURE_NAME):
        raise ArtifactStoreError(f"{rel[:200]!r} cannot be a file of an artifact", step="store model",
                                 fix="keep a model's files inside its folder")


def copy_file(source: Path, target: Path) -> dict[str, Any]:
    """Copy a file, hashing the bytes as they are written; fsync before the folder is renamed into place."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "xb") as dst:
        for block in iter(lambda: src.read(_BLOCK), b""):
            digest.update(block)
            dst.write(block)
            size += len(block)
        dst.flush()
        os.fsync(dst.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def write_file_bytes(path: Path, data: bytes, *, atomic: bool = False) -> None:
    target = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}") if atomic else path
    try:
        with open(target, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if atomic:
            os.replace(target, path)
            fsync_dir(path.parent)
    except BaseException:
        if atomic:
            with contextlib.suppress(OSError):
                target.unlink()
        raise


def tar_info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    # Same bytes in, same tar out: no owner names, times or umask leak into an export.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    return info


def tar_add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(tar_info(name, 0, 0o755, tarfile.DIRTYPE))


def tar_add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    with open(path, "rb") as f:
        tar.addfile(tar_info(name, os.fstat(f.fileno()).st_size, 0o644), f)
