"""Pinned host keys: stored with the fingerprint `ssh-keygen -lf` prints, per device, forgotten on re-trust.

Keys are made by the real ssh-keygen; every test runs on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleetdesk.errors import InventoryError
from fleetdesk.inventory import Inventory
from tests.conftest import skip_or_fail


def keygen(tmp_path: Path, key_type: str) -> tuple[str, str]:
    """A fresh host key: its public line (with a comment) and the fingerprint ssh-keygen prints for it."""
    if shutil.which("ssh-keygen") is None:
        skip_or_fail("ssh-keygen (openssh-client) is not installed")
    path = tmp_path / f"host_{key_type}"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "root@line2-pi-07", "-f", str(path)],
                   check=True, timeout=60)
    # `ssh-keygen -lf` prints "BITS SHA256:... COMMENT (TYPE)".
    listed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True,
                            timeout=60).stdout.split()
    return Path(f"{path}.pub").read_text().strip(), listed[1]


def test_a_pinned_key_carries_the_fingerprint_ssh_keygen_prints(inventory: Inventory, tmp_path: Path) -> None:
    device = inventory.add_device("198.18.1.10")
    for key_type in ("ed25519", "ecdsa"):
        line, printed = keygen(tmp_path, key_type)
        pinned = inventory.pin_host_key(device.id, line)
        assert pinned.fingerprint == printed
        assert pinned.public_key == " ".join(line.split()[:2])  # the comment is not part of the key
        assert pinned.key_type == line.split()[0] and pinned.source == "operator" and pinned.device_id == device.id
        assert pinned.pinned_at.tzinfo is not None
    assert [k.key_type for k in inventory.host_keys(device.id)] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]


def test_pinning_the_same_key_twice_keeps_one(inventory: Inventory, tmp_path: Path) -> None:
    device = inventory.add_device("198.18.1.11")
    line, _ = keygen(tmp_path, "ed25519")
    first = inventory.pin_host_key(device.id, line, source="known_hosts")
    again = inventory.pin_host_key(device.id, line.rsplit(" ", 1)[0])
    assert again == first and len(inventory.host_keys(device.id)) == 1


def test_keys_belong_to_their_device_and_are_forgotten_before_re_trust(inventory: Inventory, tmp_path: Path) -> None:
    a = inventory.add_device("198.18.1.12")
    b = inventory.add_device("198.18.1.13")
    line_a, _ = keygen(tmp_path, "ed25519")
    line_b, printed_b = keygen(tmp_path, "ecdsa")
    inventory.pin_host_key(a.id, line_a)
    inventory.pin_host_key(b.id, line_b)
    inventory.forget_host_keys(a.id)
    assert inventory.host_keys(a.id) == []
    assert [k.fingerprint for k in inventory.host_keys(b.id)] == [printed_b]


def test_a_damaged_key_is_refused_and_nothing_is_pinned(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.14")
    ed25519_blob = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    for bad in ("ssh-ed25519", "ssh-ed25519 not*base64", f"ssh-rsa {ed25519_blob}"):
        with pytest.raises(InventoryError) as caught:
            inventory.pin_host_key(device.id, bad)
        assert caught.value.fix and caught.value.device == device.name
    assert inventory.host_keys(device.id) == []
