"""Are `make dist`'s outputs reproducible? Builds this checkout twice (packaging/build.sh, each from a clean build
folder) and compares the .deb, the runtime pack's .deb and the .tar.gz byte for byte (SHA-256); where two differ, it
names the members that differ (inside the .deb's ar archive and its control and data tarballs, or inside the .tar.gz):
content, size, mode, owner or time.

Both builds run at the same commit, so SOURCE_DATE_EPOCH and the commit in fleetdesk-build.json are the same; a
dirty checkout is refused (its commit would read "-dirty" and say nothing about a release). Each build takes minutes
(xz of the bundle dominates); on a shared host wrap it in `flock /tmp/fleetdesk-quiet.lock`.

Usage: python packaging/reproducible.py [--python PYTHON] [--keep DIR]   (exit status 1 when anything differs)
`make dist-reproducible` runs it with the venv's Python.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
SHOWN = 60  # differing members printed per output


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ar_members(path: Path) -> Iterator[tuple[str, bytes, str]]:
    """The members of an ar archive (a .deb): name, content, and the header's fields (time, owner, mode)."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{path} is not an ar archive")
    offset = 8
    while offset < len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58])
        yield name, data[offset + 60:offset + 60 + size], header[16:48].decode()
        offset += 60 + size + (size % 2)


def tar_members(stream: IO[bytes], mode: str = "r:*") -> dict[str, str]:
    """Each member of a tarball as one line: type, mode, owner, time, size, link target and content's SHA-256."""
    found = {}
    with tarfile.open(fileobj=stream, mode=mode) as archive:
        for member in archive:
            content = ""
            if member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                content = hashlib.sha256(extracted.read()).hexdigest()
            found[member.name] = (f"{member.type!r} {member.mode:o} {member.uid}:{member.gid} "
                                  f"{member.uname}:{member.gname} {member.mtime} {member.size} {member.linkname} "
                                  f"{content}")
    return found


def compare_tarballs(first: dict[str, str], second: dict[str, str], where: str) -> list[str]:
    differ = []
    for name in sorted(set(first) | set(second)):
        if first.get(name) != second.get(name):
            differ.append(f"{where}{name}: {first.get(name, 'missing')} | {second.get(name, 'missing')}")
    return differ


def differing_members(first: Path, second: Path) -> list[str]:
    """What differs between two builds of one output, member by member."""
    if first.suffix == ".deb":
        differ = []
        one = {name: (content, fields) for name, content, fields in ar_members(first)}
        two = {name: (content, fields) for name, content, fields in ar_members(second)}
        for name in sorted(set(one) | set(two)):
            if name not in one or name not in two:
                differ.append(f"{name}: only in one build")
            elif one[name][1] != two[name][1]:
                differ.append(f"{name}: ar header {one[name][1]!r} | {two[name][1]!r}")
            if name in one and name in two and one[name][0] != two[name][0]:
                if ".tar" in name:
                    inside = compare_tarballs(tar_members(io.BytesIO(one[name][0])),
                                              tar_members(io.BytesIO(two[name][0])), f"{name}:")
                    differ += inside or [f"{name}: same members, other compressed bytes"]
                else:
                    differ.append(f"{name}: content")
        return differ
    with first.open("rb") as a, second.open("rb") as b:
        differ = compare_tarballs(tar_members(a), tar_members(b), "")
    return differ or ["same members, other compressed bytes (gzip header or compressor)"]


def build(python: str, into: Path) -> list[Path]:
    shutil.rmtree(ROOT / "build" / "dist", ignore_errors=True)
    for old in (ROOT / "dist").glob("fleetdesk*"):
        old.unlink()
    subprocess.run([str(ROOT / "packaging" / "build.sh"), python], cwd=ROOT, check=True)
    into.mkdir(parents=True)
    outputs = []
    for path in sorted((ROOT / "dist").glob("fleetdesk*")):
        outputs.append(Path(shutil.copy2(path, into / path.name)))
    return outputs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the Python with PyInstaller (the dist extra)")
    parser.add_argument("--keep", type=Path, help="keep both builds' outputs here (default: a temp folder)")
    args = parser.parse_args(argv)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    if dirty.strip():
        print(f"the checkout has uncommitted changes; commit them first:\n{dirty}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fleetdesk-reproducible-") as tmp:
        keep = args.keep or Path(tmp)
        first = build(args.python, keep / "first")
        second = build(args.python, keep / "second")
        if [p.name for p in first] != [p.name for p in second]:
            print(f"the builds made other files: {[p.name for p in first]} | {[p.name for p in second]}")
            return 1
        same = True
        for one, two in zip(first, second, strict=True):
            a, b = sha256(one), sha256(two)
            print(f"{one.name}: {'identical' if a == b else 'DIFFERENT'} sha256 {a}" + ("" if a == b else f" | {b}"))
            if a != b:
                same = False
                lines = differing_members(one, two)
                for line in lines[:SHOWN]:
                    print(f"  {line}")
                if len(lines) > SHOWN:
                    print(f"  ... and {len(lines) - SHOWN} more members")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
