"""Local files as content: the one SHA-256 of a file that the model importer, the artifact store and the runtime
wheelhouse all use. Standard library only, so every core package may import it (the agent keeps its own copy).
"""

from __future__ import annotations

import hashlib
import os

_BLOCK = 1 << 20  # read in 1 MiB blocks: a model's weights never sit in memory whole


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file's bytes, as lowercase hex. An unreadable file raises the OSError open/read gives."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["sha256_file"]
