"""Adding a device by the name or address the operator types: checked, resolved, made a Sighting.

Ordinary names go through the system resolver; ".local" names are asked for over mDNS on the
chosen interfaces, so they work without nss-mdns and never leak to a DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

# Exported by the package outside its __all__ (strict mypy reads that as private); its defining module is private.
from zeroconf import AddressResolverIPv4  # type: ignore[attr-defined]
from zeroconf.asyncio import AsyncZeroconf

from fleetdesk.discovery.mdns import interface_choice
from fleetdesk.errors import DiscoveryError
from fleetdesk.inventory.records import Sighting

# RFC 1123 §2.1 host names: letters, digits, hyphens in labels of up to 63, 253 in all; "_" is
# tolerated because DHCP-assigned names on factory floors carry it.
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                        r"(\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def _literal(host: str) -> str | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    address, _, zone = text.partition("%")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"{ip}%{zone}" if zone and ip.version == 6 else str(ip)


def is_host(host: str) -> bool:
    """Whether `host` is an address or a well-formed host name (what `resolve_host` will try)."""
    return _literal(host) is not None or _HOST_NAME.fullmatch(host) is not None


async def resolve_host(
    host: str,
    port: int = 22,
    *,
    interfaces: Iterable[str] | None = None,
    timeout: float = 5.0,
) -> Sighting:
    """A Sighting (source "manual") for a host name or address the operator typed."""
    text = (host or "").strip()
    if not 1 <= port <= 65535:
        raise DiscoveryError(f"port {port} does not exist", fix="use a port from 1 to 65535 (SSH is 22)",
                             step="add device")
    literal = _literal(text)
    if literal is not None:
        return Sighting(source="manual", addresses=(literal,), port=port, seen_at=datetime.now(UTC))
    if not _HOST_NAME.fullmatch(text):
        raise DiscoveryError(f"{host!r} is neither an IP address nor a host name",
                             fix="type the device's address (e.g. 192.168.10.21) or its name (e.g. line2-pi-07)",
                             step="add device")
    # RFC 6762 §3: names under "local." are resolved by multicast on the link only, never sent to DNS.
    if text.rstrip(".").lower().endswith(".local"):
        addresses = await _mdns_resolve(text, interfaces, timeout)
    else:
        addresses = await _system_resolve(text, port, timeout)
    if not addresses:
        raise DiscoveryError(
            f"cannot find the address of {text!r}",
            fix="check the spelling, or type the device's IP address (its screen, router or `hostname -I` on it "
                "shows it)",
            step="add device",
        )
    return Sighting(source="manual", addresses=addresses, port=port, host_name=text, seen_at=datetime.now(UTC))


async def _system_resolve(name: str, port: int, timeout: float) -> tuple[str, ...]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout
        )
    except (socket.gaierror, UnicodeError, TimeoutError):
        return ()
    except OSError as exc:
        raise DiscoveryError(f"the system resolver failed for {name!r}: {exc}", fix="check the network settings",
                             step="add device", cause=exc) from exc
    seen: dict[str, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return tuple(seen)


async def _mdns_resolve(name: str, interfaces: Iterable[str] | None, timeout: float) -> tuple[str, ...]:
    chosen, version = interface_choice(interfaces)
    fqdn = name if name.endswith(".") else name + "."
    try:
        azc = AsyncZeroconf(interfaces=chosen, ip_version=version)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DiscoveryError(f"cannot open mDNS to look up {name!r}: {exc}",
                             fix="choose an address this computer has on the devices' network", step="add device",
                             cause=exc) from exc
    try:
        resolver = AddressResolverIPv4(fqdn)
        if await resolver.async_request(azc.zeroconf, int(timeout * 1000)):
            return tuple(resolver.parsed_addresses())
        return ()
    finally:
        await azc.async_close()
