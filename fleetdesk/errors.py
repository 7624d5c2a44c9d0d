"""The one error hierarchy of FleetDesk.

Every error an operator can meet is a FleetDeskError with structured fields: what went
wrong (message), which device and step it concerns, the fix, and the underlying cause.
"""

from __future__ import annotations

from typing import Any


class FleetDeskError(Exception):
    """Base of every FleetDesk error. `str()` is the one-line operator message."""

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        device: str | None = None,
        step: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.device = device
        self.step = step
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    def __str__(self) -> str:
        text = self.message
        if self.device:
            text = f"{self.device}: {text}"
        if self.fix:
            text = f"{text} — {self.fix}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The error as plain data, for `--json` output and the event log."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "fix": self.fix,
            "device": self.device,
            "step": self.step,
            "cause": repr(self.cause) if self.cause is not None else None,
        }


class ConfigError(FleetDeskError):
    """A setting, an environment override or a command-line argument is invalid."""


class ProfileError(FleetDeskError):
    """A device profile file is invalid; names the file, the field and the fix."""

    def __init__(self, message: str, *, path: str, field: str | None = None, fix: str | None = None) -> None:
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {message}", fix=fix, step="load profile")
        self.path = path
        self.field = field


class LabError(FleetDeskError):
    """The virtual fleet could not be built, queried, changed or torn down."""


class LabSpecError(LabError):
    """A `--devices` SPEC does not parse or names an unknown profile."""


class NotRootError(LabError):
    """The lab needs root (network namespaces, mounts, sshd)."""


class InventoryError(FleetDeskError):
    """The inventory database cannot be read, written or migrated."""


class DatabaseTooNewError(InventoryError):
    """The database was written by a newer FleetDesk; it is left untouched."""


class InventoryUnavailableError(InventoryError):
    """The inventory refused a write for now (disk full, locked by another program, I/O error); nothing was
    changed, and the same write may succeed once the cause is gone."""


class DatabaseUnreachableError(InventoryUnavailableError):
    """The inventory's database server cannot be reached (stopped, restarting, the network to it gone): nothing of
    the transaction was written; the same work succeeds once the server answers again."""


class DeviceNotFoundError(InventoryError):
    """No device in the inventory matches the name, address or id the operator gave."""


class EditConflictError(InventoryError):
    """An edit made from an outdated view of a record (a device, a group, a rollout): someone else (another laptop,
    a terminal) changed it since it was read. Nothing was written; the message names who changed it and when."""

    def __init__(self, message: str, *, changed_by: str | None = None, version: int | None = None,
                 seen_version: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.changed_by = changed_by  # the operator of the change that came first; None when not known
        self.version = version  # the record's version now (None: the record is gone)
        self.seen_version = seen_version  # the version the refused edit was made from

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "changed_by": self.changed_by, "version": self.version,
                "seen_version": self.seen_version}


class TransportError(FleetDeskError):
    """Talking to a device over SSH failed. `device` and `step` say where."""


class UnreachableError(TransportError):
    """The device did not answer on its SSH port (down, cut off, wrong address)."""


class AuthFailedError(TransportError):
    """The device refused every credential FleetDesk offered."""


class HostKeyUnknownError(TransportError):
    """The device presented a host key nobody has trusted yet; carries its fingerprint."""

    def __init__(self, message: str, *, fingerprint: str, public_key: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.fingerprint = fingerprint
        self.public_key = public_key

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "fingerprint": self.fingerprint}


class HostKeyChangedError(TransportError):
    """The device presented a host key different from the pinned one; refused until re-trusted."""

    def __init__(self, message: str, *, pinned: tuple[str, ...], presented: str, public_key: str = "",
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.pinned = pinned
        self.presented = presented
        self.public_key = public_key

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pinned": list(self.pinned), "presented": self.presented}


class CommandTimeoutError(TransportError):
    """A connection or a remote command took longer than its timeout."""


class RemoteCommandError(TransportError):
    """A remote command ran and failed; carries its exit status and stderr."""

    def __init__(self, message: str, *, exit_status: int | None = None, stderr: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.exit_status = exit_status
        self.stderr = stderr


class DiskFullError(TransportError):
    """The device has no space left where FleetDesk writes."""


class CredentialError(FleetDeskError):
    """A secret cannot be stored or read."""


class KeyringUnavailableError(CredentialError):
    """There is no OS keyring backend; FleetDesk never falls back to plaintext."""


class DiscoveryError(FleetDeskError):
    """Browsing mDNS, adding a host or sweeping a network failed or was refused."""


class ProvisionError(FleetDeskError):
    """A device cannot be provisioned: untrusted, no profile, no python3, or no runtime built for it."""


class FleetKeyMismatchError(ProvisionError):
    """The device trusts another fleet key (its keys/fleet.pub) than this laptop's; replaced only when the
    operator says so (`--replace-fleet-key`, or yes in the window). Carries both fingerprints."""

    code = "fleet-key-differs"

    def __init__(self, message: str, *, device_key: str, laptop_key: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.device_key = device_key
        self.laptop_key = laptop_key

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "code": self.code, "device_key": self.device_key,
                "laptop_key": self.laptop_key}


class RuntimeBundleError(ConfigError):
    """A runtime bundle or a wheel brought for one is missing, damaged or for another platform."""


class ArtifactStoreError(FleetDeskError):
    """The artifact store cannot be read or written, or refuses a change; stored data is left unchanged."""


class StoreEntryNotFoundError(ArtifactStoreError):
    """No model record or artifact matches the name, name@version or id the operator gave."""


class ModelNameClashError(ArtifactStoreError):
    """A model of this name and version is already stored with different bytes."""


class InvalidModelNameError(ArtifactStoreError):
    """A model name or version that cannot be stored (it becomes a file name)."""


class StoreFullError(ArtifactStoreError):
    """The laptop's disk filled while the store wrote; what was being written was removed."""


class PlanError(FleetDeskError):
    """A rollout plan is invalid or cannot be resolved against the inventory and the store; names the field."""

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("step", "plan rollout")
        super().__init__(f"{field}: {message}" if field else message, **kwargs)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field}


class RolloutNotFoundError(InventoryError):
    """No rollout with the id the operator gave is in the inventory."""


class RolloutConflictError(FleetDeskError):
    """Another FleetDesk (a CLI, the GUI) changed the rollout first, or its devices are in another active rollout."""

    def __init__(self, message: str, *, rollout_id: int | None = None, expected: tuple[str, ...] = (),
                 actual: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.rollout_id = rollout_id
        self.expected = expected
        self.actual = actual

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "rollout_id": self.rollout_id, "expected": list(self.expected),
                "actual": self.actual}


class RolloutStepError(FleetDeskError):
    """A rollout step failed on a device for a reason retrying will not fix; `code` is the agent's error code
    (bad-signature, bad-artifact, model-load-failed, disk-full, ...)."""

    def __init__(self, message: str, *, code: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "code": self.code}


class AccessError(FleetDeskError):
    """Who is acting cannot be settled: an unknown operator, a missing signing key, a bad role or name."""


class AccessDeniedError(AccessError):
    """The operator's roles do not allow what they asked; nothing was changed, and the refusal is audited."""

    def __init__(self, message: str, *, operator: str, permission: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.operator = operator
        self.permission = permission

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "operator": self.operator, "permission": self.permission}


class AuditChainError(FleetDeskError):
    """The audit trail does not verify: `seq` is the first entry that fails, `reason` says how."""

    def __init__(self, message: str, *, seq: int | None, reason: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.seq = seq
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "seq": self.seq, "reason": self.reason}


class ReportError(FleetDeskError):
    """A report cannot be made or written as asked (an empty period, an unwritable path); nothing was written."""


class ReportCancelledError(ReportError):
    """The operator cancelled a report before it was written; nothing was written."""


class ReportSignatureError(ReportError):
    """A report's signature is missing, malformed, by another key, or does not match the report's bytes."""
