"""FleetDesk: run a fleet of edge AI devices from one laptop, with no cloud.

The version has one source, pyproject.toml: read from it in a source checkout, from the installed
distribution's metadata in a wheel install, and from the build file `make dist` writes into a frozen bundle
(BUILD_FILE, with the commit it was built from).
"""

import json
import sys
import warnings
from pathlib import Path

BUILD_FILE = "fleetdesk-build.json"  # in a frozen bundle's data folder (sys._MEIPASS): {"version", "commit"}

_CHECKOUT = Path(__file__).resolve().parent.parent


def _frozen_build() -> dict[str, str]:
    folder = getattr(sys, "_MEIPASS", None)
    if not folder:
        return {}
    try:
        build = json.loads((Path(folder) / BUILD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return build if isinstance(build, dict) else {}


def _version() -> str:
    frozen = _frozen_build().get("version")
    if frozen:
        return str(frozen)
    pyproject = _CHECKOUT / "pyproject.toml"
    if pyproject.is_file():  # a source checkout (also what an editable install points at)
        import tomllib

        with pyproject.open("rb") as f:
            project = tomllib.load(f).get("project", {})
        if project.get("name") == "fleetdesk":
            return str(project["version"])
    from importlib import metadata

    try:
        return metadata.version("fleetdesk")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_commit() -> str:
    """The commit this FleetDesk was built from: the bundle's build file, else the checkout's git HEAD."""
    frozen = _frozen_build().get("commit")
    if frozen:
        return str(frozen)
    if (_CHECKOUT / ".git").exists():
        import subprocess

        git = ["git", "-C", str(_CHECKOUT)]
        try:
            head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return f"{head}-dirty" if dirty else head
    return "unknown"


__version__ = _version()

# cryptography 51 deprecates DSA and warns whenever a module touches its DSA names;
# asyncssh and paramiko name them while importing, though FleetDesk never offers or
# accepts a DSA key. Without this filter every command would open with five warnings
# on stderr that the operator can do nothing about.
warnings.filterwarnings("ignore", message=r"DSA is deprecated", module=r"(asyncssh|paramiko)(\.|$)")
