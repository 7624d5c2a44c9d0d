"""The device profile schema: what one device_profiles/*.toml file may and must say.

Validation turns a parsed TOML table into a frozen Profile, or raises ProfileError naming
the file, the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.errors import ProfileError

ARCHITECTURES = ("x86_64", "aarch64")
GPU_KINDS = ("none", "raspberrypi", "jetson", "nvidia")
TOOLS = ("tegrastats", "nvidia-smi", "vcgencmd")
TELEMETRY_SOURCES = ("procfs", "thermal", "tegrastats", "nvidia-smi", "vcgencmd")
RECIPE_STEPS = ("graph", "int8-dynamic", "int8-static", "fp16")
PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
PYTHON_TAG = re.compile(r"^cp3\d{1,2}$")


@dataclass(frozen=True)
class MatchRules:
    """How a probed device is recognised as this family; regexes match the device's own strings."""

    device_tree_model: str | None = None
    nv_tegra_release: str | None = None
    dmi_product_name: str | None = None
    arch: str | None = None
    gpu: bool | None = None


@dataclass(frozen=True)
class LabHardware:
    """What `fleetdesk lab` gives a virtual device of this family."""

    cpu_count: int
    cpu_model: str
    cpu_max_mhz: int
    cpu_min_mhz: int
    memory_mb: int
    swap_mb: int
    disk_gb: int
    thermal_zones: tuple[str, ...]
    hostname_prefix: str
    cpu_part: str = ""
    device_tree_model: str = ""
    hardware_revision: str = ""
    nv_tegra_release: str = ""
    dmi_sys_vendor: str = ""
    dmi_product_name: str = ""
    gpu: str = "none"
    gpu_name: str = ""
    gpu_memory_mb: int = 0
    gpu_max_mhz: int = 0
    tegra_model: str = ""
    power_rails: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """One device family: identity rules, runtime, telemetry sources, optimization recipe, lab twin."""

    name: str
    display_name: str
    family: str
    arch: str
    python: str
    device_root: str
    priority: int
    match: MatchRules
    execution_providers: tuple[str, ...]
    wheels: tuple[str, ...]
    ssh_ciphers: tuple[str, ...]
    telemetry_sources: tuple[str, ...]
    recipe: tuple[str, ...]
    accelerators: tuple[str, ...] = ()
    # MiB that must stay available on the device once a rollout's shadow candidate is loaded beside the active model
    # ([runtime] shadow_margin_mb); None: the agent's own default (fleetdesk/agent/shadow.py DEFAULT_MARGIN_MB).
    shadow_margin_mb: int | None = None
    lab: LabHardware | None = None
    source: str = field(default="", compare=False)


class _Reader:
    """Reads typed fields from one table and raises ProfileError that names file and field."""

    def __init__(self, path: str, table: dict[str, Any], prefix: str = "") -> None:
        self.path = path
        self.table = table
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, message: str, fix: str) -> ProfileError:
        return ProfileError(message, path=self.path, field=self._name(key), fix=fix)

    def get(self, key: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
        if key not in self.table:
            if required:
                table = self.prefix.rstrip(".") or "top"
                raise self.fail(key, "is missing", f"add `{key} = ...` to the [{table}] table")
            return default
        value = self.table[key]
        # bool is a subclass of int in Python; a TOML `true` is not a count.
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.fail(key, f"must be a whole number, not {value!r}", f"write e.g. `{key} = 4`")
        if kind is not int and not isinstance(value, kind):
            raise self.fail(key, f"must be {_kind_name(kind)}, not {value!r}", f"write it as {_kind_name(kind)}")
        return value

    def text(self, key: str, *, required: bool = True, default: str = "") -> str:
        return str(self.get(key, str, required=required, default=default))

    def positive(self, key: str, *, required: bool = True, default: int = 0, allow_zero: bool = False) -> int:
        value = int(self.get(key, int, required=required, default=default))
        if value < 0 or (value == 0 and not allow_zero and key in self.table):
            raise self.fail(key, f"must be greater than 0, not {value}", f"set `{key}` to a positive number")
        return value

    def strings(self, key: str, *, required: bool = True, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
        values = self.get(key, list, required=required, default=[])
        for item in values:
            if not isinstance(item, str):
                raise self.fail(key, f"must be a list of strings; {item!r} is not", 'write e.g. ["a", "b"]')
            if allowed is not None and item not in allowed:
                raise self.fail(key, f"has unknown value {item!r}", f"use only {', '.join(allowed)}")
        return tuple(values)

    def choice(self, key: str, allowed: tuple[str, ...], *, required: bool = True, default: str = "") -> str:
        value = self.text(key, required=required, default=default)
        if value not in allowed and (required or key in self.table):
            raise self.fail(key, f"is {value!r}, which is not known", f"use one of {', '.join(allowed)}")
        return value

    def regex(self, key: str) -> str | None:
        if key not in self.table:
            return None
        value = self.text(key)
        try:
            re.compile(value)
        except re.error as exc:
            raise self.fail(key, f"is not a valid regular expression ({exc})", "fix the pattern") from None
        return value

    def sub(self, key: str, *, required: bool = True) -> _Reader | None:
        if key not in self.table:
            if required:
                raise self.fail(key, "table is missing", f"add a [{key}] table")
            return None
        value = self.table[key]
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table", f"write it as [{key}]")
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def reject_unknown(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                close = ", ".join(sorted(known))
                raise self.fail(key, "is not a known field", f"remove it or correct the spelling (known: {close})")


def _kind_name(kind: type) -> str:
    return {str: "a string", list: "a list", bool: "true or false", dict: "a table"}.get(kind, kind.__name__)


def _lab_hardware(r: _Reader, arch: str) -> LabHardware:
    r.reject_unknown({f.name for f in LabHardware.__dataclass_fields__.values()})
    gpu = r.choice("gpu", GPU_KINDS, required=False, default="none")
    tools = r.strings("tools", required=False, allowed=TOOLS)
    hw = LabHardware(
        cpu_count=r.positive("cpu_count"),
        cpu_model=r.text("cpu_model"),
        cpu_part=r.text("cpu_part", required=False),
        cpu_max_mhz=r.positive("cpu_max_mhz"),
        cpu_min_mhz=r.positive("cpu_min_mhz"),
        memory_mb=r.positive("memory_mb"),
        swap_mb=r.positive("swap_mb", required=False, allow_zero=True),
        disk_gb=r.positive("disk_gb"),
        thermal_zones=r.strings("thermal_zones"),
        hostname_prefix=r.text("hostname_prefix"),
        device_tree_model=r.text("device_tree_model", required=False),
        hardware_revision=r.text("hardware_revision", required=False),
        nv_tegra_release=r.text("nv_tegra_release", required=False),
        dmi_sys_vendor=r.text("dmi_sys_vendor", required=False),
        dmi_product_name=r.text("dmi_product_name", required=False),
        gpu=gpu,
        gpu_name=r.text("gpu_name", required=False),
        gpu_memory_mb=r.positive("gpu_memory_mb", required=False, allow_zero=True),
        gpu_max_mhz=r.positive("gpu_max_mhz", required=False, allow_zero=True),
        tegra_model=r.choice("tegra_model", ("", "orin", "xavier"), required=False),
        power_rails=r.strings("power_rails", required=False),
        tools=tools,
    )
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,20}", hw.hostname_prefix):
        raise r.fail("hostname_prefix", f"{hw.hostname_prefix!r} is not a hostname prefix", "use a-z, 0-9 and '-'")
    if hw.cpu_min_mhz > hw.cpu_max_mhz:
        raise r.fail("cpu_min_mhz", "is above cpu_max_mhz", "swap the two values")
    if arch == "aarch64" and not hw.device_tree_model:
        raise r.fail("device_tree_model", "is needed for an aarch64 device", "copy the board's model string")
    if gpu == "jetson" and not (hw.nv_tegra_release and hw.tegra_model):
        raise r.fail("nv_tegra_release", "and tegra_model are needed for a Jetson", "copy /etc/nv_tegra_release")
    if gpu == "nvidia" and not (hw.gpu_name and hw.gpu_memory_mb):
        raise r.fail("gpu_name", "and gpu_memory_mb are needed for an NVIDIA GPU", "copy them from nvidia-smi -L")
    return hw


def parse_profile(data: dict[str, Any], path: str) -> Profile:
    """Validate one parsed profile file; raise ProfileError naming the file, the field and the fix."""
    top = _Reader(path, data)
    top.reject_unknown(
        {"name", "display_name", "family", "arch", "python", "accelerators", "device_root", "priority",
         "match", "runtime", "telemetry", "optimize", "lab"}
    )
    name = top.text("name")
    if not PROFILE_NAME.match(name):
        raise top.fail("name", f"{name!r} is not a profile name", "use lower-case letters, digits and '-'")
    arch = top.choice("arch", ARCHITECTURES)
    python = top.text("python")
    if not PYTHON_TAG.match(python):
        raise top.fail("python", f"{python!r} is not a CPython tag", 'write e.g. "cp311"')
    device_root = top.text("device_root", required=False, default="/opt/fleetdesk")
    if not device_root.startswith("/") or ".." in device_root.split("/"):
        raise top.fail("device_root", f"{device_root!r} is not an absolute path", 'write e.g. "/opt/fleetdesk"')

    m = top.sub("match")
    assert m is not None
    m.reject_unknown({"device_tree_model", "nv_tegra_release", "dmi_product_name", "arch", "gpu"})
    gpu_rule = m.get("gpu", bool, required=False)
    match = MatchRules(
        device_tree_model=m.regex("device_tree_model"),
        nv_tegra_release=m.regex("nv_tegra_release"),
        dmi_product_name=m.regex("dmi_product_name"),
        arch=m.choice("arch", ARCHITECTURES, required=False) or None,
        gpu=gpu_rule,
    )
    if match == MatchRules():
        raise top.fail("match", "has no rule, so it would match every device", "add at least one rule")

    rt = top.sub("runtime")
    tel = top.sub("telemetry")
    opt = top.sub("optimize")
    assert rt is not None and tel is not None and opt is not None
    rt.reject_unknown({"execution_providers", "wheels", "ssh_ciphers", "shadow_margin_mb"})
    tel.reject_unknown({"sources"})
    opt.reject_unknown({"recipe"})
    providers = rt.strings("execution_providers")
    if not providers:
        raise rt.fail("execution_providers", "is empty", 'list at least "CPUExecutionProvider"')

    lab_reader = top.sub("lab", required=False)
    return Profile(
        name=name,
        display_name=top.text("display_name"),
        family=top.text("family"),
        arch=arch,
        python=python,
        device_root=device_root,
        priority=int(top.get("priority", int, required=False, default=50)),
        accelerators=top.strings("accelerators", required=False),
        match=match,
        execution_providers=providers,
        wheels=rt.strings("wheels"),
        ssh_ciphers=rt.strings("ssh_ciphers", required=False),
        shadow_margin_mb=(rt.positive("shadow_margin_mb", required=False, allow_zero=True)
                          if "shadow_margin_mb" in rt.table else None),
        telemetry_sources=tel.strings("sources", allowed=TELEMETRY_SOURCES),
        recipe=opt.strings("recipe", allowed=RECIPE_STEPS),
        lab=_lab_hardware(lab_reader, arch) if lab_reader else None,
        source=path,
    )
