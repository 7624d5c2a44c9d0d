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
