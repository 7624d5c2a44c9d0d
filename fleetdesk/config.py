"""Typed settings: where FleetDesk keeps its data, cache and configuration.

Paths come from platformdirs; every one can be overridden by a FLEETDESK_* variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "fleetdesk"
# Where the Debian package fleetdesk-runtimes puts the device runtimes it ships (packaging/runtimes.py): read-only,
# listed beside the operator's own runtimes.
SHIPPED_RUNTIMES_DIR = "/usr/share/fleetdesk/runtimes"


def _dir_from_env(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else Path(default)


@dataclass(frozen=True)
class Settings:
    """Where things live. Build it with `Settings.load()`; tests pass their own paths."""

    data_dir: Path
    cache_dir: Path
    config_dir: Path
    db_url: str
    # A folder every laptop of a shared inventory can read and write (an NFS or SMB mount): `model import` copies
    # the signed artifacts there, and a laptop fetches from it what it lacks (fleetdesk/artifacts/shared_store.py).
    # None: models imported elsewhere cannot be fetched on this laptop.
    shared_store: Path | None = None

    @classmethod
    def load(cls, db_url: str | None = None) -> Settings:
        data_dir = _dir_from_env("FLEETDESK_DATA_DIR", platformdirs.user_data_dir(APP_NAME))
        cache_dir = _dir_from_env("FLEETDESK_CACHE_DIR", platformdirs.user_cache_dir(APP_NAME))
        config_dir = _dir_from_env("FLEETDESK_CONFIG_DIR", platformdirs.user_config_dir(APP_NAME))
        url = db_url or os.environ.get("FLEETDESK_DB") or f"sqlite:///{data_dir / 'fleetdesk.db'}"
        shared = os.environ.get("FLEETDESK_SHARED_STORE")
        return cls(data_dir=data_dir, cache_dir=cache_dir, config_dir=config_dir, db_url=url,
                   shared_store=Path(shared).expanduser() if shared else None)

    @property
    def user_profiles_dir(self) -> Path:
        """Operators' own device profiles; they override shipped ones of the same name."""
        return self.config_dir / "device_profiles"

    @property
    def shipped_runtimes_dir(self) -> Path:
        """The runtimes an installed package ships (FLEETDESK_SHIPPED_RUNTIMES_DIR overrides it)."""
        return _dir_from_env("FLEETDESK_SHIPPED_RUNTIMES_DIR", SHIPPED_RUNTIMES_DIR)

    @property
    def lab_cache_dir(self) -> Path:
        """Cached lab root filesystems (debootstrap tarballs and their extracted bases)."""
        return self.cache_dir / "lab"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.cache_dir, self.config_dir):
            path.mkdir(parents=True, exist_ok=True)
