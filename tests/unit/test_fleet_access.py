"""The fleet's own operations check the acting operator's role and append one signed audit entry per change
(fleetdesk.fleet over fleetdesk.access): adding, grouping and removing devices here, with no device needed
(an address typed as a literal is not resolved). The operations that reach a device are checked on the lab."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetdesk.access import verify_trail
from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.errors import AccessDeniedError, ConfigError, InventoryError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.audit import AuditFilter
from fleetdesk.inventory.records import Sighting
from fleetdesk.profiles import load_profiles


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def alice(db: str) -> Iterator[Fleet]:
    fleet = Fleet(open_inventory(db), load_profiles(), operator="alice")
    yield fleet
    asyncio.run(fleet.close())


def _as(db: str, name: str) -> Fleet:
    return Fleet(open_inventory(db), load_profiles(), operator=name)


def _actions(fleet: Fleet) -> list[tuple[str, str, str, tuple[str, ...]]]:
    found = fleet.access.audit.entries(AuditFilter(), limit=None, newest_first=False)
    return [(e.operator, e.action, e.outcome, e.targets) for e in found if e.seq > 1]


def test_each_change_is_one_signed_entry_and_a_password_never_appears(alice: Fleet) -> None:
    press = asyncio.run(alice.add("198.18.3.10", name="press-cam", username="pi"))
    drill = asyncio.run(alice.add("198.18.3.11", name="drill-cam", password="s3cret-Pa55"))
    alice.group([press, drill], "line A")
    alice.group([drill], "line A", remove=True)
    alice.remove_devices([alice.inventory.device(press.id)])
    assert _actions(alice) == [
        ("alice", "operator.add", "ok", ("operator:alice",)),  # the first to act on a fresh inventory is its admin
        ("alice", "device.add", "ok", (f"device:{press.id}",)),
        ("alice", "device.add", "ok", (f"device:{drill.id}",)),
        ("alice", "device.login", "ok", (f"device:{drill.id}",)),
        ("alice", "group.add", "ok", ("group:line A", f"device:{press.id}", f"device:{drill.id}")),
        ("alice", "group.remove", "ok", ("group:line A", f"device:{drill.id}")),
        ("alice", "device.remove", "ok", (f"device:{press.id}",)),
    ]
    login = alice.access.audit.entries(AuditFilter(action="device.login"))[0]
    assert login.after["password"] == "set" and login.before["username"] == "root"
    removed = alice.access.audit.entries(AuditFilter(action="device.remove"))[0]
    assert removed.before == {"name": "press-cam", "address": "198.18.3.10", "profile": None}
    everything = "\n".join(e.before_text + e.after_text + e.targets_text
                           for e in alice.access.audit.entries(limit=None))
    assert "s3cret-Pa55" not in everything
    assert verify_trail(alice.access.audit).ok


def test_a_viewer_is_refused_changes_nothing_and_the_refusal_is_audited(alice: Fleet, db: str) -> None:
    press = asyncio.run(alice.add("198.18.3.10", name="press-cam"))
    alice.access.add_operator("vera", ["viewer"])
    alice.access.add_operator("otto", ["operator"])
    vera, otto = _as(db, "vera"), _as(db, "otto")
    try:
        with pytest.raises(AccessDeniedError, match="operator vera \\(viewer\\) may not discover"):
            asyncio.run(vera.add("198.18.3.12"))
        with pytest.raises(AccessDeniedError, match="may not manage operators"):
            vera.remove_devices([press])
        otto_cam = asyncio.run(otto.add("198.18.3.13", name="otto-cam"))  # an operator may add devices
        with pytest.raises(AccessDeniedError, match="otto \\(operator\\) may not manage operators"):
            otto.group([otto_cam], "line B")  # but not make groups: a group is what a scope is made of
        assert [d.name for d in alice.inventory.devices()] == ["otto-cam", "press-cam"]
        assert alice.inventory.groups() == []
        refused = [a for a in _actions(alice) if a[2] == "refused"]
        assert refused == [("vera", "device.add", "refused", ("host:198.18.3.12",)),
                           ("vera", "device.remove", "refused", (f"device:{press.id}",)),
                           ("otto", "group.add", "refused", ("group:line B",))]
        assert verify_trail(alice.access.audit).ok
    finally:
        asyncio.run(vera.close())
        asyncio.run(otto.close())


def test_a_device_found_by_discovery_is_an_entry_and_a_viewer_may_not_browse(alice: Fleet, db: str) -> None:
    def seen(host: str, address: str) -> DiscoveryEvent:
        return DiscoveryEvent("seen", Sighting("mdns", (address,), host_name=f"{host}.local.", instance_name=host,
                                               service_type="_ssh._tcp.local."))

    alice.apply_discovery_events([seen("pi-07", "198.18.1.7"), seen("pi-08", "198.18.1.8")])
    alice.apply_discovery_events([seen("pi-07", "198.18.1.7")])  # heard again: nothing new, no entry
    found = alice.access.audit.entries(AuditFilter(action="device.discover"))
    assert [(e.operator, e.after) for e in found] == [("alice", {"source": "mdns", "devices": ["pi-07", "pi-08"]})]
    assert set(found[0].targets) == {f"device:{d.id}" for d in alice.inventory.devices()}

    alice.access.add_operator("vera", ["viewer"])
    vera = _as(db, "vera")
    try:
        with pytest.raises(AccessDeniedError, match="operator vera \\(viewer\\) may not discover"):
            asyncio.run(vera.discover(["198.18.1.1"], timeout=1))
        refused = vera.access.audit.entries(AuditFilter(action="device.discover"))[0]
        assert (refused.operator, refused.outcome, refused.targets) == ("vera", "refused", ("interface:198.18.1.1",))
    finally:
        asyncio.run(vera.close())


def test_a_rename_is_checked_and_audited_with_both_names(alice: Fleet, db: str) -> None:
    press = asyncio.run(alice.add("198.18.3.10", name="press-cam"))
    asyncio.run(alice.add("198.18.3.11", name="drill-cam"))
    renamed = alice.rename(press, "Prüfstand Linie 4 — Kamera ✓")
    assert alice.inventory.device(press.id).name == renamed.name == "Prüfstand Linie 4 — Kamera ✓"
    entry = alice.access.audit.entries(AuditFilter(action="device.rename"))[0]
    assert (entry.targets, entry.before, entry.after) == (
        (f"device:{press.id}",), {"name": "press-cam"}, {"name": "Prüfstand Linie 4 — Kamera ✓"})
    for bad in ("", "   ", "cam\x1b[2Jera", "x" * 129):
        with pytest.raises(ConfigError, match="cannot be a device name"):
            alice.rename(renamed, bad)
    with pytest.raises(InventoryError, match="already used by device"):
        alice.rename(renamed, "drill-cam")

    alice.access.add_operator("vera", ["viewer"])
    vera = _as(db, "vera")
    try:
        with pytest.raises(AccessDeniedError, match="may not discover and probe devices"):
            vera.rename(renamed, "vera-cam")
        assert alice.inventory.device(press.id).name == renamed.name
    finally:
        asyncio.run(vera.close())
    assert verify_trail(alice.access.audit).ok
