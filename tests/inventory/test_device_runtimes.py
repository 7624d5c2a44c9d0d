"""What provisioning proved on each device (table device_runtimes, migration 0004): one row per device, replaced by
the next provisioning, gone with the device. Every test runs on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text

from fleetdesk.errors import DeviceNotFoundError, InventoryError
from fleetdesk.inventory import Inventory
from fleetdesk.inventory.database import open_database
from fleetdesk.inventory.migrate import upgrade
from fleetdesk.inventory.runtimes import DeviceRuntime, DeviceRuntimes

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_a_provisioning_is_recorded_and_read_back_as_a_frozen_record(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.2", name="ipc-02")
    runtimes = DeviceRuntimes(inventory)
    assert runtimes.get(device.id) is None
    stored = runtimes.record(device.id, runtime_id="ce2389ff66666863", agent_version="34c49bfec6640ded",
                             device_root="/opt/fleetdesk", onnxruntime="1.31.1",
                             providers=["AzureExecutionProvider", "CPUExecutionProvider"], python="3.11.2", at=AT)
    expected = DeviceRuntime(device.id, "ce2389ff66666863", "34c49bfec6640ded", "/opt/fleetdesk", "1.31.1",
                             ("AzureExecutionProvider", "CPUExecutionProvider"), "3.11.2", AT)
    assert stored == expected and runtimes.get(device.id) == expected
    assert runtimes.get(device.id).provisioned_at.tzinfo is not None  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        stored.runtime_id = "x"  # type: ignore[misc]


def test_the_next_provisioning_replaces_the_row_and_devices_are_found_by_runtime(inventory: Inventory) -> None:
    a = inventory.add_device("198.18.1.2", name="ipc-02")
    b = inventory.add_device("198.18.1.3", name="rpi4-01")
    runtimes = DeviceRuntimes(inventory)
    common = {"agent_version": "v1", "device_root": "/opt/fleetdesk", "onnxruntime": "1.31.1",
              "providers": ["CPUExecutionProvider"], "python": "3.11.2"}
    runtimes.record(a.id, runtime_id="r-x86", at=AT, **common)  # type: ignore[arg-type]
    runtimes.record(b.id, runtime_id="r-arm", at=AT, **common)  # type: ignore[arg-type]
    later = runtimes.record(a.id, runtime_id="r-x86-2", at=AT + timedelta(hours=1), **common)  # type: ignore[arg-type]
    assert [r.runtime_id for r in runtimes.all()] == ["r-x86-2", "r-arm"]
    assert runtimes.get(a.id) == later
    assert runtimes.devices_with("r-x86") == [] and runtimes.devices_with("r-x86-2") == [a.id]


def test_unknown_devices_and_naive_times_are_refused_and_a_removed_device_takes_its_row(inventory: Inventory) -> None:
    runtimes = DeviceRuntimes(inventory)
    fields = {"runtime_id": "r", "agent_version": "v", "device_root": "/opt/fleetdesk", "onnxruntime": "1.31.1",
              "providers": [], "python": "3.11.2"}
    with pytest.raises(DeviceNotFoundError):
        runtimes.record(9999, **fields)  # type: ignore[arg-type]
    device = inventory.add_device("198.18.1.2")
    with pytest.raises(InventoryError, match="without a time zone"):
        runtimes.record(device.id, at=datetime(2026, 1, 1), **fields)  # type: ignore[arg-type]
    runtimes.record(device.id, **fields)  # type: ignore[arg-type]
    inventory.remove(device.id)
    assert runtimes.all() == []


def test_migration_0004_adds_the_table_and_its_downgrade_removes_it(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        upgrade(engine, "0004")
        assert "device_runtimes" in inspect(engine).get_table_names()
        columns = {c["name"] for c in inspect(engine).get_columns("device_runtimes")}
        assert columns == {"id", "device_id", "runtime_id", "agent_version", "device_root", "onnxruntime",
                           "providers", "python", "provisioned_at"}
        from alembic import command

        from fleetdesk.inventory.database import for_writing
        from fleetdesk.inventory.migrate import alembic_config

        with for_writing(engine).begin() as conn:
            command.downgrade(alembic_config(conn), "0003")
        assert "device_runtimes" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == ["0003"]
    finally:
        engine.dispose()
