"""The one way to find FleetDesk's data folders (ui/, resources/, device_profiles/).

Works from a source checkout, an installed wheel (data under fleetdesk/_data) and a
PyInstaller bundle (data under sys._MEIPASS).
"""

from __future__ import annotations

import sys
from pathlib import Path

DATA_FOLDERS = ("ui", "resources", "device_profiles")

_PACKAGE_DIR = Path(__file__).resolve().parent


def _candidates() -> list[Path]:
    roots: list[Path] = []
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        roots.append(Path(frozen))
    roots.append(_PACKAGE_DIR / "_data")  # installed wheel
    roots.append(_PACKAGE_DIR.parent)  # source checkout
    return roots


def data_dir(folder: str) -> Path:
    """The shipped data folder `folder` (one of DATA_FOLDERS)."""
    if folder not in DATA_FOLDERS:
        raise ValueError(f"unknown data folder {folder!r}; expected one of {DATA_FOLDERS}")
    for root in _candidates():
        candidate = root / folder
        if candidate.is_dir():
            return candidate
    searched = ", ".join(str(r / folder) for r in _candidates())
    raise FileNotFoundError(f"FleetDesk's {folder}/ folder is missing (looked in {searched}); reinstall FleetDesk")


def data_file(folder: str, name: str) -> Path:
    """A file inside a shipped data folder; raises FileNotFoundError naming it when absent."""
    path = data_dir(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"FleetDesk's data file {folder}/{name} is missing; reinstall FleetDesk")
    return path
