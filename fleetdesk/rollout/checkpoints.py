"""The audit trail's checkpoints, witnessed by the devices.

A checkpoint is the fleet key's signature of one audit entry's (seq, hash) (fleetdesk.chain.checkpoint_message).
After each rollout action the engine hands the newest one to the rollout's devices (`fleetdesk-agent witness`),
which keep the last few hundred. `verify_with_devices` then checks the laptop's trail against every checkpoint a
device holds: an entry a device witnessed must still be in the trail with the same hash, so deleting or
rewriting the tail, even with the database and the fleet key at hand, is caught once a device holds a later
checkpoint. Devices that do not answer are listed, not counted as evidence either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.access import Verification, against_checkpoints, fleet_key_b64
from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.audit import AuditCheckpoint
from fleetdesk.inventory.records import Device
from fleetdesk.rollout.device_ops import DeviceOps

__all__ = ["DeviceWitness", "hand_checkpoint", "verify_with_devices"]

WITNESS_TIMEOUT_S = 15.0  # a checkpoint is small: a device that takes longer is simply not a witness this time


@dataclass
class DeviceWitness:
    """What one device said: the checkpoints it holds, or why it could not be asked."""

    device: str
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


async def hand_checkpoint(ops: DeviceOps, devices: Sequence[Device]) -> dict[str, str]:
    """Give every device the newest checkpoint, all at once; device name -> "" (kept) or why not. Never raises
    for a device: a rollout action is not undone because a device could not witness it."""
    checkpoint = await asyncio.to_thread(ops.fleet.access.checkpoint)
    if checkpoint is None:
        return {d.name: "there is no fleet key yet to sign a checkpoint with" for d in devices}

    async def one(device: Device) -> tuple[str, str]:
        try:
            await ops.witness(device, checkpoint.seq, checkpoint.hash, checkpoint.signature,
                              timeout=WITNESS_TIMEOUT_S)
        except FleetDeskError as exc:
            return device.name, exc.message
        return device.name, ""

    return dict(await asyncio.gather(*(one(d) for d in devices)))


async def collect(ops: DeviceOps, devices: Sequence[Device]) -> list[DeviceWitness]:
    async def one(device: Device) -> DeviceWitness:
        try:
            return DeviceWitness(device.name, await ops.checkpoints(device, timeout=WITNESS_TIMEOUT_S))
        except FleetDeskError as exc:
            return DeviceWitness(device.name, error=exc.message)

    return list(await asyncio.gather(*(one(d) for d in devices)))


def judge(ops: DeviceOps, trail: Verification, witnesses: Sequence[DeviceWitness]) -> Verification:
    """The trail's verification, failed at the first entry a device's checkpoint contradicts."""
    held: list[tuple[str, AuditCheckpoint]] = []
    for witness in witnesses:
        for item in witness.checkpoints:
            try:
                checkpoint = AuditCheckpoint(int(item["seq"]), str(item["hash"]), str(item["signature"]))
            except (KeyError, TypeError, ValueError):
                continue  # no evidence either way (a device keeps only checkpoints the fleet key signed)
            held.append((f"device {witness.device}", checkpoint))
    key = fleet_key_b64(ops.store.signer.public_pem())
    return against_checkpoints(trail, held, key, ops.fleet.access.audit.entries_at)


async def verify_with_devices(ops: DeviceOps, devices: Sequence[Device]) -> tuple[Verification,
                                                                                   list[DeviceWitness]]:
    """The whole trail checked, then checked against every checkpoint the devices hold."""
    trail = await asyncio.to_thread(ops.fleet.access.verify)
    witnesses = await collect(ops, devices)
    return await asyncio.to_thread(judge, ops, trail, witnesses), witnesses
