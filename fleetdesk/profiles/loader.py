"""Loading device profiles: the shipped ones, then the operator's, which override by name.

One bad file never hides the others: it becomes a ProfileError in the result.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fleetdesk.errors import ProfileError
from fleetdesk.profiles.schema import Profile, parse_profile
from fleetdesk.resources import data_dir


@dataclass
class ProfileSet:
    """The profiles that loaded, by name, and the files that did not."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    errors: list[ProfileError] = field(default_factory=list)

    def get(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ProfileError(
                "no such profile", path=name, fix=f"use one of the known profiles: {known}"
            ) from None


def load_profile_file(path: Path) -> Profile:
    """Read and validate one profile file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"is not valid TOML ({exc})", path=str(path), fix="fix the syntax at that line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot be read ({exc})", path=str(path), fix="check the file") from None
    profile = parse_profile(data, str(path))
    if profile.name != path.stem:
        raise ProfileError(
            f"declares name {profile.name!r} but the file is {path.name}",
            path=str(path),
            field="name",
            fix=f"rename the file to {profile.name}.toml or set name = {path.stem!r}",
        )
    return profile


def load_profiles(user_dir: Path | None = None, shipped_dir: Path | None = None) -> ProfileSet:
    """Every valid profile; the operator's (user_dir) replace shipped ones of the same name."""
    result = ProfileSet()
    dirs: Iterable[Path] = [shipped_dir or data_dir("device_profiles")]
    if user_dir is not None:
        dirs = [*dirs, user_dir]
    for folder in dirs:
        try:
            if not folder.is_dir():
                continue
            paths = sorted(folder.glob("*.toml"))
        except OSError as exc:
            result.errors.append(ProfileError(f"cannot be read ({exc.strerror})", path=str(folder),
                                              fix="check the folder's permissions"))
            continue
        for path in paths:
            try:
                profile = load_profile_file(path)
            except ProfileError as exc:
                result.errors.append(exc)
                continue
            result.profiles[profile.name] = profile
    return result
