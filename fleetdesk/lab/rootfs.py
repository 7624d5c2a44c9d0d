"""Cached Debian bookworm root filesystems for lab devices: amd64 natively, arm64 under qemu-user.

Built once with debootstrap, kept as a tarball in the user cache directory, and extracted
once into a base folder that every device of that architecture overlays.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fleetdesk.errors import LabError
from fleetdesk.lab.system import require_tools, run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "openssh-server", "procps", "avahi-daemon", "dbus", "iproute2")
# Bump when the image's customisation changes so caches are rebuilt.
IMAGE_REVISION = 1
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# The unprivileged account every lab device has, besides root (password login is for credential tests).
LAB_USER = "fleet"
LAB_PASSWORD = "fleet-lab"  # noqa: S105 - a published lab default, like a Pi's first-boot account

Progress = Callable[[str], None]

_CUSTOMISE = f"""
set -e
rm -f /etc/ssh/ssh_host_*
id {LAB_USER} >/dev/null 2>&1 || useradd -m -s /bin/bash {LAB_USER}
echo '{LAB_USER}:{LAB_PASSWORD}' | chpasswd
mkdir -p /run/sshd /var/lib/fleetdesk-lab
rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/* /debootstrap
rm -f /usr/sbin/policy-rc.d
"""


def image_key(arch: str) -> str:
    """A short hash of everything that goes into an image; a change means a new cache entry."""
    recipe = json.dumps([SUITE, DEBIAN_ARCH[arch], sorted(PACKAGES), IMAGE_REVISION, _CUSTOMISE])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def tarball_path(cache_dir: Path, arch: str) -> Path:
    return cache_dir / f"rootfs-{SUITE}-{DEBIAN_ARCH[arch]}-{image_key(arch)}.tar.zst"


def base_path(cache_dir: Path, arch: str) -> Path:
    return cache_dir / f"base-{SUITE}-{DEBIAN_ARCH[arch]}-{image_key(arch)}"


def ensure_foreign_arch(arch: str) -> None:
    """Make the kernel run aarch64 binaries through qemu-user (binfmt_misc with the F flag)."""
    if arch != "aarch64" or _host_arch() == "aarch64":
        return
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not Path("/proc/sys/fs/binfmt_misc/status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=False)
    if entry.exists() and entry.read_text().startswith("enabled"):
        return
    if not Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists() and shutil.which("qemu-aarch64-static") is None:
        raise LabError(
            "arm64 lab devices need qemu-user, which is not installed",
            fix="apt-get install qemu-user-static binfmt-support",
        )
    require_tools(["update-binfmts"])
    run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    if not (entry.exists() and entry.read_text().startswith("enabled")):
        raise LabError(
            "the kernel does not run aarch64 programs through qemu (binfmt_misc qemu-aarch64 is not enabled)",
            fix="run `update-binfmts --enable qemu-aarch64` as root and check /proc/sys/fs/binfmt_misc",
        )


def _host_arch() -> str:
    import platform

    return platform.machine()


def ensure_base(cache_dir: Path, arch: str, progress: Progress = print) -> Path:
    """The extracted base root filesystem for `arch`, building or extracting it when needed."""
    ensure_foreign_arch(arch)
    base = base_path(cache_dir, arch)
    stamp = base / "etc" / "fleetdesk-lab-image"
    key = image_key(arch)
    if stamp.is_file() and stamp.read_text().strip() == key:
        return base
    tarball = tarball_path(cache_dir, arch)
    if not tarball.is_file():
        build_tarball(cache_dir, arch, progress)  # leaves the freshly built base in place
        if stamp.is_file() and stamp.read_text().strip() == key:
            return base
    progress(f"extracting {tarball.name} ...")
    tmp = base.with_name(base.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["tar", "--zstd", "--numeric-owner", "-xpf", tarball, "-C", tmp], timeout=600, step="extract rootfs")
    tmp.rename(base)
    return base


def build_tarball(cache_dir: Path, arch: str, progress: Progress = print) -> Path:
    """debootstrap a minimal bookworm for `arch` and pack it; minutes, once per image key."""
    require_tools(["debootstrap", "tar", "zstd", "unshare", "chroot"])
    ensure_foreign_arch(arch)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = tarball_path(cache_dir, arch)
    work = cache_dir / f"build-{DEBIAN_ARCH[arch]}"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    progress(f"building the {DEBIAN_ARCH[arch]} root filesystem with debootstrap (a few minutes, once) ...")
    # Stage one only downloads and unpacks; no package script runs on the host.
    run(
        ["debootstrap", "--foreign", f"--arch={DEBIAN_ARCH[arch]}", "--variant=minbase",
         f"--include={','.join(PACKAGES)}", SUITE, work, MIRROR],
        timeout=1800, step="debootstrap (download)",
    )
    # No package may start a daemon while the image is made.
    policy = work / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # Stage two runs the package scripts inside the image, in its own network and PID namespaces:
    # anything they start cannot reach a network and dies with the stage.
    _isolated_chroot(work, ["/debootstrap/debootstrap", "--second-stage"], timeout=1800, step="debootstrap (configure)")
    _isolated_chroot(work, ["/bin/sh", "-c", _CUSTOMISE], timeout=600, step="customise rootfs")
    (work / "etc" / "fleetdesk-lab-image").write_text(image_key(arch) + "\n")
    progress(f"packing {tarball.name} ...")
    partial = tarball.with_name(tarball.name + ".partial")
    run(["tar", "--zstd", "--numeric-owner", "-cpf", partial, "-C", work, "."], timeout=900, step="pack rootfs")
    partial.rename(tarball)
    # The build folder is already the extracted base: keep it instead of unpacking again.
    base = base_path(cache_dir, arch)
    shutil.rmtree(base, ignore_errors=True)
    work.rename(base)
    progress(f"{DEBIAN_ARCH[arch]} root filesystem ready in {time.monotonic() - started:.0f} s")
    return tarball


def _isolated_chroot(root: Path, argv: list[str], *, timeout: float, step: str) -> None:
    for sub in ("proc",):
        (root / sub).mkdir(exist_ok=True)
    run(
        ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
         "/bin/sh", "-c", 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"', root, *argv],
        timeout=timeout, step=step,
    )
