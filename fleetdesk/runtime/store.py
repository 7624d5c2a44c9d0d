"""The laptop's content-addressed store of runtime bundles: one folder per runtime, wheels/ and runtime.json.
Runtimes an installed package ships (read-only, e.g. /usr/share/fleetdesk/runtimes) are listed beside them.

A runtime's id is a hash of its wheels (file names and SHA-256), so the same wheels are the same runtime;
a new one is assembled in a hidden temp folder and renamed into place, so a killed build leaves nothing half-made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetdesk.config import Settings
from fleetdesk.errors import ConfigError, FleetDeskError

RUNTIME_JSON = "runtime.json"
WHEELS = "wheels"
ID_LENGTH = 16  # hex digits of the SHA-256: 64 bits tell apart every bundle one laptop will ever hold
_TEMP_PREFIX = ".building-"


@dataclass(frozen=True)
class WheelFile:
    """One wheel of a runtime: its file name, project (normalized, PEP 503) and version, SHA-256 and size."""

    file: str
    project: str
    version: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "project": self.project, "version": self.version, "sha256": self.sha256,
                "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WheelFile:
        return cls(str(data["file"]), str(data["project"]), str(data["version"]), str(data["sha256"]),
                   int(data["size"]))


@dataclass(frozen=True)
class Runtime:
    """A stored runtime bundle: the wheels a device installs offline, and what they were made for."""

    id: str
    arch: str  # "x86_64" | "aarch64"
    python: str  # CPython tag, e.g. "cp311"
    profiles: tuple[str, ...]  # the device profiles it was built or imported for
    requirements: tuple[str, ...]  # what `pip install --no-index` is asked for on the device
    platforms: tuple[str, ...]  # the platform tags the wheels were chosen for
    wheels: tuple[WheelFile, ...]
    created: datetime
    tools: dict[str, str] = field(default_factory=dict, compare=False)  # pip / python / fleetdesk versions
    base: str | None = None  # the runtime an imported wheel was added to
    path: Path = field(default=Path(), compare=False)
    shipped: bool = field(default=False, compare=False)  # installed with FleetDesk's package, not made here

    @property
    def size(self) -> int:
        return sum(w.size for w in self.wheels)

    @property
    def wheels_dir(self) -> Path:
        return self.path / WHEELS

    def wheel_path(self, wheel: WheelFile) -> Path:
        return self.wheels_dir / wheel.file

    def version_of(self, project: str) -> str | None:
        return next((w.version for w in self.wheels if w.project == project), None)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "arch": self.arch, "python": self.python, "profiles": list(self.profiles),
                "requirements": list(self.requirements), "platforms": list(self.platforms),
                "wheels": [w.to_json() for w in self.wheels], "size": self.size,
                "created": self.created.isoformat(), "tools": dict(self.tools), "base": self.base,
                "shipped": self.shipped}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path, *, shipped: bool = False) -> Runtime:
        return cls(id=str(data["id"]), arch=str(data["arch"]), python=str(data["python"]),
                   profiles=tuple(data.get("profiles", ())), requirements=tuple(data["requirements"]),
                   platforms=tuple(data.get("platforms", ())),
                   wheels=tuple(WheelFile.from_json(w) for w in data["wheels"]),
                   created=datetime.fromisoformat(data["created"]), tools=dict(data.get("tools", {})),
                   base=data.get("base"), path=path, shipped=shipped)


def runtime_id(wheels: Iterable[WheelFile]) -> str:
    """The content address of a set of wheels: the same files give the same id, in any order."""
    listing = "".join(f"{w.file}\0{w.sha256}\n" for w in sorted(wheels, key=lambda w: (w.file, w.sha256)))
    return hashlib.sha256(listing.encode()).hexdigest()[:ID_LENGTH]


class RuntimeStore:
    """`RuntimeStore.default().list()`; every runtime lives in ROOT/<id>/ with wheels/ and runtime.json.

    `shipped` folders are laid out the same way and only read: a runtime there is listed, chosen and provisioned
    like one of ROOT's (ROOT's wins when both hold the same id); new runtimes always go into ROOT.
    """

    def __init__(self, root: Path, shipped: Sequence[Path] = ()) -> None:
        self.root = Path(root)
        self.shipped = tuple(Path(folder) for folder in shipped)

    @classmethod
    def default(cls, settings: Settings | None = None) -> RuntimeStore:
        settings = settings or Settings.load()
        return cls(settings.data_dir / "runtimes", shipped=(settings.shipped_runtimes_dir,))

    def list(self) -> list[Runtime]:
        """Every stored runtime, newest first; folders that are not runtimes (half-made, foreign) are skipped."""
        found: dict[str, Runtime] = {}
        for root, shipped in [(folder, True) for folder in reversed(self.shipped)] + [(self.root, False)]:
            if not root.is_dir():
                continue
            for folder in root.iterdir():
                if folder.name.startswith(".") or not (folder / RUNTIME_JSON).is_file():
                    continue
                with contextlib.suppress(FleetDeskError):
                    runtime = self._read(folder, shipped=shipped)
                    found[runtime.id] = runtime
        return sorted(found.values(), key=lambda r: (r.created, r.id), reverse=True)

    def get(self, ref: str) -> Runtime:
        """The runtime with this id, or the only one whose id starts with `ref` (at least 4 characters)."""
        ref = ref.strip().lower()
        for root, shipped in [(self.root, False), *((folder, True) for folder in self.shipped)]:
            exact = root / ref
            if len(ref) == ID_LENGTH and (exact / RUNTIME_JSON).is_file():
                return self._read(exact, shipped=shipped)
        matches = [r for r in self.list() if len(ref) >= 4 and r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"runtime id {ref!r} is ambiguous ({', '.join(r.id for r in matches)})",
                              fix="give more characters of the id", step="choose runtime")
        raise ConfigError(f"no stored runtime has the id {ref!r}", step="choose runtime",
                          fix="see `fleetdesk runtime list`, or build one with `fleetdesk runtime build --profile P`")

    def newest_for(self, arch: str, python: str, profile: str | None = None) -> Runtime | None:
        """The newest runtime for this architecture and Python; one made for `profile` itself wins."""
        fitting = [r for r in self.list() if r.arch == arch and r.python == python]
        own = [r for r in fitting if profile is not None and profile in r.profiles]
        candidates = own or fitting
        return candidates[0] if candidates else None

    def _read(self, folder: Path, *, shipped: bool = False) -> Runtime:
        path = folder / RUNTIME_JSON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Runtime.from_json(data, folder, shipped=shipped)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a readable runtime description ({exc})", step="read runtime",
                              fix=f"remove the folder {folder} and build the runtime again") from None

    # -- adding --------------------------------------------------------------------------------------

    def new_folder(self) -> Path:
        """A hidden folder beside the runtimes (same filesystem, so the final rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_abandoned()
        folder = self.root / f"{_TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (folder / WHEELS).mkdir(parents=True)
        return folder

    def _clean_abandoned(self) -> None:
        # A build killed halfway leaves its temp folder; remove those whose process is gone.
        for folder in self.root.glob(f"{_TEMP_PREFIX}*"):
            pid = folder.name[len(_TEMP_PREFIX):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)

    def commit(self, folder: Path, *, arch: str, python: str, profiles: Sequence[str], requirements: Sequence[str],
               platforms: Sequence[str], wheels: Sequence[WheelFile], tools: dict[str, str],
               base: str | None = None) -> tuple[Runtime, bool]:
        """Turn a temp folder holding wheels/ into a stored runtime; returns (runtime, created).

        When a runtime with the same wheels is already stored, the temp folder is discarded and the stored
        one gains the profiles (created = False): building again copies nothing.
        """
        rid = runtime_id(wheels)
        final = self.root / rid
        try:
            if (final / RUNTIME_JSON).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                return self._add_profiles(self._read(final), profiles), False
            # The same wheels as a shipped runtime: that one serves (its folder is read-only; profiles stay).
            for shipped_root in self.shipped:
                if (shipped_root / rid / RUNTIME_JSON).is_file():
                    shutil.rmtree(folder, ignore_errors=True)
                    return self._read(shipped_root / rid, shipped=True), False
            runtime = Runtime(id=rid, arch=arch, python=python, profiles=tuple(dict.fromkeys(profiles)),
                              requirements=tuple(requirements), platforms=tuple(platforms),
                              wheels=tuple(sorted(wheels, key=lambda w: w.file)), created=datetime.now(UTC),
                              tools=dict(tools), base=base, path=final)
            _write_json(folder / RUNTIME_JSON, runtime.to_json())
            try:
                folder.rename(final)
            except OSError:
                # Another build of the same wheels won the race: theirs is as good as ours.
                if (final / RUNTIME_JSON).is_file():
                    shutil.rmtree(folder, ignore_errors=True)
                    return self._add_profiles(self._read(final), profiles), False
                raise
            return runtime, True
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _add_profiles(self, runtime: Runtime, profiles: Sequence[str]) -> Runtime:
        merged = tuple(dict.fromkeys([*runtime.profiles, *profiles]))
        if merged == runtime.profiles:
            return runtime
        updated = replace(runtime, profiles=merged)
        _write_json(runtime.path / RUNTIME_JSON, updated.to_json())
        return updated


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
