"""`make dist`: the offline device-runtime pack, dist/fleetdesk-runtimes_<version>_all.deb. For every device family
that runs on its CPU alone (profiles whose only execution provider is the CPU's: the Raspberry Pis, the x86 PCs),
the runtime bundle `fleetdesk runtime build` makes, built here with the build's own Python and pip (a build step: it
reaches the package index), into /usr/share/fleetdesk/runtimes, the read-only folder an installed FleetDesk lists
beside the operator's own runtimes (fleetdesk/runtime/store.py). A laptop that never reached an index provisions a
Pi from it. Its own package: the wheels are half the size of FleetDesk itself, and not every laptop needs them.

Usage: python packaging/runtimes.py VERSION   (SOURCE_DATE_EPOCH set by packaging/build.sh)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetdesk.profiles import load_profiles  # noqa: E402
from fleetdesk.runtime.store import RUNTIME_JSON, RuntimeStore  # noqa: E402
from fleetdesk.runtime.wheelhouse import build_runtime  # noqa: E402

SHIPPED = "usr/share/fleetdesk/runtimes"  # fleetdesk.config.SHIPPED_RUNTIMES_DIR, as the package installs it
STAGE = ROOT / "build" / "dist" / "runtimes-deb"


def build(folder: Path, epoch: int) -> list[str]:
    """The CPU families' runtimes in a store at `folder`; each runtime.json dated `epoch` (the commit's time)."""
    store = RuntimeStore(folder)
    cpu = [p for p in sorted(load_profiles().profiles.values(), key=lambda p: p.name)
           if p.execution_providers == ("CPUExecutionProvider",)]
    lines = []
    for profile in cpu:
        runtime, _created = asyncio.run(build_runtime(profile, store, progress=lambda m: print(m, flush=True)))
        lines.append(f"{profile.name}: runtime {runtime.id} ({runtime.arch}, {runtime.python}, "
                     f"{runtime.size / 1e6:.1f} MB)")
    created = datetime.fromtimestamp(epoch, UTC).isoformat()
    for description in sorted(folder.glob(f"*/{RUNTIME_JSON}")):
        data = json.loads(description.read_text(encoding="utf-8"))
        data["created"] = created
        data.pop("shipped", None)  # what the store says of a folder it reads, not a fact of the runtime
        description.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return lines


def main(argv: list[str]) -> int:
    [version] = argv
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    shutil.rmtree(STAGE, ignore_errors=True)
    root = STAGE / "root"
    runtimes = root / SHIPPED
    runtimes.mkdir(parents=True)
    for line in build(runtimes, epoch):
        print(line)
    doc = root / "usr/share/doc/fleetdesk-runtimes"
    doc.mkdir(parents=True)
    shutil.copyfile(ROOT / "packaging" / "linux" / "copyright", doc / "copyright")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    installed_kb = sum(p.stat().st_size for p in files) // 1024
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: fleetdesk-runtimes\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: FleetDesk authors <fleetdesk@example.org>\n"
        f"Installed-Size: {installed_kb}\nEnhances: fleetdesk\nSection: admin\nPriority: optional\n"
        "Description: offline inference runtimes for FleetDesk's CPU devices\n"
        " ONNX Runtime and numpy wheels for the device families that infer on their CPU\n"
        " (Raspberry Pi 4 and 5 on aarch64, industrial x86_64 PCs; Python 3.11 of Debian\n"
        " bookworm and Raspberry Pi OS), which `fleetdesk runtime list` shows and\n"
        " `fleetdesk provision` installs on devices with no package index.\n")
    (root / "DEBIAN" / "md5sums").write_text("".join(
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n"  # noqa: S324 - dpkg's format
        for p in files))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    deb = ROOT / "dist" / f"fleetdesk-runtimes_{version}_all.deb"
    # The wheels are zip archives already: compressing them again costs minutes and saves nothing.
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root), f"{deb}.partial"],
                   check=True, stdout=subprocess.DEVNULL)
    os.replace(f"{deb}.partial", deb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
