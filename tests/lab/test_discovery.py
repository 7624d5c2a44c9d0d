"""Discovery against the lab: real avahi and zeroconf responders in device namespaces, real sshd.

Browsing binds only to the lab bridge (198.18.0.1); the sweep covers only the lab subnet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.discovery import DiscoveryEvent, MdnsBrowser, banner_of, discover, resolve_host, sweep
from fleetdesk.errors import DiscoveryError
from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab

LAB = ["198.18.0.1"]

# Runs inside a device's network namespace (`ip netns exec`), bound to the device's address: it
# registers services with python-zeroconf (a real responder that answers queries and says goodbye)
# and multicasts hand-built responses for names zeroconf refuses to register (control
# characters, bytes that are not UTF-8, labels longer than the wire allows). Commands on stdin:
# "update KEY", "unregister KEY"; end of input unregisters the rest and exits.
ANNOUNCER = textwrap.dedent('''
    import asyncio, json, socket, struct, sys
    from zeroconf import IPVersion, ServiceInfo
    from zeroconf.asyncio import AsyncZeroconf

    spec = json.loads(sys.argv[1])
    addr = spec["address"]

    def name(labels):
        # RFC 1035 §3.1: length-prefixed labels, then the root; no compression.
        return b"".join(bytes([len(l)]) + l for l in labels) + b"\\0"

    def rr(owner, rtype, rdata, ttl, flush):
        # RFC 1035 §4.1.3; RFC 6762 §10.2: the top bit of the class is cache-flush.
        return owner + struct.pack("!HHIH", rtype, 1 | (0x8000 if flush else 0), ttl, len(rdata)) + rdata

    def raw_packet(item):
        instance = bytes.fromhex(item["instance_hex"])
        stype = [b"_fleetdesk", b"_tcp", b"local"]
        full = name([instance] + stype)
        target = name([item["server"].encode(), b"local"])
        txt = b"".join(bytes([len(s)]) + s for s in (bytes.fromhex(t) for t in item["txt_hex"]))
        answers = [
            rr(name(stype), 12, full, 4500, False),
            rr(full, 33, struct.pack("!HHH", 0, 0, item["port"]) + target, 120, True),
            rr(full, 16, txt, 4500, True),
            rr(target, 1, socket.inet_aton(addr), 120, True),
        ]
        return struct.pack("!HHHHHH", 0, 0x8400, 0, len(answers), 0, 0) + b"".join(answers)

    def malformed_packets():
        # A 64-byte label (length byte 0x40: not a length, not a pointer) and a "255-byte label"
        # (0xFF reads as a compression pointer past the end): both undecodable, both must be survived.
        stype = name([b"_fleetdesk", b"_tcp", b"local"])
        for bad in (bytes([64]) + b"X" * 64 + stype, bytes([255]) + b"Y" * 255 + stype):
            yield struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0) + rr(stype, 12, bad, 4500, False)

    def send_raw():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(addr))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        packets = list(malformed_packets()) + [raw_packet(item) for item in spec.get("raw", [])]
        for packet in packets:
            sock.sendto(packet, ("224.0.0.251", 5353))
        sock.close()

    async def main():
        azc = AsyncZeroconf(interfaces=[addr], ip_version=IPVersion.V4Only)
        infos = {}

        def make(item, properties):
            return ServiceInfo(
                item["type"], item["instance"] + "." + item["type"], port=item["port"], properties=properties,
                server=item["server"] + ".local.", parsed_addresses=[addr],
                host_ttl=item.get("host_ttl", 120), other_ttl=item.get("other_ttl", 4500),
            )

        items = spec.get("services", {})
        for key, item in items.items():
            info = make(item, {bytes.fromhex(k): (None if v is None else bytes.fromhex(v))
                               for k, v in item["txt"].items()})
            # cooperating_responders: announce at once, and let two devices claim one name.
            await azc.async_register_service(info, cooperating_responders=True)
            infos[key] = info
        send_raw()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, _, key = line.strip().partition(" ")
            info = infos[key]
            if command == "update":
                infos[key] = make(items[key], {b"state": b"updated"})
                await (await azc.async_update_service(infos[key]))
            elif command == "unregister":
                await (await azc.async_unregister_service(info))
                del infos[key]
            print("done", command, key, flush=True)
        await azc.async_close()

    asyncio.run(main())
''')


@contextlib.contextmanager
def announcer(tmp_path: Path, device: dict[str, Any], spec: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "announcer.py"
    script.write_text(ANNOUNCER)
    spec = {**spec, "address": device["address"]}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", device["netns"], sys.executable, str(script), json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            pytest.fail(f"announcer in {device['name']} did not start: {line!r} {proc.stderr.read()!r}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # only this test's own process, by its pid
        proc.wait(timeout=10)


def tell(proc: subprocess.Popen[str], command: str) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line.startswith("done"):
        proc.kill()
        pytest.fail(f"announcer did not do {command!r}: {line!r} {proc.stderr.read()[-2000:]!r}")  # type: ignore[union-attr]


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


def test_discover_finds_every_lab_device_under_both_service_types(fleet: Fleet) -> None:
    sightings = asyncio.run(discover(LAB, timeout=3.0))
    keys = [(s.service_type, s.instance_name) for s in sightings]
    assert len(keys) == len(set(keys))  # one per (service type, instance)
    for device in fleet.devices:
        host = f"{device['name']}.local."
        mine = [s for s in sightings if s.host_name == host]
        assert {s.service_type for s in mine} >= {"_ssh._tcp.local.", "_workstation._tcp.local."}, device["name"]
        assert all(s.addresses == (device["address"],) and s.source == "mdns" for s in mine)
        ssh = next(s for s in mine if s.service_type == "_ssh._tcp.local.")
        assert (ssh.instance_name, ssh.port) == (device["name"], 22)
        # avahi names the workstation service "host [mac]" (its publish-workstation default).
        workstation = next(s for s in mine if s.service_type == "_workstation._tcp.local.")
        assert workstation.instance_name is not None and workstation.instance_name.startswith(device["name"] + " [")


def test_hostile_names_duplicates_goodbye_and_ttl_expiry_are_reported_live(fleet: Fleet, tmp_path: Path) -> None:
    ipcs = [d for d in fleet.devices if d["profile"] == "ipc-x86"]
    dev_a, dev_b = ipcs[-1], ipcs[-2]
    tag = secrets.token_hex(3)
    stype = "_fleetdesk._tcp.local."
    meta = f"fd-{tag} $(reboot); `id` 'sq' \"dq\" |&<>*?"
    long63 = f"fd-{tag}-" + "é" * ((63 - len(f"fd-{tag}-")) // 2)
    long63 += "x" * (63 - len(long63.encode()))
    assert len(long63.encode()) == 63  # RFC 6763 §4.1.1 / RFC 1035: a label holds at most 63 bytes
    dup = f"fd-dup-{tag}"
    newline = f"fd-{tag}\nline two"
    not_utf8 = b"fd-" + tag.encode() + b"-\xff\xfe-caf\xc3\xa9"
    dotted = f"fd.{tag}.dotted"
    txt = {b"path": b"/opt/x; rm -rf / #", b"bin": b"\xff\xfe\x00\x80", b"flag": None, b"empty": b"", b"nl": b"a\nb"}

    def service(instance: str, server: str, txt: dict[bytes, bytes | None]) -> dict[str, Any]:
        return {"type": stype, "instance": instance, "port": 2222, "server": server, "host_ttl": 6, "other_ttl": 6,
                "txt": {k.hex(): None if v is None else v.hex() for k, v in txt.items()}}

    def raw(instance: bytes, server: str, txt: list[bytes]) -> dict[str, Any]:
        return {"instance_hex": instance.hex(), "server": server, "port": 22, "txt_hex": [t.hex() for t in txt]}

    server_a, server_b, server_raw = f"fd-a-{tag}", f"fd-b-{tag}", f"fd-raw-{tag}"
    spec_a = {
        "services": {
            "meta": service(meta, server_a, txt),
            "long": service(long63, server_a, {}),
            "dup": service(dup, server_a, {b"owner": b"a"}),
        },
        "raw": [
            raw(newline.encode(), server_raw, [b"k=1", b"k=2", b"\xff=\x00"]),
            raw(not_utf8, server_raw, []),
            raw(dotted.encode(), server_raw, [b"x=y"]),
        ],
    }
    spec_b = {"services": {"dup": service(dup, server_b, {b"owner": b"b"})}}
    events: list[DiscoveryEvent] = []

    def current(kind: str, instance: str) -> DiscoveryEvent | None:
        return next((e for e in reversed(events) if e.kind == kind and e.sighting.instance_name == instance), None)

    async def go() -> None:
        async with MdnsBrowser(LAB, check_interval=0.5, on_event=events.append):
            with announcer(tmp_path, dev_a, spec_a) as proc_a, announcer(tmp_path, dev_b, spec_b) as proc_b:
                expected_not_utf8 = not_utf8.decode("utf-8", "replace")  # zeroconf decodes names this way
                for instance in (meta, long63, dup, newline, expected_not_utf8, dotted):
                    await until(lambda i=instance: current("seen", i), 15, f"{instance!r} seen")

                seen = current("seen", meta)
                assert seen is not None
                s = seen.sighting
                assert (s.service_type, s.host_name, s.addresses, s.port) == (
                    stype, f"{server_a}.local.", (dev_a["address"],), 2222)
                assert s.txt == tuple(txt.items())  # raw bytes, in order, booleans as None
                long_event = current("seen", long63)
                assert long_event is not None and long_event.sighting.addresses == (dev_a["address"],)
                raw_event = current("seen", newline)
                assert raw_event is not None
                assert raw_event.sighting.txt == ((b"k", b"1"), (b"k", b"2"), (b"\xff", b"\x00"))
                assert raw_event.sighting.host_name == f"{server_raw}.local."
                assert raw_event.sighting.addresses == (dev_a["address"],)
                dup_event = current("seen", dup)
                assert dup_event is not None
                assert dup_event.sighting.host_name in (f"{server_a}.local.", f"{server_b}.local.")
                # The undecodable packets were dropped without taking the browser down.
                assert not any("XXXX" in (e.sighting.instance_name or "") for e in events)

                tell(proc_a, "update meta")
                updated = await until(lambda: current("updated", meta), 10, "TXT update")
                assert updated.sighting.txt == ((b"state", b"updated"),)

                tell(proc_a, "unregister meta")  # goodbye packets (TTL 0)
                await until(lambda: current("gone", meta), 10, "goodbye seen as gone")

                # Outliving the 6 s host TTL while the responder answers the refresh queries: still there.
                await asyncio.sleep(7)
                assert not [e for e in events if e.kind == "gone" and e.sighting.instance_name in (long63, dup)]

                proc_a.kill()  # no goodbye: the records must time out (host TTL 6 s)
                proc_a.wait(timeout=10)
                gone = await until(lambda: current("gone", long63), 20, "TTL expiry seen as gone")
                assert gone.sighting.addresses == (dev_a["address"],)
                # The duplicate name lives on at the device that still answers for it.
                def dup_now() -> DiscoveryEvent | None:
                    return next((e for e in reversed(events) if e.sighting.instance_name == dup), None)

                def held_by_b() -> bool:
                    e = dup_now()
                    return e is not None and e.kind != "gone" and e.sighting.host_name == f"{server_b}.local." \
                        and e.sighting.txt == ((b"owner", b"b"),)

                await until(held_by_b, 10, "duplicate held by device B")
                assert current("gone", dup) is None

                proc_b.stdin.close()  # type: ignore[union-attr]
                proc_b.wait(timeout=10)
                await until(lambda: current("gone", dup), 10, "last holder of the duplicate said goodbye")

    asyncio.run(go())


def test_sweep_of_the_lab_subnet_finds_exactly_its_devices(fleet: Fleet) -> None:
    network = ip_network("198.18.1.0/27")
    expected = sorted((d["address"] for d in fleet.devices if ip_address(d["address"]) in network),
                      key=ip_address)
    hits = asyncio.run(sweep(str(network), rate=100, concurrency=16, timeout=3))
    assert [h.addresses[0] for h in hits] == expected
    for hit in hits:
        assert hit.source == "sweep" and hit.port == 22
        assert banner_of(hit).startswith("SSH-2.0-OpenSSH_")


def test_manual_add_resolves_addresses_and_local_names(fleet: Fleet) -> None:
    device = fleet.devices[-1]

    async def go() -> None:
        by_address = await resolve_host(device["address"])
        assert by_address.addresses == (device["address"],) and by_address.source == "manual"
        by_name = await resolve_host(f"{device['name']}.local", interfaces=LAB, timeout=3)
        assert by_name.addresses == (device["address"],) and by_name.host_name == f"{device['name']}.local"
        with pytest.raises(DiscoveryError) as info:
            await resolve_host(f"no-such-device-{secrets.token_hex(3)}.local", interfaces=LAB, timeout=1)
        assert info.value.fix

    asyncio.run(go())
