"""Offline wheelhouses for a device profile: `pip download` for the profile's platform, and wheels the operator
brings (`import-wheel`), each checked against the wheel tags the profile's devices can install.
"""

from __future__ import annotations

import asyncio
import email.parser
import os
import re
import shlex
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from fleetdesk import __version__
from fleetdesk.errors import FleetDeskError, RuntimeBundleError
from fleetdesk.files import sha256_file
from fleetdesk.profiles.schema import Profile
from fleetdesk.runtime.store import Runtime, RuntimeStore, WheelFile

Progress = Callable[[str], None]

# The newest glibc every supported device OS has: Debian bookworm 2.36 (Raspberry Pi OS, the lab), Ubuntu 22.04
# 2.35 (JetPack 6), Ubuntu 20.04 2.31 (JetPack 5). manylinux_2_28 is the newest perennial tag below all of them
# (PEP 600: a manylinux_2_X wheel runs on glibc >= 2.X), and what onnxruntime publishes for Linux.
MAX_GLIBC_MINOR = 28
MIN_GLIBC_MINOR = 17  # manylinux2014 == manylinux_2_17 (PEP 600)
PIP_TIMEOUT = 1800.0

# Projects that install the same `onnxruntime` import package: a runtime holds one of them, and importing
# NVIDIA's onnxruntime-gpu for a Jetson replaces the CPU build (onnxruntime.ai "Install ONNX Runtime").
_SAME_PACKAGE = re.compile(r"^onnxruntime(-(gpu|directml|openvino|qnn|training|rocm|migraphx)(-cu\d+)?)?$")


@dataclass(frozen=True)
class TargetPlatform:
    """What a profile's devices install: CPython version and the wheel tags they accept."""

    arch: str
    python: str  # "cp311"

    @property
    def python_version(self) -> tuple[int, int]:
        digits = self.python[2:]
        return 3, int(digits[1:])

    @property
    def python_dotted(self) -> str:
        major, minor = self.python_version
        return f"{major}.{minor}"

    @property
    def download_platforms(self) -> tuple[str, ...]:
        """The portable platform tags `pip download` may pick, best first (no `linux_*`: those are not portable)."""
        perennial = [f"manylinux_2_{minor}_{self.arch}" for minor in range(MAX_GLIBC_MINOR, MIN_GLIBC_MINOR - 1, -1)]
        legacy = [f"manylinux2014_{self.arch}"]
        if self.arch == "x86_64":
            legacy += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return (*perennial, *legacy)

    @property
    def accepted_platforms(self) -> tuple[str, ...]:
        # A `linux_<arch>` wheel is one built for a machine like the device (NVIDIA's Jetson wheels are):
        # taken when the operator brings it, never fetched from an index.
        return (*self.download_platforms, f"linux_{self.arch}")

    def tags(self) -> frozenset[Tag]:
        platforms = list(self.accepted_platforms)
        return frozenset([*cpython_tags(self.python_version, abis=[self.python], platforms=platforms),
                          *compatible_tags(self.python_version, interpreter=self.python, platforms=platforms)])

    def describe(self) -> str:
        return f"{self.arch}, {self.python}"

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of a device of this platform (for a wheel's Requires-Dist)."""
        return {"python_version": self.python_dotted, "python_full_version": f"{self.python_dotted}.0",
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "platform_machine": self.arch, "platform_system": "Linux", "sys_platform": "linux",
                "os_name": "posix", "extra": ""}


def target_of(profile: Profile) -> TargetPlatform:
    return TargetPlatform(profile.arch, profile.python)


@dataclass(frozen=True)
class WheelInfo:
    """A wheel file read and checked: its identity, tags, dependencies, hash and size."""

    path: Path
    project: str
    version: str
    tags: frozenset[Tag]
    requires: tuple[str, ...]
    sha256: str
    size: int

    def as_file(self) -> WheelFile:
        return WheelFile(self.path.name, self.project, self.version, self.sha256, self.size)

    def tag_text(self) -> str:
        return ".".join(sorted({f"{t.interpreter}-{t.abi}-{t.platform}" for t in self.tags}))


def inspect_wheel(path: Path) -> WheelInfo:
    """Read a wheel's name, tags and metadata; anything that is not a whole, readable wheel is refused."""
    path = Path(path)
    fix = "bring the wheel again from where it was published (the file is damaged or not a wheel)"
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise RuntimeBundleError(f"{path.name} is not a wheel file name ({exc})", step="import wheel",
                          fix="give the .whl file as published: NAME-VERSION-PYTHON-ABI-PLATFORM.whl") from None
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            dist_info = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
            if len(dist_info) != 1:
                raise RuntimeBundleError(f"{path.name} has no single .dist-info folder, so it is not a wheel",
                                  step="import wheel", fix=fix)
            folder = dist_info.pop()
            wheel_meta = _member(archive, f"{folder}/WHEEL")
            metadata = _member(archive, f"{folder}/METADATA")
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise RuntimeBundleError(f"{path.name} is not a zip archive, so it is not a wheel ({exc})", step="import wheel",
                          fix=fix) from None
    except OSError as exc:
        raise RuntimeBundleError(f"cannot read {path}: {exc.strerror or exc}", step="import wheel",
                          fix="check the file's path and permissions") from None
    if wheel_meta is None or "Wheel-Version:" not in wheel_meta:
        raise RuntimeBundleError(f"{path.name} has no WHEEL metadata, so it is not a wheel", step="import wheel",
                                 fix=fix)
    if bad is not None:
        raise RuntimeBundleError(f"{path.name} is damaged: {bad} fails its CRC check", step="import wheel", fix=fix)
    requires: tuple[str, ...] = ()
    if metadata is not None:
        requires = tuple(email.parser.Parser().parsestr(metadata, headersonly=True).get_all("Requires-Dist") or ())
    return WheelInfo(path, str(name), str(version), frozenset(tags), requires, sha256_file(path), size)


def _member(archive: zipfile.ZipFile, name: str) -> str | None:
    try:
        return archive.read(name).decode("utf-8", errors="replace")
    except KeyError:
        return None


def check_fits(wheel: WheelInfo, target: TargetPlatform, family: str) -> None:
    """Refuse a wheel the devices of `family` cannot install, naming the wheel's tags and the devices'."""
    if wheel.tags & target.tags():
        return
    platforms = sorted({t.platform for t in wheel.tags})
    arch_ok = any(p == "any" or p.endswith(target.arch) for p in platforms)
    what = "Python" if arch_ok else "architecture"
    raise RuntimeBundleError(
        f"{wheel.path.name} is built for {wheel.tag_text()}, which {family} devices cannot install "
        f"(wrong {what}): they need {target.python} on {target.arch} "
        f"(cp3x-abi3 or py3-none also fit; platforms manylinux_2_{MIN_GLIBC_MINOR}..2_{MAX_GLIBC_MINOR}, "
        f"manylinux2014 or linux_{target.arch})",
        step="import wheel",
        fix=f"bring the build of {wheel.project} {wheel.version} for {target.python} on {target.arch}, "
            f"or import it for the profile it was built for")


def same_package(a: str, b: str) -> bool:
    """Two projects a runtime cannot hold both of: the same name, or two builds of onnxruntime."""
    a, b = canonicalize_name(a), canonicalize_name(b)
    return a == b or bool(_SAME_PACKAGE.match(a) and _SAME_PACKAGE.match(b))


def _missing_dependencies(wheel: WheelInfo, others: Sequence[WheelFile], target: TargetPlatform) -> list[str]:
    """Requirements of `wheel` (for the target's markers, no extras) that no other wheel satisfies."""
    env = target.marker_environment()
    missing = []
    for text in wheel.requires:
        try:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
        except (InvalidRequirement, InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
            continue
        name = canonicalize_name(req.name)
        present = [w for w in others if w.project == name]
        if not any(req.specifier.contains(w.version, prereleases=True) for w in present):
            missing.append(str(req))
    return missing


# -- building with pip -----------------------------------------------------------------------------


def download_command(target: TargetPlatform, requirements: Sequence[str], dest: Path) -> list[str]:
    """`pip download` of binary wheels for the target, as LAB-NOTES.md ran it for aarch64."""
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
            "--progress-bar", "off", "--python-version", target.python_dotted, "--implementation", "cp",
            "--abi", target.python, "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for platform in target.download_platforms:
        argv += ["--platform", platform]
    return [*argv, "--", *requirements]


async def _pip_version() -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pip", "--version",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise FleetDeskError("pip is not available to this FleetDesk, so it cannot download wheels",
                             step="build runtime",
                             fix="run FleetDesk from its Python environment with pip installed (python -m ensurepip)")
    return out.decode().split()[1]


def _pip_failure(output: str, target: TargetPlatform, requirements: Sequence[str], profile: str) -> FleetDeskError:
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        return FleetDeskError(
            f"the package index has no wheel of {missing.group(1)} for {target.arch} with {target.python} "
            f"(manylinux up to glibc 2.{MAX_GLIBC_MINOR}); no runtime was made", step="build runtime",
            fix=f"check the requirement ({', '.join(requirements)}), or bring the wheel and add it with "
                f"`fleetdesk runtime import-wheel FILE --profile {profile}`")
    if re.search(r"(Failed to establish a new connection|Network is unreachable|Temporary failure in name "
                 r"resolution|Could not fetch URL|ConnectTimeout|Max retries exceeded)", output):
        return FleetDeskError(
            "the package index cannot be reached; building a runtime needs it (provisioning devices does not)",
            step="build runtime",
            fix="connect this laptop to a network that reaches the index (or its mirror in pip.conf) and build "
                "again; runtimes built before are in `fleetdesk runtime list`")
    last = [line for line in output.strip().splitlines() if line.strip()][-3:]
    return FleetDeskError(f"pip download failed: {' / '.join(last)[:400]}", step="build runtime",
                          fix="read pip's message above; check the profile's [runtime] wheels")


async def build_runtime(profile: Profile, store: RuntimeStore, *, requirements: Sequence[str] | None = None,
                        progress: Progress | None = None) -> tuple[Runtime, bool]:
    """Download the profile's wheels for its platform into the store; returns (runtime, newly created).

    Needs the package index (pip's own cache answers what it fetched before); the result is content
    addressed, so the same wheels give back the stored runtime without copying anything.
    """
    say = progress or (lambda _m: None)
    target = target_of(profile)
    reqs = list(requirements if requirements else profile.wheels)
    for text in reqs:
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise RuntimeBundleError(f"{text!r} is not a requirement ({exc})", step="build runtime",
                              fix='write it as pip does, e.g. "onnxruntime>=1.17"') from None
    if not reqs:
        raise RuntimeBundleError(f"profile {profile.name} lists no wheels", step="build runtime",
                          fix="add [runtime] wheels to the profile, or pass --requirement")
    if getattr(sys, "frozen", False):
        raise _frozen_build_refused(profile, target, store)
    pip = await _pip_version()
    folder = store.new_folder()
    try:
        wheels_dir = folder / "wheels"
        say(f"{profile.name}: downloading {', '.join(reqs)} for {target.describe()}")
        proc = await asyncio.create_subprocess_exec(
            *download_command(target, reqs, wheels_dir), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, PIP_NO_INPUT="1"))
        assert proc.stdout is not None
        output: list[str] = []
        try:
            async with asyncio.timeout(PIP_TIMEOUT):
                async for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    output.append(line)
                    if line.startswith("Saved "):
                        say(f"{profile.name}: saved {Path(line[6:].strip()).name}")
                    elif line.startswith(("Collecting", "Downloading", "File was already")):
                        say(f"{profile.name}: {line.strip()}")
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise _pip_failure("\n".join(output), target, reqs, profile.name)
        loop = asyncio.get_running_loop()
        infos = [await loop.run_in_executor(None, inspect_wheel, p) for p in sorted(wheels_dir.glob("*.whl"))]
        for info in infos:
            check_fits(info, target, profile.name)
        say(f"{profile.name}: {len(infos)} wheels, {sum(i.size for i in infos) / 1e6:.1f} MB")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return store.commit(folder, arch=target.arch, python=target.python, profiles=[profile.name], requirements=reqs,
                        platforms=target.download_platforms, wheels=[i.as_file() for i in infos],
                        tools=_tools(pip))


def _frozen_build_refused(profile: Profile, target: TargetPlatform, store: RuntimeStore) -> RuntimeBundleError:
    """An installed bundle carries no pip (sys.executable is FleetDesk itself): say so, and name what it has."""
    fitting = [r for r in store.list() if (r.arch, r.python) == (target.arch, target.python)]
    have = "; ".join(f"{r.id} ({', '.join(r.profiles) or '-'}{', shipped' if r.shipped else ''})" for r in fitting)
    fix = (f"use a runtime already here for {target.describe()}: {have} (`fleetdesk provision` picks the newest)"
           if fitting else "install the fleetdesk-runtimes package, which ships runtimes for the CPU device families")
    return RuntimeBundleError(
        f"this installed FleetDesk cannot build runtime bundles for {profile.name}: that needs a Python with pip and "
        "a package index", step="build runtime",
        fix=f"{fix}; or bring wheels with `fleetdesk runtime import-wheel`, or build with a FleetDesk installed by "
            "pip on a machine that reaches the index")


def _tools(pip: str | None) -> dict[str, str]:
    tools = {"python": ".".join(str(n) for n in sys.version_info[:3]), "fleetdesk": __version__}
    return {"pip": pip, **tools} if pip else tools


def import_wheel(path: Path, profile: Profile, store: RuntimeStore, *, base: Runtime | None = None) -> tuple[
        Runtime, bool]:
    """A new runtime: `base`'s wheels minus any of the same package, plus the operator's wheel (checked first).

    With no base, the newest runtime for the profile's platform is the base (if there is one).
    """
    target = target_of(profile)
    wheel = inspect_wheel(path)
    check_fits(wheel, target, profile.name)
    if base is None:
        base = store.newest_for(target.arch, target.python, profile.name)
    elif (base.arch, base.python) != (target.arch, target.python):
        raise RuntimeBundleError(f"runtime {base.id} is for {base.arch}, {base.python}, not {profile.name}'s "
                          f"{target.describe()}", step="import wheel",
                          fix=f"choose a base built for {profile.name} (`fleetdesk runtime list`)")
    kept = [w for w in (base.wheels if base else ()) if not same_package(w.project, wheel.project)]
    replaced = [r for r in (base.requirements if base else ()) if _requirement_replaced(r, wheel.project)]
    requirements = [r for r in (base.requirements if base else ()) if r not in replaced]
    requirements.append(f"{wheel.project}=={wheel.version}")
    missing = _missing_dependencies(wheel, kept, target)
    if missing:
        where = f"runtime {base.id}" if base else "no runtime (there is none for this platform yet)"
        raise RuntimeBundleError(
            f"{wheel.path.name} needs {', '.join(missing)}, which {where} does not hold; no runtime was made",
            step="import wheel",
            fix=f"build a base that has them, e.g. `fleetdesk runtime build --profile {profile.name} "
                + " ".join(f"--requirement {shlex.quote(m)}" for m in missing) + "`, then import with --base ID")
    folder = store.new_folder()
    try:
        for w in kept:
            assert base is not None
            _link_or_copy(base.wheel_path(w), folder / "wheels" / w.file)
        # The operator's file is copied, never linked: it may be changed in place later.
        shutil.copyfile(wheel.path, folder / "wheels" / wheel.path.name)
        if sha256_file(folder / "wheels" / wheel.path.name) != wheel.sha256:
            raise RuntimeBundleError(f"{wheel.path.name} changed while it was imported", step="import wheel",
                              fix="import it again once it is fully copied")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return store.commit(folder, arch=target.arch, python=target.python, profiles=[profile.name],
                        requirements=requirements, platforms=target.accepted_platforms,
                        wheels=[*kept, wheel.as_file()], tools=_tools(None),
                        base=base.id if base else None)


def _requirement_replaced(text: str, project: str) -> bool:
    try:
        return same_package(Requirement(text).name, project)
    except InvalidRequirement:
        return False


def _link_or_copy(source: Path, dest: Path) -> None:
    # Runtimes share wheels: a hard link costs no space; across filesystems it is a copy.
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
