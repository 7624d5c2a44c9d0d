"""The inventory's tables as SQLAlchemy 2.0 typed models; the Alembic migrations create exactly these.

Nothing outside fleetdesk.inventory sees these classes: the repository turns rows into records.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Named constraints, so that later migrations (SQLite batch mode included) can refer to them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: give a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Device-supplied text may hold what neither SQLite's nor PostgreSQL's text can: lone surrogates (bytes
# that were not UTF-8, decoded with surrogateescape) and NUL (PostgreSQL refuses it). Those characters,
# and the escape character itself, are written as ESCAPE + "u" + 4 hex digits; everything else as is.
_ESCAPE = "\u241b"  # SYMBOL FOR ESCAPE: rare in names, and visible when someone reads the table by hand


def _needs_escape(char: str) -> bool:
    return char in (_ESCAPE, "\x00") or "\ud800" <= char <= "\udfff"


class DeviceText(TypeDecorator[str]):
    """Text stored faithfully on every backend, whatever characters a device sent."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or not any(_needs_escape(c) for c in value):
            return value
        return "".join(f"{_ESCAPE}u{ord(c):04x}" if _needs_escape(c) else c for c in value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or _ESCAPE not in value:
            return value
        out, i = [], 0
        while i < len(value):
            if value[i] == _ESCAPE and value[i + 1:i + 2] == "u":
                out.append(chr(int(value[i + 2:i + 6], 16)))
                i += 6
            else:
                out.append(value[i])
                i += 1
        return "".join(out)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(DeviceText, unique=True)
    hostname: Mapped[str] = mapped_column(DeviceText, default="")
    port: Mapped[int] = mapped_column(Integer, default=22)
    username: Mapped[str] = mapped_column(DeviceText, default="root")
    transport: Mapped[str] = mapped_column(String(16), default="asyncssh")
    # The keyring account NAME that holds the password; the secret itself never enters the database.
    password_account: Mapped[str | None] = mapped_column(DeviceText)
    # A private key file the operator chose for this device (its passphrase, if any, stays in the keyring).
    identity_file: Mapped[str | None] = mapped_column(DeviceText)
    profile: Mapped[str | None] = mapped_column(DeviceText)
    source: Mapped[str] = mapped_column(String(16))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    probed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # ProbeFacts, one column each, so reports and filters can use them.
    machine_id: Mapped[str] = mapped_column(DeviceText, default="", index=True)
    arch: Mapped[str] = mapped_column(DeviceText, default="")
    os_name: Mapped[str] = mapped_column(DeviceText, default="")
    kernel: Mapped[str] = mapped_column(DeviceText, default="")
    python: Mapped[str] = mapped_column(DeviceText, default="")
    cpu_model: Mapped[str] = mapped_column(DeviceText, default="")
    cpu_count: Mapped[int] = mapped_column(Integer, default=0)
    ram_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_total_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_free_mb: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str] = mapped_column(DeviceText, default="")
    tegra_release: Mapped[str] = mapped_column(DeviceText, default="")
    dmi_vendor: Mapped[str] = mapped_column(DeviceText, default="")
    dmi_product: Mapped[str] = mapped_column(DeviceText, default="")
    gpu: Mapped[str] = mapped_column(DeviceText, default="")
    gpu_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by an operator's edit (name, login, removal), never by what the fleet observes (sightings, probes,
    # online state): an edit made from an older version is refused (fleetdesk.inventory.repository).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    changed_by: Mapped[str | None] = mapped_column(Text)  # the operator of the last edit
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    addresses: Mapped[list[AddressRow]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True,
        order_by=lambda: [AddressRow.last_seen.desc(), AddressRow.id])
    names: Mapped[list[NameRow]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True, order_by="NameRow.id")
    services: Mapped[list[ServiceRow]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True, order_by="ServiceRow.id")
    host_keys: Mapped[list[HostKeyRow]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True, order_by="HostKeyRow.id")
    groups: Mapped[list[GroupRow]] = relationship(
        secondary="group_members", back_populates="devices", order_by="GroupRow.name")


class AddressRow(Base):
    """One address (IP or DNS name) the device was reached or seen at, on the device's port."""

    __tablename__ = "device_addresses"
    __table_args__ = (UniqueConstraint("device_id", "address", name="uq_device_addresses_device_id_address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(DeviceText, index=True)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)

    device: Mapped[DeviceRow] = relationship(back_populates="addresses")


class NameRow(Base):
    """An mDNS host name ("rpi4-01.local.") or service instance name ("rpi4-01") the device announced."""

    __tablename__ = "device_names"
    __table_args__ = (UniqueConstraint("device_id", "kind", "name", name="uq_device_names_device_id_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "host" | "instance"
    name: Mapped[str] = mapped_column(DeviceText)
    # The name with ASCII letters lowered and no trailing dot: mDNS names compare case-insensitively
    # for ASCII only (RFC 6762 section 16), the same on SQLite and PostgreSQL.
    match_key: Mapped[str] = mapped_column(DeviceText, index=True)

    device: Mapped[DeviceRow] = relationship(back_populates="names")


class ServiceRow(Base):
    """The latest announcement of one mDNS service instance by the device, TXT record included."""

    __tablename__ = "device_services"
    __table_args__ = (UniqueConstraint("device_id", "service_type", "instance_name",
                                       name="uq_device_services_device_id_service_type_instance_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    service_type: Mapped[str] = mapped_column(DeviceText)
    instance_name: Mapped[str] = mapped_column(DeviceText, default="")
    host_name: Mapped[str] = mapped_column(DeviceText, default="")
    port: Mapped[int] = mapped_column(Integer)
    txt: Mapped[bytes] = mapped_column(LargeBinary)  # see repository._encode_txt
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)

    device: Mapped[DeviceRow] = relationship(back_populates="services")


class HostKeyRow(Base):
    __tablename__ = "host_keys"
    __table_args__ = (UniqueConstraint("device_id", "fingerprint", name="uq_host_keys_device_id_fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    key_type: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(DeviceText)  # "TYPE BASE64", without the comment
    fingerprint: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    pinned_at: Mapped[datetime] = mapped_column(UTCDateTime)

    device: Mapped[DeviceRow] = relationship(back_populates="host_keys")


class GroupRow(Base):
    """A named set of devices ("line A"); added by migration 0002."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(DeviceText, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Bumped by an operator's edit of the group (migration 0014): a rename, members added or taken out; an edit
    # made from an older version is refused (fleetdesk.inventory.repository).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    changed_by: Mapped[str | None] = mapped_column(Text)  # the operator of the last edit
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    devices: Mapped[list[DeviceRow]] = relationship(
        secondary="group_members", back_populates="groups", order_by="DeviceRow.id")


class GroupMemberRow(Base):
    __tablename__ = "group_members"
    __table_args__ = (Index("ix_group_members_device_id", "device_id"),)

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)


# --- Runtimes installed on devices (migration 0004) ---

class DeviceRuntimeRow(Base):
    """The runtime provisioning last installed and proved on one device (one row per device)."""

    __tablename__ = "device_runtimes"
    __table_args__ = (UniqueConstraint("device_id", name="uq_device_runtimes_device_id"),
                      Index("ix_device_runtimes_runtime_id", "runtime_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    runtime_id: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[str] = mapped_column(String(64))
    device_root: Mapped[str] = mapped_column(DeviceText)
    onnxruntime: Mapped[str] = mapped_column(DeviceText)  # the version the device's selftest reported
    providers: Mapped[str] = mapped_column(DeviceText)  # JSON list, in the order onnxruntime gave them
    python: Mapped[str] = mapped_column(DeviceText)
    provisioned_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- Telemetry history and events (migration 0005) ---

# The metrics a minute of history keeps (names as in fleetdesk.telemetry.sample.METRICS): avg and max of each.
HISTORY_METRICS: tuple[str, ...] = ("cpu_pct", "mem_pct", "temp_c", "gpu_pct", "gpu_temp_c", "latency_p95_ms",
                                    "infer_rate", "infer_errors", "drift_psi", "drift_shift_sd")


class TelemetryMinuteRow(Base):
    """One device's telemetry over one minute, downsampled for reports; NULL where no sample had the metric."""

    __tablename__ = "telemetry_minutes"
    # On SQLite kept in primary-key order (WITHOUT ROWID, migration 0015): a device's minutes share pages.
    __table_args__ = (Index("ix_telemetry_minutes_minute", "minute"), {"sqlite_with_rowid": False})

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)  # the minute's start, UTC
    samples: Mapped[int] = mapped_column()
    writer: Mapped[str | None] = mapped_column(Text)  # "host:pid" of the FleetDesk that wrote it (migration 0012)
    # float columns: SQLAlchemy maps a `float` annotation to Float (double precision on PostgreSQL).
    cpu_pct_avg: Mapped[float | None] = mapped_column()
    cpu_pct_max: Mapped[float | None] = mapped_column()
    mem_pct_avg: Mapped[float | None] = mapped_column()
    mem_pct_max: Mapped[float | None] = mapped_column()
    temp_c_avg: Mapped[float | None] = mapped_column()
    temp_c_max: Mapped[float | None] = mapped_column()
    gpu_pct_avg: Mapped[float | None] = mapped_column()
    gpu_pct_max: Mapped[float | None] = mapped_column()
    gpu_temp_c_avg: Mapped[float | None] = mapped_column()
    gpu_temp_c_max: Mapped[float | None] = mapped_column()
    latency_p95_ms_avg: Mapped[float | None] = mapped_column()
    latency_p95_ms_max: Mapped[float | None] = mapped_column()
    infer_rate_avg: Mapped[float | None] = mapped_column()
    infer_rate_max: Mapped[float | None] = mapped_column()
    infer_errors_avg: Mapped[float | None] = mapped_column()
    infer_errors_max: Mapped[float | None] = mapped_column()
    drift_psi_avg: Mapped[float | None] = mapped_column()  # input drift (migration 0016)
    drift_psi_max: Mapped[float | None] = mapped_column()
    drift_shift_sd_avg: Mapped[float | None] = mapped_column()
    drift_shift_sd_max: Mapped[float | None] = mapped_column()


class TelemetryHourRow(Base):
    """One device's minutes of one hour packed into arrays, built from telemetry_minutes in the same transaction
    as their writes (the layout is described in fleetdesk.inventory.telemetry_hours; migration 0018)."""

    __tablename__ = "telemetry_hours"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # Unix seconds, UTC
    minutes: Mapped[int] = mapped_column(BigInteger)  # bit n: minute n of the hour has a row
    metrics: Mapped[int] = mapped_column(Integer)  # bit k: HISTORY_METRICS[k] is in the arrays
    averages: Mapped[bytes] = mapped_column(LargeBinary)  # float64 LE, 60 per metric
    maxima: Mapped[bytes] = mapped_column(LargeBinary)  # float64 LE, one per metric


class EventRow(Base):
    """Something an operator should see in the device's log: an alert that fired, a stream that dropped."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_device_id_at", "device_id", "at"), Index("ix_events_at", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL for an event of the whole fleet; a device's events go with the device.
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(DeviceText)  # "alert", "stream", ...
    message: Mapped[str] = mapped_column(DeviceText)
    metric: Mapped[str | None] = mapped_column(DeviceText)
    value: Mapped[float | None] = mapped_column()
    bound: Mapped[float | None] = mapped_column()


# --- Rollouts: the plan, each device's state, the journal of every transition, and the audit log (migration 0006) ---
# Device ids here are not foreign keys: a rollout's history outlives the removal of a device from the inventory.

class RolloutRow(Base):
    """One rollout: the plan as the operator gave it, as resolved to devices and waves, and its status."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_ref: Mapped[str] = mapped_column(Text)  # "name@version"
    plan: Mapped[str] = mapped_column(Text)  # JSON: RolloutPlan.to_dict()
    resolved: Mapped[str] = mapped_column(Text)  # JSON: ResolvedPlan.to_dict()
    status: Mapped[str] = mapped_column(String(32))
    paused_reason: Mapped[str] = mapped_column(DeviceText, default="")
    actor: Mapped[str] = mapped_column(DeviceText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The FleetDesk driving it ("host:pid") and until when its lease runs (migration 0011; RolloutRepo.take_lease).
    driver: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bumped by an operator's action that changes the status (pause, resume, approve, abort, rollback; migration
    # 0014), never by the driver's own progress or its lease: an action from an older version is refused.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    changed_by: Mapped[str | None] = mapped_column(Text)  # the operator of the last action
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RolloutDeviceRow(Base):
    """One device in one rollout: its state in the transition table (inventory/rollout_states.py) and progress."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)  # 0-based
    artifact: Mapped[str] = mapped_column(String(64))
    previous_artifact: Mapped[str | None] = mapped_column(String(64))  # what it ran before; None until known
    state: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(DeviceText, default="")
    gates: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the last gate values measured
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RolloutJournalRow(Base):
    """One transition, written before the step it names runs; device_id NULL for a change of the rollout's status."""

    __tablename__ = "rollout_journal"
    __table_args__ = (Index("ix_rollout_journal_rollout_id_id", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    device_id: Mapped[int | None] = mapped_column(Integer)
    from_state: Mapped[str] = mapped_column(String(32))  # "" for the rollout's creation
    event: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON


class AuditLogRow(Base):
    """The audit rows written before the hash chain (migration 0007): read-only since, the genesis entry commits
    to them."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_rollout_id", "rollout_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(DeviceText)
    action: Mapped[str] = mapped_column(DeviceText)
    rollout_id: Mapped[int | None] = mapped_column(Integer)
    device_ids: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of ids
    outcome: Mapped[str] = mapped_column(DeviceText)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON


# --- Operators and the hash-chained audit trail (migration 0007) ---
# audit_log above holds the entries written before the chain; the chain's genesis entry commits to them.

class OperatorRow(Base):
    """A named operator: roles, an optional scope of device groups, and the public half of their signing key."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of role names
    groups: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of group names; [] = the whole fleet
    public_key: Mapped[str] = mapped_column(String(64))  # base64 Ed25519 public key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # kept: past entries stay attributed


class AuditEntryRow(Base):
    """One entry of the audit trail; `hash` covers the fields and `prev_hash`, `signature` is the operator's."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_at", "at"), Index("ix_audit_entries_operator", "operator"))

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    operator: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    targets: Mapped[str] = mapped_column(Text, default="[]")  # JSON list: "device:3", "rollout:7", "model:a@1"
    before: Mapped[str] = mapped_column(Text, default="null")  # JSON, compact
    after: Mapped[str] = mapped_column(Text, default="null")  # JSON, compact
    outcome: Mapped[str] = mapped_column(String(32))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))  # base64 public key that signed it ("" for the genesis entry)
    signature: Mapped[str] = mapped_column(String(100))  # base64 Ed25519 signature of the hash


class AuditCheckpointRow(Base):
    """A checkpoint: the fleet key's signature of one entry's (seq, hash), as devices are handed it (0008)."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(100))  # base64, the fleet key's
    made_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditHeadRow(Base):
    """The chain's last entry, one row: an append locks it, so two laptops never write the same seq."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


# --- The fleet's model catalogue (migration 0017) ---

class ModelCatalogueRow(Base):
    """One imported model version, as every laptop of the inventory sees it; its signed files are in the importing
    laptop's artifact store and the shared store path (fleetdesk/artifacts/shared_store.py)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    source_sha256: Mapped[str] = mapped_column(String(64))
    baseline: Mapped[str] = mapped_column(String(64))  # id (SHA-256 of the signed manifest) of the FP32 artifact
    artifacts: Mapped[str] = mapped_column(Text, default="{}")  # JSON: profile -> artifact id
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # of all its artifacts' files
    record: Mapped[str] = mapped_column(Text)  # JSON: the store's model record (card, optimization report)
    imported_by: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
