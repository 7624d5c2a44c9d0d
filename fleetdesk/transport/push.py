"""Resumable, verified file push to one device over any DeviceSession.

The file goes to `.NAME.fleetdesk-partial` beside its target, only the blocks the device lacks are sent
(compared by per-block SHA-256 computed on the device), the device hashes the result, and a rename puts it in place.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from dataclasses import dataclass

from fleetdesk.errors import DiskFullError, FleetDeskError, TransportError
from fleetdesk.transport.results import ProgressCallback, PushResult
from fleetdesk.transport.session import ByteRange, DeviceSession, PushVerifyError, RemoteWriteError
from fleetdesk.transport.shell import python_or_sh, shell_join, shell_quote

# One block is the unit of resume and of one SFTP write. 255 KiB is the largest write OpenSSH's sftp-server
# accepts (limits@openssh.com max-write-length = 256 KiB - 1024, sftp-server.c), so one block is one
# pwrite on the device: after a cut connection it is there whole or not at all.
BLOCK_SIZE = 256 * 1024 - 1024
PARTIAL_SUFFIX = ".fleetdesk-partial"
COMMAND_TIMEOUT = 600.0  # hashing a large file on a slow device (an emulated Pi) takes a while

# A file a push put in place (or hashed) carries its SHA-256 in this extended attribute, with the inode, size and
# mtime_ns it had then and the time of the record, so an unchanged file is recognised without reading it again
# (the model server's cache of verified files keys on the same three, fleetdesk/agent/verified.py). Any write changes
# the mtime and so voids it; a filesystem without user xattrs simply hashes every time. Skipping a push on it never
# activates anything: the agent checks every hash itself before it activates or serves an artifact.
DIGEST_XATTR = "user.fleetdesk.sha256"
_RECORD_PY = f'XATTR = "{DIGEST_XATTR}"' + r"""
import time
def record(path, sha):
    try:
        st = os.stat(path)
        os.setxattr(path, XATTR, ("%d %d %d %d %s" % (st.st_ino, st.st_size, st.st_mtime_ns, int(time.time() * 1e9),
                                                      sha)).encode("ascii"))
    except (OSError, AttributeError):
        pass
"""

# Device side. Kept to Python 3.5 syntax: a device's python3 may be old. argv: target partial block size mkdir.
_PROBE_PY = r"""
import hashlib, os, sys
""" + _RECORD_PY + r"""
target, partial, block, want, mkdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if mkdir == "1":
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
def size(path):
    try:
        st = os.stat(path)
    except OSError:
        return -1
    return st.st_size if os.path.isfile(path) else -2
def blocks(path):
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                return
            yield hashlib.sha256(data).hexdigest()
def recorded(path):
    # Trusted only when the file was last written 50 ms or more before the record: file times advance by a
    # clock tick, so a write in the same tick as the record could otherwise leave the mtime as recorded.
    try:
        st = os.stat(path)
        ino, size_, mtime, at, sha = os.getxattr(path, XATTR).decode("ascii").split()
        same = (int(ino), int(size_), int(mtime)) == (st.st_ino, st.st_size, st.st_mtime_ns)
        return sha if same and int(at) - int(mtime) >= 50000000 else None
    except (OSError, AttributeError, ValueError):
        return None
tsize = size(target)
digest = "-"
if tsize == want:
    digest = recorded(target)
    if digest is None:
        h = hashlib.sha256()
        with open(target, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        digest = h.hexdigest()
        record(target, digest)
print("target %d %s" % (tsize, digest))
psize = size(partial)
print("partial %d" % psize)
if psize > 0:
    for line in blocks(partial):
        print(line)
"""

_PROBE_SH = r"""
t=$1; p=$2; b=$3; want=$4
if [ "$5" = 1 ]; then mkdir -p -- "$(dirname -- "$t")" || exit 1; fi
if [ -f "$t" ]; then
  s=$(wc -c < "$t" | tr -d ' ')
  if [ "$s" = "$want" ]; then h=$(sha256sum < "$t" | cut -c1-64); else h=-; fi
  echo "target $s $h"
elif [ -e "$t" ]; then echo "target -2 -"; else echo "target -1 -"; fi
if [ -f "$p" ]; then
  s=$(wc -c < "$p" | tr -d ' '); echo "partial $s"; i=0
  while [ $((i * b)) -lt "$s" ]; do
    dd if="$p" bs="$b" skip="$i" count=1 2>/dev/null | sha256sum | cut -c1-64; i=$((i + 1))
  done
else echo "partial -1"; fi
"""

# argv: partial target sha256 mode. Syncs before and after the rename: devices lose power.
_FINISH_PY = r"""
import hashlib, os, sys
""" + _RECORD_PY + r"""
partial, target, want, mode = sys.argv[1:5]
h = hashlib.sha256()
with open(partial, "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
    os.fsync(f.fileno())
if h.hexdigest() != want:
    print("bad " + h.hexdigest())
    sys.exit(0)
if mode != "-":
    os.chmod(partial, int(mode, 8))
os.replace(partial, target)
record(target, want)
try:
    d = os.open(os.path.dirname(target) or ".", os.O_RDONLY)
    os.fsync(d)
    os.close(d)
except OSError:
    pass
print("ok")
"""

_FINISH_SH = r"""
h=$(sha256sum < "$1" | cut -c1-64)
if [ "$h" != "$3" ]; then echo "bad $h"; exit 0; fi
if [ "$4" != - ]; then chmod "$4" -- "$1" || exit 1; fi
sync "$1" 2>/dev/null || sync
mv -f -- "$1" "$2" && echo ok
"""

_FREE_PY = r"""
import os, sys
s = os.statvfs(sys.argv[1])
print(s.f_bavail * s.f_frsize)
"""

_FREE_SH = r"""df -Pk -- "$1" | awk 'NR == 2 { print $4 * 1024 }'"""


@dataclass(frozen=True)
class LocalFile:
    """A local file's size, SHA-256 and per-block SHA-256, computed once for every device it goes to."""

    path: str
    size: int
    sha256: str
    block_size: int
    block_hashes: tuple[str, ...]


def digest_file(path: str, block_size: int = BLOCK_SIZE) -> LocalFile:
    """Hash a local file whole and per block in one read (blocking: call it in an executor)."""
    whole = hashlib.sha256()
    blocks = []
    size = 0
    with open(path, "rb") as f:
        while data := f.read(block_size):
            whole.update(data)
            blocks.append(hashlib.sha256(data).hexdigest())
            size += len(data)
    return LocalFile(path, size, whole.hexdigest(), block_size, tuple(blocks))


def partial_path(remote_path: str) -> str:
    """Where a push writes before the rename: a hidden name in the same directory (same filesystem)."""
    folder, name = posixpath.split(remote_path)
    return posixpath.join(folder, f".{name}{PARTIAL_SUFFIX}")


@dataclass(frozen=True)
class RemoteState:
    """What the device holds: the target's size (-1 missing, -2 not a file) and SHA-256 when its size matches,
    the partial file's size and its per-block SHA-256."""

    target_size: int
    target_sha256: str | None
    partial_size: int
    partial_blocks: tuple[str, ...]


def parse_probe(text: str) -> RemoteState:
    lines = text.splitlines()
    try:
        _, tsize, digest = lines[0].split()
        _, psize = lines[1].split()
        return RemoteState(int(tsize), None if digest == "-" else digest, int(psize), tuple(lines[2:]))
    except (IndexError, ValueError):
        raise ValueError(f"unexpected answer from the device: {text[:200]!r}") from None


def probe_command(local: LocalFile, remote_path: str, *, make_dirs: bool) -> str:
    full = python_or_sh(_PROBE_PY, _PROBE_SH, remote_path, partial_path(remote_path), local.block_size,
                        local.size, "1" if make_dirs else "0")
    # A first push (neither the file nor a partial copy there) has nothing to hash: answered by sh alone, without
    # starting python3 (tens of ms of a small device's CPU, per device and per file).
    target, partial = shell_quote(remote_path), shell_quote(partial_path(remote_path))
    folder = shell_quote(posixpath.dirname(remote_path) or ".")
    mkdir = f"mkdir -p -- {folder} && " if make_dirs else ""
    return (f"if [ ! -e {target} ] && [ ! -e {partial} ] && [ ! -L {target} ]; then "
            f"{mkdir}echo 'target -1 -' && echo 'partial -1'; else {full}; fi")


def missing_ranges(local: LocalFile, remote_blocks: tuple[str, ...]) -> list[ByteRange]:
    """The blocks whose bytes the partial file lacks or holds wrong (holes read as zeros, so they differ)."""
    ranges = []
    for index, digest in enumerate(local.block_hashes):
        if index < len(remote_blocks) and remote_blocks[index] == digest:
            continue
        offset = index * local.block_size
        ranges.append((offset, min(local.block_size, local.size - offset)))
    return ranges


class _Pusher:
    """One push of one file to one device; the steps share the session, the file and the counters."""

    def __init__(self, session: DeviceSession, local: LocalFile, remote_path: str, *, mode: int | None,
                 progress: ProgressCallback | None, requests_in_flight: int, make_dirs: bool) -> None:
        self.session = session
        self.device = session.target.device
        self.local = local
        self.remote_path = remote_path
        self.partial = partial_path(remote_path)
        self.mode = mode
        self.progress = progress
        self.requests_in_flight = requests_in_flight
        self.make_dirs = make_dirs
        self.sent = 0
        self.done = 0

    async def _run(self, command: str, what: str) -> str:
        result = await self.session.run(command, timeout=COMMAND_TIMEOUT)
        if result.exit_status != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            if "No space left" in result.stderr:
                raise await self._disk_full(None)
            raise TransportError(f"could not {what} for {self.remote_path!r}: {last}", device=self.device,
                                 step="push", fix="check the path and its permissions on the device")
        return result.stdout

    async def probe(self) -> RemoteState:
        text = await self._run(probe_command(self.local, self.remote_path, make_dirs=self.make_dirs),
                               "inspect the device's copy")
        try:
            state = parse_probe(text)
        except ValueError as exc:
            raise TransportError(str(exc), device=self.device, step="push") from None
        if state.target_size == -2:
            raise TransportError(f"{self.remote_path!r} exists on the device and is not a file", device=self.device,
                                 step="push", fix="choose another destination or remove what is there")
        return state

    def _count(self, n: int) -> None:
        self.sent += n
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.local.size)

    async def send(self, state: RemoteState) -> list[ByteRange]:
        ranges = missing_ranges(self.local, state.partial_blocks if state.partial_size >= 0 else ())
        self.done = self.local.size - sum(length for _, length in ranges)
        if self.progress is not None:
            self.progress(self.done, self.local.size)
        truncate = self.local.size if state.partial_size > self.local.size else None
        try:
            await self.session.write_ranges(self.partial, self.local.path, ranges, truncate_to=truncate,
                                            requests_in_flight=self.requests_in_flight, on_written=self._count)
        except RemoteWriteError as exc:
            raise await self._disk_full(exc) from None
        return ranges

    async def finish(self) -> str:
        mode = "-" if self.mode is None else format(self.mode, "o")
        text = await self._run(python_or_sh(_FINISH_PY, _FINISH_SH, self.partial, self.remote_path,
                                            self.local.sha256, mode), "verify and rename")
        return text.strip()

    async def _disk_full(self, exc: RemoteWriteError | None) -> FleetDeskError:
        """A refused write is a full disk when the free space left cannot hold what was still to come.
        OpenSSH's sftp-server reports ENOSPC only as SSH_FX_FAILURE "Failure", hence the statvfs."""
        folder = posixpath.dirname(self.remote_path) or "."
        free = await self.session.run(python_or_sh(_FREE_PY, _FREE_SH, folder), timeout=60)
        try:
            free_bytes = int(free.stdout.strip())
        except ValueError:
            return exc or TransportError("the device is out of space", device=self.device, step="push")
        still_needed = self.local.size - self.done
        if exc is not None and free_bytes >= still_needed:
            return exc
        # The partial file would only keep the disk full (and an inference service starved of space): remove it.
        await self.session.run(shell_join(["rm", "-f", "--", self.partial]), timeout=60)
        return DiskFullError(
            f"no space left in {folder} for {posixpath.basename(self.remote_path)!r} "
            f"({free_bytes} bytes free, {self.local.size} needed); the partial file was removed",
            device=self.device, step="push", cause=exc,
            fix=f"free space on {self.device} in {shell_quote(folder)}, or push to a larger filesystem")


async def push_file(session: DeviceSession, local: LocalFile, remote_path: str, *, mode: int | None = 0o644,
                    progress: ProgressCallback | None = None, requests_in_flight: int = 16,
                    make_dirs: bool = True) -> PushResult:
    """Put `local` at `remote_path` on the session's device: skipped when identical, resumed when a partial
    file is there, verified by the device's SHA-256 and renamed into place. Cancelling leaves a resumable
    partial file."""
    started = time.monotonic()
    pusher = _Pusher(session, local, remote_path, mode=mode, progress=progress,
                     requests_in_flight=requests_in_flight, make_dirs=make_dirs)
    state = await pusher.probe()
    if state.target_size == local.size and state.target_sha256 == local.sha256:
        if state.partial_size >= 0:
            await session.run(shell_join(["rm", "-f", "--", pusher.partial]), timeout=60)
        if progress is not None:
            progress(local.size, local.size)
        return PushResult(session.target.device, remote_path, local.size, local.sha256, bytes_sent=0,
                          bytes_reused=local.size, skipped=True, seconds=time.monotonic() - started)
    ranges = await pusher.send(state)
    verdict = await pusher.finish()
    if verdict.startswith("bad"):
        # The device's copy does not hash right although every block was acknowledged (a flipped bit on
        # disk, another writer): one repair pass re-sends the blocks that differ, then we give up loudly.
        await pusher.send(await pusher.probe())
        verdict = await pusher.finish()
        if verdict.startswith("bad"):
            raise PushVerifyError(
                f"{remote_path!r} hashes to {verdict[4:]} on the device, not {local.sha256}, after a repair",
                device=session.target.device, step="push",
                fix="check the device's storage (dmesg, SMART) and push again")
    if verdict != "ok":
        raise TransportError(f"unexpected answer from the device: {verdict[:200]!r}", device=session.target.device,
                             step="push")
    first = ranges[0][0] if ranges else local.size
    return PushResult(session.target.device, remote_path, local.size, local.sha256, bytes_sent=pusher.sent,
                      bytes_reused=local.size - sum(length for _, length in ranges),
                      resumed_from=first if state.partial_size > 0 else 0, seconds=time.monotonic() - started)
