"""Where and how to reach one device over SSH: the value every transport call takes.

Built by the caller from the inventory row, the operator's ~/.ssh/config and the device profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRANSPORTS = ("asyncssh", "paramiko")
# The cipher order for a device whose profile names none, or that has no profile yet (not probed): AES-GCM first,
# as the x86, Jetson and Pi 5 profiles have it. asyncssh's own default puts chacha20-poly1305 first, which it runs
# at about half of OpenSSH's speed on x86 (20 pushes of 100 MB: 13-14 s against scp's 7.1-7.4 s; issue 18).
# The engine's other ciphers follow, so a device without these still connects.
DEFAULT_CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")


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
    ciphers: tuple[str, ...] = ()  # preferred order, from the device profile's ssh_ciphers; () = DEFAULT_CIPHERS
    transport: str = "asyncssh"
    connect_timeout: float = 15.0
    use_agent: bool = True
    # The device id in the inventory, when there is one.
    device_id: int | None = field(default=None, compare=False)

    @property
    def preferred_ciphers(self) -> tuple[str, ...]:
        """The ciphers to offer first, in order: the profile's, or FleetDesk's default when it names none."""
        return self.ciphers or DEFAULT_CIPHERS
