"""The `--devices` SPEC of `fleetdesk lab up`: `rpi4:2,jetson-orin-nano:1,ipc-x86:3`.

Parsing checks every profile name and count before anything on the host is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetdesk.errors import LabSpecError
from fleetdesk.profiles import Profile, ProfileSet

MAX_DEVICES = 250
_ITEM = re.compile(r"^(?P<profile>[a-z0-9][a-z0-9-]*)(?::(?P<count>\d+))?$")


@dataclass(frozen=True)
class SpecItem:
    """`count` devices of `profile`."""

    profile: Profile
    count: int


def parse_spec(spec: str, profiles: ProfileSet) -> list[SpecItem]:
    """Parse a SPEC; raise LabSpecError with a one-line message naming the bad part and the fix."""
    text = spec.strip()
    if not text:
        raise LabSpecError("the device SPEC is empty", fix="write e.g. --devices rpi4:2,ipc-x86:3")
    counts: dict[str, int] = {}
    for raw in text.split(","):
        part = raw.strip()
        m = _ITEM.match(part)
        if not m:
            raise LabSpecError(
                f"cannot read {part!r} in the device SPEC",
                fix="write PROFILE:COUNT items separated by commas, e.g. rpi4:2,ipc-x86:3",
            )
        name = m.group("profile")
        count = int(m.group("count") or 1)
        if count < 1:
            raise LabSpecError(f"{part!r} asks for no devices", fix="use a count of 1 or more")
        if name not in profiles.profiles:
            known = ", ".join(sorted(profiles.profiles))
            raise LabSpecError(f"unknown profile {name!r} in the device SPEC", fix=f"use one of: {known}")
        if profiles.profiles[name].lab is None:
            raise LabSpecError(
                f"profile {name!r} has no [lab] table, so the lab cannot build one",
                fix=f"add a [lab] table to {profiles.profiles[name].source}",
            )
        counts[name] = counts.get(name, 0) + count
    total = sum(counts.values())
    if total > MAX_DEVICES:
        raise LabSpecError(f"the SPEC asks for {total} devices", fix=f"ask for at most {MAX_DEVICES}")
    return [SpecItem(profiles.profiles[name], n) for name, n in counts.items()]
