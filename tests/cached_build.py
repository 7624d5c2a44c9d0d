"""packaging/cached_build.py as a module for the tests that use it (it is a script in packaging/, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

CHECKOUT = Path(__file__).resolve().parents[1]


def cached_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetdesk_cached_build", CHECKOUT / "packaging" / "cached_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
