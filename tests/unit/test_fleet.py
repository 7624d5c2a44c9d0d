"""The fleet service without a network: live mDNS events in the inventory, and how a device is reached."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.cli.output import safe as _safe
from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.errors import ConfigError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.records import ProbeFacts, Sighting
from fleetdesk.profiles import load_profiles

SSH = "_ssh._tcp.local."
WORKSTATION = "_workstation._tcp.local."


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    config = tmp_path / "ssh_config"
    config.write_text("Host line2-*\n  User pi\n  Port 2222\n  IdentityFile ~/.ssh/line2\n"
                      "Host jump-*\n  ProxyJump bastion\n")
    fleet = Fleet(open_inventory(f"sqlite:///{tmp_path / 'fleet.db'}"), load_profiles(), ssh_config=config)
    yield fleet
    fleet.inventory.close()


def event(kind: str, service: str, instance: str = "pi-07") -> DiscoveryEvent:
    return DiscoveryEvent(kind, Sighting("mdns", ("198.18.1.7",), host_name="pi-07.local.",  # type: ignore[arg-type]
                                         instance_name=instance, service_type=service))


def test_a_device_goes_offline_only_when_its_last_service_is_gone(fleet: Fleet) -> None:
    fleet.apply_discovery_event(event("seen", SSH))
    fleet.apply_discovery_event(event("seen", WORKSTATION, "pi-07 [dc:a6:32:00:00:07]"))
    assert len(fleet.inventory.devices()) == 1

    still = fleet.apply_discovery_event(event("gone", SSH))
    assert still is not None and still.online
    gone = fleet.apply_discovery_event(event("gone", WORKSTATION, "pi-07 [dc:a6:32:00:00:07]"))
    assert gone is not None and not gone.online
    back = fleet.apply_discovery_event(event("updated", SSH))
    assert back is not None and back.online and back.id == gone.id


def test_goodbye_from_a_device_never_seen_changes_nothing(fleet: Fleet) -> None:
    assert fleet.apply_discovery_event(event("gone", SSH)) is None
    assert fleet.inventory.devices() == []


def test_the_operators_ssh_config_supplies_user_port_and_key_unless_the_inventory_says_otherwise(
        fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.inventory.add_device("198.18.1.20", name="line2-pi-07")
    target = fleet.reach(device).target
    assert (target.host, target.username, target.port) == ("198.18.1.20", "pi", 2222)
    assert target.identity_files[0].endswith("/.ssh/line2")

    device = asyncio.run(fleet.set_login(device, username="fleet", port=22))
    target = fleet.reach(device).target
    assert (target.username, target.port) == ("fleet", 2222)  # the operator chose the user; 22 is the default


def test_a_key_file_chosen_for_a_device_is_used_instead_of_the_ssh_config_one(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.inventory.add_device("198.18.1.21", name="line2-pi-08")
    key = tmp_path / "line2 operator key"
    key.write_text("not checked here: the transport reads it\n")
    chosen = asyncio.run(fleet.set_login(device, identity_file=str(key)))
    assert chosen.identity_file == str(key)
    assert fleet.reach(chosen).target.identity_files == (str(key),)
    with pytest.raises(ConfigError, match="does not exist or cannot be read") as missing:
        asyncio.run(fleet.set_login(chosen, identity_file=str(tmp_path / "typo")))
    assert "private key file" in (missing.value.fix or "")
    assert fleet.inventory.device(device.id).identity_file == str(key)
    back = asyncio.run(fleet.set_login(chosen, identity_file=""))
    assert back.identity_file is None
    assert fleet.reach(back).target.identity_files[0].endswith("/.ssh/line2")


def test_a_device_reached_through_a_jump_host_is_refused_clearly(fleet: Fleet) -> None:
    device = fleet.inventory.add_device("198.18.1.21", name="jump-pi-01")
    with pytest.raises(ConfigError, match="ProxyJump"):
        fleet.reach(device)


def test_pinned_keys_and_profile_ciphers_travel_with_the_target(fleet: Fleet, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True)
    public = (tmp_path / "hk.pub").read_text()
    device = fleet.inventory.add_device("198.18.1.22", name="pi4-01")
    fleet.inventory.pin_host_key(device.id, public)
    device = fleet.inventory.save_probe(device.id, ProbeFacts(arch="aarch64"), profile="rpi4")
    target = fleet.reach(device).target
    assert target.pinned_host_keys == (" ".join(public.split()[:2]),)
    assert target.ciphers == fleet.profiles.get("rpi4").ssh_ciphers
    assert target.ciphers[0].startswith("chacha20")  # no AES instructions on a Pi 4 (LAB-NOTES)


def test_choosing_nothing_is_an_error_not_everything(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match="no devices chosen"):
        fleet.select([])


@pytest.mark.parametrize(("raw", "shown"), [
    ("line\nB", "line\\nB"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("bell\a", "bell\\x07"),
    ("Küche-3", "Küche-3"),
])
def test_device_text_is_shown_escaped_never_obeyed(raw: str, shown: str) -> None:
    assert _safe(raw) == shown


def test_ssh_config_blocks_for_the_address_and_the_mdns_name_reach_a_named_device(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host 198.18.1.30\n  User pi\n  IdentityFile ~/.ssh/floor_key\n"
                      "Host cam-7.local\n  Port 2200\n")
    fleet = Fleet(open_inventory(f"sqlite:///{tmp_path / 'fleet.db'}"), load_profiles(), ssh_config=config)
    try:
        added = fleet.inventory.add_device("198.18.1.30", name="floor-cam-1")  # as `fleetdesk add ADDR --name`
        target = fleet.reach(added).target
        assert (target.host, target.username, target.port) == ("198.18.1.30", "pi", 22)
        assert target.identity_files[0].endswith("/.ssh/floor_key")
        assert [(line.line, line.directive) for line in fleet.ssh_config_for(added).applied] == [
            (2, "User"), (3, "IdentityFile")]
        # A device found by mDNS: its announced host name ("cam-7.local.") matches the operator's block.
        [seen] = fleet.inventory.record_sightings([Sighting("mdns", ("198.18.1.31",), host_name="cam-7.local.",
                                                            instance_name="cam-7", service_type=SSH)])
        assert fleet.reach(seen).target.port == 2200 and fleet.reach(seen).target.username == "root"
    finally:
        fleet.inventory.close()
