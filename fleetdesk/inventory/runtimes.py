"""What provisioning installed and proved on each device (table device_runtimes, migration 0004), as frozen records.

One row per device: the latest provisioning replaces the one before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from fleetdesk.errors import DeviceNotFoundError, InventoryError
from fleetdesk.inventory.models import DeviceRow, DeviceRuntimeRow
from fleetdesk.inventory.repository import Inventory


@dataclass(frozen=True)
class DeviceRuntime:
    """The runtime a device runs, as its last provisioning's selftest proved it."""

    device_id: int
    runtime_id: str
    agent_version: str
    device_root: str
    onnxruntime: str
    providers: tuple[str, ...]
    python: str
    provisioned_at: datetime


class DeviceRuntimes:
    """Reads and writes device_runtimes over the inventory's own engine (one short transaction per call)."""

    def __init__(self, inventory: Inventory) -> None:
        # Same package as the Inventory: its engine and its transactions (with their error translation) are shared.
        self._session = inventory._session

    def record(self, device_id: int, *, runtime_id: str, agent_version: str, device_root: str, onnxruntime: str,
               providers: Sequence[str], python: str, at: datetime | None = None) -> DeviceRuntime:
        """Store what provisioning proved on the device, replacing what it had before."""
        moment = at or datetime.now(UTC)
        if moment.tzinfo is None:
            raise InventoryError("a provisioning time without a time zone is not stored",
                                 fix="pass a timezone-aware datetime (UTC)")
        with self._session(write=True) as session:
            if session.get(DeviceRow, device_id) is None:
                raise DeviceNotFoundError(f"no device with id {device_id} in the inventory",
                                          fix="run `fleetdesk devices` to see the devices the inventory knows")
            row = session.scalars(select(DeviceRuntimeRow).where(DeviceRuntimeRow.device_id == device_id)
                                  ).one_or_none()
            if row is None:
                row = DeviceRuntimeRow(device_id=device_id)
                session.add(row)
            row.runtime_id = runtime_id
            row.agent_version = agent_version
            row.device_root = device_root
            row.onnxruntime = onnxruntime
            row.providers = json.dumps(list(providers))
            row.python = python
            row.provisioned_at = moment
            session.flush()
            return _record(row)

    def get(self, device_id: int) -> DeviceRuntime | None:
        with self._session() as session:
            row = session.scalars(select(DeviceRuntimeRow).where(DeviceRuntimeRow.device_id == device_id)
                                  ).one_or_none()
            return _record(row) if row is not None else None

    def all(self) -> list[DeviceRuntime]:
        with self._session() as session:
            rows = session.scalars(select(DeviceRuntimeRow).order_by(DeviceRuntimeRow.device_id)).all()
            return [_record(r) for r in rows]

    def devices_with(self, runtime_id: str) -> list[int]:
        """The ids of devices whose current runtime is `runtime_id`."""
        with self._session() as session:
            return list(session.scalars(select(DeviceRuntimeRow.device_id)
                                        .where(DeviceRuntimeRow.runtime_id == runtime_id)
                                        .order_by(DeviceRuntimeRow.device_id)))


def _record(row: DeviceRuntimeRow) -> DeviceRuntime:
    return DeviceRuntime(device_id=row.device_id, runtime_id=row.runtime_id, agent_version=row.agent_version,
                         device_root=row.device_root, onnxruntime=row.onnxruntime,
                         providers=tuple(json.loads(row.providers)), python=row.python,
                         provisioned_at=row.provisioned_at)
