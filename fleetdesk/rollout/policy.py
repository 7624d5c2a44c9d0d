"""The policy parts of a rollout plan: wave sizes, thresholds, the wave policy, health gates, the transfer policy
and the shadow step's policy, each a frozen dataclass that checks its values and raises a PlanError naming the
field. The plan that holds them, and its resolution to devices, is fleetdesk/rollout/plan.py.

Waves are written as Ansible writes `serial`: `[1, "10%", "50%", "100%"]` is one canary, then batches of 10%,
50% and 100% of ALL the targeted devices, each rounded down but never below one device; the last value repeats
until every device has a wave, and a wave never takes more than the devices left. Every wave has >= 1 device.

Each wave has a policy (WavePolicy; the plan's `policy` for every wave unless `wave_policies[i]` overrides wave i):

- success (count "2" or share "90%" of the wave's size) is REACHED, i.e. compared with >=: the next wave
  starts only when at least that many devices of the wave are done. A share is rounded UP to whole devices
  (90% of 15 = 13.5, so 14 must be done); a count larger than the wave means the whole wave.
- errors (count or share of the wave) is EXCEEDED, i.e. compared with >: the rollout PAUSES when MORE than
  that many devices of the wave failed. errors=0 pauses on the first failure; errors="10%" of a wave of 20
  tolerates 2 and pauses on the 3rd; "10%" of a wave of 15 (1.5) tolerates 1 and pauses on the 2nd.
  A device counts as failed when a step failed on it or a health gate sent it back to its old model;
  an unreachable device counts too only when the plan's `unreachable` is "count" (with "wait", the wave waits
  up to `unreachable_wait_s` for it and it counts towards neither threshold).
- soak_s: the health gates are measured again until this many seconds after the device's activation.
- approve: after the wave reached its success threshold, the rollout waits for the operator's approval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any, TypeGuard, TypeVar

from fleetdesk.errors import PlanError

UNREACHABLE_POLICIES = ("wait", "count")
# Who takes a rollout over when the FleetDesk driving it stops (its lease runs out): an operator who asks for it
# (`fleetdesk rollout run ID --take-over`, the window's Take over), or any FleetDesk window open on the inventory.
TAKEOVER_POLICIES = ("ask", "auto")
# What the driver does once the inventory's database answers again after it could not be reached mid-rollout (the
# steps under way finished, nothing new started): the rollout stays paused for an operator, or goes on by itself.
DATABASE_LOSS_POLICIES = ("pause", "resume")
_THRESHOLD_FIX = 'write a count of devices such as 2, or a share of the wave such as "10%"'
_WAVES_FIX = 'write waves as Ansible writes serial, e.g. [1, "10%", "50%", "100%"]: counts >= 1 or shares "1%".."100%"'


# -- small validators (each names the field it checks) ------------------------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object, name: str, *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, whole: bool = False, fix: str | None = None) -> float:
    """`value` as a finite number within the bounds, else a PlanError naming `name`."""
    if not _is_number(value) or not math.isfinite(value):
        raise PlanError(f"{value!r} is not a number", field=name, fix=fix or "give a number")
    number = float(value)
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

    @classmethod
    def from_text(cls, success: str, errors: str, *, soak_s: float = 0.0, approve: bool = False) -> WavePolicy:
        """The policy from thresholds as an operator types them ("1", "10%"); PlanError names the field."""
        return cls(success=Threshold.parse(success, name="success"), errors=Threshold.parse(errors, name="errors"),
                   soak_s=soak_s, approve=approve)

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


SHADOW_WAVES = ("all", "canary")
SHADOW_ON_SKIP = ("fail", "pass")


@dataclass(frozen=True)
class ShadowPolicy:
    """The shadow step: after staging and before activation, the device's model server loads the staged candidate
    beside its active model and mirrors `share` of live requests to it, off the request path; the candidate is
    activated only when, over at least `min_requests` compared requests (waited for up to `max_wait_s`), its
    answers agree with the active model's (`min_agreement`: top-1 agreement for classifiers, else the median
    cosine similarity) and its p95 latency is at most `p95_ratio_max` times the active model's. A device that
    cannot load the candidate beside its model (too little memory) skips the step: `on_skip` says whether that
    passes or fails it. `waves`: "all" shadows every device, "canary" only those of the first wave."""

    # Of the live requests mirrored to the candidate, in (0, 1]. One in four by default, as the agent's own default
    # (fleetdesk/agent/shadow.py DEFAULT_SHARE, which says what the benchmark measured). The candidate runs only on
    # what the requests leave, so a busy device compares fewer: on the lab's arm64 device at half its capacity, 200
    # requests took 4 to 8 minutes of the 10 that max_wait_s allows (README, "Shadow on against off").
    share: float = 0.25
    min_requests: int = 200  # compared requests before the verdict
    min_agreement: float | None = 0.98  # None: not judged
    p95_ratio_max: float | None = 1.2  # candidate p95 / active p95 on the same requests; None: not judged
    max_wait_s: float = 600.0  # the time bound: fewer than min_requests by then fails the step
    waves: str = "all"  # "all" | "canary"
    on_skip: str = "fail"  # "fail" | "pass": what a device that could not load the candidate (memory) counts as

    def __post_init__(self) -> None:
        _set(self, "share", _number(self.share, "share", above=0, maximum=1,
                                    fix="give the share of requests mirrored, above 0, at most 1 (0.25 = 1 in 4)"))
        _set(self, "min_requests", int(_number(self.min_requests, "min_requests", minimum=1, whole=True,
                                               fix="give how many mirrored requests the verdict needs (1 or more)")))
        _set(self, "min_agreement", _optional(self.min_agreement, "min_agreement", minimum=0, maximum=1,
                                              fix="give an agreement from 0 to 1 (0.98), or null to not judge it"))
        _set(self, "p95_ratio_max", _optional(self.p95_ratio_max, "p95_ratio_max", above=0,
                                              fix="give a ratio such as 1.2 (20% slower at most), or null"))
        _set(self, "max_wait_s", _number(self.max_wait_s, "max_wait_s", above=0,
                                         fix="give the longest the shadow may run, in seconds (more than 0)"))
        if self.waves not in SHADOW_WAVES:
            raise PlanError(f"{self.waves!r} is not a choice of waves", field="waves",
                            fix='give "all" (every device shadows first) or "canary" (only the first wave\'s)')
        if self.on_skip not in SHADOW_ON_SKIP:
            raise PlanError(f"{self.on_skip!r} is not pass or fail", field="on_skip",
                            fix='give "fail" (a device that cannot load the candidate beside its model keeps its '
                                'model and counts as failed) or "pass" (it is activated without a shadow)')

    def applies_to(self, wave: int) -> bool:
        """Whether devices of wave `wave` (0-based) shadow first."""
        return self.waves == "all" or wave == 0

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "shadow") -> ShadowPolicy:
        return _flat_from_dict(cls, data, name)
