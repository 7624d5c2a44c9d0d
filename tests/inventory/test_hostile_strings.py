"""Whatever a device announces is stored and returned exactly: names, TXT bytes and probe output are data.

Every test runs on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import pytest

from fleetdesk.inventory import Inventory, ProbeFacts, Sighting

HOSTILE = [
    "rpi'; reboot; echo \"$(id)\" `uname` | tee /etc/passwd && rm -rf / #",
    "line one\nline two\r\n\ttabbed",
    "é" * 127 + "x",  # a 255-byte label
    b"caf\xe9 \xff\xfe\x80".decode("utf-8", "surrogateescape"),  # not UTF-8 on the wire
    b"caf\xe9".decode("utf-8", "replace"),
    "nul\x00inside",
    "\u241bu0041 looks like an escape \u241b",
    "  spaces around  ",
    "🚀 <b>bold</b> &amp; %s {0} \\x00",
]


@pytest.mark.parametrize("text", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_announced_names_round_trip_exactly(inventory: Inventory, text: str) -> None:
    txt = ((b"path", text.encode("utf-8", "surrogateescape")), (b"flag", None))
    device = inventory.record_sighting(Sighting(
        "mdns", ("198.18.1.10",), host_name=text + ".local.", instance_name=text, service_type="_ssh._tcp.local.",
        txt=txt))
    stored = inventory.device(device.id)
    assert stored.mdns_names == (text + ".local.", text)
    assert stored.name == text
    assert stored.hostname == stored.name
    [record] = inventory.service_records(device.id)
    assert (record.instance_name, record.host_name, record.txt) == (text, text + ".local.", txt)
    # The stored form is also what lookups compare against.
    assert inventory.device(text).id == device.id
    assert inventory.device(text + ".local.").id == device.id


def test_probe_output_round_trips_exactly(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.11")
    facts = ProbeFacts(hostname=HOSTILE[0], machine_id=HOSTILE[3], os_name=HOSTILE[1], model=HOSTILE[5] + "\n",
                       cpu_model=HOSTILE[2], dmi_product=HOSTILE[6], gpu=HOSTILE[8])
    assert inventory.save_probe(device.id, facts, profile=None).facts == facts
    assert inventory.device(device.id).facts == facts
    assert inventory.device(HOSTILE[0]).id == device.id


def test_txt_records_keep_every_byte_and_the_difference_between_no_value_and_empty(inventory: Inventory) -> None:
    txt = (
        (b"novalue", None),
        (b"empty", b""),
        (b"k=ey", b"a=b=c"),
        (b"bin", bytes(range(256))),
        (b"dup", b"1"),
        (b"dup", b"2"),
        (b"", b"no key"),
        (b"big", b"x" * 4000),
    )
    device = inventory.record_sighting(Sighting("mdns", ("198.18.1.12",), instance_name="t",
                                                service_type="_fleetdesk._tcp.local.", txt=txt))
    assert inventory.service_records(device.id)[0].txt == txt
    # A later announcement replaces the TXT record; an empty one is kept as empty.
    inventory.record_sighting(Sighting("mdns", ("198.18.1.12",), instance_name="t",
                                       service_type="_fleetdesk._tcp.local."))
    assert inventory.service_records(device.id)[0].txt == ()


def test_duplicate_instance_names_on_different_devices_stay_two_devices(inventory: Inventory) -> None:
    for address in ("198.18.1.20", "198.18.1.21"):
        inventory.record_sighting(Sighting("mdns", (address,), instance_name="Camera \"A\"",
                                           service_type="_ssh._tcp.local."))
    assert [(d.name, d.address) for d in inventory.devices()] == [
        ('Camera "A"', "198.18.1.20"), ('Camera "A"-2', "198.18.1.21")]
