"""A rollout plan: targets, waves, thresholds, health gates and transfer policy; and the plan resolved to devices.

Waves are written as Ansible writes `serial`: `[1, "10%", "50%", "100%"]` is one canary, then batches of 10%,
50% and 100% of ALL the targeted devices, each rounded down but never below one device; the last value repeats
until every device has a wave, and a wave never takes more than the devices left. Every wave has >= 1 device.

Each wave has a policy (WavePolicy; `policy` for every wave unless `wave_policies[i]` overrides wave i):

- success (count "2" or share "90%" of the wave's size) is REACHED, i.e. compared with >=: the next wave
  starts only when at least that many devices of the wave are done. A share is rounded UP to whole devices
  (90% of 15 = 13.5, so 14 must be done); a count larger than the wave means the whole wave.
- errors (count or share of the wave) is EXCEEDED, i.e. compared with >: the rollout PAUSES when MORE than
  that many devices of the wave failed. errors=0 pauses on the first failure; errors="10%" of a wave of 20
  tolerates 2 and pauses on the 3rd; "10%" of a wave of 15 (1.5) tolerates 1 and pauses on the 2nd.
  A device counts as failed when a step failed on it or a health gate sent it back to its old model;
  an unreachable device counts too only when `unreachable` is "count" (with "wait", the wave waits up to
  `unreachable_wait_s` for it and it counts towards neither threshold).
- soak_s: the health gates are measured again until this many seconds after the device's activation.
- approve: after the wave reached its success threshold, the rollout waits for the operator's approval.

Devices are dealt to waves round-robin across profiles (each profile's devices by name; profiles in the order
of their first device's name), so the canary is the first device by name and early waves reach every
variant; the same inventory always resolves to the same waves.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar

from fleetdesk.errors import ArtifactStoreError, PlanError, StoreEntryNotFoundError

if TYPE_CHECKING:
    from fleetdesk.artifacts.store import ArtifactStore
    from fleetdesk.inventory import Device, Inventory

UNREACHABLE_POLICIES = ("wait", "count")
_THRESHOLD_FIX = 'write a count of devices such as 2, or a share of the wave such as "10%"'
_WAVES_FIX = 'write waves as Ansible writes serial, e.g. [1, "10%", "50%", "100%"]: counts >= 1 or shares "1%".."100%"'


# -- small validators (each names the field it checks) ------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object, name: str, *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, whole: bool = False, fix: str | None = None) -> float:
    """`value` as a finite number within the bounds, else a PlanError naming `name`."""
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise PlanError(f"{value!r} is not a number", field=name, fix=fix or "give a number")
    number = float(value)  # type: ignore[arg-type]
    if whole and not number.is_integer():
        raise PlanError(f"{number:g} is not a whole number", field=name, fix=fix or "give a whole number")
    if minimum is not None and number < minimum:
        raise PlanError(f"{number:g} is below {minimum:g}", field=name, fix=fix or f"give at least {minimum:g}")
    if above is not None and number <= above:
        raise PlanError(f"{number:g} is not above {above:g}", field=name, fix=fix or f"give more than {above:g}")
    if maximum is not None and number > maximum:
        raise PlanError(f"{number:g} is above {maximum:g}", field=name, fix=fix or f"give at most {maximum:g}")
    return number


def _optional(value: object, name: str, **bounds: Any) -> float | None:
    return None if value is None else _number(value, name, **bounds)


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{value!r} is not true or false", field=name, fix="give true or false")
    return value


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


def _prefixed(exc: PlanError, prefix: str) -> PlanError:
    """The same error, its field named from the enclosing object ("policy.soak_s")."""
    name = f"{prefix}.{exc.field}" if exc.field else prefix
    message = exc.message[len(exc.field) + 2:] if exc.field and exc.message.startswith(f"{exc.field}: ") \
        else exc.message
    return PlanError(message, field=name, fix=exc.fix, cause=exc.cause)


def _mapping(data: object, name: str, cls: type) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PlanError(f"{type(data).__name__} is not an object of fields", field=name or None,
                        fix="give a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise PlanError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}", field=name or None,
                        fix=f"the fields are: {', '.join(sorted(known))}")
    return data


# -- thresholds and waves ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """"2" is a count of devices, "10%" a share of the wave."""

    value: float
    percent: bool

    def __post_init__(self) -> None:
        if not isinstance(self.percent, bool):
            raise PlanError(f"{self.percent!r} is not true or false", field="percent", fix=_THRESHOLD_FIX)
        value = self.value
        if not _is_number(value) or not math.isfinite(value):
            raise PlanError(f"{value!r} is not a threshold", field="threshold", fix=_THRESHOLD_FIX)
        if self.percent and not 0 <= value <= 100:
            raise PlanError(f"{value:g}% is not a share from 0% to 100%", field="threshold", fix=_THRESHOLD_FIX)
        if not self.percent and (value < 0 or not float(value).is_integer()):
            raise PlanError(f"{value:g} is not a count of devices (0 or more)", field="threshold", fix=_THRESHOLD_FIX)
        _set(self, "value", float(value))

    @classmethod
    def parse(cls, text: str | int | float | Threshold, *, name: str = "threshold") -> Threshold:
        """"2" or 2: a count of devices; "10%": a share of the wave (0% to 100%)."""
        if isinstance(text, Threshold):
            return text
        try:
            if isinstance(text, str):
                stripped = text.strip()
                percent = stripped.endswith("%")
                number = stripped[:-1].strip() if percent else stripped
                try:
                    value = float(number)
                except ValueError:
                    raise PlanError(f"{text!r} is not a threshold", fix=_THRESHOLD_FIX) from None
                return cls(value, percent)
            if _is_number(text):
                return cls(text, False)
        except PlanError as exc:
            raise PlanError(exc.message.removeprefix("threshold: "), field=name, fix=exc.fix) from None
        raise PlanError(f"{text!r} is not a threshold", field=name, fix=_THRESHOLD_FIX)

    def share(self, wave_size: int) -> Fraction:
        """The exact number of devices it stands for (a share can be a fraction: 10% of 15 is 3/2)."""
        if self.percent:
            # Decimal, not binary, arithmetic: 29% of 100 is 29 (Ansible's float gives 28.999...).
            return Fraction(repr(self.value)) * wave_size / 100
        return Fraction(int(self.value))

    def devices(self, wave_size: int) -> int:
        """The count it stands for in a wave of that size: a share rounded UP (90% of 15 is 14), a count capped
        at the wave's size. `done >= devices(n)` is exactly "the threshold is reached"."""
        return min(wave_size, math.ceil(self.share(wave_size)))

    def tolerated(self, wave_size: int) -> int:
        """The most devices that do not exceed it: a share rounded DOWN (10% of 15 is 1). `failed > tolerated(n)`
        is exactly "the threshold is exceeded"."""
        return math.floor(self.share(wave_size))

    def reached(self, count: int, wave_size: int) -> bool:
        """The success test: at least the threshold (>=)."""
        return count >= self.devices(wave_size)

    def exceeded(self, count: int, wave_size: int) -> bool:
        """The error test: more than the threshold (>)."""
        return count > self.share(wave_size)

    def __str__(self) -> str:
        if not self.percent:
            return f"{int(self.value)}"
        short = f"{self.value:g}"
        return f"{short if float(short) == self.value else repr(self.value)}%"  # "10%", never a lossy "33.3333%"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "percent": self.percent}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str | int | float, *, name: str = "threshold") -> Threshold:
        """The dict `to_dict` writes, or the text form ("2", "10%") a plan file may use."""
        if isinstance(data, Mapping):
            data = _mapping(data, name, cls)
            try:
                return cls(data.get("value", 0), data.get("percent", False))
            except PlanError as exc:
                raise _prefixed(exc, name) from None
        return cls.parse(data, name=name)


def _wave_size(spec: int | str, count: int, name: str) -> int:
    """One entry of `waves` as a number of devices out of `count` (before capping at what is left)."""
    if isinstance(spec, bool) or not isinstance(spec, int | float | str):
        raise PlanError(f"{spec!r} is not a wave size", field=name, fix=_WAVES_FIX)
    text = spec.strip() if isinstance(spec, str) else spec
    if isinstance(text, str) and text.endswith("%"):
        try:
            share = Fraction(text[:-1].strip())
        except ValueError:
            raise PlanError(f"{spec!r} is not a wave size", field=name, fix=_WAVES_FIX) from None
        if not 0 < share <= 100:
            raise PlanError(f"{spec!r} is not a share from 1% to 100%", field=name, fix=_WAVES_FIX)
        # Ansible's pct_to_int (lib/ansible/utils/helpers.py): int(pct / 100.0 * num_items) or min_value=1,
        # i.e. a share of ALL the play's hosts, rounded down, at least 1.
        return max(1, math.floor(share * count / 100))
    try:
        number = Fraction(text)
    except (ValueError, TypeError):
        raise PlanError(f"{spec!r} is not a wave size", field=name, fix=_WAVES_FIX) from None
    if number.denominator != 1 or number < 1:
        # Ansible takes serial <= 0 as "all hosts at once"; here a wave of 0 is a mistake to point out.
        raise PlanError(f"{spec!r} is not a number of devices (1 or more)", field=name, fix=_WAVES_FIX)
    return int(number)


def split_waves(count: int, waves: Sequence[int | str]) -> list[int]:
    """Sizes of successive waves for `count` devices, with the semantics of Ansible's `serial` keyword.

    From the Ansible docs ("Setting the batch size with serial", playbook_guide/playbooks_strategies.rst):
    a percentage is applied "to the total number of hosts in a play"; with a list of sizes, after the listed
    ones "every following batch would contain either [the last size] or all the remaining hosts"; and "no
    matter how small the percentage, the number of hosts per pass will always be 1 or greater". The code it
    describes is PlaybookExecutor._get_serialized_batches (lib/ansible/executor/playbook_executor.py): the
    last list item repeats until no host is left, and a batch takes at most the hosts left.
    E.g. 20 devices, ["30%"] -> [6, 6, 6, 2]; 20 devices, [1, "10%", "50%", "100%"] -> [1, 2, 10, 7].
    """
    if isinstance(waves, str | bytes) or not isinstance(waves, Sequence):
        raise PlanError(f"{waves!r} is not a list of waves", field="waves", fix=_WAVES_FIX)
    if not waves:
        raise PlanError("no waves given", field="waves", fix=_WAVES_FIX)
    if count < 0:
        raise PlanError(f"cannot split {count} devices into waves", field="waves", fix="give 0 or more devices")
    sizes = [_wave_size(spec, count, f"waves[{i}]") for i, spec in enumerate(waves)]  # checks every entry
    out: list[int] = []
    left = count
    while left > 0:
        size = min(sizes[min(len(out), len(sizes) - 1)], left)
        out.append(size)
        left -= size
    return out


# -- the plan's parts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WavePolicy:
    """What a wave needs before the next one starts, and when it stops the rollout (see the module docstring)."""

    success: Threshold = field(default_factory=lambda: Threshold(100, True))
    errors: Threshold = field(default_factory=lambda: Threshold(0, False))
    soak_s: float = 0.0
    approve: bool = False

    def __post_init__(self) -> None:
        _set(self, "success", Threshold.parse(self.success, name="success"))
        _set(self, "errors", Threshold.parse(self.errors, name="errors"))
        if self.success.value == 0:
            raise PlanError(f"{self.success} would start the next wave with no device done", field="success",
                            fix='give at least 1 device or 1%; "100%" (the default) waits for the whole wave')
        _set(self, "soak_s", _number(self.soak_s, "soak_s", minimum=0, fix="give the soak time in seconds (0 or more)"))
        _bool(self.approve, "approve")

    def success_reached(self, done: int, wave_size: int) -> bool:
        return self.success.reached(done, wave_size)

    def errors_exceeded(self, failed: int, wave_size: int) -> bool:
        return self.errors.exceeded(failed, wave_size)

    def to_dict(self) -> dict[str, Any]:
        return {"success": str(self.success), "errors": str(self.errors), "soak_s": self.soak_s,
                "approve": self.approve}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "policy") -> WavePolicy:
        data = _mapping(data, name, cls)
        try:
            kwargs = {k: data[k] for k in ("soak_s", "approve") if k in data}
            for key in ("success", "errors"):
                if key in data:
                    kwargs[key] = Threshold.from_dict(data[key], name=key)
            return cls(**kwargs)
        except PlanError as exc:
            raise _prefixed(exc, name) from None


_Flat = TypeVar("_Flat")


def _flat_dict(record: Any) -> dict[str, Any]:
    """A dataclass of plain values as JSON-ready data."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _flat_from_dict(cls: type[_Flat], data: Mapping[str, Any], name: str) -> _Flat:
    """A dataclass of plain values from JSON: unknown keys refused, errors named under `name`."""
    data = _mapping(data, name, cls)
    try:
        return cls(**data)
    except PlanError as exc:
        raise _prefixed(exc, name) from None


@dataclass(frozen=True)
class Gates:
    """Health gates; None switches a gate off."""

    serving: bool = True  # the agent's server runs and has the new model loaded
    p95_ms_max: float | None = None  # absolute bound on the device's p95 latency (agent bench)
    p95_ratio_max: float | None = 1.5  # p95 on the new model / p95 on the previous model, same device
    error_rate_max: float | None = 0.01  # server errors / requests during the soak
    golden_min_cosine: float | None = 0.99  # agreement with golden outputs on the model's samples (on device)
    temperature_c_max: float | None = 85.0
    memory_free_pct_min: float | None = 10.0

    def __post_init__(self) -> None:
        _bool(self.serving, "serving")
        checks: dict[str, dict[str, Any]] = {
            "p95_ms_max": {"above": 0, "fix": "give the latency bound in milliseconds, or null to switch it off"},
            "p95_ratio_max": {"above": 0, "fix": "give a ratio such as 1.5 (50% slower at most), or null"},
            "error_rate_max": {"minimum": 0, "maximum": 1,
                               "fix": "give a share of requests from 0 to 1 (0.01 is 1%), or null"},
            "golden_min_cosine": {"minimum": 0, "maximum": 1, "fix": "give a cosine from 0 to 1 (0.99), or null"},
            "temperature_c_max": {"above": 0, "maximum": 150, "fix": "give degrees Celsius (85), or null"},
            "memory_free_pct_min": {"minimum": 0, "maximum": 100, "fix": "give a percentage from 0 to 100, or null"},
        }
        for name, bounds in checks.items():
            _set(self, name, _optional(getattr(self, name), name, **bounds))

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "gates") -> Gates:
        return _flat_from_dict(cls, data, name)


@dataclass(frozen=True)
class TransferPolicy:
    max_parallel: int = 4  # transfers at once
    bandwidth_bytes_s: int | None = None  # cap per transfer (None = no cap)
    prestage: bool = True  # copy to every device of a wave, verified, before any of them activates
    retries: int = 3  # transfer retries with backoff before the device counts as failed/unreachable

    def __post_init__(self) -> None:
        _set(self, "max_parallel", int(_number(self.max_parallel, "max_parallel", minimum=1, whole=True,
                                               fix="give how many transfers may run at once (1 or more)")))
        if self.bandwidth_bytes_s is not None:
            _set(self, "bandwidth_bytes_s", int(_number(self.bandwidth_bytes_s, "bandwidth_bytes_s", minimum=1,
                                                        whole=True,
                                                        fix="give bytes per second, or null for no cap")))
        _bool(self.prestage, "prestage")
        _set(self, "retries", int(_number(self.retries, "retries", minimum=0, whole=True,
                                          fix="give how many times to retry a transfer (0 or more)")))

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "transfer") -> TransferPolicy:
        return _flat_from_dict(cls, data, name)


@dataclass(frozen=True)
class RolloutPlan:
    """What the operator asks for; `resolve` turns it into devices and waves. Invalid values raise PlanError."""

    model: str  # "name@version" (or "name": its newest version) in the artifact store
    devices: tuple[int, ...] = ()  # targets: device ids ...
    groups: tuple[str, ...] = ()  # ... and/or group names ...
    profiles: tuple[str, ...] = ()  # ... and/or every device matching a profile
    waves: tuple[int | str, ...] = (1, "10%", "50%", "100%")  # Ansible `serial` style
    policy: WavePolicy = field(default_factory=WavePolicy)  # for every wave ...
    wave_policies: tuple[WavePolicy | None, ...] = ()  # ... unless overridden per wave (index)
    gates: Gates = field(default_factory=Gates)
    transfer: TransferPolicy = field(default_factory=TransferPolicy)
    unreachable: str = "wait"  # "wait" (not counted; the wave waits up to unreachable_wait_s) | "count" (an error)
    unreachable_wait_s: float = 600.0
    confirm_within_s: float = 300.0  # the agent reverts by itself if no confirmation comes in this time
    step_timeout_s: float = 600.0  # any single step on a device
    actor: str = ""  # who started it (for the audit log; default: the OS user)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PlanError("no model given", field="model",
                            fix="give NAME or NAME@VERSION of a stored model (`fleetdesk model list`)")
        _set(self, "model", self.model.strip())
        _set(self, "devices", self._ids(self.devices))
        _set(self, "groups", self._names(self.groups, "groups", 'give group names such as "line A"'))
        _set(self, "profiles", self._names(self.profiles, "profiles", "give profile names such as rpi4"))
        waves = (self.waves,) if isinstance(self.waves, int | str) else tuple(self.waves)
        split_waves(1, waves)  # checks every entry; the sizes come with the devices
        _set(self, "waves", waves)
        if not isinstance(self.policy, WavePolicy):
            raise PlanError(f"{self.policy!r} is not a wave policy", field="policy", fix="give a WavePolicy")
        policies = tuple(self.wave_policies)
        for i, policy in enumerate(policies):
            if policy is not None and not isinstance(policy, WavePolicy):
                raise PlanError(f"{policy!r} is not a wave policy", field=f"wave_policies[{i}]",
                                fix="give a WavePolicy, or null to use the plan's policy for that wave")
        _set(self, "wave_policies", policies)
        if not isinstance(self.gates, Gates):
            raise PlanError(f"{self.gates!r} is not a set of gates", field="gates", fix="give Gates")
        if not isinstance(self.transfer, TransferPolicy):
            raise PlanError(f"{self.transfer!r} is not a transfer policy", field="transfer",
                            fix="give a TransferPolicy")
        if self.unreachable not in UNREACHABLE_POLICIES:
            raise PlanError(f"{self.unreachable!r} is not an unreachable policy", field="unreachable",
                            fix='give "wait" (an unreachable device is waited for, not counted) or "count" '
                                "(it counts against the error threshold)")
        _set(self, "unreachable_wait_s", _number(self.unreachable_wait_s, "unreachable_wait_s", minimum=0,
                                                 fix="give seconds (0 or more)"))
        _set(self, "confirm_within_s", _number(self.confirm_within_s, "confirm_within_s", above=0,
                                               fix="give seconds (more than 0)"))
        _set(self, "step_timeout_s", _number(self.step_timeout_s, "step_timeout_s", above=0,
                                             fix="give seconds (more than 0)"))
        if not isinstance(self.actor, str):
            raise PlanError(f"{self.actor!r} is not a name", field="actor", fix="give who starts the rollout")
        soaks = [(self.policy.soak_s, "policy.soak_s")] + [
            (p.soak_s, f"wave_policies[{i}].soak_s") for i, p in enumerate(policies) if p is not None]
        soak, where = max(soaks)
        if soak >= self.confirm_within_s:
            # The agent goes back to the old model when no confirmation comes in confirm_within_s, and the
            # confirmation comes only after the soak: a soak this long would revert every device.
            raise PlanError(f"{self.confirm_within_s:g} s is not longer than {where} ({soak:g} s): every device "
                            "would go back to its old model before its gates finish", field="confirm_within_s",
                            fix="make confirm_within_s longer than the longest soak plus the time the gates take")

    @staticmethod
    def _ids(values: object) -> tuple[int, ...]:
        if isinstance(values, str | bytes | int) or not isinstance(values, Sequence):
            raise PlanError(f"{values!r} is not a list of device ids", field="devices",
                            fix="give device ids (`fleetdesk devices` lists them)")
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlanError(f"{value!r} is not a device id", field=f"devices[{i}]",
                                fix="give device ids (`fleetdesk devices` lists them)")
        return tuple(values)

    @staticmethod
    def _names(values: object, name: str, fix: str) -> tuple[str, ...]:
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise PlanError(f"{values!r} is not a list of names", field=name, fix=fix)
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise PlanError(f"{value!r} is not a name", field=f"{name}[{i}]", fix=fix)
        return tuple(values)

    def policy_for(self, wave: int) -> WavePolicy:
        """The policy of wave `wave` (0-based): its override, else the plan's."""
        if 0 <= wave < len(self.wave_policies) and self.wave_policies[wave] is not None:
            return self.wave_policies[wave]  # type: ignore[return-value]
        return self.policy

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "devices": list(self.devices), "groups": list(self.groups),
                "profiles": list(self.profiles), "waves": list(self.waves), "policy": self.policy.to_dict(),
                "wave_policies": [None if p is None else p.to_dict() for p in self.wave_policies],
                "gates": self.gates.to_dict(), "transfer": self.transfer.to_dict(), "unreachable": self.unreachable,
                "unreachable_wait_s": self.unreachable_wait_s, "confirm_within_s": self.confirm_within_s,
                "step_timeout_s": self.step_timeout_s, "actor": self.actor}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        """A plan from JSON (a plan file, the journal); unknown fields and bad values raise PlanError."""
        data = _mapping(data, "", cls)
        kwargs: dict[str, Any] = {k: v for k, v in data.items()
                                  if k not in ("policy", "wave_policies", "gates", "transfer")}
        if "policy" in data:
            kwargs["policy"] = WavePolicy.from_dict(data["policy"], name="policy")
        if "wave_policies" in data:
            raw = data["wave_policies"]
            if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
                raise PlanError(f"{raw!r} is not a list", field="wave_policies",
                                fix="give one policy (or null) per wave")
            kwargs["wave_policies"] = tuple(None if p is None else WavePolicy.from_dict(p, name=f"wave_policies[{i}]")
                                            for i, p in enumerate(raw))
        if "gates" in data:
            kwargs["gates"] = Gates.from_dict(data["gates"])
        if "transfer" in data:
            kwargs["transfer"] = TransferPolicy.from_dict(data["transfer"])
        if "model" not in kwargs:
            raise PlanError("no model given", field="model", fix="give NAME or NAME@VERSION of a stored model")
        return cls(**kwargs)


# -- resolved -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedDevice:
    device_id: int
    name: str
    profile: str
    artifact: str  # artifact id chosen for the device's profile (ModelRecord.artifacts, else .baseline)
    recipe: str
    wave: int  # 0-based
    size_bytes: int = 0  # the artifact's bytes (every file), for progress and ETA

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedDevice:
        data = _mapping(data, "device", cls)
        return cls(int(data["device_id"]), str(data["name"]), str(data["profile"]), str(data["artifact"]),
                   str(data["recipe"]), int(data["wave"]), int(data.get("size_bytes", 0)))


@dataclass(frozen=True)
class ResolvedPlan:
    plan: RolloutPlan
    model_ref: str  # "name@version"
    devices: tuple[PlannedDevice, ...]  # in wave order, then by name
    waves: tuple[tuple[int, ...], ...]  # device ids per wave, in dealing order (waves[0][0] is the canary)

    def policy_for(self, wave: int) -> WavePolicy:
        return self.plan.policy_for(wave)

    def device(self, device_id: int) -> PlannedDevice:
        for planned in self.devices:
            if planned.device_id == device_id:
                return planned
        raise KeyError(device_id)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "model_ref": self.model_ref,
                "devices": [d.to_dict() for d in self.devices], "waves": [list(w) for w in self.waves]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedPlan:
        data = _mapping(data, "resolved", cls)
        return cls(RolloutPlan.from_dict(data["plan"]), str(data["model_ref"]),
                   tuple(PlannedDevice.from_dict(d) for d in data["devices"]),
                   tuple(tuple(int(i) for i in w) for w in data["waves"]))


def _by_name(device: Device) -> tuple[str, str, int]:
    return (device.name.casefold(), device.name, device.id)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def resolve(plan: RolloutPlan, inventory: Inventory, store: ArtifactStore) -> ResolvedPlan:
    """The plan's devices (each listed once), the artifact each gets for its profile, and the waves."""
    if not (plan.devices or plan.groups or plan.profiles):
        raise PlanError("the plan targets no device", field="targets",
                        fix="name device ids, groups or profiles to roll out to")
    try:
        record = store.model(plan.model)
    except StoreEntryNotFoundError as exc:
        raise PlanError(exc.message, field="model", fix=exc.fix, cause=exc) from None
    everyone = {d.id: d for d in inventory.devices()}
    chosen: dict[int, Device] = {}
    missing = [i for i in dict.fromkeys(plan.devices) if i not in everyone]
    if missing:
        raise PlanError(f"no device with id {', '.join(map(str, missing))} in the inventory", field="devices",
                        fix="`fleetdesk devices` lists the devices and their ids")
    for device_id in plan.devices:
        chosen[device_id] = everyone[device_id]
    groups = {g.name: g for g in inventory.groups()}
    for name in plan.groups:
        if name not in groups:
            raise PlanError(f"no group named {name!r}", field="groups",
                            fix=f"groups: {', '.join(sorted(groups))}" if groups else
                            "create one with `fleetdesk group DEVICE... --name NAME`")
        for device_id in groups[name].device_ids:
            chosen[device_id] = everyone[device_id]
    held = sorted({d.profile for d in everyone.values() if d.profile})
    for name in plan.profiles:
        matching = [d for d in everyone.values() if d.profile == name]
        if not matching:
            raise PlanError(f"no device in the inventory has the profile {name!r}", field="profiles",
                            fix=f"profiles of probed devices: {', '.join(held)}" if held else
                            "probe the devices first (`fleetdesk probe`)")
        chosen.update((d.id, d) for d in matching)
    if not chosen:
        raise PlanError("no device matched the plan's targets", field="targets",
                        fix="check the device ids, groups and profiles")
    unprobed = sorted((d for d in chosen.values() if not d.profile), key=_by_name)
    if unprobed:
        names = ", ".join(d.name for d in unprobed[:10]) + (" ..." if len(unprobed) > 10 else "")
        raise PlanError(f"{_plural(len(unprobed), 'device')} without a profile: {names}", field="targets",
                        fix="probe them first (`fleetdesk probe NAME`), so that FleetDesk knows which variant fits")
    artifacts: dict[str, tuple[str, str, int]] = {}
    for profile in sorted({d.profile for d in chosen.values() if d.profile}):
        artifact_id = record.artifacts.get(profile) or record.baseline
        if not artifact_id:
            raise PlanError(f"{record.ref} has no artifact for the profile {profile!r} and no baseline",
                            field="model", fix="import the model again (`fleetdesk model import`)")
        try:
            artifact = store.artifact(artifact_id)
        except ArtifactStoreError as exc:
            raise PlanError(f"{record.ref}'s artifact {artifact_id[:12]} for {profile} is missing from the store "
                            f"({exc.message})", field="model", cause=exc,
                            fix="run `fleetdesk model verify`; remove and re-import the model") from None
        artifacts[profile] = (artifact.id, artifact.recipe, artifact.size_bytes)
    order = _deal(list(chosen.values()))
    sizes = split_waves(len(order), plan.waves)
    waves: list[tuple[int, ...]] = []
    planned: list[PlannedDevice] = []
    start = 0
    for wave, size in enumerate(sizes):
        members = order[start:start + size]
        start += size
        waves.append(tuple(d.id for d in members))
        for device in sorted(members, key=_by_name):
            artifact_id, recipe, size_bytes = artifacts[device.profile]  # type: ignore[index]
            planned.append(PlannedDevice(device.id, device.name, device.profile or "", artifact_id, recipe, wave,
                                         size_bytes))
    return ResolvedPlan(plan, record.ref, tuple(planned), tuple(waves))


def _deal(devices: list[Device]) -> list[Device]:
    """Devices round-robin across profiles: the first device by name first, and every variant early."""
    by_profile: dict[str, list[Device]] = {}
    for device in sorted(devices, key=_by_name):
        by_profile.setdefault(device.profile or "", []).append(device)
    queues = list(by_profile.values())  # in the order of each profile's first device by name
    out: list[Device] = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


# -- the plan in words ---------------------------------------------------------------------------------------


def _shown(text: str) -> str:
    """Device-supplied text for a terminal: control characters shown, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _wave_rules(policy: WavePolicy, size: int, last: bool) -> list[str]:
    need = policy.success.devices(size)
    tolerated = policy.errors.tolerated(size)
    go = "the rollout is done" if last else "the next wave starts"
    lines = [f"{go} when at least {need} of {size} {'is' if need == 1 else 'are'} done "
             f"(success {policy.success}, reached: >=)"]
    if tolerated == 0:
        lines.append(f"the first failure pauses the rollout (errors {policy.errors}, exceeded: >)")
    elif tolerated >= size:
        lines.append(f"failures never pause it (errors {policy.errors} of {size})")
    else:
        lines.append(f"failure number {tolerated + 1} pauses the rollout (errors {policy.errors}: more than "
                     f"{tolerated} of {size})")
    lines.append(f"gates re-measured for {_seconds(policy.soak_s)} after activation" if policy.soak_s else
                 "gates measured once after activation (no soak)")
    if policy.approve and not last:
        lines.append("then the operator must approve the next wave")
    return lines


def _gate_lines(gates: Gates) -> list[str]:
    def bound(value: float | None, text: str) -> str:
        return "off" if value is None else text.format(value)

    rate_pct = None if gates.error_rate_max is None else gates.error_rate_max * 100

    return [
        f"model serving: {'the server runs and has the new model loaded' if gates.serving else 'off'}",
        f"p95 latency: {bound(gates.p95_ms_max, 'at most {:g} ms')}",
        f"p95 against the previous model on the same device: {bound(gates.p95_ratio_max, 'at most {:g} x')}",
        f"error rate during the soak: {bound(rate_pct, 'at most {:.4g}% of requests')}",
        f"golden outputs on the model's samples: {bound(gates.golden_min_cosine, 'cosine at least {:g}')}",
        f"temperature: {bound(gates.temperature_c_max, 'at most {:g} °C')}",
        f"free memory: {bound(gates.memory_free_pct_min, 'at least {:g}%')}",
    ]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def plan_text(resolved: ResolvedPlan) -> str:
    """What `fleetdesk rollout plan` prints: targets, variants, waves with their thresholds in words, gates."""
    plan = resolved.plan
    names = {d.device_id: d.name for d in resolved.devices}
    lines = [f"Rollout of {_shown(resolved.model_ref)} to {_plural(len(resolved.devices), 'device')} in "
             f"{_plural(len(resolved.waves), 'wave')}"]
    targets = ([f"devices {', '.join(map(str, plan.devices))}"] if plan.devices else []) + \
        [f"group {_shown(g)!r}" for g in plan.groups] + [f"profile {_shown(p)}" for p in plan.profiles]
    lines.append(f"  targets: {'; '.join(targets)}")
    lines.append("Variants (by the devices' profiles):")
    by_profile: dict[str, list[PlannedDevice]] = {}
    for d in resolved.devices:
        by_profile.setdefault(d.profile, []).append(d)
    for profile, members in sorted(by_profile.items()):
        first = members[0]
        lines.append(f"  {_shown(profile)}: {first.recipe}, artifact {first.artifact[:12]}, {_size(first.size_bytes)}"
                     f" ({_plural(len(members), 'device')})")
    total = sum(d.size_bytes for d in resolved.devices)
    lines.append(f"  to send: {_size(total)} in all")
    lines.append(f"Waves (Ansible serial {json.dumps(list(plan.waves))}: shares of all {len(resolved.devices)} "
                 "devices, rounded down, at least 1; the last value repeats):")
    for i, wave in enumerate(resolved.waves):
        label = "canary" if i == 0 and len(resolved.waves) > 1 and len(wave) == 1 else ""
        own = " (own thresholds)" if i < len(plan.wave_policies) and plan.wave_policies[i] is not None else ""
        head = f"  wave {i + 1}{f' ({label})' if label else ''}, {_plural(len(wave), 'device')}{own}: "
        members = ", ".join(_shown(names[d]) for d in wave)
        lines.extend(textwrap.wrap(members, width=110, initial_indent=head, subsequent_indent=" " * 6,
                                   break_on_hyphens=False))
        lines.extend(f"    {rule}" for rule in _wave_rules(resolved.policy_for(i), len(wave),
                                                        i == len(resolved.waves) - 1))
    lines.append("  A device counts as failed when a step failed on it or a health gate sent it back to its old model.")
    lines.append("  An unreachable device counts as failed too." if plan.unreachable == "count" else
                 f"  An unreachable device does not count: the wave waits up to {_seconds(plan.unreachable_wait_s)} "
                 "for it.")
    lines.append("Health gates (on each device after activation, and through the soak):")
    lines.extend(f"  {line}" for line in _gate_lines(plan.gates))
    transfer = plan.transfer
    lines.append(f"Transfer: at most {transfer.max_parallel} at once, "
                 + (f"capped at {_size(transfer.bandwidth_bytes_s)}/s each" if transfer.bandwidth_bytes_s else
                    "no bandwidth cap")
                 + f", {transfer.retries} {'retry' if transfer.retries == 1 else 'retries'} per transfer")
    lines.append("  pre-staged: every device of a wave gets the artifact, verified, before any of them activates"
                 if transfer.prestage else
                 "  not pre-staged: each device activates as soon as its own copy is verified")
    lines.append("Safety:")
    lines.append(f"  a device that hears no confirmation within {_seconds(plan.confirm_within_s)} of its activation "
                 "goes back to its previous model by itself")
    lines.append(f"  every step on a device times out after {_seconds(plan.step_timeout_s)}")
    return "\n".join(lines)
