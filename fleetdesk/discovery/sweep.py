"""The opt-in sweep of TCP port 22 over a network the operator types, bounded in size and in rate.

Owns the checks that refuse a wrong or too large range, the token bucket that paces connection
attempts, and reading each open port's SSH identification string (the banner).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fleetdesk.errors import DiscoveryError
from fleetdesk.inventory.records import Sighting

DEFAULT_MAX_HOSTS = 1024
DEFAULT_RATE = 200.0  # connection attempts per second
DEFAULT_CONCURRENCY = 64
DEFAULT_TIMEOUT = 2.0  # seconds, for the connection and again for the banner

# The TXT key a sweep Sighting carries the SSH banner under (Sighting has no banner field).
BANNER_KEY = b"ssh-banner"

# RFC 4253 §4.2: the server may send other lines before "SSH-protoversion-softwareversion";
# the identification line is at most 255 characters including CR LF.
_BANNER_MAX = 255
_PRELUDE_MAX = 8192

_IPV4_NEVER = (
    ipaddress.ip_network("0.0.0.0/8"),  # "this network" (RFC 1122 §3.2.1.3): not a destination
    ipaddress.ip_network("240.0.0.0/4"),  # reserved, and 255.255.255.255 the limited broadcast (RFC 919)
)


class TokenBucket:
    """Paces events to `rate` per second with bursts of at most `burst` (a classic token bucket)."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Wait until one token is available and take it."""
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                # The tolerance keeps float rounding from turning the last wait into an endless one.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self._sleep((1 - self._tokens) / self.rate)


def sweep_targets(cidr: str, *, max_hosts: int = DEFAULT_MAX_HOSTS) -> list[str]:
    """The host addresses of `cidr`, or DiscoveryError when the range is wrong or too large."""
    text = (cidr or "").strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise DiscoveryError(f"{cidr!r} is not a network in CIDR notation", step="sweep",
                             fix="type the devices' network like 192.168.10.0/24, or one address") from None
    if max_hosts < 1:
        raise DiscoveryError(f"a limit of {max_hosts} hosts allows no sweep", fix="use a limit of at least 1",
                             step="sweep")
    if network.is_multicast:
        raise DiscoveryError(f"{network} is a multicast range, where no device has an SSH server",
                             fix="type the unicast network the devices are on, e.g. 192.168.10.0/24", step="sweep")
    if network.version == 4 and any(network.overlaps(bad) for bad in _IPV4_NEVER):
        raise DiscoveryError(f"{network} includes addresses no device can have (0.0.0.0/8, 240.0.0.0/4, broadcast)",
                             fix="type the devices' own network, e.g. 192.168.10.0/24", step="sweep")
    if network.version == 6 and network.is_unspecified:
        raise DiscoveryError(f"{network} is the unspecified address", fix="type a device's address", step="sweep")
    # /31 and /32 (IPv4) and /127, /128 (IPv6) have no network or broadcast address to leave out.
    count = network.num_addresses if network.num_addresses <= 2 else network.num_addresses - 2
    if count > max_hosts:
        raise DiscoveryError(
            f"refusing to sweep {count} hosts in {network} (the limit is {max_hosts})",
            fix="type a smaller network (a /22 has 1022 hosts), or raise the limit on purpose",
            step="sweep",
        )
    hosts = [network.network_address] if network.num_addresses == 1 else list(network.hosts())
    return [str(h) for h in hosts]


async def read_banner(address: str, port: int = 22, timeout: float = DEFAULT_TIMEOUT) -> bytes | None:
    """The SSH identification line a server sends first, or None (closed, silent, not SSH)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(timeout):
            seen = 0
            while seen < _PRELUDE_MAX:
                line = await reader.readline()
                if not line:
                    return None
                seen += len(line)
                if line.startswith(b"SSH-"):
                    return line[:_BANNER_MAX].rstrip(b"\r\n")
            return None
    except (OSError, TimeoutError, ValueError):  # ValueError: a line longer than the stream limit
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def sweep(
    cidr: str,
    *,
    port: int = 22,
    rate: float = DEFAULT_RATE,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT,
    max_hosts: int = DEFAULT_MAX_HOSTS,
) -> list[Sighting]:
    """Connect to `port` on every host of `cidr`, paced to `rate` attempts per second.

    Returns one Sighting (source "sweep") per host that answered with an SSH banner, in address
    order; the banner is the TXT pair (BANNER_KEY, banner).
    """
    if not 1 <= port <= 65535:
        raise DiscoveryError(f"port {port} does not exist", fix="use a port from 1 to 65535 (SSH is 22)", step="sweep")
    if not 0 < rate <= 10_000 or not 1 <= concurrency <= 1024 or not 0 < timeout <= 60:
        raise DiscoveryError(
            f"sweep settings out of range (rate {rate}/s, concurrency {concurrency}, timeout {timeout} s)",
            fix="use a rate of 1-10000 per second, 1-1024 connections at once and a 0-60 s timeout", step="sweep",
        )
    targets = sweep_targets(cidr, max_hosts=max_hosts)
    bucket = TokenBucket(rate, burst=max(1, min(concurrency, int(rate // 10) or 1)))
    slots = asyncio.Semaphore(concurrency)

    async def attempt(address: str) -> Sighting | None:
        async with slots:
            await bucket.take()
            banner = await read_banner(address, port, timeout)
        if banner is None:
            return None
        return Sighting(source="sweep", addresses=(address,), port=port, txt=((BANNER_KEY, banner),),
                        seen_at=datetime.now(UTC))

    results = await asyncio.gather(*(attempt(a) for a in targets))
    return [s for s in results if s is not None]


def banner_of(sighting: Sighting) -> str:
    """The SSH banner a sweep Sighting carries, as text ("" when it has none)."""
    for key, value in sighting.txt:
        if key == BANNER_KEY and value is not None:
            return value.decode("utf-8", "backslashreplace")
    return ""
