"""One lab device's life: its disk, its mounts, booting its services, shutting them down.

A device's disk is a tmpfs sized as the profile says, holding the overlay's upper layer
over the cached base image; its init is the sensors process, which holds its hostname.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from fleetdesk.errors import LabError
from fleetdesk.lab import netns
from fleetdesk.lab.identity import FAKE_PROC_FILES, hardware_json, write_identity
from fleetdesk.lab.sensors import SensorModel, write_sensors
from fleetdesk.lab.standins import PROC_DIR
from fleetdesk.lab.state import LabDevice
from fleetdesk.lab.system import is_mountpoint, package_env, run, stop_processes, unmount_all
from fleetdesk.profiles import Profile

SSH_READY_TIMEOUT = 60.0  # an arm64 sshd under qemu takes a few seconds to start


def disk_dir(dev: LabDevice) -> Path:
    return dev.device_dir / "disk"


def hardware_path(dev: LabDevice) -> Path:
    return dev.device_dir / "hardware.json"


def log_path(dev: LabDevice) -> Path:
    return dev.device_dir / "device.log"


def create_disk(dev: LabDevice, base: Path, disk_gb: int) -> None:
    """tmpfs disk of the profile's size, overlay root over `base`, /proc, /dev and identity binds."""
    disk = disk_dir(dev)
    root = Path(dev.root)
    disk.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={disk_gb}g,mode=0755", f"fdlab-{dev.name}", disk],
        step="mount disk", device=dev.name)
    (disk / "upper").mkdir()
    (disk / "work").mkdir()
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={disk / 'upper'},workdir={disk / 'work'}", root],
        step="mount root", device=dev.name)


def mount_pseudo_filesystems(dev: LabDevice) -> None:
    """/proc and /dev from the host, with the lab's own cpuinfo/meminfo/stat/uptime over them."""
    root = Path(dev.root)
    run(["mount", "-t", "proc", "proc", root / "proc"], step="mount /proc", device=dev.name)
    run(["mount", "--bind", "/dev", root / "dev"], step="mount /dev", device=dev.name)
    run(["mount", "--bind", "/dev/pts", root / "dev" / "pts"], step="mount /dev/pts", device=dev.name)
    for name in FAKE_PROC_FILES:
        source = root / PROC_DIR / name
        run(["mount", "--bind", source, root / "proc" / name], step=f"bind /proc/{name}", device=dev.name)


def generate_host_keys(dev: LabDevice) -> str:
    """Fresh host keys, as a newly flashed device makes; returns the ed25519 SHA256 fingerprint."""
    ssh_dir = Path(dev.root) / "etc" / "ssh"
    for kind in ("ed25519", "ecdsa"):
        key = ssh_dir / f"ssh_host_{kind}_key"
        for old in (key, key.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{dev.name}", "-f", key],
            step="generate host key", device=dev.name)
    out = run(["ssh-keygen", "-lf", ssh_dir / "ssh_host_ed25519_key.pub"], device=dev.name).stdout.decode()
    return out.split()[1]


def host_public_key(dev: LabDevice) -> str:
    text = (Path(dev.root) / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text()
    kind, blob = text.split()[:2]
    return f"{kind} {blob}"


def prepare(dev: LabDevice, profile: Profile, base: Path, authorized_key: str) -> None:
    """Everything on disk for a device that has never booted."""
    hw = profile.lab
    assert hw is not None
    create_disk(dev, base, hw.disk_gb)
    root = Path(dev.root)
    write_identity(root, dev.name, dev.address, profile)
    (root / "etc" / "ssh" / "lab_authorized_keys").write_text(authorized_key.strip() + "\n")
    dev.host_key_fingerprint = generate_host_keys(dev)
    hardware = hardware_json(dev.name, profile)
    hardware_path(dev).write_text(json.dumps(hardware, indent=2))
    # The /proc files must exist before they can be bind-mounted, so write one sample now.
    write_sensors(root, SensorModel(hardware))
    mount_pseudo_filesystems(dev)


def boot(dev: LabDevice) -> None:
    """Start the device: its init (sensors, holding the hostname), then sshd and avahi inside it."""
    dev.boot_time = time.time()
    log = open(log_path(dev), "ab")
    try:
        init = subprocess.Popen(
            ["ip", "netns", "exec", dev.netns, "unshare", "--uts", "/bin/sh", "-c", 'hostname "$0" && exec "$@"',
             dev.name, sys.executable, "-m", "fleetdesk.lab.sensors", "--root", dev.root,
             "--hardware", str(hardware_path(dev)), "--boot-time", str(dev.boot_time)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=package_env(),
        )
    finally:
        log.close()
    _wait_for_init(dev, init)
    start_sshd(dev)
    _enter(dev, ["/usr/sbin/avahi-daemon", "-D", "--no-drop-root", "--no-chroot"], step="start avahi")
    run_rc_local(dev)


# What sysvinit gives the scripts it runs at boot: no environment of the host's lab process.
BOOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8"}


def run_rc_local(dev: LabDevice) -> None:
    """The last step of a boot without systemd, as Debian's /etc/init.d/rc.local does it: run /etc/rc.local
    when it is executable. Its failure is logged, as an init would, and the device stays up."""
    script = Path(dev.root) / "etc" / "rc.local"
    if not (script.is_file() and os.access(script, os.X_OK)):
        return
    result = _enter(dev, ["/etc/rc.local", "start"], step="run /etc/rc.local", check=False, env=BOOT_ENV)
    if result.returncode != 0:
        with open(log_path(dev), "ab") as log:
            log.write(b"/etc/rc.local exited with status %d: %s\n" % (result.returncode, result.stderr[-500:]))


def _wait_for_init(dev: LabDevice, init: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    own_uts = os.readlink("/proc/self/ns/uts")
    while time.monotonic() < deadline:
        if init.poll() is not None:
            raise LabError(f"the device's init exited ({init.returncode}); see {log_path(dev)}",
                           device=dev.name, step="boot")
        try:
            if os.readlink(f"/proc/{init.pid}/ns/uts") != own_uts and b"sensors" in Path(
                f"/proc/{init.pid}/cmdline"
            ).read_bytes():
                (dev.device_dir / "init.pid").write_text(f"{init.pid}\n")
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise LabError("the device's init did not start within 10 s", device=dev.name, step="boot")


def init_pid(dev: LabDevice) -> int:
    try:
        pid = int((dev.device_dir / "init.pid").read_text())
    except (FileNotFoundError, ValueError):
        raise LabError("the device is not running", device=dev.name, fix="restart it: fleetdesk lab fault "
                       f"{dev.name} reboot") from None
    if not Path(f"/proc/{pid}").exists():
        raise LabError("the device's init has died", device=dev.name,
                       fix=f"restart it: fleetdesk lab fault {dev.name} reboot")
    return pid


def _enter(dev: LabDevice, argv: list[str], *, step: str, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a program of the device's own root filesystem inside the device (network, hostname)."""
    return run(["nsenter", "--target", str(init_pid(dev)), "--uts", "--net", "chroot", dev.root, *argv],
               step=step, device=dev.name, timeout=SSH_READY_TIMEOUT, check=check, env=env)


def sshd_pid(dev: LabDevice) -> int | None:
    try:
        pid = int((Path(dev.root) / "run" / "sshd.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def start_sshd(dev: LabDevice) -> None:
    if sshd_pid(dev) is None:
        _enter(dev, ["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_config", "-E", "/var/log/sshd.log"], step="start sshd")


def stop_sshd(dev: LabDevice) -> None:
    """Stop the listening sshd, as `systemctl stop ssh` does; open sessions stay up."""
    pid = sshd_pid(dev)
    if pid is not None:
        stop_processes([pid], grace=5.0)
    (Path(dev.root) / "run" / "sshd.pid").unlink(missing_ok=True)


def wait_for_ssh(address: str, *, device: str, timeout: float = SSH_READY_TIMEOUT) -> None:
    """Wait until an sshd at `address` sends its banner."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=2) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise LabError(f"sshd did not answer within {timeout:.0f} s ({last})", device=device, step="boot",
                   fix="see the device's /var/log/sshd.log")


def shutdown(dev: LabDevice) -> None:
    """Stop every process of the device (its namespace's processes)."""
    netns.kill_netns_processes(dev.netns)
    for stale in (Path(dev.root) / "run" / "sshd.pid", Path(dev.root) / "run" / "avahi-daemon" / "pid",
                  dev.device_dir / "init.pid"):
        stale.unlink(missing_ok=True)


def destroy(dev: LabDevice) -> None:
    """Processes, mounts, files and network of the device: all gone."""
    if Path(f"/run/netns/{dev.netns}").exists():
        shutdown(dev)
    netns.clear_shaping(dev.device_dir, dev.index, dev.address)
    unmount_all(dev.device_dir)
    if not is_mountpoint(dev.device_dir):
        shutil.rmtree(dev.device_dir, ignore_errors=True)
    netns.delete_device_network(dev.netns, dev.veth)


def disk_usage(dev: LabDevice) -> os.statvfs_result:
    return os.statvfs(disk_dir(dev))


def set_disk_full(dev: LabDevice, full: bool, disk_gb: int) -> None:
    """Fill the device's disk by shrinking its tmpfs to what it holds now; undo by growing it back."""
    disk = disk_dir(dev)
    if full:
        st = os.statvfs(disk)
        used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
        size = f"{max(used_kib, 4)}k"
    else:
        size = f"{disk_gb}g"
    run(["mount", "-o", f"remount,size={size}", disk], step="fill-disk" if full else "free-disk", device=dev.name)
