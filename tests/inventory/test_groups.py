"""Named groups of devices ("line A"): created on first use, many-to-many, gone when emptied.

Every test runs on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import pytest

from fleetdesk.errors import DeviceNotFoundError, InventoryError
from fleetdesk.inventory import Inventory


def test_groups_are_created_on_first_use_and_hold_many_devices(inventory: Inventory) -> None:
    a, b, c = (inventory.add_device(f"198.18.1.{i}") for i in (10, 11, 12))
    line_a = inventory.add_to_group("line A", [a.id, b.id])
    assert line_a.name == "line A" and line_a.device_ids == (a.id, b.id) and line_a.created_at.tzinfo is not None
    inventory.add_to_group(" canary ", [b.id, c.id])
    assert inventory.add_to_group("line A", [a.id]).device_ids == (a.id, b.id)  # adding twice changes nothing
    assert [(g.name, g.device_ids) for g in inventory.groups()] == [("canary", (b.id, c.id)), ("line A", (a.id, b.id))]
    assert inventory.device(b.id).groups == ("canary", "line A")
    assert [d.id for d in inventory.devices(group="line A")] == [a.id, b.id]
    assert [d.id for d in inventory.devices(group="canary")] == [b.id, c.id]


def test_removing_members_and_the_last_one_deletes_the_group(inventory: Inventory) -> None:
    a, b = (inventory.add_device(f"198.18.1.{i}") for i in (20, 21))
    inventory.add_to_group("line B", [a.id, b.id])
    assert inventory.remove_from_group("line B", [a.id]).device_ids == (b.id,)
    assert inventory.device(a.id).groups == ()
    assert inventory.remove_from_group("line B", [b.id]).device_ids == ()
    assert inventory.groups() == []
    with pytest.raises(InventoryError, match="no group named 'line B'"):
        inventory.devices(group="line B")


def test_unknown_devices_and_empty_names_change_nothing(inventory: Inventory) -> None:
    a = inventory.add_device("198.18.1.30")
    with pytest.raises(DeviceNotFoundError):
        inventory.add_to_group("line C", [a.id, 9999])
    assert inventory.groups() == []
    with pytest.raises(InventoryError, match="empty"):
        inventory.add_to_group("  ", [a.id])
    inventory.add_to_group("line C", [a.id])
    with pytest.raises(InventoryError) as caught:
        inventory.devices(group="line D")
    assert caught.value.fix == "groups: line C"
