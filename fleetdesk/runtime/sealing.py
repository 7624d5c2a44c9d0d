"""Root-owned, read-only trees on a device: the fleet key (ROOT/keys) and every finalised artifact
(ROOT/artifacts/<id>) of a device FleetDesk logs in to as root, so that no other user on it can change them.

The device seals its own files, and only when the login is root (only root can give files to root); a device that
FleetDesk reaches as another user keeps that user's files as they are. Root itself still writes through the modes,
so re-staging, repairing or removing a sealed artifact works as before, and seals it again afterwards.
"""

from __future__ import annotations

import json

from fleetdesk.transport.shell import python_command

FILE_MODE = 0o444
DIR_MODE = 0o555

# Device side, Python 3.5 syntax, put in front of the scripts that use it. sealed(top): nothing under `top` (or no
# `top` at all) needs sealing. seal(top): make it so; returns how many entries changed. Links are left alone (their
# modes mean nothing), and os.walk does not follow them.
SEAL_FUNCTIONS = r"""
import os, stat
def _entries(top):
    if not os.path.isdir(top) or os.path.islink(top):
        return
    yield top
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            yield os.path.join(base, name)
def _unsealed(top):
    for path in _entries(top):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            continue
        want = 0o555 if stat.S_ISDIR(st.st_mode) else 0o444
        if st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != want:
            yield path, want
def sealed(top):
    for _ in _unsealed(top):
        return False
    return True
def seal(top):
    changed = 0
    for path, want in list(_unsealed(top)):
        os.chown(path, 0, 0)
        os.chmod(path, want)
        changed += 1
    return changed
"""

# argv: folder... Seals each folder when run as root; prints {"root": bool, "sealed": [folders it changed]}.
SEAL_PY = SEAL_FUNCTIONS + r"""
import json, sys
done = []
if os.geteuid() == 0:
    for top in sys.argv[1:]:
        if seal(top):
            done.append(top)
print(json.dumps({"root": os.geteuid() == 0, "sealed": done}))
"""


def seal_command(*folders: str) -> str:
    """The command line that seals `folders` on the device (nothing where the login is not root)."""
    return python_command(SEAL_PY, *folders)


def sealed_folders(stdout: str) -> tuple[str, ...]:
    """The folders the seal command changed, from its answer (nothing when it gave none it could read)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return tuple(str(f) for f in answer.get("sealed") or ())
    return ()
