"""Device profiles: the schema of device_profiles/*.toml, their loader and the matcher."""

from fleetdesk.profiles.loader import ProfileSet, load_profile_file, load_profiles
from fleetdesk.profiles.matcher import ProfileMatch, has_discrete_gpu, match_profile
from fleetdesk.profiles.schema import LabHardware, MatchRules, Profile

__all__ = [
    "LabHardware", "MatchRules", "Profile", "ProfileMatch", "ProfileSet", "has_discrete_gpu", "load_profile_file",
    "load_profiles", "match_profile",
]
