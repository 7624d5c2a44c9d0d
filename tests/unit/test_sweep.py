"""The TCP/22 sweep: which ranges it refuses, how it paces itself, and what it reads (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from fleetdesk.discovery import BANNER_KEY, TokenBucket, banner_of, sweep, sweep_targets
from fleetdesk.errors import DiscoveryError


@pytest.mark.parametrize(
    ("cidr", "first", "last", "count"),
    [
        ("198.18.1.0/30", "198.18.1.1", "198.18.1.2", 2),
        ("198.18.1.6/30", "198.18.1.5", "198.18.1.6", 2),  # host bits set: the network they belong to
        ("198.18.1.4/31", "198.18.1.4", "198.18.1.5", 2),  # RFC 3021 point-to-point: both are hosts
        ("198.18.1.7/32", "198.18.1.7", "198.18.1.7", 1),
        (" 198.18.1.7 ", "198.18.1.7", "198.18.1.7", 1),
        ("198.18.0.0/22", "198.18.0.1", "198.18.3.254", 1022),
        ("2001:db8::/120", "2001:db8::1", "2001:db8::ff", 255),
    ],
)
def test_targets_are_the_hosts_of_the_network(cidr: str, first: str, last: str, count: int) -> None:
    targets = sweep_targets(cidr)
    assert (targets[0], targets[-1], len(targets)) == (first, last, count)


@pytest.mark.parametrize(
    ("cidr", "words"),
    [
        ("", "not a network"),
        ("line A", "not a network"),
        ("198.18.1.0/33", "not a network"),
        ("198.18.1.0/24; reboot", "not a network"),
        ("198.18.1.0/21", "refusing to sweep 2046 hosts"),
        ("10.0.0.0/8", "refusing to sweep 16777214 hosts"),
        ("0.0.0.0/0", "no device can have"),
        ("fe80::/64", "refusing to sweep"),
        ("224.0.0.0/28", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "no device can have"),
        ("0.0.0.0/30", "no device can have"),
        ("240.0.0.0/30", "no device can have"),
        ("::/128", "unspecified"),
    ],
)
def test_wrong_or_too_large_ranges_are_refused_with_a_fix(cidr: str, words: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        sweep_targets(cidr)
    assert words in info.value.message
    assert info.value.fix and info.value.step == "sweep"


def test_the_host_limit_is_the_callers() -> None:
    assert len(sweep_targets("198.18.1.0/28", max_hosts=14)) == 14
    with pytest.raises(DiscoveryError, match="refusing to sweep 14 hosts"):
        sweep_targets("198.18.1.0/28", max_hosts=13)


def test_token_bucket_paces_to_the_rate_after_the_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def go() -> None:
        bucket = TokenBucket(10.0, burst=5, clock=lambda: now[0], sleep=fake_sleep)
        for _ in range(5):
            await bucket.take()
        assert slept == [] and now[0] == 0.0  # the burst goes at once
        for _ in range(20):
            await bucket.take()
        assert now[0] == pytest.approx(2.0)  # then 10 per second: 20 more take 2 s of the bucket's clock
        assert all(s > 0 for s in slept)

    asyncio.run(go())
    with pytest.raises(ValueError):
        TokenBucket(0)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def loopback_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_sweep_reads_ssh_banners_and_ignores_other_services() -> None:
    live = {"now": 0, "most": 0}

    async def ssh_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        live["now"] += 1
        live["most"] = max(live["most"], live["now"])
        try:
            await asyncio.sleep(0.05)  # keep connections overlapping so the concurrency bound shows
            # RFC 4253 §4.2 allows lines before the identification string.
            writer.write(b"Authorised users only\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
            await writer.drain()
            await reader.read(100)
        finally:
            live["now"] -= 1
            writer.close()

    async def http_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    async def go() -> None:
        async with loopback_server(ssh_like) as ssh_port, loopback_server(http_like) as http_port, \
                loopback_server(silent) as silent_port:
            hits = await sweep("127.0.0.1/32", port=ssh_port, timeout=2)
            assert [h.addresses for h in hits] == [("127.0.0.1",)]
            assert hits[0].source == "sweep" and hits[0].port == ssh_port and hits[0].host_name is None
            assert hits[0].txt == ((BANNER_KEY, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"),)
            assert banner_of(hits[0]) == "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"
            # Only 127.0.0.1 listens; the other loopback addresses refuse at once.
            hits = await sweep("127.0.0.0/29", port=ssh_port, timeout=2)
            assert [h.addresses[0] for h in hits] == ["127.0.0.1"]
            assert await sweep("127.0.0.1", port=http_port, timeout=2) == []
            assert await sweep("127.0.0.1", port=silent_port, timeout=0.3) == []

    asyncio.run(go())


def test_sweep_never_has_more_connections_open_than_its_concurrency() -> None:
    live = {"now": 0, "most": 0}

    async def slow_ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        live["now"] += 1
        live["most"] = max(live["most"], live["now"])
        try:
            await asyncio.sleep(0.05)
            writer.write(b"SSH-2.0-Lab\r\n")
            await writer.drain()
        finally:
            live["now"] -= 1
            writer.close()

    async def go() -> int:
        server = await asyncio.start_server(slow_ssh, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        extra = [await asyncio.start_server(slow_ssh, f"127.0.0.{i}", port) for i in range(2, 7)]
        try:
            hits = await sweep("127.0.0.0/29", port=port, concurrency=2, rate=1000, timeout=2)
        finally:
            for s in (server, *extra):
                s.close()
                await s.wait_closed()
        return len(hits)

    assert asyncio.run(go()) == 6
    assert live["most"] == 2


@pytest.mark.parametrize("settings", [{"port": 0}, {"port": 70000}, {"rate": 0}, {"concurrency": 0},
                                      {"timeout": 0}, {"rate": 1e9}])
def test_sweep_settings_out_of_range_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(DiscoveryError):
        asyncio.run(sweep("127.0.0.1", **settings))  # type: ignore[arg-type]
