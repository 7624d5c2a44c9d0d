"""Where and how to reach one device over SSH: the value every transport call takes.

Built by the caller from the inventory row, the operator's ~/.ssh/config and the device profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRANSPORTS = ("asyncssh", "paramiko")


@dataclass(frozen=True)
class SSHTarget:
    """One device's SSH endpoint, identity and trust. Secrets are never here: they stay in the keyring."""

    device: str  # the operator's name for the device, used in every error and result
    host: str  # address or hostname to connect to
    port: int = 22
    username: str = "root"
    # OpenSSH public key lines ("ssh-ed25519 AAAA...") pinned for this device; empty = not trusted yet.
    pinned_host_keys: tuple[str, ...] = ()
    identity_files: tuple[str, ...] = ()
    # Keyring account holding this device's password, if it uses one (see transport.credentials).
    password_account: str | None = None
    ciphers: tuple[str, ...] = ()  # preferred order, from the device profile's ssh_ciphers
    transport: str = "asyncssh"
    connect_timeout: float = 15.0
    use_agent: bool = True
    # The device id in the inventory, when there is one.
    device_id: int | None = field(default=None, compare=False)
