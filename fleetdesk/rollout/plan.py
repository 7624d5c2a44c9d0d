"""A rollout plan (RolloutPlan: the model, its targets, the waves and the policies below), and the plan resolved
to devices (resolve, ResolvedPlan) and told in words (plan_text).

The plan's parts, and what waves and thresholds mean, are in fleetdesk/rollout/policy.py: Threshold,
split_waves (Ansible's `serial`), WavePolicy, Gates and TransferPolicy.

Devices are dealt to waves round-robin across profiles (each profile's devices by name; profiles in the order
of their first device's name), so the canary is the first device by name and early waves reach every
variant; the same inventory always resolves to the same waves.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from fleetdesk.errors import ArtifactStoreError, PlanError, StoreEntryNotFoundError
from fleetdesk.rollout.policy import (
    DATABASE_LOSS_POLICIES,
    TAKEOVER_POLICIES,
    UNREACHABLE_POLICIES,
    Gates,
    ShadowPolicy,
    TransferPolicy,
    WavePolicy,
    _mapping,
    _number,
    _set,
    split_waves,
)
from fleetdesk.text import visible_text

if TYPE_CHECKING:
    from fleetdesk.artifacts.records import ModelRecord
    from fleetdesk.artifacts.store import ArtifactStore
    from fleetdesk.inventory import Device, Group


class DeviceSource(Protocol):
    """What `resolve` reads: the inventory, or the wizard's snapshot of it (no SQL on the window's loop)."""

    def devices(self) -> list[Device]: ...

    def groups(self) -> list[Group]: ...


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
    actor: str = ""  # the operator who started it (set by the engine: the acting operator)
    approval_by_other: bool = False  # four-eyes: a wave's approval must come from another operator than `actor`
    shadow: ShadowPolicy | None = None  # the shadow step before activation (None: none)
    # When the FleetDesk driving it stops (crash, lid closed, network gone) and its lease runs out: "ask" (an
    # operator takes it over: `fleetdesk rollout run ID --take-over`) or "auto" (a FleetDesk window open on the same
    # inventory takes it over by itself).
    takeover: str = "ask"
    # When the inventory's database cannot be reached mid-rollout, the steps under way finish and the driver
    # reconnects; once it answers the rollout is paused with the outage as its reason, and then "pause" (an operator
    # resumes it) or "resume" (the driver goes on by itself).
    on_database_loss: str = "pause"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PlanError("no model given", field="model",
                            fix="give NAME or NAME@VERSION of a stored model (`fleetdesk model list`)")
        _set(self, "model", self.model.strip())
        _set(self, "devices", self._ids(self.devices))
        _set(self, "groups", self._names(self.groups, "groups", 'give group names such as "line A"'))
        _set(self, "profiles", self._names(self.profiles, "profiles", "give profile names such as rpi4"))
        # Seen as object: a caller or plan file may give one bare wave ("waves: 3") despite the annotation.
        given: object = self.waves
        waves = (given,) if isinstance(given, int | str) else tuple(self.waves)
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
        if self.shadow is not None and not isinstance(self.shadow, ShadowPolicy):
            raise PlanError(f"{self.shadow!r} is not a shadow policy", field="shadow",
                            fix="give a ShadowPolicy, or null for no shadow step")
        if self.takeover not in TAKEOVER_POLICIES:
            raise PlanError(f"{self.takeover!r} is not a takeover policy", field="takeover",
                            fix='give "ask" (an operator takes over a rollout whose driver stopped) or "auto" (a '
                                "FleetDesk window open on the same inventory takes it over by itself)")
        if self.on_database_loss not in DATABASE_LOSS_POLICIES:
            raise PlanError(f"{self.on_database_loss!r} is not a policy for the database going away",
                            field="on_database_loss",
                            fix='give "pause" (the rollout stays paused once the database is back, for an operator to '
                                'resume) or "resume" (it goes on by itself)')
        if not isinstance(self.actor, str):
            raise PlanError(f"{self.actor!r} is not a name", field="actor", fix="give who starts the rollout")
        if not isinstance(self.approval_by_other, bool):
            raise PlanError(f"{self.approval_by_other!r} is not true or false", field="approval_by_other",
                            fix="give true (another operator approves each wave) or false")
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
        override = self.wave_policies[wave] if 0 <= wave < len(self.wave_policies) else None
        return override if override is not None else self.policy

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "devices": list(self.devices), "groups": list(self.groups),
                "profiles": list(self.profiles), "waves": list(self.waves), "policy": self.policy.to_dict(),
                "wave_policies": [None if p is None else p.to_dict() for p in self.wave_policies],
                "gates": self.gates.to_dict(), "transfer": self.transfer.to_dict(), "unreachable": self.unreachable,
                "unreachable_wait_s": self.unreachable_wait_s, "confirm_within_s": self.confirm_within_s,
                "step_timeout_s": self.step_timeout_s, "actor": self.actor,
                "approval_by_other": self.approval_by_other,
                "shadow": None if self.shadow is None else self.shadow.to_dict(), "takeover": self.takeover,
                "on_database_loss": self.on_database_loss}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        """A plan from JSON (a plan file, the journal); unknown fields and bad values raise PlanError."""
        data = _mapping(data, "", cls)
        kwargs: dict[str, Any] = {k: v for k, v in data.items()
                                  if k not in ("policy", "wave_policies", "gates", "transfer", "shadow")}
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
        if data.get("shadow") is not None:  # plans stored before the shadow step have none
            kwargs["shadow"] = ShadowPolicy.from_dict(data["shadow"])
        if "model" not in kwargs:
            raise PlanError("no model given", field="model", fix="give NAME or NAME@VERSION of a stored model")
        return cls(**kwargs)


# -- resolved -----------------------------------------------------------------------------------------------


def artifact_for(record: ModelRecord, profile: str | None) -> str:
    """The artifact a device of this profile gets: the variant chosen for its profile, else the FP32 baseline (a
    device not probed yet, or a profile the model was not optimized for). Rollouts and pushes share this rule."""
    return record.artifacts.get(profile or "") or record.baseline


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


def resolve(plan: RolloutPlan, inventory: DeviceSource, store: ArtifactStore) -> ResolvedPlan:
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
        artifact_id = artifact_for(record, profile)
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
            assert device.profile  # devices without a profile were refused above
            artifact_id, recipe, size_bytes = artifacts[device.profile]
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


def _shadow_lines(shadow: ShadowPolicy | None, waves: int) -> list[str]:
    if shadow is None:
        return ["none: each device activates the new model as soon as it is staged"]
    who = "every device" if shadow.waves == "all" or waves == 1 else "the devices of wave 1 (the canary's) only"
    judged = [f"top-1 agreement (median cosine for outputs that are not class scores) at least {shadow.min_agreement:g}"
              if shadow.min_agreement is not None else "agreement: not judged",
              f"candidate p95 at most {shadow.p95_ratio_max:g} x the active model's on the same requests"
              if shadow.p95_ratio_max is not None else "latency: not judged"]
    skip = ("counts as failed (it keeps its model)" if shadow.on_skip == "fail" else
            "is activated without a shadow")
    return [f"{who}: after staging, the candidate runs beside the active model on {shadow.share:.4g} of the live "
            "requests (the active model still answers them)",
            f"verdict after {shadow.min_requests} compared requests, or after {_seconds(shadow.max_wait_s)} "
            "(fewer requests by then: failed)",
            *judged,
            "failed: the candidate is unloaded, the device keeps its model and counts as failed",
            f"a device with too little memory to load the candidate beside its model {skip}"]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def plan_text(resolved: ResolvedPlan) -> str:
    """What `fleetdesk rollout plan` prints: targets, variants, waves with their thresholds in words, gates."""
    plan = resolved.plan
    names = {d.device_id: d.name for d in resolved.devices}
    lines = [f"Rollout of {visible_text(resolved.model_ref)} to {_plural(len(resolved.devices), 'device')} in "
             f"{_plural(len(resolved.waves), 'wave')}"]
    targets = ([f"devices {', '.join(map(str, plan.devices))}"] if plan.devices else []) + \
        [f"group {visible_text(g)!r}" for g in plan.groups] + [f"profile {visible_text(p)}" for p in plan.profiles]
    lines.append(f"  targets: {'; '.join(targets)}")
    lines.append("Variants (by the devices' profiles):")
    by_profile: dict[str, list[PlannedDevice]] = {}
    for d in resolved.devices:
        by_profile.setdefault(d.profile, []).append(d)
    for profile, members in sorted(by_profile.items()):
        first = members[0]
        lines.append(f"  {visible_text(profile)}: {first.recipe}, artifact {first.artifact[:12]}, "
                     f"{_size(first.size_bytes)} ({_plural(len(members), 'device')})")
    total = sum(d.size_bytes for d in resolved.devices)
    lines.append(f"  to send: {_size(total)} in all")
    lines.append(f"Waves (Ansible serial {json.dumps(list(plan.waves))}: shares of all {len(resolved.devices)} "
                 "devices, rounded down, at least 1; the last value repeats):")
    for i, wave in enumerate(resolved.waves):
        label = "canary" if i == 0 and len(resolved.waves) > 1 and len(wave) == 1 else ""
        own = " (own thresholds)" if i < len(plan.wave_policies) and plan.wave_policies[i] is not None else ""
        head = f"  wave {i + 1}{f' ({label})' if label else ''}, {_plural(len(wave), 'device')}{own}: "
        shown = ", ".join(visible_text(names[d]) for d in wave)
        lines.extend(textwrap.wrap(shown, width=110, initial_indent=head, subsequent_indent=" " * 6,
                                   break_on_hyphens=False))
        lines.extend(f"    {rule}" for rule in _wave_rules(resolved.policy_for(i), len(wave),
                                                        i == len(resolved.waves) - 1))
    lines.append("  A device counts as failed when a step failed on it or a health gate sent it back to its old model.")
    lines.append("  An unreachable device counts as failed too." if plan.unreachable == "count" else
                 f"  An unreachable device does not count: the wave waits up to {_seconds(plan.unreachable_wait_s)} "
                 "for it.")
    lines.append("Shadow step (before activation):")
    lines.extend(f"  {line}" for line in _shadow_lines(plan.shadow, len(resolved.waves)))
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
    lines.append(f"  takeover ({plan.takeover}): {takeover_text(plan.takeover)}")
    lines.append(f"  database unreachable ({plan.on_database_loss}): {database_loss_text(plan.on_database_loss)}")
    return "\n".join(lines)


def database_loss_text(policy: str) -> str:
    """What the plan's on_database_loss means, in words (the plan, the status)."""
    then = ("then resumes it by itself" if policy == "resume" else
            "and it stays paused until an operator resumes it (`fleetdesk rollout resume ID`)")
    return ("the steps under way finish, nothing new starts, the driver reconnects; once the database answers it "
            f"pauses the rollout with the outage as the reason, {then}")


def takeover_text(policy: str) -> str:
    """What the plan's takeover policy means, in words (the plan, the status, the report)."""
    if policy == "auto":
        return ("when the FleetDesk driving it stops, a FleetDesk window open on the same inventory takes it over "
                "by itself once its lease runs out")
    return ("when the FleetDesk driving it stops, an operator takes it over once its lease runs out "
            "(`fleetdesk rollout run ID --take-over`)")
