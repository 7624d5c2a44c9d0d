"""Live mDNS browsing (python-zeroconf's asyncio API): devices appear, update and go away as events.

Owns the service types FleetDesk browses, turning resolved services into Sightings, and the
liveness of each service (goodbye packets, and expiry of its SRV record when nobody answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

# DNSAddress ... DNSText: the package exports them outside its __all__, which strict mypy reads as
# private. Their defining modules (zeroconf._dns, ...) are the private ones, so the package's names are kept.
from zeroconf import (  # type: ignore[attr-defined]
    BadTypeInNameException,
    DNSAddress,
    DNSOutgoing,
    DNSQuestion,
    DNSService,
    DNSText,
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from fleetdesk.errors import DiscoveryError
from fleetdesk.inventory.records import Sighting

log = logging.getLogger(__name__)

SERVICE_TYPES = ("_ssh._tcp.local.", "_workstation._tcp.local.", "_fleetdesk._tcp.local.")
STAGGER_S = 1.0  # the first service type is browsed alone this long before the others (0: all at once)

# DNS numbers (RFC 1035 §3.2.2, RFC 2782 for SRV); zeroconf keeps its own copies private.
_TYPE_A = 1
_TYPE_TXT = 16
_TYPE_SRV = 33
_CLASS_IN = 1
_FLAGS_QUERY = 0x0000

# RFC 6762 §5.2: a querier that wants to keep a record refreshes it at 80%, 85%, 90% and 95%
# of its lifetime; a record nobody refreshed by 100% is gone.
_REFRESH_PERCENTS = (80, 85, 90, 95)

EventKind = Literal["seen", "updated", "gone"]


@dataclass(frozen=True)
class DiscoveryEvent:
    """A service appeared ("seen"), changed ("updated") or went away ("gone")."""

    kind: EventKind
    sighting: Sighting


def parse_txt(text: bytes) -> tuple[tuple[bytes, bytes | None], ...]:
    """TXT rdata as (key, value) pairs in wire order, duplicates kept (RFC 6763 §6.3-6.4).

    A string without "=" is a boolean attribute (value None); "key=" has an empty value. A
    string that overruns the rdata is cut where the data ends.
    """
    pairs: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < len(text):
        length = text[i]
        item = text[i + 1:i + 1 + length]
        i += 1 + length
        if not item:
            continue  # RFC 6763 §6.1: an empty TXT record is one zero-length string
        key, eq, value = item.partition(b"=")
        pairs.append((key, value if eq else None))
    return tuple(pairs)


def instance_label(name: str, service_type: str) -> str:
    """The instance part of a full service name ("My Pi._ssh._tcp.local." -> "My Pi").

    zeroconf hands names over as text, with bytes that were not UTF-8 replaced by U+FFFD, and
    dots inside the instance label kept; DNS names compare case-insensitively (RFC 6762 §16).
    """
    suffix = "." + service_type
    if name.lower().endswith(suffix.lower()):
        return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class NetworkInterface:
    """One address of a network card of this computer, as the discovery panel offers it."""

    name: str  # "eth0"
    address: str  # "198.18.0.1"
    prefix: int  # 24

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address}/{self.prefix})"


def local_interfaces() -> list[NetworkInterface]:
    """The IPv4 addresses of this computer's network cards, loopback last (read locally, nothing is sent)."""
    import ifaddr  # zeroconf's own dependency for the same question

    found = [NetworkInterface(adapter.nice_name, ip.ip, ip.network_prefix)
             for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)]
    return sorted(found, key=lambda i: (i.address.startswith("127."), i.name, i.address))


def interface_choice(interfaces: Iterable[str] | None) -> tuple[list[str] | InterfaceChoice, IPVersion]:
    """zeroconf's interfaces and IP version for the operator's choice (None = every interface, IPv4)."""
    if interfaces is None:
        return InterfaceChoice.All, IPVersion.V4Only
    chosen = [str(i).strip() for i in interfaces]
    if not chosen:
        raise DiscoveryError("no network interface was chosen for mDNS",
                             fix="name at least one address of this computer, e.g. --interface 192.168.1.20",
                             step="mdns start")
    versions = set()
    for address in chosen:
        try:
            versions.add(ipaddress.ip_address(address.split("%", 1)[0]).version)
        except ValueError:
            raise DiscoveryError(f"{address!r} is not an IP address of this computer",
                                 fix="give the address of the network card facing the devices (see `ip addr`)",
                                 step="mdns start") from None
    return chosen, IPVersion.V6Only if versions == {6} else IPVersion.All if 6 in versions else IPVersion.V4Only


class MdnsBrowser:
    """Browses mDNS on the chosen interfaces and reports each service as DiscoveryEvents.

    Events go to `on_event` (called on the loop) and to `events()`; `sightings()` is the
    current picture. One physical device announcing several services or names yields several
    sightings with the same host_name and addresses: the inventory merges them.
    """

    def __init__(
        self,
        interfaces: Iterable[str] | None = None,
        *,
        service_types: Iterable[str] = SERVICE_TYPES,
        on_event: Callable[[DiscoveryEvent], None] | None = None,
        resolve_timeout: float = 3.0,
        check_interval: float = 1.0,
        stagger: float = STAGGER_S,
    ) -> None:
        self._interfaces, self._ip_version = interface_choice(interfaces)
        self._types = [t if t.endswith(".") else t + "." for t in service_types]
        self._on_event = on_event
        self._resolve_ms = int(resolve_timeout * 1000)
        self._check_interval = check_interval
        self._azc: AsyncZeroconf | None = None
        self._browsers: list[AsyncServiceBrowser] = []
        self._stagger_s = stagger
        self._later: asyncio.Task[None] | None = None
        self._known: dict[tuple[str, str], tuple[str, Sighting]] = {}  # key -> (full name, sighting)
        self._resolving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._refreshed: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (SRV created, last %)
        self._liveness: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[DiscoveryEvent | None] = asyncio.Queue()
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> MdnsBrowser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the mDNS sockets on the chosen interfaces and start browsing."""
        # Resolutions start on this loop by name: zeroconf's callbacks may come while Qt dispatches the loop's
        # events with no loop marked running (the GUI tests' qasync loop between steps), where asyncio's
        # create_task() would refuse and drop the resolution.
        self._loop = asyncio.get_running_loop()
        try:
            self._azc = AsyncZeroconf(interfaces=self._interfaces, ip_version=self._ip_version)
        except (OSError, ValueError, RuntimeError) as exc:
            raise DiscoveryError(f"cannot open mDNS on {self._interfaces}: {exc}",
                                 fix="choose an address this computer has on the devices' network (see `ip addr`)",
                                 step="mdns start", cause=exc) from exc
        # The first type (_ssh: what FleetDesk connects to) alone first; the others once its answers are in.
        # Measured on a lab of 100 devices (benchmarks/discovery_probe.py): browsing all three at once doubles
        # the answers the loop parses in the first second, and every device reaches the inventory later.
        first, rest = (self._types[:1], self._types[1:]) if self._stagger_s > 0 else (self._types, [])
        self._browsers.append(AsyncServiceBrowser(self._azc.zeroconf, first, handlers=[self._on_change]))
        if rest:
            self._later = asyncio.create_task(self._browse_later(rest), name="mdns browse later")
        self._liveness = asyncio.create_task(self._watch_liveness(), name="mdns liveness")

    async def _browse_later(self, types: list[str]) -> None:
        await asyncio.sleep(self._stagger_s)
        if not self._stopped and self._azc is not None:
            self._browsers.append(AsyncServiceBrowser(self._azc.zeroconf, types, handlers=[self._on_change]))

    async def stop(self) -> None:
        """Stop browsing, close the sockets and end `events()`."""
        if self._stopped:
            return
        self._stopped = True
        tasks = [t for t in (self._liveness, self._later, *self._resolving.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for browser in self._browsers:
            await browser.async_cancel()
        if self._azc is not None:
            await self._azc.async_close()
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[DiscoveryEvent]:
        """Every event from now until stop(), in order (one consumer)."""
        while (event := await self._queue.get()) is not None:
            yield event

    async def settle(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the resolutions under way to finish."""
        pending = list(self._resolving.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def sightings(self) -> list[Sighting]:
        """The services resolved and not gone, one per (service type, instance)."""
        return sorted((s for _, s in self._known.values()),
                      key=lambda s: (s.host_name or "", s.service_type or "", s.instance_name or ""))

    # -- zeroconf callbacks (on the loop) -------------------------------------------------

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if self._stopped:
            return
        key = (service_type.lower(), name.lower())
        if state_change is ServiceStateChange.Removed:
            self._cancel_resolve(key)
            self._gone(key)
            return
        self._start_resolve(key, service_type, name)

    def _start_resolve(self, key: tuple[str, str], service_type: str, name: str) -> None:
        self._cancel_resolve(key)
        assert self._loop is not None  # set by start(), before any browser exists
        task = self._loop.create_task(self._resolve(key, service_type, name), name=f"mdns resolve {name!r}")
        self._resolving[key] = task
        task.add_done_callback(lambda t, k=key: self._resolve_done(k, t))  # type: ignore[misc]

    def _cancel_resolve(self, key: tuple[str, str]) -> None:
        task = self._resolving.pop(key, None)
        if task is not None:
            task.cancel()

    def _resolve_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._resolving.get(key) is task:
            del self._resolving[key]
        if not task.cancelled() and task.exception() is not None:
            # A device's answer must never stop discovery; say what happened and go on.
            log.warning("mDNS: could not resolve %r: %r", key[1], task.exception())

    async def _resolve(self, key: tuple[str, str], service_type: str, name: str) -> None:
        assert self._azc is not None
        zc = self._azc.zeroconf
        try:
            info = AsyncServiceInfo(service_type, name)
        except BadTypeInNameException:
            # Names zeroconf will not model (control characters, labels longer than 63 bytes
            # after U+FFFD replacement) still arrive from the wire: read their records directly.
            sighting = await self._resolve_from_cache(zc, service_type, name)
        else:
            await info.async_request(zc, self._resolve_ms)
            version = IPVersion.All if self._ip_version is not IPVersion.V4Only else IPVersion.V4Only
            sighting = _sighting(service_type, name, info.server, info.port,
                                 info.parsed_addresses(version), info.text or b"")
        if sighting is not None:
            self._report(key, name, sighting)

    async def _resolve_from_cache(self, zc: Zeroconf, service_type: str, name: str) -> Sighting | None:
        deadline = current_time_millis() + self._resolve_ms
        asked = False
        while True:
            now = current_time_millis()
            srv = _latest_srv(zc, name)
            if srv is not None and not srv.is_expired(now):
                txt = zc.cache.get_by_details(name, _TYPE_TXT, _CLASS_IN)
                addresses = [
                    socket.inet_ntoa(r.address)
                    for r in zc.cache.get_all_by_details(srv.server, _TYPE_A, _CLASS_IN)
                    if isinstance(r, DNSAddress) and not r.is_expired(now) and len(r.address) == 4
                ]
                text = txt.text if isinstance(txt, DNSText) and not txt.is_expired(now) else b""
                if addresses or now >= deadline:
                    return _sighting(service_type, name, srv.server, srv.port, addresses, text)
            elif now >= deadline:
                return None
            if not asked:
                self._ask(zc, [(name, _TYPE_SRV), (name, _TYPE_TXT)])
                asked = True
            await asyncio.sleep(0.1)

    def _report(self, key: tuple[str, str], name: str, sighting: Sighting) -> None:
        previous = self._known.get(key)
        self._known[key] = (name, sighting)
        if previous is None:
            self._emit(DiscoveryEvent("seen", sighting))
        elif replace(previous[1], seen_at=None) != replace(sighting, seen_at=None):
            self._emit(DiscoveryEvent("updated", sighting))

    def _gone(self, key: tuple[str, str]) -> None:
        known = self._known.pop(key, None)
        self._refreshed.pop(key, None)
        if known is not None:
            self._emit(DiscoveryEvent("gone", replace(known[1], seen_at=datetime.now(UTC))))

    def _emit(self, event: DiscoveryEvent) -> None:
        self._queue.put_nowait(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("mDNS: an event subscriber failed on %s", event.kind)

    # -- liveness ------------------------------------------------------------------------

    async def _watch_liveness(self) -> None:
        """Refresh each known service's SRV record as it ages; one nobody refreshes is gone.

        zeroconf raises every PTR TTL to at least 1125 s, so a device that lost power would
        otherwise stay listed for that long; its SRV record (the host TTL, 120 s from avahi)
        is the honest clock.
        """
        assert self._azc is not None
        zc = self._azc.zeroconf
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                self._check_liveness(zc)
            except Exception:
                # One bad record must not end liveness for every other device.
                log.exception("mDNS: liveness check failed")

    def _check_liveness(self, zc: Zeroconf) -> None:
        """Say "gone" for services whose SRV record expired; ask again for the ones ageing."""
        now = current_time_millis()
        ask: list[tuple[str, int]] = []
        for key, (name, sighting) in list(self._known.items()):
            srv = _latest_srv(zc, name)
            if srv is None or srv.is_expired(now):
                self._cancel_resolve(key)
                self._gone(key)
                continue
            holder = (srv.server.lower(), srv.port)
            if holder != ((sighting.host_name or "").lower(), sighting.port) and key not in self._resolving:
                # Another responder now holds the name (a duplicate instance whose first owner went away).
                self._start_resolve(key, sighting.service_type or key[0], name)
            created, done = self._refreshed.get(key, (srv.created, 0))
            if created != srv.created:
                done = 0  # a fresh answer arrived: its lifetime starts over
            due = [p for p in _REFRESH_PERCENTS if p > done and now >= srv.get_expiration_time(p)]
            if due:
                ask.append((name, _TYPE_SRV))
                done = due[-1]
            self._refreshed[key] = (srv.created, done)
        if ask:
            self._ask(zc, ask)

    @staticmethod
    def _ask(zc: Zeroconf, questions: list[tuple[str, int]]) -> None:
        out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
        for name, type_ in questions:
            out.add_question(DNSQuestion(name, type_, _CLASS_IN))
        zc.async_send(out)


def _latest_srv(zc: Zeroconf, name: str) -> DNSService | None:
    # Two responders may claim one name (a duplicate instance); the record that lives longest is current.
    records = [r for r in zc.cache.get_all_by_details(name, _TYPE_SRV, _CLASS_IN) if isinstance(r, DNSService)]
    return max(records, key=lambda r: r.get_expiration_time(100), default=None)


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.version, int(ip)


def _sighting(service_type: str, name: str, server: str | None, port: int | None,
              addresses: Iterable[str], text: bytes) -> Sighting | None:
    addrs = tuple(sorted(set(addresses), key=_address_order))
    if not server and not addrs:
        return None  # nothing to connect to yet; an update will bring the records
    return Sighting(
        source="mdns",
        addresses=addrs,
        port=port if port is not None else 22,
        host_name=server,
        instance_name=instance_label(name, service_type),
        service_type=service_type,
        txt=parse_txt(text),
        seen_at=datetime.now(UTC),
    )


async def discover(
    interfaces: Iterable[str] | None = None,
    timeout: float = 3.0,
    *,
    service_types: Iterable[str] = SERVICE_TYPES,
) -> list[Sighting]:
    """Browse for `timeout` seconds and return every service resolved and still present.

    One Sighting per (service type, instance name); sorted by host name, type, instance.
    """
    if not 0 < timeout <= 600:
        raise DiscoveryError(f"a browse time of {timeout} s is out of range", fix="use 1 to 600 seconds",
                             step="mdns discover")
    browser = MdnsBrowser(interfaces, service_types=service_types)
    await browser.start()
    try:
        await asyncio.sleep(timeout)
        # Resolutions already under way get a moment to finish rather than being cut off.
        await browser.settle(1.0)
        return browser.sightings()
    finally:
        await browser.stop()
