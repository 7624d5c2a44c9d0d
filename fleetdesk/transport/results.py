"""Records that transport calls return: one command's result, one push, one fan-out over many devices.

Frozen values, safe to hand to the CLI, the GUI and the inventory; they hold no connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetdesk.errors import FleetDeskError, UnreachableError

# progress(bytes_done, bytes_total): bytes_done counts bytes already on the device plus bytes sent so far.
ProgressCallback = Callable[[int, int], None]


def decode_output(data: bytes) -> str:
    """Device output as text; bytes that are not UTF-8 become U+FFFD instead of crashing anything."""
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class RunResult:
    """One command that ran on a device: exit status (None if killed by a signal), output, duration."""

    device: str
    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    exit_signal: str | None = None
    seconds: float = 0.0
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "command": self.command, "exit_status": self.exit_status,
                "exit_signal": self.exit_signal, "stdout": self.stdout, "stderr": self.stderr,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class PushResult:
    """One file pushed to one device, verified by SHA-256 on the device.

    `bytes_sent` is what crossed the wire this time; `bytes_reused` what a partial file from an
    earlier, interrupted push already held; `resumed_from` the offset of the first block sent.
    """

    device: str
    remote_path: str
    size: int
    sha256: str
    bytes_sent: int
    bytes_reused: int = 0
    resumed_from: int = 0
    skipped: bool = False  # the device already had these exact bytes at remote_path
    seconds: float = 0.0

    @property
    def resumed(self) -> bool:
        return self.bytes_reused > 0

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "remote_path": self.remote_path, "size": self.size, "sha256": self.sha256,
                "bytes_sent": self.bytes_sent, "bytes_reused": self.bytes_reused,
                "resumed_from": self.resumed_from, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class DeviceOutcome:
    """What happened on one device of a fan-out: a result, or the error that stopped it."""

    device: str
    result: RunResult | None = None
    error: FleetDeskError | None = None

    @property
    def status(self) -> str:
        """"succeeded", "failed" or "unreachable" (a device that could not be reached has not failed)."""
        if self.error is not None:
            return "unreachable" if isinstance(self.error, UnreachableError) else "failed"
        return "succeeded" if self.result is not None and self.result.ok else "failed"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "status": self.status,
                "result": self.result.to_dict() if self.result else None,
                "error": self.error.to_dict() if self.error else None}


@dataclass(frozen=True)
class FanOutResult:
    """One outcome per device, in the order the targets were given, and the summary."""

    outcomes: tuple[DeviceOutcome, ...]

    def _named(self, status: str) -> tuple[str, ...]:
        return tuple(o.device for o in self.outcomes if o.status == status)

    @property
    def succeeded(self) -> tuple[str, ...]:
        return self._named("succeeded")

    @property
    def failed(self) -> tuple[str, ...]:
        return self._named("failed")

    @property
    def unreachable(self) -> tuple[str, ...]:
        return self._named("unreachable")

    @property
    def ok(self) -> bool:
        """True when every device ran the command and it exited 0."""
        return len(self.succeeded) == len(self.outcomes)

    def outcome(self, device: str) -> DeviceOutcome:
        return next(o for o in self.outcomes if o.device == device)

    def to_dict(self) -> dict[str, Any]:
        return {"outcomes": [o.to_dict() for o in self.outcomes],
                "summary": {"succeeded": len(self.succeeded), "failed": len(self.failed),
                            "unreachable": len(self.unreachable)}}
