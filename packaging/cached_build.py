"""`make dist`'s outputs for this checkout, built once and kept: the .deb and the .tar.gz under the cache folder
(FLEETDESK_CACHE_DIR, else the user cache folder) in dist/<key>/, where the key is a hash of exactly what goes into
the bundle: FleetDesk's sources and data folders, packaging/, pyproject.toml, and the building Python's version and
installed distributions. A commit that touches only tests or docs reuses the build (whose `--version` then names the
commit it was built from). The installer test and `make dist-offline` reuse a build of the same inputs.

Usage: python packaging/cached_build.py [--build] [--offline-debs]
prints the folder; builds into it first when it is missing (only with --build; without it, exit status 1 says
there is none). --offline-debs also downloads (packaging/offline_debs.sh, as root) the Debian packages the .deb's
Depends pull into the lab's clean amd64 bookworm root, into offline_debs_folder().
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fleetdesk  # noqa: E402 - the checkout's own fleetdesk, not an installed one
from fleetdesk.config import Settings  # noqa: E402
from fleetdesk.lab import rootfs  # noqa: E402

# What packaging/fleetdesk.spec, build.sh and deb.sh read from the checkout; the README, this file, the download
# of Debian packages for the test and the reproducibility check are not in the bundle.
BUNDLE_INPUTS = ("fleetdesk", "ui", "resources", "device_profiles", "packaging", "pyproject.toml")
NOT_BUNDLE_INPUTS = ("packaging/README.md", "packaging/cached_build.py", "packaging/offline_debs.sh",
                     "packaging/reproducible.py")

# The Python the build runs with: its version and every installed distribution but the checkout's own fleetdesk
# (an editable install, whose sources are hashed above).
_ENVIRONMENT = """
import importlib.metadata, sys
names = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
         if (d.metadata['Name'] or '').lower() != 'fleetdesk'}
print(sys.version)
print('\\n'.join(sorted(names)))
"""


def build_key(python: str = sys.executable, root: Path = ROOT) -> str:
    """A hash of what the bundle is made from: the input files (path and content; caches left out, untracked files
    in) and the building Python's installed distributions."""
    digest = hashlib.sha256()
    for name in BUNDLE_INPUTS:
        base = root / name
        paths = sorted(base.rglob("*")) if base.is_dir() else [base]
        for path in paths:
            rel = path.relative_to(root).as_posix()
            if (not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc"
                    or rel in NOT_BUNDLE_INPUTS):
                continue
            digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    environment = subprocess.run([python, "-c", _ENVIRONMENT], capture_output=True, check=True).stdout
    digest.update(environment)
    return digest.hexdigest()[:16]


def cache_folder(python: str = sys.executable) -> Path:
    return Settings.load().cache_dir / "dist" / build_key(python)


def clean_root_tarball() -> Path:
    """The lab's cached amd64 bookworm image: the clean root the installer test installs into."""
    return rootfs.tarball_path(Settings.load().lab_cache_dir, "x86_64")


def offline_debs_folder() -> Path:
    """Debian packages for the clean root, with a Packages index and the Depends line they were fetched for."""
    return Settings.load().cache_dir / "dist" / f"debs-{rootfs.image_key('x86_64')}"


def deb_depends(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), "Depends"], capture_output=True, text=True,
                          check=True).stdout.strip()


def fetch_offline_debs(deb: Path) -> Path:
    """Download what the .deb pulls into the clean root (the lab's image is built first when missing)."""
    folder = offline_debs_folder()
    stamp = folder / "depends.txt"
    depends = deb_depends(deb)
    if stamp.is_file() and stamp.read_text().strip() == depends:
        return folder
    tarball = clean_root_tarball()
    if not tarball.is_file():
        rootfs.build_tarball(Settings.load().lab_cache_dir, "x86_64")
    subprocess.run([str(ROOT / "packaging" / "offline_debs.sh"), str(deb), str(tarball), str(folder)], check=True)
    stamp.write_text(depends + "\n")
    return folder


def cached_build(python: str, *, build: bool) -> Path | None:
    """The folder holding this checkout's .debs and .tar.gz; built (packaging/build.sh) when asked and missing."""
    folder = cache_folder(python)
    if (folder / "done").is_file():
        return folder
    if not build:
        return None
    started = time.monotonic()
    subprocess.run([str(ROOT / "packaging" / "build.sh"), python], cwd=ROOT, check=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    version = fleetdesk.__version__
    for name in (f"fleetdesk_{version}_amd64.deb", f"fleetdesk-runtimes_{version}_all.deb",
                 f"fleetdesk-{version}-linux-x86_64.tar.gz"):
        shutil.copy2(ROOT / "dist" / name, partial / name)
    (partial / "done").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build it when there is none")
    parser.add_argument("--offline-debs", action="store_true",
                        help="and download the Debian packages its Depends pull into a clean bookworm root (root)")
    parser.add_argument("--python", default=sys.executable, help="the Python with PyInstaller (the dist extra)")
    args = parser.parse_args(argv)
    folder = cached_build(args.python, build=args.build)
    if folder is None:
        print(f"no build of these sources in {cache_folder(args.python)}; run `make dist-offline`", file=sys.stderr)
        return 1
    if args.offline_debs:
        if os.geteuid() != 0:
            print("not root: the Debian packages for the installer test are not fetched (it skips)", file=sys.stderr)
        else:
            [deb] = folder.glob("fleetdesk_*_amd64.deb")
            print(fetch_offline_debs(deb), file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
