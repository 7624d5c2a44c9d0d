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
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetdesk import chain
from fleetdesk.access import Verification, verify_trail
from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.errors import FleetDeskError
from fleetdesk.inventory.records import Device
from fleetdesk.rollout.device_ops import DeviceOps

__all__ = ["DeviceWitness", "hand_checkpoint", "make_checkpoint", "verify_with_devices"]

WITNESS_TIMEOUT_S = 15.0  # a checkpoint is small: a device that takes longer is simply not a witness this time


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    signature: str  # base64, the fleet key's


@dataclass
class DeviceWitness:
    """What one device said: the checkpoints it holds, or why it could not be asked."""

    device: str
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def make_checkpoint(ops: DeviceOps) -> Checkpoint:
    """The fleet key's checkpoint of the trail's newest entry (reads the inventory and the keyring: off the loop)."""
    newest = ops.fleet.access.audit.entries(limit=1)[0]
    signature = ops.store.signer.sign(chain.checkpoint_message(newest.seq, newest.hash))
    return Checkpoint(newest.seq, newest.hash, base64.b64encode(signature).decode("ascii"))


async def hand_checkpoint(ops: DeviceOps, devices: Sequence[Device]) -> dict[str, str]:
    """Give every device the newest checkpoint, all at once; device name -> "" (kept) or why not. Never raises
    for a device: a rollout action is not undone because a device could not witness it."""
    checkpoint = await asyncio.to_thread(make_checkpoint, ops)

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


def _fleet_key(signer: FleetSigningKey) -> str:
    public = serialization.load_pem_public_key(signer.public_pem())
    assert isinstance(public, Ed25519PublicKey)
    return base64.b64encode(public.public_bytes_raw()).decode("ascii")


def judge(ops: DeviceOps, trail: Verification, witnesses: Sequence[DeviceWitness]) -> Verification:
    """The trail's verification, failed at the first entry a device's checkpoint contradicts."""
    if not trail.ok:
        return trail
    key = _fleet_key(ops.store.signer)
    held: list[tuple[str, int, str]] = []  # (device, seq, hash) of every checkpoint the fleet key signed
    for witness in witnesses:
        for item in witness.checkpoints:
            try:
                seq, digest, signature = int(item["seq"]), str(item["hash"]), str(item["signature"])
            except (KeyError, TypeError, ValueError):
                continue
            if chain.checkpoint_ok(key, seq, digest, signature):  # else no evidence (devices refuse such ones)
                held.append((witness.device, seq, digest))
    entries = ops.fleet.access.audit.entries_at([seq for _, seq, _ in held if seq <= trail.head_seq])
    problems: list[tuple[int, str]] = []
    for device, seq, digest in held:
        if seq > trail.head_seq:
            problems.append((trail.head_seq + 1, f"device {device} holds a checkpoint of entry {seq}, but the trail "
                                                 f"ends at entry {trail.head_seq}: its tail was deleted"))
        elif seq not in entries or entries[seq].hash != digest:
            problems.append((seq, f"entry {seq} is not the one device {device} witnessed: the trail was rewritten "
                                  "from there on"))
    if not problems:
        return trail
    seq, reason = min(problems)
    return Verification(False, trail.checked, trail.head_seq, trail.head_hash, seq, reason)


async def verify_with_devices(ops: DeviceOps, devices: Sequence[Device]) -> tuple[Verification,
                                                                                   list[DeviceWitness]]:
    """The whole trail checked, then checked against every checkpoint the devices hold."""
    trail = await asyncio.to_thread(verify_trail, ops.fleet.access.audit)
    witnesses = await collect(ops, devices)
    return await asyncio.to_thread(judge, ops, trail, witnesses), witnesses
