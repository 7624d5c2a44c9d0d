"""The .deb, proved the way an IT department would: installed with apt into a clean Debian bookworm root (the lab's
cached amd64 image, unpacked afresh: no Python of this machine, no venv, no checkout in it, and no network), then
used there: `fleetdesk --version`, `fleetdesk devices --json` on a fresh inventory, `fleetdesk model import` of a
small CNN (onnxruntime, the optimizer and the quantizer frozen; the operator's signing key in a real gnome-keyring
whose D-Bus socket is inside the root), the desktop entry's Exec line drawing the window on a real X server with
Qt's xcb platform; removed (the operator's data stays) and purged (/opt/fleetdesk goes).

The offline device-runtime pack (fleetdesk-runtimes_<version>_all.deb) is installed beside it: `fleetdesk runtime
list` shows its runtimes, and `fleetdesk runtime build`, which needs pip and an index, says so and names them. Then
the root is put on a lab of this module's own (one x86 PC) and on nothing else (loopback and a veth into the lab's
bridge, no default route): there the installed `fleetdesk` adds the device, trusts its host key, probes it and
provisions it from the pack; on the device onnxruntime imports, the version the pack shipped, installed from the
pack's wheels byte for byte.

The build is `make dist`'s, of these sources, reused from the cache folder (packaging/cached_build.py, keyed by what
goes into the bundle) where `make dist-offline` (a prerequisite of `make test`) put it: building reaches the package
index for the runtime pack's wheels, so it is an install step, never this test's. So is the download of the Debian
packages the .deb's Depends pull in (the root has no route to any mirror): they are offered to apt as a local file:
repository. The one-device lab is up only for the provisioning test (tests/lab/conftest.py runs this module before
the session's shared fleet is up: one lab per machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine

from fleetdesk.inventory import migrate
from fleetdesk.lab import netns
from fleetdesk.lab.state import NETNS_PREFIX, VETH_PREFIX
from tests.cached_build import cached_build
from tests.conftest import skip_or_fail
from tests.fixtures.models.build import save_cnn
from tests.gui.x_display import XWindow, app_window, ask_to_close, grab_screen, missing_tools, xvfb
from tests.gui_harness import distinct_colours
from tests.keyring_daemon import private_keyring
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.conftest import lab_up, reused_lab_dir

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[2]
APP_ID = "org.fleetdesk.FleetDesk"
TOOLS = ("tar", "zstd", "unshare", "chroot", "mount", "ip", "dpkg-deb", "desktop-file-validate", "appstreamcli")
LOCAL_REPO = "/var/local/fleetdesk-debs"
HOME = "/home/operator"  # inside the root
STARTUP_LIMIT = 120.0
# Inside the root, what a login shell would have; nothing of this machine's environment goes in.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "HOME": HOME, "XDG_RUNTIME_DIR": f"{HOME}/runtime", "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class CleanRoot:
    path: Path
    deb: Path  # inside the root
    runtimes_deb: Path  # inside the root
    version: str
    session: dict[str, str] = field(default_factory=dict)  # what the operator's desktop session sets (its D-Bus)
    netns: str | None = None  # a named network namespace to run in; None: one of its own with only loopback

    def run(self, command: str, *, env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(command, env), capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the clean root, `{command}` failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def argv(self, command: str, env: dict[str, str] | None = None) -> list[str]:
        """`command` run by /bin/sh of the root, chrooted, in a private mount namespace and a network namespace
        (its own with only loopback, up, or `netns`), with /proc, /dev and the X server's socket folder mounted; the
        same process id throughout (no fork between here and the command), so its windows name the pid Popen sees."""
        env_args = " ".join(f"{k}={_q(v)}" for k, v in {**BASE_ENV, **self.session, **(env or {})}.items())
        setup = (
            f"set -e; R={_q(str(self.path))}; "
            'mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"; '
            '[ -d /tmp/.X11-unix ] && mount --bind /tmp/.X11-unix "$R/tmp/.X11-unix"; '
            "ip link set lo up; "
            f'exec chroot "$R" /usr/bin/env -i {env_args} /bin/sh -c {_q(command)}'
        )
        if self.netns is None:
            return ["unshare", "--mount", "--net", "--propagation", "private", "--", "/bin/sh", "-c", setup]
        return ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", setup]


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module")
def build_folder() -> Path:
    """The cached build of these sources (`make dist-offline`): the .debs and the .tar.gz."""
    packaging = cached_build()
    folder: Path | None = packaging.cached_build(sys.executable, build=False)
    if folder is None:
        skip_or_fail(f"no build of these sources in {packaging.cache_folder(sys.executable)} "
                     "(`make dist-offline` builds it)")
    assert folder is not None
    return folder


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory, build_folder: Path) -> Iterator[CleanRoot]:
    if sys.platform != "linux" or os.geteuid() != 0:
        skip_or_fail("the installer test needs Linux and root (chroot, namespaces)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"host tools missing: {', '.join(missing)} (scripts/system-deps.sh test installs them)")
    packaging = cached_build()
    tarball: Path = packaging.clean_root_tarball()
    if not tarball.is_file():
        skip_or_fail(f"no clean bookworm image at {tarball} (`make dist-offline` builds it)")

    folder = build_folder
    [deb] = folder.glob("fleetdesk_*_amd64.deb")
    [runtimes_deb] = folder.glob("fleetdesk-runtimes_*_all.deb")
    debs: Path = packaging.offline_debs_folder()
    stamp = debs / "depends.txt"
    if not stamp.is_file() or stamp.read_text().strip() != packaging.deb_depends(deb):
        skip_or_fail(f"the Debian packages this .deb depends on are not downloaded for it in {debs} "
                     "(`make dist-offline` fetches them)")

    root = tmp_path_factory.mktemp("clean-root") / "root"
    root.mkdir()
    subprocess.run(["tar", "--zstd", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], check=True,
                   timeout=600)
    # apt's only source: the local repository (the image's deb.debian.org line goes; there is no route anyway).
    (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{LOCAL_REPO} ./\n")
    shutil.rmtree(root / "etc/apt/sources.list.d", ignore_errors=True)
    (root / "etc/apt/sources.list.d").mkdir()
    shutil.copytree(debs, root / LOCAL_REPO.lstrip("/"))
    shutil.copy2(deb, root / "tmp" / deb.name)
    shutil.copy2(runtimes_deb, root / "tmp" / runtimes_deb.name)
    (root / "tmp/.X11-unix").mkdir(exist_ok=True)
    version = deb.name.split("_")[1]
    # The operator's session bus and Secret Service: a private gnome-keyring, run from here, whose bus socket is a
    # file inside the root (a filesystem socket reaches across the network namespace; the path drops the root's).
    keyring_base = root / "run/fleetdesk-keyring"
    with private_keyring(keyring_base) as keyring:
        bus = keyring.bus_address.replace(str(root), "", 1)
        assert bus != keyring.bus_address, keyring.bus_address
        yield CleanRoot(root, Path("/tmp") / deb.name, Path("/tmp") / runtimes_deb.name, version,
                        {"DBUS_SESSION_BUS_ADDRESS": bus})
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(clean_root: CleanRoot) -> CleanRoot:
    assert not (clean_root.path / "root/.pyenv").exists() and not (clean_root.path / "work").exists()
    assert not (clean_root.path / "opt/fleetdesk").exists()
    clean_root.run("apt-get update -qq", timeout=120)
    proc = clean_root.run(f"apt-get install -y --no-install-recommends {clean_root.deb} {clean_root.runtimes_deb}",
                          timeout=900)
    # apt names what it installs besides the package; every one must come from the declared Depends.
    new = re.search(r"NEW packages will be installed:\n((?:  .*\n)+)", proc.stdout)
    assert new, proc.stdout
    pulled = set(new.group(1).split()) - {"fleetdesk", "fleetdesk-runtimes"}
    assert pulled, "a clean root needs the xcb libraries: apt installed nothing but fleetdesk?"
    print(f"apt-get install pulled {len(pulled)} packages: {' '.join(sorted(pulled))}")
    return clean_root


def test_lintian_reports_no_error(build_folder: Path) -> None:
    # What a Debian archive would refuse. The tags a frozen bundle in /opt cannot avoid are overridden in the package
    # (packaging/linux/lintian-overrides, each with its reason); an override that no longer matches is reported too.
    if shutil.which("lintian") is None:
        skip_or_fail("lintian is missing (scripts/system-deps.sh test installs it)")
    [deb] = build_folder.glob("fleetdesk_*_amd64.deb")
    proc = subprocess.run(["lintian", "--fail-on", "error", "--no-tag-display-limit", "--display-info", str(deb)],
                          capture_output=True, text=True, timeout=600, check=False)
    shown = proc.stdout + proc.stderr
    errors = [line for line in shown.splitlines() if line.startswith("E:")]
    assert proc.returncode == 0 and not errors, f"lintian: {proc.returncode}\n{shown}"
    assert "mismatched-override" not in shown and "unused-override" not in shown, shown


def test_apt_installs_it_with_only_its_declared_dependencies(installed: CleanRoot) -> None:
    root = installed.path
    depends = installed.run(f"dpkg-deb --field {installed.deb} Depends").stdout
    declared = {part.split()[0] for part in depends.split(",")}
    assert {"libxcb-cursor0", "libegl1", "libfontconfig1", "libdbus-1-3"} <= declared, depends
    status = installed.run("dpkg-query -W -f='${Package} ${Status}\\n' fleetdesk fleetdesk-runtimes").stdout
    assert status.count("install ok installed") == 2, status
    for path in ("opt/fleetdesk/fleetdesk", "opt/fleetdesk/fleetdesk-gui", "usr/share/doc/fleetdesk/copyright",
                 f"usr/share/applications/{APP_ID}.desktop", f"usr/share/metainfo/{APP_ID}.metainfo.xml",
                 f"usr/share/icons/hicolor/scalable/apps/{APP_ID}.svg",
                 *(f"usr/share/icons/hicolor/{n}x{n}/apps/{APP_ID}.png" for n in (48, 128, 256))):
        assert (root / path).exists(), f"/{path} is not installed"
    assert os.readlink(root / "usr/bin/fleetdesk") == "/opt/fleetdesk/fleetdesk"
    # The desktop entry and the metainfo are valid as installed.
    subprocess.run(["desktop-file-validate", str(root / f"usr/share/applications/{APP_ID}.desktop")], check=True)
    subprocess.run(["appstreamcli", "validate", "--no-net", "--pedantic",
                    str(root / f"usr/share/metainfo/{APP_ID}.metainfo.xml")], check=True, capture_output=True)


def test_the_commands_run_from_the_package_on_a_fresh_inventory(installed: CleanRoot) -> None:
    out = installed.run("fleetdesk --version").stdout.strip()
    assert re.fullmatch(rf"fleetdesk {re.escape(installed.version)} \(commit [0-9a-f]{{12}}(-dirty)?\)", out), out
    devices = installed.run(f"mkdir -p {HOME} && fleetdesk devices --json")
    assert json.loads(devices.stdout) == []
    assert (installed.path / HOME.lstrip("/") / ".local/share/fleetdesk/fleetdesk.db").is_file()


def test_a_small_cnn_is_imported_and_optimized_for_each_profile(installed: CleanRoot) -> None:
    # One arm64 and one x86 profile: each builds graph-optimized and INT8 (static and dynamic) variants.
    profiles = ("rpi4", "ipc-x86")
    save_cnn(installed.path / "srv/small_cnn.onnx")
    proc = installed.run(f"mkdir -p {HOME} && cd /srv && fleetdesk model import small_cnn.onnx --name line-cam "
                         f"--version 1.0 --no-device-bench --json "
                         + " ".join(f"--profile {p}" for p in profiles), timeout=600)
    record = json.loads(proc.stdout)
    assert record["name"] == "line-cam" and record["version"] == "1.0", record
    report = record["report"]
    assert sorted(p["profile"] for p in report["profiles"]) == sorted(profiles), report
    for result in report["profiles"]:
        variants = {v["recipe"]: v for v in result["variants"]}
        failed = {recipe: v["reason"] for recipe, v in variants.items() if v["status"] == "failed"}
        assert not failed, f"{result['profile']}: variants failed in the frozen bundle: {failed}"
        # The quantizer ran frozen and its model ran in onnxruntime: it has an accuracy against the original.
        assert variants["int8-static"]["accuracy"] is not None, variants["int8-static"]
        assert result["chosen"] in variants, result
    verified = json.loads(installed.run(f"fleetdesk model verify {record['ref']} --json", check=False).stdout)
    assert verified["ok"] and verified["results"], verified


def test_the_runtime_pack_is_listed_and_a_frozen_build_names_it(installed: CleanRoot) -> None:
    runtimes = json.loads(installed.run("fleetdesk runtime list --json").stdout)
    by_platform = {(r["arch"], r["python"]): r for r in runtimes}
    # The CPU device families: the Pis (aarch64) and the x86 PCs, both on bookworm's Python 3.11.
    assert set(by_platform) == {("aarch64", "cp311"), ("x86_64", "cp311")}, runtimes
    assert {"rpi4", "rpi5"} <= set(by_platform["aarch64", "cp311"]["profiles"])
    assert "ipc-x86" in by_platform["x86_64", "cp311"]["profiles"]
    for runtime in runtimes:
        assert runtime["shipped"], runtime
        assert {w["project"] for w in runtime["wheels"]} >= {"onnxruntime", "numpy"}, runtime
        folder = installed.path / "usr/share/fleetdesk/runtimes" / runtime["id"] / "wheels"
        for wheel in runtime["wheels"]:
            path = folder / wheel["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == wheel["sha256"], path
    # The bundle has no pip: building a runtime is refused with what to do instead, and the shipped one named.
    proc = installed.run("fleetdesk runtime build --profile rpi4", check=False)
    assert proc.returncode != 0
    assert "needs a Python with pip and a package index" in proc.stderr, proc.stderr
    assert by_platform["aarch64", "cp311"]["id"] in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# The laptop on the lab's bridge: named as the lab names its own namespaces and veths (fdlab-*, fdv<N>; index 0 is no
# device's), so that `fleetdesk lab down` removes them too should a killed run leave them behind.
LAPTOP_NETNS = f"{NETNS_PREFIX}laptop"
LAPTOP_VETH = f"{VETH_PREFIX}0"
LAPTOP_ADDRESS = "198.18.0.2"  # on the bridge's network: the bridge is 198.18.0.1, the devices 198.18.1.N
DEVICE_ROOT = "/opt/fleetdesk"  # the ipc-x86 profile's device root


@pytest.fixture
def lab(lab_env: dict[str, str]) -> Iterator[LabFleet]:
    """A lab of this test's own, one x86 PC, taken down after it."""
    if reused_lab_dir():
        pytest.skip("brings up a lab of its own, and FLEETDESK_TEST_REUSE_LAB names one that is up")
    with lab_up("ipc-x86:1", lab_env) as one:
        yield one


@pytest.fixture
def on_the_lab(installed: CleanRoot, lab: LabFleet) -> Iterator[CleanRoot]:
    """The installed root on the lab's network and no other: loopback and a veth into the lab's bridge, no route
    out, as a laptop on the floor's switch."""
    try:
        netns.create_device_network(LAPTOP_NETNS, LAPTOP_VETH, LAPTOP_ADDRESS, "laptop")
        yield replace(installed, netns=LAPTOP_NETNS)
    finally:
        netns.delete_device_network(LAPTOP_NETNS, LAPTOP_VETH)


def test_a_lab_device_is_trusted_probed_and_provisioned_offline_from_the_installed_runtime_pack(
        on_the_lab: CleanRoot, lab: LabFleet) -> None:
    root = on_the_lab
    [device] = lab.devices
    name, address, fingerprint = device["name"], device["address"], device["host_key_fingerprint"]
    # Its only links are loopback and the lab's; no default route, so no registry can be reached (`ip route get`
    # asks the kernel's routing table and sends nothing).
    links = root.run("ip -o link show").stdout
    assert sorted(line.split(": ")[1].split("@")[0] for line in links.splitlines()) == ["eth0", "lo"], links
    assert "default" not in root.run("ip route show").stdout
    unrouted = root.run("ip route get 1.1.1.1", check=False)
    assert unrouted.returncode != 0 and "unreachable" in unrouted.stderr, unrouted
    # The operator logs in to the lab's devices with the lab's key, as OpenSSH's default identity.
    ssh = root.path / HOME.lstrip("/") / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(lab.state["ssh_key"], ssh / "id_ed25519")

    added = json.loads(root.run(f"fleetdesk add {address} --name {name} --json").stdout)
    assert added["name"] == name, added
    # Not trusted yet: the device presents its key, and it is the one the device shows at its console.
    presented = root.run(f"fleetdesk trust {name} --json", check=False)
    assert presented.returncode == 2, presented
    assert json.loads(presented.stdout)["fingerprint"] == fingerprint, presented.stdout
    trusted = json.loads(root.run(f"fleetdesk trust {name} --fingerprint {fingerprint} --json").stdout)
    assert trusted["fingerprint"] == fingerprint, trusted
    [probed] = json.loads(root.run(f"fleetdesk probe {name} --json").stdout)["outcomes"]
    assert probed["status"] == "succeeded" and probed["profile"] == "ipc-x86", probed

    [pack] = [r for r in json.loads(root.run("fleetdesk runtime list --json").stdout) if r["arch"] == "x86_64"]
    assert pack["shipped"] and "ipc-x86" in pack["profiles"], pack
    shipped = {w["project"]: w["version"] for w in pack["wheels"]}
    provisioned = root.run(f"fleetdesk provision {name} --json", timeout=900)
    [outcome] = json.loads(provisioned.stdout)["outcomes"]
    assert outcome["status"] == "succeeded", outcome["error"]
    assert outcome["runtime"] == pack["id"] and outcome["onnxruntime"] == shipped["onnxruntime"], outcome
    assert f"installed runtime {pack['id']}" in outcome["changed"], outcome

    # On the device (offline as well): onnxruntime imports from the provisioned runtime, the version the pack
    # shipped; the wheels it was installed from are the pack's, byte for byte, and pip installed their versions.
    def on_device(command: str) -> str:
        result = lab.ssh(device, command)
        assert result.exit_status == 0, f"on {name}, `{command}` failed: {result.stderr}"
        return str(result.stdout)

    assert "default" not in on_device("ip -4 route show")
    assert on_device(f"readlink {DEVICE_ROOT}/runtimes/current").strip() == pack["id"]
    python = f"{DEVICE_ROOT}/runtimes/current/venv/bin/python"
    imported = on_device(f"{python} -c 'import onnxruntime; print(onnxruntime.__version__)'")
    assert imported.strip() == shipped["onnxruntime"], imported
    pack_folder = root.path / "usr/share/fleetdesk/runtimes" / pack["id"] / "wheels"
    in_pack = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pack_folder.iterdir()}
    sums = on_device(f"cd {DEVICE_ROOT}/runtimes/{pack['id']}/wheels && sha256sum -- *.whl")
    assert {line.split()[1]: line.split()[0] for line in sums.splitlines()} == in_pack, sums
    listed = json.loads(on_device(f"{python} -m pip list --format json --disable-pip-version-check"))
    versions = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in listed}
    assert {project: versions.get(project) for project in shipped} == shipped, listed


def _desktop_exec(root: Path) -> str:
    entry = (root / f"usr/share/applications/{APP_ID}.desktop").read_text()
    [line] = [line for line in entry.splitlines() if line.startswith("Exec=")]
    return line.removeprefix("Exec=").replace("%U", "").replace("%F", "").strip()


def _wait_for_window(display: str, app: subprocess.Popen[bytes], stderr: Path) -> XWindow:
    deadline = time.monotonic() + STARTUP_LIMIT
    while True:
        if app.poll() is not None:
            pytest.fail(f"the installed fleetdesk-gui exited with {app.returncode} before its window:\n"
                        f"{stderr.read_text()}")
        mine = app_window(display, app.pid)
        if mine is not None:
            return mine
        if time.monotonic() > deadline:
            pytest.fail(f"no FleetDesk window within {STARTUP_LIMIT:.0f} s:\n{stderr.read_text()}")
        time.sleep(0.2)


def test_the_desktop_entry_starts_the_window_on_xcb(installed: CleanRoot, tmp_path: Path) -> None:
    missing = missing_tools()
    if missing:
        skip_or_fail(f"no real X display here: {', '.join(missing)} missing")
    command = _desktop_exec(installed.path)
    assert command == "fleetdesk-gui"
    installed.run(f"mkdir -p -m 700 {HOME}/runtime")
    stderr = tmp_path / "fleetdesk-gui.stderr"
    with xvfb(tmp_path / "xvfb.log") as display:
        env = {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "FLEETDESK_MDNS_INTERFACES": "127.0.0.1"}
        started = time.monotonic()
        with stderr.open("wb") as err:
            app = subprocess.Popen(installed.argv(f"exec {command}", env), stdout=subprocess.DEVNULL, stderr=err)
        try:
            window = _wait_for_window(display, app, stderr)
            shown = time.monotonic() - started
            # The process runs the bundle's own Python: no library of this machine's Python is mapped.
            maps = Path(f"/proc/{app.pid}/maps").read_text()
            assert "/opt/fleetdesk/_internal/libpython3" in maps
            assert "pyenv" not in maps and "site-packages" not in maps and ".venv" not in maps
            shot = grab_screen(display).copy(window.x, window.y, window.width, window.height)
            deadline = time.monotonic() + 60
            while distinct_colours(shot) < 16 and time.monotonic() < deadline:
                time.sleep(0.3)
                shot = grab_screen(display).copy(window.x, window.y, window.width, window.height)
            picture = tmp_path / "installed-window.png"
            assert shot.save(str(picture))
            shared = os.environ.get("FLEETDESK_SCREENSHOTS")
            if shared:
                Path(shared).mkdir(parents=True, exist_ok=True)
                shot.save(str(Path(shared) / "installed-window.png"))
            print(f"window shown {shown:.1f} s after start; screenshot {picture}")
            assert window.title == "FleetDesk" and window.width >= 640 and window.height >= 480, window
            assert distinct_colours(shot) >= 16, f"the window is blank; see {picture}"
            ask_to_close(display, window)
            status = app.wait(timeout=60)
        finally:
            if app.poll() is None:
                app.kill()
                app.wait()
    assert status == 0, stderr.read_text()


def _next_version_deb(deb: Path, version: str, folder: Path) -> Path:
    """Version N+1 of the package: N's files with `version` in its control file and in the bundle's
    fleetdesk-build.json (what `fleetdesk --version` prints), packed uncompressed. A real build of another commit
    would take minutes; what an upgrade exercises (dpkg replacing every file of /opt/fleetdesk and the links, the
    data left in the operator's home) is the same."""
    unpacked = folder / "unpacked"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(unpacked)], check=True, timeout=300)
    control = unpacked / "DEBIAN/control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    build = unpacked / "opt/fleetdesk/_internal/fleetdesk-build.json"
    build.write_text(json.dumps({**json.loads(build.read_text()), "version": version}, sort_keys=True) + "\n")
    md5sums = unpacked / "DEBIAN/md5sums"
    line = f"{hashlib.md5(build.read_bytes()).hexdigest()}  opt/fleetdesk/_internal/fleetdesk-build.json"
    md5sums.write_text(re.sub(r"(?m)^\S+  opt/fleetdesk/_internal/fleetdesk-build\.json$", line, md5sums.read_text()))
    out = folder / f"fleetdesk_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(unpacked), str(out)], check=True,
                   capture_output=True, timeout=300)
    shutil.rmtree(unpacked)
    return out


def test_an_upgrade_keeps_the_inventory_and_the_fleet_key_and_migrates(installed: CleanRoot, tmp_path: Path) -> None:
    # Version N's inventory: a device, the fleet key (created by the first signature) and a signed report.
    installed.run(f"mkdir -p {HOME} && fleetdesk add 192.0.2.10 --name line-7 --json")
    installed.run(f"cd {HOME} && fleetdesk report fleet --format json -o before.json")
    key_before = installed.run("fleetdesk model export-key").stdout
    assert "BEGIN PUBLIC KEY" in key_before, key_before
    # N's schema is one revision older than this FleetDesk's: undo the newest migration (with this checkout's
    # Alembic, outside the root), as if N were the release before it.
    db = installed.path / HOME.lstrip("/") / ".local/share/fleetdesk/fleetdesk.db"
    head = migrate.head_revision()
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "-1")
        [older] = migrate.stamped_revisions(conn)
    engine.dispose()
    assert older != head

    version = f"{installed.version}+upgrade1"
    deb = _next_version_deb(installed.path / installed.deb.relative_to("/"), version, tmp_path)
    shutil.move(deb, installed.path / "tmp" / deb.name)
    proc = installed.run(f"apt-get install -y --no-install-recommends /tmp/{deb.name}", timeout=600)
    assert f"Unpacking fleetdesk ({version}) over ({installed.version})" in proc.stdout, proc.stdout
    assert installed.run("fleetdesk --version").stdout.startswith(f"fleetdesk {version} "), "N+1 is not installed"

    # The first start of N+1 migrates the inventory to its schema and keeps every row.
    devices = json.loads(installed.run("fleetdesk devices --json").stdout)
    assert "line-7" in {d["name"] for d in devices}, devices
    status = json.loads(installed.run("fleetdesk db status --json").stdout)
    assert status["state"] == "current" and status["revisions"] == [head], status
    # The same fleet key: N's public key unchanged, N's signed report verifies, and N+1 signs with it.
    assert installed.run("fleetdesk model export-key").stdout == key_before
    installed.run(f"cd {HOME} && fleetdesk report verify before.json")
    installed.run(f"cd {HOME} && fleetdesk report fleet --format json -o after.json")
    installed.run(f"cd {HOME} && fleetdesk report verify after.json")


def test_remove_keeps_the_operators_data_and_purge_removes_opt(installed: CleanRoot) -> None:
    db = installed.path / HOME.lstrip("/") / ".local/share/fleetdesk/fleetdesk.db"
    installed.run("mkdir -p /opt/fleetdesk/_internal/leftover && touch /opt/fleetdesk/_internal/leftover/x")
    installed.run("apt-get remove -y fleetdesk")
    assert not (installed.path / "usr/bin/fleetdesk").exists()
    assert db.is_file(), "removing FleetDesk deleted the operator's inventory"
    installed.run("dpkg --purge fleetdesk")
    assert not (installed.path / "opt/fleetdesk").exists()
    assert db.is_file()
