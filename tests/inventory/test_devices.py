"""Devices in the inventory: sightings, manual adds, lookups, probes, connection settings, identity merges.

Every test runs on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetdesk.errors import DeviceNotFoundError, InventoryError
from fleetdesk.inventory import Inventory, ProbeFacts, Sighting, open_inventory

T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def ssh(host: str, address: str, *, at: datetime = T0, instance: str | None = None) -> Sighting:
    return Sighting("mdns", (address,), host_name=f"{host}.local.", instance_name=instance or host,
                    service_type="_ssh._tcp.local.", seen_at=at)


ORIN = ProbeFacts(hostname="orin-01", machine_id="0f3e9b2c", arch="aarch64", os_name="Ubuntu 22.04.4 LTS",
                  kernel="5.15.136-tegra", python="3.10.12", cpu_model="ARMv8 Processor rev 1 (v8l)", cpu_count=12,
                  ram_mb=62841, disk_total_mb=57000, disk_free_mb=31000, model="NVIDIA Jetson AGX Orin Developer Kit",
                  tegra_release="# R36 (release), REVISION: 3.0", gpu="Orin (nvgpu)", gpu_memory_mb=62841)


def test_a_sighting_adds_a_device_named_after_its_host(inventory: Inventory) -> None:
    device = inventory.record_sighting(ssh("rpi4-01", "198.18.1.10"))
    assert device.name == "rpi4-01"
    assert device.hostname == "rpi4-01"
    assert device.addresses == ("198.18.1.10",)
    assert device.mdns_names == ("rpi4-01.local.", "rpi4-01")
    assert device.services == ("_ssh._tcp.local.",)
    assert (device.port, device.username, device.transport, device.source) == (22, "root", "asyncssh", "mdns")
    assert device.online and device.first_seen == T0 and device.last_seen == T0
    assert device.profile is None and device.probed_at is None and device.facts == ProbeFacts()
    assert inventory.devices() == [device]


def test_the_same_host_under_another_service_and_address_is_one_device(inventory: Inventory) -> None:
    first = inventory.record_sighting(ssh("rpi5-01", "198.18.1.11"))
    later = T0 + timedelta(seconds=30)
    again = inventory.record_sighting(Sighting(
        "mdns", ("198.18.2.11", "198.18.1.11"), host_name="RPI5-01.local.", instance_name="rpi5-01 [dc:a6:32:01:02:03]",
        service_type="_workstation._tcp.local.", seen_at=later))
    assert again.id == first.id
    assert again.addresses == ("198.18.1.11", "198.18.2.11")
    assert again.mdns_names == ("rpi5-01.local.", "rpi5-01", "RPI5-01.local.", "rpi5-01 [dc:a6:32:01:02:03]")
    assert again.services == ("_ssh._tcp.local.", "_workstation._tcp.local.")
    assert again.last_seen == later and again.first_seen == T0
    assert len(inventory.devices()) == 1


def test_a_shared_address_on_the_same_port_is_the_same_device_and_another_port_is_not(inventory: Inventory) -> None:
    swept = inventory.record_sighting(Sighting("sweep", ("198.18.1.12",), seen_at=T0))
    assert swept.name == "198.18.1.12" and swept.source == "sweep"
    announced = inventory.record_sighting(ssh("ipc-01", "198.18.1.12", at=T0 + timedelta(seconds=1)))
    assert announced.id == swept.id
    assert announced.name == "198.18.1.12"  # the operator may already know it by that name
    assert announced.hostname == "ipc-01"
    behind_nat = inventory.record_sighting(Sighting("sweep", ("198.18.1.12",), port=2222))
    assert behind_nat.id != swept.id
    assert behind_nat.name == "198.18.1.12-2"


def test_only_an_ssh_service_says_where_ssh_listens(inventory: Inventory) -> None:
    # avahi announces _workstation._tcp on port 9 (discard); it may arrive before _ssh._tcp.
    workstation = inventory.record_sighting(Sighting(
        "mdns", ("198.18.1.12",), port=9, host_name="rpi5-02.local.", instance_name="rpi5-02 [dc:a6:32:00:00:02]",
        service_type="_workstation._tcp.local.", seen_at=T0))
    assert workstation.port == 22
    ssh_service = inventory.record_sighting(replace(ssh("rpi5-02", "198.18.1.12"), port=2222))
    assert ssh_service.id == workstation.id and ssh_service.port == 2222
    # Another non-SSH service at that address, without a host name, is the same device too.
    other = inventory.record_sighting(Sighting("mdns", ("198.18.1.12",), port=8080, instance_name="rpi5-02 web",
                                               service_type="_http._tcp.local.", seen_at=T0))
    assert other.id == workstation.id and other.port == 2222
    assert len(inventory.devices()) == 1


def test_the_newest_address_comes_first_and_an_address_moves_with_its_device(inventory: Inventory) -> None:
    a = inventory.record_sighting(ssh("ipc-01", "198.18.1.20"))
    b = inventory.record_sighting(ssh("ipc-02", "198.18.1.21"))
    # DHCP gave ipc-01 a new address and ipc-02 the old one of ipc-01.
    inventory.record_sighting(ssh("ipc-01", "198.18.1.30", at=T0 + timedelta(minutes=1)))
    moved = inventory.record_sighting(ssh("ipc-02", "198.18.1.20", at=T0 + timedelta(minutes=2)))
    assert moved.id == b.id and moved.addresses == ("198.18.1.20", "198.18.1.21")
    assert inventory.device(a.id).addresses == ("198.18.1.30",)
    assert inventory.device("198.18.1.20").id == b.id


def test_manual_add_by_address_and_by_name(inventory: Inventory) -> None:
    by_ip = inventory.add_device("198.18.1.40", port=2200, username="fleet")
    assert (by_ip.name, by_ip.addresses, by_ip.port, by_ip.username) == ("198.18.1.40", ("198.18.1.40",), 2200, "fleet")
    assert by_ip.source == "manual" and not by_ip.online and by_ip.last_seen is None
    named = inventory.add_device("gpc-01.local", name="paint shop GPU")
    assert named.name == "paint shop GPU" and named.addresses == ("gpc-01.local",)
    # Adding what is already there returns it, unchanged.
    assert inventory.add_device("198.18.1.40", port=2200).id == by_ip.id
    # An mDNS announcement of the manually added .local host is the same device.
    seen = inventory.record_sighting(ssh("gpc-01", "198.18.1.41"))
    assert seen.id == named.id and seen.online
    with pytest.raises(InventoryError, match="already used"):
        inventory.add_device("198.18.1.42", name="paint shop GPU")
    with pytest.raises(InventoryError, match="not a TCP port"):
        inventory.add_device("198.18.1.43", port=70000)
    assert len(inventory.devices()) == 2


def test_a_sighting_with_nothing_to_reach_is_refused(inventory: Inventory) -> None:
    with pytest.raises(InventoryError, match="neither an address nor a host name"):
        inventory.record_sighting(Sighting("mdns", (), instance_name="half-resolved", service_type="_ssh._tcp.local."))
    assert inventory.devices() == []


def test_default_names_stay_unique(inventory: Inventory) -> None:
    names = [inventory.record_sighting(Sighting("mdns", (f"198.18.1.{50 + i}",), instance_name="camera",
                                                service_type="_ssh._tcp.local.")).name for i in range(3)]
    assert names == ["camera", "camera-2", "camera-3"]


def test_a_device_is_found_by_id_name_hostname_address_and_mdns_name(inventory: Inventory) -> None:
    device = inventory.record_sighting(ssh("xavier-01", "198.18.1.60", instance="Xavier on line B"))
    inventory.rename(device.id, "line B xavier")
    for ref in (device.id, str(device.id), "line B xavier", "xavier-01", "198.18.1.60", "xavier-01.local.",
                "XAVIER-01.local", "Xavier on line B"):
        assert inventory.device(ref).id == device.id, ref
    with pytest.raises(DeviceNotFoundError) as caught:
        inventory.device("xavier-02")
    assert caught.value.fix is not None and "fleetdesk devices" in caught.value.fix
    with pytest.raises(DeviceNotFoundError):
        inventory.device(9999)


def test_an_ambiguous_reference_lists_the_candidates(inventory: Inventory) -> None:
    a = inventory.record_sighting(Sighting("mdns", ("198.18.1.70",), instance_name="dup", host_name="a.local."))
    b = inventory.record_sighting(Sighting("mdns", ("198.18.1.71",), instance_name="dup", host_name="b.local."))
    with pytest.raises(InventoryError) as caught:
        inventory.device("dup")
    assert not isinstance(caught.value, DeviceNotFoundError)
    assert f"'a' (id {a.id})" in caught.value.message and f"'b' (id {b.id})" in caught.value.message
    # A name always wins over other matches.
    inventory.rename(b.id, "dup")
    assert inventory.device("dup").id == b.id


def test_online_and_last_seen(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.80")
    online = inventory.set_online(device.id, True)
    assert online.online and online.last_seen is not None
    assert online.last_seen.tzinfo is not None and online.last_seen.utcoffset() == timedelta(0)
    offline = inventory.set_online(device.id, False)
    assert not offline.online and offline.last_seen == online.last_seen


def test_timestamps_come_back_in_utc_whatever_zone_went_in(inventory: Inventory) -> None:
    berlin = timezone(timedelta(hours=2))
    at = datetime(2025, 6, 1, 14, 0, 0, tzinfo=berlin)
    device = inventory.record_sighting(ssh("ipc-09", "198.18.1.90", at=at))
    stored = inventory.device(device.id)
    assert stored.first_seen == at and stored.first_seen.tzinfo == UTC and stored.first_seen.hour == 12


def test_a_probe_stores_facts_and_profile(inventory: Inventory) -> None:
    device = inventory.record_sighting(ssh("orin-01", "198.18.1.13"))
    probed = inventory.save_probe(device.id, ORIN, profile="jetson-orin")
    assert probed.id == device.id
    assert probed.facts == ORIN and probed.profile == "jetson-orin" and probed.hostname == "orin-01"
    assert probed.probed_at is not None and probed.probed_at.tzinfo == UTC
    assert inventory.device(device.id) == probed


def test_a_probe_with_a_known_machine_id_merges_into_the_older_row(inventory: Inventory) -> None:
    manual = inventory.add_device("198.18.1.13", username="fleet", name="orin by IP")
    inventory.pin_host_key(manual.id, KEY_A)
    inventory.add_to_group("line A", [manual.id])
    inventory.save_probe(manual.id, ORIN, profile="jetson-orin")
    # Later it shows up by mDNS on another network address: a second row until it is probed.
    seen = inventory.record_sighting(ssh("orin-01", "198.18.2.13", at=datetime.now(UTC)))
    assert seen.id != manual.id
    inventory.pin_host_key(seen.id, KEY_A)
    inventory.pin_host_key(seen.id, KEY_B)
    inventory.add_to_group("line B", [seen.id])

    merged = inventory.save_probe(seen.id, replace(ORIN, disk_free_mb=29000), profile="jetson-orin-36")

    assert merged.id == manual.id
    assert [d.id for d in inventory.devices()] == [manual.id]
    assert merged.name == "orin by IP" and merged.username == "fleet"
    assert set(merged.addresses) == {"198.18.1.13", "198.18.2.13"}
    assert merged.mdns_names == ("orin-01.local.", "orin-01")
    assert merged.groups == ("line A", "line B")
    assert sorted(k.public_key for k in inventory.host_keys(merged.id)) == sorted([KEY_A, KEY_B])
    assert merged.first_seen == manual.first_seen and merged.online
    assert merged.facts.disk_free_mb == 29000 and merged.profile == "jetson-orin-36"  # the newest probe wins
    assert inventory.device("orin-01").id == manual.id
    with pytest.raises(DeviceNotFoundError):
        inventory.device(seen.id)
    assert {g.name: g.device_ids for g in inventory.groups()} == {"line A": (manual.id,), "line B": (manual.id,)}


def test_connection_settings(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.14")
    changed = inventory.set_connection(device.id, username="fleet", port=2222, transport="paramiko",
                                       password_account="fleet@198.18.1.14")
    assert (changed.username, changed.port, changed.transport, changed.password_account) == (
        "fleet", 2222, "paramiko", "fleet@198.18.1.14")
    assert inventory.set_connection(device.id, port=22).password_account == "fleet@198.18.1.14"
    assert inventory.set_connection(device.id, password_account="").password_account is None
    with pytest.raises(InventoryError, match="not a transport"):
        inventory.set_connection(device.id, transport="telnet")
    with pytest.raises(InventoryError, match="not a TCP port"):
        inventory.set_connection(device.id, port=0)
    assert inventory.device(device.id).transport == "paramiko"


def test_rename_and_remove(inventory: Inventory) -> None:
    a = inventory.add_device("198.18.1.15")
    b = inventory.add_device("198.18.1.16")
    assert inventory.rename(a.id, "  press 4 camera ").name == "press 4 camera"
    with pytest.raises(InventoryError, match="already used"):
        inventory.rename(b.id, "press 4 camera")
    with pytest.raises(InventoryError, match="empty"):
        inventory.rename(b.id, " ")
    inventory.pin_host_key(a.id, KEY_A)
    inventory.add_to_group("line A", [a.id, b.id])
    inventory.remove(a.id)
    assert [d.id for d in inventory.devices()] == [b.id]
    assert inventory.groups()[0].device_ids == (b.id,)
    with pytest.raises(DeviceNotFoundError):
        inventory.remove(a.id)
    with pytest.raises(DeviceNotFoundError):
        inventory.host_keys(a.id)


def test_no_secret_has_a_column() -> None:
    from fleetdesk.inventory.models import Base

    columns = {c.name for table in Base.metadata.tables.values() for c in table.columns}
    assert not {c for c in columns if "password" in c or "secret" in c or "passphrase" in c} - {"password_account"}


def test_two_processes_writing_at_once_queue_instead_of_failing_or_duplicating(db_url: str) -> None:
    # The GUI and a CLI each hold their own Inventory (their own engine and connections).
    first, second = open_inventory(db_url), open_inventory(db_url)
    errors: list[BaseException] = []

    def discover(inventory: Inventory) -> None:
        try:
            for i in range(25):
                inventory.record_sighting(ssh(f"ipc-{i:02d}", f"198.18.1.{100 + i}"))
                inventory.set_online(inventory.device(f"ipc-{i:02d}").id, True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=discover, args=(inv,)) for inv in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert errors == []
        assert sorted(d.name for d in first.devices()) == [f"ipc-{i:02d}" for i in range(25)]
    finally:
        first.close()
        second.close()


KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KEY_B = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opOdtnmWuC1"
         "d2uUuJM0ruMtA4vJzb9CDGbbNkPqa+1sLlXLJlMEIiGwTwNmjLIbr/Jw=")
