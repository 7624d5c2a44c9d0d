"""The shared store: a folder every laptop of a shared inventory can read and write (an NFS or SMB mount, named by
FLEETDESK_SHARED_STORE), holding signed artifacts laid out as a local store's objects:

    SHARED/objects/<id>/...     one artifact, as `model import` copied it there
    SHARED/tmp/                 copies being written; renamed into objects/ once complete and fsynced

The path is not trusted: what a laptop takes from it is checked against the fleet key and the artifact id (the
SHA-256 of its signed manifest, from the inventory) by the store's own verification before it is used
(ArtifactStore.fetch). This module only moves bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from fleetdesk.artifacts.store_files import copy_file, fsync_dir
from fleetdesk.errors import ArtifactStoreError

SETTING = "FLEETDESK_SHARED_STORE"


class SharedStore:
    """`SharedStore(Path("/mnt/fleet-models")).publish(local_folder, artifact_id)`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, artifact_id: str) -> Path:
        return self.root / "objects" / artifact_id

    def has(self, artifact_id: str) -> bool:
        return self.folder(artifact_id).is_dir()

    def publish(self, source: Path, artifact_id: str) -> bool:
        """Copy a local artifact folder here unless it is already here; True when it was copied. A crash leaves at
        most a folder under tmp/, never a partial artifact under objects/."""
        final = self.folder(artifact_id)
        if final.is_dir():
            return False
        if not self.root.is_dir():  # never made here: an unmounted share must not fill this laptop's disk instead
            raise ArtifactStoreError(
                f"the shared store {self.root} does not exist, so artifact {artifact_id} was not shared",
                step="share artifact",
                fix=f"mount the fleet's shared folder there (or create it), or set {SETTING} to where it is mounted, "
                    "then run the same `fleetdesk model import` again: it shares what this laptop stored")
        staging = self.root / "tmp" / f"{artifact_id}-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(parents=True)
            _copy_tree(Path(source), staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():  # another laptop publishing the same artifact at once is no failure
                    raise
            fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise ArtifactStoreError(
                f"cannot copy artifact {artifact_id} to the shared store {self.root}: {exc.strerror or exc}",
                step="share artifact", cause=exc,
                fix=f"check that {self.root} is mounted and writable ({SETTING}), then run the same "
                    "`fleetdesk model import` again: it shares what this laptop stored") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def copy_into(self, artifact_id: str, target: Path) -> None:
        """Copy the shared artifact's regular files into `target` (a new folder) as they are; checking them is the
        caller's (a symlink or anything else not a plain file is left out, and the check then finds it missing)."""
        source = self.folder(artifact_id)
        if not source.is_dir():
            raise ArtifactStoreError(
                f"artifact {artifact_id} is not on the shared store {self.root} (no folder {source})",
                step="fetch artifact",
                fix=f"check that {SETTING} names the fleet's shared folder and that it is mounted; or run "
                    "`fleetdesk model import` of the same file again on the laptop that imported it (it shares "
                    "what it stored)")
        try:
            target.mkdir(parents=True)
            _copy_tree(source, target)
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read artifact {artifact_id} from the shared store {source}: "
                                     f"{exc.strerror or exc}", step="fetch artifact", cause=exc,
                                     fix=f"check that {self.root} is mounted and readable ({SETTING})") from None


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_symlink():
            continue
        if path.is_dir():
            (target / rel).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            copy_file(path, target / rel)
    for folder in sorted({p.parent for p in target.rglob("*")} | {target}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            fsync_dir(folder)
