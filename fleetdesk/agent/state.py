"""The active model on the device: ROOT/current and ROOT/previous (symlinks into ROOT/artifacts), state.json,
activation with a deadline to confirm it, the detached watchdog that reverts an unconfirmed one, and rollback.

Every change holds ROOT/run/state.lock (flock), writes state.json before it moves a link (so a crash between
the two is settled by the revert rule, never left half-switched), and swaps links by rename.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from . import ed25519
from .protocol import (
    BAD_ARGUMENTS,
    BAD_ARTIFACT,
    DEADLINE_PASSED,
    IO_ERROR,
    NO_PREVIOUS,
    NOT_FOUND,
    NOT_PENDING,
    PENDING,
    AgentError,
)

STATE_FILE = "state.json"
MANIFEST_NAME = "manifest.json"  # the artifact layout of fleetdesk/artifacts/records.py
SIGNATURE_NAME = "manifest.json.sig"
BAD_SIGNATURE = "bad-signature"  # an artifact not signed by the fleet key, or no usable fleet key on the device
HISTORY_LIMIT = 50  # entries kept in state.json's "history"
MAX_CONFIRM_WITHIN_S = 7 * 24 * 3600.0
WATCHDOG_POLL_S = 1.0  # how soon a watchdog notices a confirmation and ends
_SHA = re.compile(r"^[0-9a-f]{64}$")


def is_sha(text: str) -> bool:
    return bool(_SHA.match(text))


def check_sha(sha: str) -> str:
    """An artifact id: the 64 lowercase hex digits of its SHA-256, and nothing else (it becomes a path)."""
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise AgentError(BAD_ARGUMENTS, f"{str(sha)[:80]!r} is not an artifact id",
                         fix="give the artifact's SHA-256: 64 lowercase hex digits")
    return sha


def artifact_dir(root: str, sha: str) -> str:
    return os.path.join(root, "artifacts", check_sha(sha))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _io_error(what: str, exc: OSError) -> AgentError:
    fix = "free space on the device" if exc.errno == errno.ENOSPC else "check the FleetDesk root's permissions"
    return AgentError(IO_ERROR, f"cannot {what}: {exc.strerror or exc}", fix=fix)


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write JSON so that a reader (or a power cut) sees the old file or the new one: temp, fsync, rename."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _io_error(f"write {path}", exc) from None
    _fsync_dir(folder)


def read_state(root: str) -> dict[str, Any]:
    path = os.path.join(root, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _io_error(f"read {path}", exc) from None
    except ValueError:
        raise AgentError(IO_ERROR, f"{path} is not valid JSON",
                         fix="move it aside; `status` then rebuilds what it can from ROOT/current") from None
    return state if isinstance(state, dict) else {}


def write_state(root: str, state: dict[str, Any]) -> None:
    write_json_atomic(os.path.join(root, STATE_FILE), state)


@contextlib.contextmanager
def locked(root: str) -> Iterator[None]:
    """Hold ROOT/run/state.lock: activate, confirm, rollback and the watchdog never interleave."""
    folder = os.path.join(root, "run")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, "state.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _io_error(f"lock {folder}/state.lock", exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def link_target(root: str, name: str) -> str | None:
    """The artifact id ROOT/<name> ("current", "previous") points at, or None."""
    try:
        target = os.readlink(os.path.join(root, name))
    except OSError:
        return None
    sha = os.path.basename(target.rstrip("/"))
    return sha if _SHA.match(sha) else None


def switch_link(root: str, name: str, sha: str | None) -> None:
    """Point ROOT/<name> at artifacts/<sha> atomically (a new link under a temp name, renamed over the old);
    with None, remove it. The link is relative, so the root can move."""
    path = os.path.join(root, name)
    try:
        if sha is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            tmp = os.path.join(root, f".{name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.path.join("artifacts", check_sha(sha)), tmp)
            os.replace(tmp, path)
    except OSError as exc:
        raise _io_error(f"switch {path}", exc) from None
    _fsync_dir(root)


def check_signature(folder: str, root: str) -> str:
    """The artifact's manifest.json must carry a valid Ed25519 signature (manifest.json.sig: base64, one line)
    by the fleet key ROOT/keys/fleet.pub. Returns "valid"; raises AgentError(BAD_SIGNATURE) otherwise."""
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    signature_path = os.path.join(folder, SIGNATURE_NAME)
    key_path = os.path.join(root, "keys", "fleet.pub")
    name = os.path.basename(folder.rstrip(os.sep))
    try:
        with open(manifest_path, "rb") as f:
            manifest = f.read()
    except OSError as exc:
        raise AgentError(BAD_ARTIFACT, f"artifact {name}: manifest.json cannot be read ({exc.strerror})",
                         fix="push the artifact again") from None
    try:
        with open(signature_path, "rb") as f:
            signature_text = f.read()
    except FileNotFoundError:
        raise AgentError(BAD_SIGNATURE, f"artifact {name} has no signature ({SIGNATURE_NAME} is missing)",
                         fix="push the artifact as the FleetDesk store made it (fleetdesk model export), "
                             "signed on the laptop") from None
    except OSError as exc:
        raise AgentError(BAD_SIGNATURE, f"artifact {name}: {SIGNATURE_NAME} cannot be read ({exc.strerror})",
                         fix="push the artifact again") from None
    try:
        with open(key_path, "rb") as f:
            pem = f.read()
    except FileNotFoundError:
        raise AgentError(BAD_SIGNATURE, f"this device has no fleet key ({key_path} is missing), so no artifact "
                         "can be trusted", fix="provision the device (fleetdesk provision DEVICE) to install "
                                               "the fleet's public key") from None
    except OSError as exc:
        raise AgentError(BAD_SIGNATURE, f"the fleet key {key_path} cannot be read ({exc.strerror})",
                         fix="check the FleetDesk root's permissions, or provision the device again") from None
    try:
        public = ed25519.public_key_from_pem(pem)
    except ed25519.InvalidKey as exc:
        raise AgentError(BAD_SIGNATURE, f"the fleet key {key_path} is malformed: {exc}",
                         fix="provision the device again to replace it with the fleet's public key "
                             "(fleetdesk model export-key shows it)") from None
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        raise AgentError(BAD_SIGNATURE, f"artifact {name}: {SIGNATURE_NAME} is not a base64 Ed25519 signature",
                         fix="push the artifact again as the FleetDesk store made it")
    if not ed25519.verify(public, manifest, signature):
        raise AgentError(BAD_SIGNATURE, f"artifact {name}: the signature does not match manifest.json and the "
                         f"fleet key {key_path} (the manifest was changed, or signed by another laptop's key)",
                         fix="push the artifact again from the laptop whose key this device trusts; if the key "
                             "changed, provision the device again with the new fleet key")
    return "valid"


def sha256_file(path: str) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (artifacts can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_entries(manifest: Any) -> list[tuple[str, str]]:
    """(path, sha256) pairs from {"files": [{"path", "sha256"}, ...]} or {"files": {path: sha256}}."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    pairs: list[tuple[str, str]] = []
    if isinstance(files, dict):
        for path, value in files.items():
            digest = value.get("sha256") if isinstance(value, dict) else value
            pairs.append((str(path), str(digest)))
    elif isinstance(files, list):
        for entry in files:
            if not isinstance(entry, dict):
                raise ValueError("an entry of files is not an object")
            pairs.append((str(entry.get("path") or entry.get("name") or ""), str(entry.get("sha256", ""))))
    else:
        raise ValueError('no "files" list')
    return pairs


def verify_artifact(root: str, sha: str) -> dict[str, Any]:
    """ROOT/artifacts/<sha> must exist, hold a manifest.json whose SHA-256 is <sha> (the id covers every byte),
    signed by the fleet key, and every file the manifest lists must have the listed SHA-256."""
    folder = artifact_dir(root, sha)
    if not os.path.isdir(folder):
        raise AgentError(NOT_FOUND, f"artifact {sha} is not on this device ({folder} does not exist)",
                         fix="push the artifact to the device before activating it")
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        raise AgentError(BAD_ARTIFACT, f"artifact {sha} has no manifest.json: only signed artifacts are activated",
                         fix="push the artifact as the FleetDesk store made it (manifest, signature and files)")
    signature = check_signature(folder, root)  # the manifest is trusted before anything it says is used
    if sha256_file(manifest_path) != sha:
        raise AgentError(BAD_ARTIFACT, f"artifact {sha}: manifest.json's SHA-256 is not the artifact's id",
                         fix="push the artifact again into ROOT/artifacts/<the SHA-256 of its manifest.json>")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            entries = _manifest_entries(json.load(f))
    except (OSError, ValueError) as exc:
        raise AgentError(BAD_ARTIFACT, f"artifact {sha}: manifest.json cannot be read ({exc})",
                         fix="push the artifact again") from None
    checked = 0
    real = os.path.realpath(folder)
    for rel, digest in entries:
        path = os.path.realpath(os.path.join(folder, rel))
        if not rel or os.path.isabs(rel) or not path.startswith(real + os.sep):
            raise AgentError(BAD_ARTIFACT, f"artifact {sha}: manifest names {rel[:200]!r}, outside the artifact",
                             fix="rebuild the artifact on the laptop; a manifest lists files inside it only")
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise AgentError(BAD_ARTIFACT, f"artifact {sha}: {rel[:200]!r} cannot be read ({exc.strerror})",
                             fix="push the artifact again") from None
        if actual != digest.lower():
            raise AgentError(BAD_ARTIFACT, f"artifact {sha}: {rel[:200]!r} has SHA-256 {actual}, "
                             f"the manifest says {digest[:64]}",
                             fix="push the artifact again (the copy on the device is damaged)")
        checked += 1
    return {"manifest": True, "files_checked": checked, "signature": signature}


def _remember(state: dict[str, Any], entry: dict[str, Any]) -> None:
    history = state.get("history")
    history = history if isinstance(history, list) else []
    history.append(entry)
    state["history"] = history[-HISTORY_LIMIT:]


def reload_server(root: str) -> int | None:
    """SIGHUP the model server named by ROOT/run/serve.pid if that process is alive and is a server;
    returns its pid, or None when there is none (a stale pid file never signals a stranger)."""
    try:
        with open(os.path.join(root, "run", "serve.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return None
    if pid <= 1 or b"serve" not in cmdline:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return None
    return pid


def _revert(root: str, state: dict[str, Any], reason: str, now: float) -> dict[str, Any]:
    """Undo the pending activation: current back to what it was, previous too. Returns the record."""
    pending = state.pop("pending")
    record = {"sha": pending.get("sha"), "to": pending.get("previous"), "reason": reason, "at": round(now, 3)}
    state["reverted"] = record
    _remember(state, dict(record, event="reverted"))
    write_state(root, state)
    switch_link(root, "current", pending.get("previous"))
    switch_link(root, "previous", pending.get("previous_before"))
    reload_server(root)
    return record


def settle_expired(root: str, state: dict[str, Any], now: float, found_by: str) -> dict[str, Any] | None:
    """Revert a pending activation whose deadline has passed (the watchdog died with a reboot, say)."""
    pending = state.get("pending")
    if not isinstance(pending, dict) or now < float(pending.get("deadline", 0)):
        return None
    within = pending.get("confirm_within")
    reason = f"not confirmed within {within:g} s" if isinstance(within, (int, float)) else "not confirmed in time"
    return _revert(root, state, reason + (f" (found by {found_by})" if found_by != "watchdog" else ""), now)


def activate(root: str, sha: str, confirm_within: float | None,
             spawn: Any = None, now: float | None = None) -> dict[str, Any]:
    """Make artifact `sha` the active model. With confirm_within, it stays pending until `confirm` and a
    detached watchdog (`spawn(sha, token)`) reverts it at the deadline."""
    check_sha(sha)
    if confirm_within is not None and not (0 < confirm_within <= MAX_CONFIRM_WITHIN_S):
        raise AgentError(BAD_ARGUMENTS, f"--confirm-within {confirm_within:g} is out of range",
                         fix=f"give a number of seconds between 1 and {MAX_CONFIRM_WITHIN_S:g}")
    if not os.path.isdir(root):
        raise AgentError(NOT_FOUND, f"the FleetDesk root {root} does not exist",
                         fix="provision the device first (fleetdesk provision DEVICE)")
    with locked(root):
        now = time.time() if now is None else now
        state = read_state(root)
        settle_expired(root, state, now, "activate")
        pending = state.get("pending")
        if isinstance(pending, dict):
            if pending.get("sha") == sha:
                return {"active": sha, "previous": pending.get("previous"), "changed": False, "pending": pending}
            raise AgentError(PENDING, f"activation of {pending.get('sha')} is still waiting for its confirmation",
                             fix="confirm it or roll it back before activating another artifact")
        check = verify_artifact(root, sha)
        current = link_target(root, "current")
        if current == sha:
            return {"active": sha, "previous": link_target(root, "previous"), "changed": False, "pending": None,
                    "verified": check}
        previous_before = link_target(root, "previous")
        if confirm_within is not None:
            pending = {"sha": sha, "previous": current, "previous_before": previous_before,
                       "deadline": round(now + confirm_within, 3), "confirm_within": confirm_within,
                       "started": round(now, 3), "token": secrets.token_hex(8)}
            state["pending"] = pending
        else:
            pending = None
            _remember(state, {"event": "activated", "sha": sha, "previous": current, "at": round(now, 3)})
        # What undo_failed_load needs to put back an activation without a deadline.
        state["last_activation"] = {"sha": sha, "previous": current, "previous_before": previous_before,
                                    "at": round(now, 3)}
        write_state(root, state)
        if current is not None:
            switch_link(root, "previous", current)
        switch_link(root, "current", sha)
        if pending is not None and spawn is not None:
            pending["watchdog_pid"] = spawn(sha, pending["token"])
            write_state(root, state)
        server = reload_server(root)
    return {"active": sha, "previous": current, "changed": True, "pending": pending, "verified": check,
            "serve_reloaded": server}


def confirm(root: str, sha: str, now: float | None = None) -> dict[str, Any]:
    check_sha(sha)
    with locked(root):
        now = time.time() if now is None else now
        state = read_state(root)
        pending = state.get("pending")
        if isinstance(pending, dict) and pending.get("sha") == sha:
            record = settle_expired(root, state, now, "confirm")
            if record is not None:
                raise AgentError(DEADLINE_PASSED, f"activation of {sha} came to its deadline before this "
                                 f"confirmation; the device went back to {record['to'] or 'no model'}",
                                 fix="activate it again with a longer --confirm-within")
            state.pop("pending")
            _remember(state, {"event": "confirmed", "sha": sha, "previous": pending.get("previous"),
                              "at": round(now, 3)})
            write_state(root, state)
            return {"confirmed": sha, "changed": True}
        reverted = state.get("reverted")
        if not isinstance(pending, dict) and isinstance(reverted, dict) and reverted.get("sha") == sha \
                and link_target(root, "current") != sha:
            raise AgentError(DEADLINE_PASSED, f"activation of {sha} was reverted: {reverted.get('reason')}",
                             fix="activate it again with a longer --confirm-within")
        if not isinstance(pending, dict) and link_target(root, "current") == sha:
            return {"confirmed": sha, "changed": False}  # a retried confirm whose first answer was lost
        waiting = pending.get("sha") if isinstance(pending, dict) else None
        raise AgentError(NOT_PENDING, f"{sha} is not the activation waiting for confirmation "
                         f"({'that is ' + waiting if waiting else 'none is waiting'})",
                         fix="confirm the artifact that `activate` switched to (see `status`)")


def rollback(root: str, now: float | None = None) -> dict[str, Any]:
    """Back to ROOT/previous: a pending activation is reverted; otherwise current and previous swap."""
    with locked(root):
        now = time.time() if now is None else now
        state = read_state(root)
        if isinstance(state.get("pending"), dict):
            record = _revert(root, state, "rolled back by the operator", now)
            return {"active": record["to"], "from": record["sha"], "changed": True}
        current, previous = link_target(root, "current"), link_target(root, "previous")
        if previous is None:
            raise AgentError(NO_PREVIOUS, "there is no previous model to go back to",
                             fix="activate the model you want instead")
        verify_artifact(root, previous)
        _remember(state, {"event": "rolled-back", "sha": current, "to": previous, "at": round(now, 3)})
        write_state(root, state)
        switch_link(root, "current", previous)
        switch_link(root, "previous", current)
        server = reload_server(root)
    return {"active": previous, "from": current, "changed": True, "serve_reloaded": server}


def undo_failed_load(root: str, sha: str, reason: str, now: float | None = None) -> dict[str, Any] | None:
    """The model server could not load `sha` after `activate` switched to it: go back to what ran before
    (a pending activation is reverted and says so in `last_revert`). None when `sha` is no longer current
    (someone else moved on meanwhile): nothing is touched then."""
    check_sha(sha)
    with locked(root):
        now = time.time() if now is None else now
        state = read_state(root)
        pending = state.get("pending")
        if isinstance(pending, dict) and pending.get("sha") == sha:
            return _revert(root, state, f"the model server could not load it: {reason}", now)
        last = state.get("last_activation")
        if isinstance(pending, dict) or link_target(root, "current") != sha or not isinstance(last, dict) \
                or last.get("sha") != sha:
            return None
        record = {"sha": sha, "to": last.get("previous"), "reason": f"the model server could not load it: {reason}",
                  "at": round(now, 3)}
        state["reverted"] = record
        _remember(state, dict(record, event="reverted"))
        write_state(root, state)
        switch_link(root, "current", last.get("previous"))
        switch_link(root, "previous", last.get("previous_before"))
        reload_server(root)
        return record


def watch(root: str, sha: str, token: str) -> dict[str, Any] | None:
    """The watchdog's loop: return when the activation is confirmed or replaced, or revert it at the deadline."""
    while True:
        with locked(root):
            state = read_state(root)
            pending = state.get("pending")
            if not isinstance(pending, dict) or pending.get("sha") != sha or pending.get("token") != token:
                return None
            now = time.time()
            left = float(pending.get("deadline", 0)) - now
            if left <= 0:
                return settle_expired(root, state, now, "watchdog")
        time.sleep(min(left, WATCHDOG_POLL_S))


def import_root(package: str, package_dir: str) -> str:
    """The folder to put on PYTHONPATH so that `python -m <package>` finds this tree again
    ("fleetdesk_agent" on a device: its parent; "fleetdesk.agent" on the laptop: two levels up)."""
    folder = package_dir
    for _ in package.split("."):
        folder = os.path.dirname(folder)
    return folder


def spawn_watchdog(root: str, sha: str, token: str, log_path: str) -> int:
    """Start `python -m <this package> --root ROOT watchdog SHA --token T` fully detached: double fork and
    setsid, stdin from /dev/null, output to the log, so the SSH session ending does not end it. Returns its pid."""
    package = __package__ or "fleetdesk_agent"
    env = dict(os.environ)
    path = import_root(package, os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", package, "--root", root, "watchdog", sha, "--token", token]
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
    except OSError as exc:
        raise _io_error(f"create {os.path.dirname(log_path)}", exc) from None
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # first child: a new session, then the grandchild, then gone
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(write_end, str(grandchild).encode())
                os._exit(0)
            os.close(write_end)
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.chdir("/")
            os.execve(sys.executable, argv, env)  # noqa: S606 - a fixed argv, no shell
        finally:
            os._exit(127)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    try:
        return int(data)
    except ValueError:
        raise AgentError(IO_ERROR, "the watchdog process could not be started",
                         fix="check that the device can start processes (ulimit -u, memory)") from None
