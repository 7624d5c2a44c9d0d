"""The scripts provisioning runs on a device: Python (3.5 syntax) and sh text, passed on its command line.

Kept apart from provision.py, which decides what to send, run and record, so that module reads as the steps.
"""

from fleetdesk.runtime.sealing import SEAL_FUNCTIONS

# Device side, Python 3.5 syntax (a device's python3 may be old). argv: root runtime_id files_json wheels_json.
# Says what the device has, so that nothing it already holds is sent or rebuilt: also the fleet key it trusts now
# (base64 of keys/fleet.pub, checked against the laptop's before anything is sent), whether the login is root and
# whether keys/ is sealed (root-owned, read-only: see sealing.py).
STATE_PY = SEAL_FUNCTIONS + r"""
import base64, hashlib, json, os, platform, sys
root, rid, files, wheels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
def free(path):
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def link(path):
    try:
        return os.readlink(path)
    except OSError:
        return None
def sha(path, size):
    try:
        if os.path.getsize(path) != size:
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        return h.hexdigest()
    except OSError:
        return None
def supervisor():
    try:
        with open(os.path.join(root, "run", "supervise.pid")) as f:
            pid = int(f.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            alive = b"fleetdesk-supervise" in f.read()
    except (OSError, ValueError):
        return None
    try:
        with open(os.path.join(root, "run", "supervise.version")) as f:
            version = f.read().strip()
    except OSError:
        version = ""
    return {"pid": pid, "version": version} if alive else None
def fleet_pub():
    try:
        with open(os.path.join(root, "keys", "fleet.pub"), "rb") as f:
            return base64.b64encode(f.read(65536)).decode("ascii")
    except OSError:
        return None
try:
    import ensurepip, venv
    has_venv = True
except ImportError:
    has_venv = False
installed = load(os.path.join(root, "runtimes", rid, "installed.json"))
done = isinstance(installed, dict) and installed.get("runtime") == rid
hashes = dict((p, sha(p, n)) for p, n in files.items())
if not done:
    hashes.update((p, sha(p, n)) for p, n in wheels.items())
print(json.dumps({"python3": sys.executable, "python": "%d.%d.%d" % sys.version_info[:3],
                  "machine": platform.machine(), "venv": has_venv, "free": free(root),
                  "systemd": os.path.isdir("/run/systemd/system"), "installed": done,
                  "links": {"runtime": link(os.path.join(root, "runtimes", "current")),
                            "agent": link(os.path.join(root, "agent", "current"))},
                  "files": hashes, "supervisor": supervisor(), "fleet_pub": fleet_pub(),
                  "root": os.geteuid() == 0, "keys_sealed": sealed(os.path.join(root, "keys"))}))
"""
STATE_SH = 'echo \'{"python3": null}\''

# argv: runtime_dir runtime_id requirements_json. Writes installed.json last, atomically: its presence means done.
INSTALLED_PY = r"""
import json, os, sys, time
folder, rid, reqs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = {"runtime": rid, "requirements": reqs, "python": "%d.%d.%d" % sys.version_info[:3],
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
tmp = os.path.join(folder, ".installed.json.tmp")
with open(tmp, "w") as f:
    json.dump(data, f)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, os.path.join(folder, "installed.json"))
"""

# argv: bundle manifest_json ([member, path, mode, sha256]...). Each file is checked, written beside its place and
# renamed over it; the bundle is removed once every file is in place.
UNPACK_PY = r"""
import hashlib, json, os, sys, tarfile
bundle, manifest = sys.argv[1], json.loads(sys.argv[2])
with tarfile.open(bundle) as tar:
    for member, path, mode, want in manifest:
        data = tar.extractfile(member).read()
        if hashlib.sha256(data).hexdigest() != want:
            sys.stderr.write("%s does not hash to %s in the bundle\n" % (path, want))
            sys.exit(1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".fleetdesk-new"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
os.unlink(bundle)
"""

# argv: root (link target)... pairs. Switches each link by renaming a new one over it; prints what changed.
LINKS_PY = r"""
import os, sys
root, pairs = sys.argv[1], sys.argv[2:]
for d in ("run", "log"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
for i in range(0, len(pairs), 2):
    path, target = os.path.join(root, pairs[i]), pairs[i + 1]
    try:
        now = os.readlink(path)
    except OSError:
        now = None
    if now == target:
        continue
    if now is not None and pairs[i].endswith("/current"):
        # What was current stays as the one to go back to ("previous"); anything older is pruned later.
        keep = path[:-len("current")] + "previous"
        tmp = keep + ".fleetdesk-new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(now, tmp)
        os.replace(tmp, keep)
    tmp = path + ".fleetdesk-new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    print(pairs[i])
"""

# argv: root folder... Removes every version folder in ROOT/<folder> that neither `current` nor `previous`
# points at (runtimes hold ~40 MB of wheels and a venv each); prints what it removed.
PRUNE_PY = r"""
import os, shutil, sys
root = sys.argv[1]
for folder in sys.argv[2:]:
    base = os.path.join(root, folder)
    keep = set()
    for name in ("current", "previous"):
        try:
            keep.add(os.readlink(os.path.join(base, name)))
        except OSError:
            pass
    if not keep:
        continue
    for entry in sorted(os.listdir(base)):
        path = os.path.join(base, entry)
        if entry in keep or entry in ("current", "previous") or os.path.islink(path) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(folder + "/" + entry)
"""

# argv: line mark. Puts the boot hook `line` (ending in `mark`) where this device runs things at boot when no
# systemd does: /etc/rc.local for root (run at the end of boot by sysvinit's rc.local script, and by systemd's
# rc-local generator where it exists), else the user's crontab as `@reboot`. An older line with the same mark is
# replaced; the rest of the file is kept, and a final `exit 0` stays last. Prints {"hook", "changed", "why"}.
BOOT_HOOK_PY = r"""
import json, os, shutil, subprocess, sys
line, mark = sys.argv[1], sys.argv[2]
def edit(text, new, keep_exit):
    lines = [l for l in text.splitlines() if not l.rstrip().endswith(mark)]
    at = len(lines)
    if keep_exit:
        while at and not lines[at - 1].strip():
            at -= 1
        if at and lines[at - 1].strip() == "exit 0":
            at -= 1
    lines.insert(at, new)
    return "\n".join(lines) + "\n"
def say(hook, changed, why=""):
    print(json.dumps({"hook": hook, "changed": changed, "why": why}))
if os.geteuid() == 0:
    path = "/etc/rc.local"
    try:
        with open(path) as f:
            old = f.read()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        old, mode = None, 0o755
    text = edit(old if old is not None else "#!/bin/sh\n# Run at the end of boot.\nexit 0\n", line, True)
    if text == old and mode & 0o100:
        say(path, False)
    else:
        tmp = path + ".fleetdesk-tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode | 0o755)
        os.replace(tmp, path)
        say(path, True)
elif "%" in line:
    say(None, False, "the FleetDesk root holds a %, which a crontab line cannot carry")
elif shutil.which("crontab"):
    listed = subprocess.run(["crontab", "-l"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    old = listed.stdout if listed.returncode == 0 else ""
    text = edit(old, "@reboot " + line, False)
    if text == old:
        say("crontab", False)
    else:
        put = subprocess.run(["crontab", "-"], input=text, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
        if put.returncode != 0:
            say(None, False, "crontab refused the @reboot line: " + put.stderr.strip()[-200:])
        else:
            say("crontab", True)
else:
    say(None, False, "not root (so not /etc/rc.local) and no crontab command")
"""

# argv: root version. Stops a supervisor of another version, then starts ours with the boot script (the one way
# it is started: here and at boot), and waits for its pid.
SUPERVISE_SH = r"""
root=$1; version=$2
pidfile="$root/run/supervise.pid"
mkdir -p "$root/run" "$root/log"
if [ -f "$pidfile" ]; then
  old=$(cat "$pidfile")
  if [ -n "$old" ] && grep -q fleetdesk-supervise "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old" 2>/dev/null
    i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  fi
  rm -f "$pidfile"
fi
printf '%s\n' "$version" > "$root/run/supervise.version"
"$root/bin/fleetdesk-boot"
i=0; while [ ! -s "$pidfile" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$pidfile" ] || { echo "the supervisor did not start" >&2; exit 1; }
"""
