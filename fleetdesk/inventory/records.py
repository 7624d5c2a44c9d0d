"""The values the inventory hands out and takes in: frozen dataclasses, never ORM objects.

Sighting and ProbeFacts are what discovery and the probe produce; the rest are stored rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Sighting:
    """One observation of a device on the network (an mDNS service, a sweep hit, a manual add)."""

    source: str  # "mdns" | "sweep" | "manual"
    addresses: tuple[str, ...]
    port: int = 22
    host_name: str | None = None  # the mDNS server name, e.g. "rpi4-01.local."
    instance_name: str | None = None  # the mDNS service instance, e.g. "rpi4-01"; may contain anything
    service_type: str | None = None  # e.g. "_ssh._tcp.local."
    txt: tuple[tuple[bytes, bytes | None], ...] = ()  # TXT record pairs, raw bytes, kept faithfully
    seen_at: datetime | None = None  # None = now (UTC)


@dataclass(frozen=True)
class ProbeFacts:
    """What one probe round trip learns about a device."""

    hostname: str = ""
    machine_id: str = ""
    arch: str = ""
    os_name: str = ""  # PRETTY_NAME from /etc/os-release
    kernel: str = ""
    python: str = ""  # "3.11.2"; "" when the device has no python3
    cpu_model: str = ""
    cpu_count: int = 0
    ram_mb: int = 0
    disk_total_mb: int = 0
    disk_free_mb: int = 0
    model: str = ""  # the device-tree model string
    tegra_release: str = ""  # first line of /etc/nv_tegra_release
    dmi_vendor: str = ""
    dmi_product: str = ""
    gpu: str = ""
    gpu_memory_mb: int = 0


@dataclass(frozen=True)
class Device:
    """One physical device as the inventory knows it. `addresses` come most recently seen first."""

    id: int
    name: str  # the operator's name for it, unique in the inventory
    hostname: str  # what the device calls itself (probe), or its mDNS host label before a probe
    addresses: tuple[str, ...]
    mdns_names: tuple[str, ...]  # mDNS host names ("rpi4-01.local.") and service instance names, as announced
    services: tuple[str, ...]  # service types seen ("_ssh._tcp.local.")
    port: int
    username: str
    transport: str  # "asyncssh" | "paramiko"
    password_account: str | None  # the keyring account name, never the secret
    profile: str | None
    facts: ProbeFacts
    probed_at: datetime | None
    first_seen: datetime
    last_seen: datetime | None
    online: bool
    groups: tuple[str, ...]
    source: str  # how it first entered the inventory: "mdns" | "sweep" | "manual"
    identity_file: str | None = None  # a private key file chosen for this device; None = ssh config / defaults
    version: int = 1  # counts operators' edits (name, login); an edit from an older version is refused

    @property
    def address(self) -> str:
        """Where to connect: the most recently seen address ("" if none is known)."""
        return self.addresses[0] if self.addresses else ""

    @property
    def label(self) -> str:
        """The name, with the address when that says more ("rpi4-01 (198.18.1.10)")."""
        if self.address and self.address != self.name:
            return f"{self.name} ({self.address})"
        return self.name


@dataclass(frozen=True)
class ServiceRecord:
    """The latest mDNS announcement of one service instance by a device, TXT record bytes as received."""

    service_type: str
    instance_name: str
    host_name: str
    port: int
    txt: tuple[tuple[bytes, bytes | None], ...]
    last_seen: datetime


@dataclass(frozen=True)
class HostKey:
    """A host key the operator trusts for a device, with the fingerprint `ssh-keygen -lf` prints."""

    device_id: int
    key_type: str
    public_key: str  # "ssh-ed25519 AAAA...", without a comment
    fingerprint: str  # "SHA256:..."
    source: str  # "operator" | "known_hosts" | ...
    pinned_at: datetime


@dataclass(frozen=True)
class Group:
    """A named set of devices, such as "line A"."""

    name: str
    device_ids: tuple[int, ...]
    created_at: datetime
    version: int = 1  # counts operators' edits (rename, members in or out); an edit from an older one is refused


@dataclass(frozen=True)
class Edit:
    """An operator's edit of a device, a group or a rollout: who makes it, and the record's version they saw when
    they chose it."""

    by: str
    seen_version: int | None  # None: no view to check against (a new group, a command acting on what it reads now)
