"""What the model server may load: an artifact verified against the fleet key at every load (its signature, the
manifest's id, the SHA-256 of every file it lists), with each verdict kept by the inode, size and mtime_ns of the
files it read, so that reloading unchanged files hashes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Tuple

from . import state
from .protocol import BAD_ARTIFACT, AgentError

# What identifies one version of a file without reading it: st_dev, st_ino, st_size, st_mtime_ns. A rewrite in
# place changes mtime_ns (and usually the size); a file renamed over it has another inode.
StatKey = Tuple[int, int, int, int]
VERDICTS_KEPT = 4  # current, previous and a couple more: a SIGHUP back and forth costs no hashing


def stat_key(path: str) -> StatKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Verdict:
    """One artifact that verified, and the version of every file the verification read (None: it was missing)."""

    __slots__ = ("artifact", "files", "folder")

    def __init__(self, artifact: str, folder: str, files: dict[str, StatKey | None]) -> None:
        self.artifact = artifact
        self.folder = folder
        self.files = files

    def covers(self, path: str) -> bool:
        """Whether `path` is one of the files the manifest lists and the verification hashed."""
        return os.path.realpath(path) in self.files

    def unchanged(self) -> bool:
        return all(stat_key(path) == key for path, key in self.files.items())


class VerifiedArtifacts:
    """`verify(folder)` before each load: the cached verdict when no file it read has changed, else a fresh
    verification in which only the changed files are hashed again. `files_hashed` counts the files hashed."""

    def __init__(self, root: str, hasher: Callable[[str], str] = state.sha256_file) -> None:
        self.root = root
        self._hasher = hasher
        self._digests: dict[str, tuple[StatKey, str]] = {}  # real path -> (its version, its SHA-256)
        self._verdicts: dict[str, Verdict] = {}  # artifact id -> verdict, most recent last
        # artifact id -> (the versions its last failed verification read, the error): asked again with nothing
        # changed, the answer is the same, without the signature check (slow in pure Python on a small device).
        self._failures: dict[str, tuple[dict[str, StatKey | None], AgentError]] = {}
        self.files_hashed = 0

    def verify(self, folder: str) -> Verdict:
        """The artifact at `folder` (ROOT/artifacts/<sha>, as ROOT/current points at it), verified; AgentError
        (with the failing file in `.file`) when it is not an artifact, or its signature or a hash does not match."""
        sha = os.path.basename(os.path.normpath(folder))
        if not state.is_sha(sha) or os.path.realpath(folder) != os.path.realpath(state.artifact_dir(self.root, sha)):
            raise AgentError(BAD_ARTIFACT, f"{folder} is not an artifact of this device (ROOT/artifacts/<SHA-256>): "
                             "only artifacts signed by the fleet key are served",
                             fix="activate a signed artifact (fleetdesk-agent activate SHA), or give serve --model "
                                 "an artifact's SHA-256")
        cached = self._verdicts.pop(sha, None)
        if cached is not None and cached.unchanged():
            self._verdicts[sha] = cached
            return cached
        failed = self._failures.get(sha)
        if failed is not None and all(stat_key(path) == key for path, key in failed[0].items()):
            known = failed[1]  # a new error each time: re-raising one object would grow its traceback every tick
            raise AgentError(known.code, known.message, known.fix, file=known.file)
        # Versions are read before the bytes they describe: a file that changes while it is hashed has another
        # version next time, so it is hashed again then, never trusted on a stale digest.
        key_path = os.path.join(self.root, "keys", "fleet.pub")
        signature_path = os.path.join(folder, state.SIGNATURE_NAME)
        manifest_path = os.path.join(folder, state.MANIFEST_NAME)
        seen: dict[str, StatKey | None] = {os.path.realpath(p): stat_key(p)
                                           for p in (key_path, signature_path, manifest_path)}

        def hash_once(path: str) -> str:
            real = os.path.realpath(path)
            version = stat_key(real)
            seen[real] = version
            known = self._digests.get(real)
            if version is not None and known is not None and known[0] == version:
                return known[1]
            digest = self._hasher(real)
            self.files_hashed += 1
            if version is not None:
                self._digests[real] = (version, digest)
            return digest

        try:
            state.verify_artifact(self.root, sha, hasher=hash_once)
        except AgentError as exc:
            self._failures = {sha: (seen, exc)}  # the last failure only: the server retries that one
            self._forget_unused(seen)
            raise
        self._failures.pop(sha, None)
        verdict = Verdict(sha, folder, seen)
        self._verdicts[sha] = verdict
        while len(self._verdicts) > VERDICTS_KEPT:
            del self._verdicts[next(iter(self._verdicts))]
        self._forget_unused(seen)
        return verdict

    def _forget_unused(self, seen: dict[str, Any]) -> None:
        """Digests of files no kept verdict read (artifacts long gone) are dropped: memory stays bounded."""
        used = set(seen)
        for verdict in self._verdicts.values():
            used.update(verdict.files)
        for path in [p for p in self._digests if p not in used]:
            del self._digests[path]


def refusal(artifact: str, exc: AgentError, at: float) -> dict[str, Any]:
    """What status, /v1/health and telemetry say about an artifact the server would not load: which file and why."""
    return {"artifact": artifact, "file": exc.file, "code": exc.code, "reason": exc.message, "fix": exc.fix,
            "at": round(at, 3)}


def refusal_text(refused: dict[str, Any]) -> str:
    """One line for a person: "artifact SHA refused: FILE: why"."""
    where = f"{refused.get('file')}: " if refused.get("file") else ""
    return f"artifact {refused.get('artifact')} refused: {where}{refused.get('reason')}"
