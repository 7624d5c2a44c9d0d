"""Whether provisioning may put this laptop's fleet key on a device that already holds one (ROOT/keys/fleet.pub).

The same key stays; another key is replaced only when the operator said so, because a device trusts exactly one
fleet key: after the replacement it refuses every model the other fleet signs. Both fingerprints are named either
way, in the form the manifests carry (`key_fingerprint`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm

from fleetdesk.artifacts.store_records import key_fingerprint
from fleetdesk.errors import FleetKeyMismatchError
from fleetdesk.transport.shell import shell_quote

REPLACE_OPTION = "--replace-fleet-key"


def fleet_key_fingerprint(data: bytes) -> str:
    """The key's fingerprint as a manifest's "key" holds it; for a file that holds no public key (damaged, or
    written by hand), the SHA-256 of its bytes, saying so."""
    try:
        return key_fingerprint(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"SHA256:{hashlib.sha256(data).hexdigest()} (of a file that holds no public key)"


def device_fleet_pub(encoded: object) -> bytes | None:
    """The device's keys/fleet.pub as the state script reports it (base64), or None when it has none."""
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        return None


def check_fleet_key(on_device: bytes | None, laptop_pem: bytes, *, replace: bool, device: str) -> str | None:
    """What provisioning does about the fleet key a device holds.

    None: nothing to decide (the device has no key yet, or this laptop's). The line for the outcome's `changed`
    when it holds another key and the operator said to replace it. FleetKeyMismatchError when it holds another key
    and they did not: provisioning stops before anything is sent.
    """
    if on_device is None or on_device == laptop_pem:
        return None
    old, new = fleet_key_fingerprint(on_device), fleet_key_fingerprint(laptop_pem)
    if old == new:  # the same key written differently (line ends, a trailing newline): nothing to ask
        return None
    if replace:
        return f"replaced the fleet key {old} with {new}"
    raise FleetKeyMismatchError(
        f"trusts another fleet key ({old}) than this laptop's ({new}); replacing it would make the device refuse "
        "every model the other key signs, so nothing was changed on it",
        device_key=old, laptop_key=new, device=device, step="check fleet key",
        fix=f"if {device} should now take this laptop's models, provision it again with {REPLACE_OPTION} (the "
            f"window asks): `fleetdesk provision {shell_quote(device)} {REPLACE_OPTION}`; otherwise provision it from "
            f"the laptop whose fleet key is {old}")
