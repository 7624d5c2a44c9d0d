"""The installer build's cache key (packaging/cached_build.py): it changes with what goes into the bundle and only
with that, so a commit of tests or docs reuses the build the installer test installs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cached_build import cached_build


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    for rel, text in {"fleetdesk/core.py": "x = 1\n", "device_profiles/rpi4.toml": "name = 'rpi4'\n",
                      "packaging/fleetdesk.spec": "# spec\n", "packaging/README.md": "notes\n",
                      "pyproject.toml": "[project]\n", "tests/test_x.py": "def test(): pass\n",
                      "README.md": "readme\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_tests_docs_and_caches_do_not_change_the_key(checkout: Path) -> None:
    build_key = cached_build().build_key
    before = build_key(sys.executable, checkout)
    (checkout / "tests/test_x.py").write_text("def test(): assert True\n")
    (checkout / "README.md").write_text("more\n")
    (checkout / "packaging/README.md").write_text("figures\n")
    (checkout / "fleetdesk/__pycache__").mkdir()
    (checkout / "fleetdesk/__pycache__/core.cpython-311.pyc").write_bytes(b"\0")
    assert build_key(sys.executable, checkout) == before


@pytest.mark.parametrize("rel", ["fleetdesk/core.py", "device_profiles/rpi4.toml", "packaging/fleetdesk.spec",
                                 "pyproject.toml", "fleetdesk/new_module.py"])
def test_what_goes_into_the_bundle_changes_the_key(checkout: Path, rel: str) -> None:
    build_key = cached_build().build_key
    before = build_key(sys.executable, checkout)
    (checkout / rel).write_text("changed = True\n")
    assert build_key(sys.executable, checkout) != before
