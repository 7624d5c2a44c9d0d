"""Finding devices: mDNS browsing, manual add, and a bounded SSH sweep of an operator-typed CIDR."""

from fleetdesk.discovery.manual import resolve_host
from fleetdesk.discovery.mdns import SERVICE_TYPES, DiscoveryEvent, MdnsBrowser, discover, parse_txt
from fleetdesk.discovery.sweep import BANNER_KEY, TokenBucket, banner_of, sweep, sweep_targets

__all__ = [
    "BANNER_KEY", "SERVICE_TYPES", "DiscoveryEvent", "MdnsBrowser", "TokenBucket", "banner_of", "discover",
    "parse_txt", "resolve_host", "sweep", "sweep_targets",
]
