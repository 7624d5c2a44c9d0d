"""The active model on the device: ROOT/current and ROOT/previous (symlinks into ROOT/artifacts), state.json,
activation with a deadline to confirm it, reverting an unconfirmed one (the model server owns the deadline; a
detached watchdog and the boot path are further lines), and rollback.

Every change holds ROOT/run/state.lock (flock) and swaps links by rename. state.json never says a change is done
before its links moved: a record of where they go (a pending activation, a "switching" entry) is written first,
the links move, then the state that says so. Whoever takes the lock next settles a change a crash interrupted
(settle_expired): at every step boundary current is what the state says is active or pending.
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
from collections.abc import Callable, Iterator
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


def fleet_key(root: str) -> bytes:
    """The fleet's public key (raw 32 bytes) from ROOT/keys/fleet.pub; AgentError(BAD_SIGNATURE) without one."""
    key_path = os.path.join(root, "keys", "fleet.pub")
    try:
        with open(key_path, "rb") as f:
            pem = f.read()
    except FileNotFoundError:
        raise AgentError(BAD_SIGNATURE, f"this device has no fleet key ({key_path} is missing), so no artifact "
                         "can be trusted", fix="provision the device (fleetdesk provision DEVICE) to install "
                                               "the fleet's public key", file=key_path) from None
    except OSError as exc:
        raise AgentError(BAD_SIGNATURE, f"the fleet key {key_path} cannot be read ({exc.strerror})",
                         fix="check the FleetDesk root's permissions, or provision the device again",
                         file=key_path) from None
    try:
        public = ed25519.public_key_from_pem(pem)
    except ed25519.InvalidKey as exc:
        raise AgentError(BAD_SIGNATURE, f"the fleet key {key_path} is malformed: {exc}",
                         fix="provision the device again to replace it with the fleet's public key "
                             "(fleetdesk model export-key shows it)", file=key_path) from None
    return public


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
                         fix="push the artifact again", file=MANIFEST_NAME) from None
    try:
        with open(signature_path, "rb") as f:
            signature_text = f.read()
    except FileNotFoundError:
        raise AgentError(BAD_SIGNATURE, f"artifact {name} has no signature ({SIGNATURE_NAME} is missing)",
                         fix="push the artifact as the FleetDesk store made it (fleetdesk model export), "
                             "signed on the laptop", file=SIGNATURE_NAME) from None
    except OSError as exc:
        raise AgentError(BAD_SIGNATURE, f"artifact {name}: {SIGNATURE_NAME} cannot be read ({exc.strerror})",
                         fix="push the artifact again", file=SIGNATURE_NAME) from None
    public = fleet_key(root)
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        raise AgentError(BAD_SIGNATURE, f"artifact {name}: {SIGNATURE_NAME} is not a base64 Ed25519 signature",
                         fix="push the artifact again as the FleetDesk store made it", file=SIGNATURE_NAME)
    if not ed25519.verify(public, manifest, signature):
        raise AgentError(BAD_SIGNATURE, f"artifact {name}: the signature does not match manifest.json and the "
                         f"fleet key {key_path} (the manifest was changed, or signed by another laptop's key)",
                         fix="push the artifact again from the laptop whose key this device trusts; if the key "
                             "changed, provision the device again with the new fleet key", file=MANIFEST_NAME)
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


def verify_artifact(root: str, sha: str, hasher: Callable[[str], str] = sha256_file) -> dict[str, Any]:
    """ROOT/artifacts/<sha> must exist, hold a manifest.json whose SHA-256 is <sha> (the id covers every byte),
    signed by the fleet key, and every file the manifest lists must have the listed SHA-256. `hasher` gives a
    file's SHA-256 (the model server's passes a cache, fleetdesk/agent/verified.py); a refusal names its file."""
    folder = artifact_dir(root, sha)
    if not os.path.isdir(folder):
        raise AgentError(NOT_FOUND, f"artifact {sha} is not on this device ({folder} does not exist)",
                         fix="push the artifact to the device before activating it")
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        raise AgentError(BAD_ARTIFACT, f"artifact {sha} has no manifest.json: only signed artifacts are activated",
                         fix="push the artifact as the FleetDesk store made it (manifest, signature and files)",
                         file=MANIFEST_NAME)
    signature = check_signature(folder, root)  # the manifest is trusted before anything it says is used
    if hasher(manifest_path) != sha:
        raise AgentError(BAD_ARTIFACT, f"artifact {sha}: manifest.json's SHA-256 is not the artifact's id",
                         fix="push the artifact again into ROOT/artifacts/<the SHA-256 of its manifest.json>",
                         file=MANIFEST_NAME)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            entries = _manifest_entries(json.load(f))
    except (OSError, ValueError) as exc:
        raise AgentError(BAD_ARTIFACT, f"artifact {sha}: manifest.json cannot be read ({exc})",
                         fix="push the artifact again", file=MANIFEST_NAME) from None
    checked = 0
    real = os.path.realpath(folder)
    for rel, digest in entries:
        path = os.path.realpath(os.path.join(folder, rel))
        if not rel or os.path.isabs(rel) or not path.startswith(real + os.sep):
            raise AgentError(BAD_ARTIFACT, f"artifact {sha}: manifest names {rel[:200]!r}, outside the artifact",
                             fix="rebuild the artifact on the laptop; a manifest lists files inside it only",
                             file=rel[:200])
        try:
            actual = hasher(path)
        except OSError as exc:
            raise AgentError(BAD_ARTIFACT, f"artifact {sha}: {rel[:200]!r} cannot be read ({exc.strerror})",
                             fix="push the artifact again", file=rel[:200]) from None
        if actual != digest.lower():
            raise AgentError(BAD_ARTIFACT, f"artifact {sha}: {rel[:200]!r} has SHA-256 {actual}, "
                             f"the manifest says {digest[:64]}",
                             fix="push the artifact again (the copy on the device is damaged)", file=rel[:200])
        checked += 1
    return {"manifest": True, "files_checked": checked, "signature": signature}


def _remember(state: dict[str, Any], entry: dict[str, Any]) -> None:
    history = state.get("history")
    history = history if isinstance(history, list) else []
    history.append(entry)
    state["history"] = history[-HISTORY_LIMIT:]


def reload_server(root: str) -> int | None:
    """SIGHUP the model server named by ROOT/run/serve.pid if that process is alive and is a server;
    returns its pid, or None when there is none (a stale pid file never signals a stranger). The server itself
    (settling a deadline in its own loop) is not signalled: it loads the new link on its next look."""
    try:
        with open(os.path.join(root, "run", "serve.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return None
    if pid <= 1 or b"serve" not in cmdline:
        return None
    if pid == os.getpid():
        return pid
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return None
    return pid


# Who reverts an activation at its deadline: the model server (it owns the deadline: supervised, so neither a
# logout nor a reboot ends it for good), the watchdog `activate` starts (a second line for a device whose server
# cannot run), the boot path. Any agent command also settles what it finds, and then says so in the reason.
MODEL_SERVER, WATCHDOG, BOOT = "model server", "watchdog", "boot"
DEADLINE_OWNERS = (MODEL_SERVER, WATCHDOG, BOOT)

# Lab only: the crash-point test (tests/unit/test_agent_crash.py) makes the agent SIGKILL itself at one step
# boundary, as a power cut would. Honoured only when the variable names the step AND the root holds the marker
# file, which nothing in FleetDesk ever writes on a device; sshd does not pass the variable from a laptop
# (AcceptEnv), and a watchdog the agent starts never inherits it.
CRASH_AT_ENV = "FLEETDESK_LAB_CRASH_AT"
CRASH_MARKER = "LAB-CRASH-POINTS"


def crash_point(root: str, step: str) -> None:
    """A step boundary of a change to the links or state.json ("revert:current", ...): in the lab, die here."""
    if os.environ.get(CRASH_AT_ENV) == step and os.path.isfile(os.path.join(root, CRASH_MARKER)):
        os.kill(os.getpid(), signal.SIGKILL)


def _revert(root: str, state: dict[str, Any], reason: str, now: float, by: str) -> dict[str, Any]:
    """Undo the pending activation: current back to what it was, then previous, and only then state.json says so.
    A crash before the state is written leaves the pending record: reverting from it again is idempotent, and a
    late `confirm` finds current is not the pending model (see settle_expired). Returns the record."""
    pending = state["pending"]
    switch_link(root, "current", pending.get("previous"))
    crash_point(root, "revert:current")
    switch_link(root, "previous", pending.get("previous_before"))
    crash_point(root, "revert:previous")
    state.pop("pending")
    record = {"sha": pending.get("sha"), "to": pending.get("previous"), "reason": reason, "at": round(now, 3),
              "by": by}
    state["reverted"] = record
    state["active"] = pending.get("previous")
    _remember(state, dict(record, event="reverted"))
    write_state(root, state)
    crash_point(root, "revert:state")
    reload_server(root)
    return record


def _switch(root: str, state: dict[str, Any], current: str | None, previous: str | None, event: dict[str, Any],
            step: str, reverted: dict[str, Any] | None = None) -> None:
    """Move both links for a change with no pending record to go back by (a rollback, an activation without a
    deadline, undoing a failed load). A swap passes through a moment where both links name one artifact, so
    state.json first says where the links go ("switching": where, not that they went), then the links move, then
    state.json says it is done. Whoever takes the lock next finishes an interrupted one (_finish_switch)."""
    state["switching"] = {"current": current, "previous": previous, "event": event, "reverted": reverted}
    write_state(root, state)
    crash_point(root, f"{step}:state")
    _finish_switch(root, state)


def _finish_switch(root: str, state: dict[str, Any]) -> None:
    """Links to where state["switching"] says (a link already there is left as is), then the state that says so."""
    switching = state["switching"]
    switch_link(root, "current", switching.get("current"))
    crash_point(root, "switch:current")
    switch_link(root, "previous", switching.get("previous"))
    crash_point(root, "switch:previous")
    state.pop("switching")
    state["active"] = switching.get("current")
    if isinstance(switching.get("event"), dict):
        _remember(state, switching["event"])
    if isinstance(switching.get("reverted"), dict):
        state["reverted"] = switching["reverted"]
    write_state(root, state)
    crash_point(root, "switch:state")


def _finish_interrupted_switch(root: str, state: dict[str, Any]) -> bool:
    if not isinstance(state.get("switching"), dict):
        return False
    _finish_switch(root, state)
    return True


def _links_as_activated(root: str, pending: dict[str, Any]) -> bool:
    """Whether current and previous are what `activate` set for this pending activation."""
    return link_target(root, "current") == pending.get("sha") and \
        link_target(root, "previous") == pending.get("previous")


def settle_expired(root: str, state: dict[str, Any], now: float, found_by: str) -> dict[str, Any] | None:
    """Make the links and state.json agree, and revert what is due; the caller holds the lock. A switch a crash
    interrupted is finished; a pending activation is reverted when its deadline has passed (its watchdog died
    with a reboot, say), or when the links are not what `activate` set (a crash in the middle of `activate`, or
    of a revert: either way it is not serving, or was already on its way back). Returns the revert record."""
    if _finish_interrupted_switch(root, state):
        reload_server(root)
    pending = state.get("pending")
    if not isinstance(pending, dict):
        return None
    expired = now >= float(pending.get("deadline", 0))
    if not expired and _links_as_activated(root, pending):
        return None
    within = pending.get("confirm_within")
    if not expired:
        reason = "the switch to it was interrupted before it finished (the agent stopped, or the device lost power)"
    elif isinstance(within, (int, float)):
        reason = f"not confirmed within {within:g} s"
    else:
        reason = "not confirmed in time"
    return _revert(root, state, reason + (f" (found by {found_by})" if found_by not in DEADLINE_OWNERS else ""),
                   now, found_by)


def needs_settling(root: str, state: dict[str, Any], now: float) -> bool:
    """Whether settle_expired would do anything. Without the lock this is only a filter (an `activate` in progress
    looks unsettled until it ends): the decision is taken again under the lock."""
    if isinstance(state.get("switching"), dict):
        return True
    pending = state.get("pending")
    return isinstance(pending, dict) and (now >= float(pending.get("deadline", 0))
                                          or not _links_as_activated(root, pending))


def settle_due(root: str, by: str) -> dict[str, Any] | None:
    """What `status`, the model server (at start and once a second) and the boot path run: settle_expired when
    state.json shows something to settle. Returns the revert record, if it reverted."""
    if not os.path.isdir(root) or not needs_settling(root, read_state(root), time.time()):
        return None
    with locked(root):
        return settle_expired(root, read_state(root), time.time(), by)


def watchdog_alive(pending: dict[str, Any]) -> bool:
    """Whether the watchdog recorded for this pending activation still runs (its pid, its token)."""
    pid = pending.get("watchdog_pid")
    if not isinstance(pid, int) or pid <= 1:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"watchdog" in cmdline and str(pending.get("token", "")).encode() in cmdline


def rearm(root: str, spawn: Callable[[str, str], int], by: str = BOOT) -> tuple[dict[str, Any] | None,
                                                                                dict[str, Any] | None]:
    """At boot: settle what is due; a pending activation still inside its window whose watchdog died gets a new
    one (`spawn(sha, token)`), besides the model server that owns the deadline. Returns (the revert record, the
    pending activation), either None."""
    with locked(root):
        state = read_state(root)
        reverted = settle_expired(root, state, time.time(), by)
        pending = state.get("pending")
        if isinstance(pending, dict) and not watchdog_alive(pending):
            pending["watchdog_pid"] = spawn(str(pending.get("sha")), str(pending.get("token")))
            write_state(root, state)
        return reverted, pending if isinstance(pending, dict) else None


def activate(root: str, sha: str, confirm_within: float | None,
             spawn: Any = None, now: float | None = None) -> dict[str, Any]:
    """Make artifact `sha` the active model. With confirm_within, it stays pending until `confirm`, and the model
    server (and a detached watchdog, `spawn(sha, token)`) reverts it at the deadline.

    With a deadline, state.json records the pending activation before a link moves (previous first, then
    current): a crash anywhere leaves current on the old model or the new one with the pending record naming both,
    and the next command reverts what did not finish."""
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
        # What undo_failed_load needs to put back an activation without a deadline.
        state["last_activation"] = {"sha": sha, "previous": current, "previous_before": previous_before,
                                    "at": round(now, 3)}
        if confirm_within is not None:
            pending = {"sha": sha, "previous": current, "previous_before": previous_before,
                       "deadline": round(now + confirm_within, 3), "confirm_within": confirm_within,
                       "started": round(now, 3), "token": secrets.token_hex(8)}
            state["pending"] = pending
            state["active"] = current  # what serves until the confirmation
            write_state(root, state)
            crash_point(root, "activate:state")
            switch_link(root, "previous", current)
            crash_point(root, "activate:previous")
            switch_link(root, "current", sha)
            crash_point(root, "activate:current")
            if spawn is not None:
                pending["watchdog_pid"] = spawn(sha, pending["token"])
                write_state(root, state)
                crash_point(root, "activate:watchdog")
        else:
            pending = None
            _switch(root, state, sha, current, {"event": "activated", "sha": sha, "previous": current,
                                                "at": round(now, 3)}, "activate")
        server = reload_server(root)
    return {"active": sha, "previous": current, "changed": True, "pending": pending, "verified": check,
            "serve_reloaded": server}


def confirm(root: str, sha: str, now: float | None = None) -> dict[str, Any]:
    """Keep the pending activation of `sha`. Only while its links are what `activate` set and its deadline has
    not passed: a confirmation never answers "confirmed" for a model that is not current."""
    check_sha(sha)
    with locked(root):
        now = time.time() if now is None else now
        state = read_state(root)
        record = settle_expired(root, state, now, "confirm")
        if record is not None and record.get("sha") == sha:
            raise AgentError(DEADLINE_PASSED, f"activation of {sha} was reverted before this confirmation "
                             f"({record['reason']}); the device went back to {record['to'] or 'no model'}",
                             fix="activate it again with a longer --confirm-within")
        pending = state.get("pending")
        if isinstance(pending, dict) and pending.get("sha") == sha:
            state.pop("pending")
            state["active"] = sha
            _remember(state, {"event": "confirmed", "sha": sha, "previous": pending.get("previous"),
                              "at": round(now, 3)})
            write_state(root, state)
            crash_point(root, "confirm:state")
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
        _finish_interrupted_switch(root, state)
        if isinstance(state.get("pending"), dict):
            record = _revert(root, state, "rolled back by the operator", now, "rollback")
            return {"active": record["to"], "from": record["sha"], "changed": True}
        current, previous = link_target(root, "current"), link_target(root, "previous")
        if previous is None:
            raise AgentError(NO_PREVIOUS, "there is no previous model to go back to",
                             fix="activate the model you want instead")
        verify_artifact(root, previous)
        _switch(root, state, previous, current, {"event": "rolled-back", "sha": current, "to": previous,
                                                 "at": round(now, 3)}, "rollback")
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
        _finish_interrupted_switch(root, state)
        pending = state.get("pending")
        if isinstance(pending, dict) and pending.get("sha") == sha:
            return _revert(root, state, f"the model server could not load it: {reason}", now, "activate")
        last = state.get("last_activation")
        if isinstance(pending, dict) or link_target(root, "current") != sha or not isinstance(last, dict) \
                or last.get("sha") != sha:
            return None
        record = {"sha": sha, "to": last.get("previous"), "reason": f"the model server could not load it: {reason}",
                  "at": round(now, 3), "by": "activate"}
        _switch(root, state, last.get("previous"), last.get("previous_before"), dict(record, event="reverted"),
                "undo", reverted=record)
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
                return settle_expired(root, state, now, WATCHDOG)
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
    env.pop(CRASH_AT_ENV, None)  # a crash point names one process's step, never the watchdog's
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
