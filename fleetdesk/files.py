"""Local files: the one SHA-256 of a file that the model importer, the artifact store and the runtime wheelhouse
all use, and the one lock between processes (the signing key, the artifact store, a rollout's driver). Standard
library only, so every core package may import it (the agent keeps its own copy of the hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator

_BLOCK = 1 << 20  # read in 1 MiB blocks: a model's weights never sit in memory whole


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file's bytes, as lowercase hex. An unreadable file raises the OSError open/read gives."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` (made when missing) against other processes. Yields True once
    held; with `blocking=False`, yields False at once when another process holds it. The operating system drops
    the lock when its process dies, so a killed holder never leaves it held: flock on Linux and macOS,
    msvcrt.locking of the file's first byte on Windows."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _acquire(fd, blocking):
            yield False
            return
        try:
            yield True
        finally:
            _release(fd)
    finally:
        os.close(fd)


if sys.platform == "win32":
    import msvcrt

    def _acquire(fd: int, blocking: bool) -> bool:
        while True:  # LK_LOCK would give up after 10 tries; waiting is what a blocking lock means
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.05)

    def _release(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _acquire(fd: int, blocking: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _release(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


__all__ = ["exclusive_lock", "sha256_file"]
