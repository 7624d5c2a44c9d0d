"""An operator's signing key: an Ed25519 seed in the OS keyring (service `fleetdesk`), one per operator and fleet.

The account names the fleet by its audit trail's genesis hash, so the same operator name in two inventories on
one laptop has two keys. Keyring calls may wait for the desktop's unlock prompt: call these off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import threading

from fleetdesk import chain
from fleetdesk.errors import AccessError
from fleetdesk.transport import credentials

__all__ = ["OperatorKey", "key_account"]

_cache: dict[str, bytes] = {}
_cache_lock = threading.Lock()


def key_account(name: str, fleet_id: str) -> str:
    """The keyring account of `name`'s key for the fleet whose genesis hash starts with `fleet_id`."""
    return f"operator-key:{name}:{fleet_id}"


class OperatorKey:
    """`OperatorKey.load(name, fleet_id)` or `.create(...)`; `.key` is the public half, `.sign(hash)` signs."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = name
        self._seed = seed
        self.key = chain.public_key(seed)

    def sign(self, digest: str) -> str:
        return chain.sign(self._seed, digest)

    def __repr__(self) -> str:  # a repr reaches logs and tracebacks: never the seed
        return f"OperatorKey({self.name!r}, key={self.key!r})"

    @classmethod
    def create(cls, name: str, fleet_id: str) -> OperatorKey:
        """A new key for `name`, stored in the keyring (replacing any older one of that operator and fleet)."""
        seed = chain.new_seed()
        account = key_account(name, fleet_id)
        credentials.set_secret(account, base64.b64encode(seed).decode("ascii"))
        with _cache_lock:
            _cache[account] = seed
        return cls(name, seed)

    @classmethod
    def load(cls, name: str, fleet_id: str) -> OperatorKey | None:
        """`name`'s key from the keyring, or None if this laptop does not hold it."""
        account = key_account(name, fleet_id)
        with _cache_lock:
            seed = _cache.get(account)
        if seed is None:
            stored = credentials.get_secret(account)
            if stored is None:
                return None
            try:
                seed = base64.b64decode(stored, validate=True)
            except (binascii.Error, ValueError):
                seed = b""
            if len(seed) != 32:
                raise AccessError(f"the keyring holds a damaged signing key for operator {name} ({account})",
                                  fix="delete that keyring entry and have an admin re-key the operator "
                                      f"(`fleetdesk operator rekey {name}`)")
            with _cache_lock:
                _cache[account] = seed
        return cls(name, seed)

    @staticmethod
    def forget(name: str, fleet_id: str) -> None:
        account = key_account(name, fleet_id)
        with _cache_lock:
            _cache.pop(account, None)
        credentials.delete_secret(account)
