"""Matching a probed device to a device profile: every rule a profile states must hold.

Among the profiles that match, the highest priority wins, then the most specific (more rules), then the name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fleetdesk.inventory.records import ProbeFacts
from fleetdesk.profiles.loader import ProfileSet
from fleetdesk.profiles.schema import Profile

# A profile's regexes come from files an operator may write; device strings come from the device.
# Bounding the subject keeps a careless pattern from spending seconds on a hostile string.
_MAX_SUBJECT = 4096

# What `uname -m` prints for the same two architectures on other distributions and kernels.
_ARCH_ALIASES = {"arm64": "aarch64", "armv8l": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


@dataclass(frozen=True)
class ProfileMatch:
    """The profile a device was recognised as, and why."""

    profile: str
    priority: int
    reasons: tuple[str, ...]  # one line per rule that held, in the profile's rule order
    others: tuple[str, ...] = ()  # other profiles whose rules also all held, best first

    @property
    def rules(self) -> int:
        return len(self.reasons)


def normalized_arch(arch: str) -> str:
    """The profile schema's name for an architecture `uname -m` printed."""
    arch = arch.strip()
    return _ARCH_ALIASES.get(arch.lower(), arch)


def has_discrete_gpu(facts: ProbeFacts) -> bool:
    """True when nvidia-smi reported a GPU with its own memory (a discrete NVIDIA card).

    A Jetson's integrated GPU and a Pi's VideoCore share system RAM, so the probe reports
    0 MB of GPU memory for them: the `gpu` rule of a profile is about a card, not any GPU.
    """
    return bool(facts.gpu) and facts.gpu_memory_mb > 0


def _search(pattern: str, subject: str) -> bool:
    # An absent string never satisfies a rule, even a pattern that would match "".
    return bool(subject) and re.search(pattern, subject[:_MAX_SUBJECT]) is not None


def rule_reasons(profile: Profile, facts: ProbeFacts) -> tuple[str, ...] | None:
    """Why each rule of `profile` holds for `facts`, or None when any rule does not."""
    rules = profile.match
    reasons: list[str] = []
    if rules.device_tree_model is not None:
        if not _search(rules.device_tree_model, facts.model):
            return None
        reasons.append(f"device-tree model {facts.model!r} matches {rules.device_tree_model!r}")
    if rules.nv_tegra_release is not None:
        if not _search(rules.nv_tegra_release, facts.tegra_release):
            return None
        reasons.append(f"nv_tegra_release {facts.tegra_release[:40]!r} matches {rules.nv_tegra_release!r}")
    if rules.dmi_product_name is not None:
        if not _search(rules.dmi_product_name, facts.dmi_product):
            return None
        reasons.append(f"DMI product {facts.dmi_product!r} matches {rules.dmi_product_name!r}")
    if rules.arch is not None:
        if normalized_arch(facts.arch) != rules.arch:
            return None
        reasons.append(f"architecture is {rules.arch}")
    if rules.gpu is not None:
        discrete = has_discrete_gpu(facts)
        if discrete != rules.gpu:
            return None
        reasons.append(f"discrete NVIDIA GPU: {facts.gpu}" if discrete else "no discrete NVIDIA GPU")
    return tuple(reasons)


def match_profile(facts: ProbeFacts, profiles: ProfileSet | Iterable[Profile]) -> ProfileMatch | None:
    """The best profile whose every rule holds for `facts`; None when no profile does."""
    candidates = profiles.profiles.values() if isinstance(profiles, ProfileSet) else profiles
    matched: list[tuple[Profile, tuple[str, ...]]] = []
    for profile in candidates:
        reasons = rule_reasons(profile, facts)
        if reasons is not None:
            matched.append((profile, reasons))
    if not matched:
        return None
    matched.sort(key=lambda item: (-item[0].priority, -len(item[1]), item[0].name))
    best, reasons = matched[0]
    return ProfileMatch(
        profile=best.name,
        priority=best.priority,
        reasons=reasons,
        others=tuple(p.name for p, _ in matched[1:]),
    )
