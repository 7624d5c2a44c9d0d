"""The agent's wire protocol: one JSON object per line on stdout, flushed, and the error line with its codes.

Kinds: {"type": "sample"}, {"type": "result", "command": C}, {"type": "event"} and
{"type": "error", "code", "message", "fix"}. A command that prints an error line exits with status 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PROTOCOL_VERSION = 1
EXIT_OK = 0
EXIT_ERROR = 2

# The error codes the laptop can act on. Messages are for people; codes are for programs.
BAD_ARGUMENTS = "bad-arguments"  # unknown command, unknown option, a value of the wrong form
MISSING_MODULE = "missing-module"  # a command whose module is not in this agent's file tree
NOT_FOUND = "not-found"  # an artifact (or another named thing) is not on the device
BAD_ARTIFACT = "bad-artifact"  # an artifact whose files do not match its manifest
NOT_PENDING = "not-pending"  # confirm of an activation that is not the pending one
PENDING = "pending"  # another activation still waits for its confirmation
DEADLINE_PASSED = "deadline-passed"  # a confirmation that came after the deadline (the device reverted)
NO_PREVIOUS = "no-previous"  # rollback with nothing to go back to
IO_ERROR = "io-error"  # the device's filesystem refused (read-only, full, permissions)
INTERNAL = "internal"  # a bug in the agent: the message carries the exception


class AgentError(Exception):
    """An error the agent reports as an error line: what went wrong and what the operator can do."""

    def __init__(self, code: str, message: str, fix: str, file: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fix = fix
        self.file = file  # the file at fault, relative to the artifact (or the fleet key's path), when one is

    def line(self) -> dict[str, Any]:
        line = {"type": "error", "code": self.code, "message": self.message, "fix": self.fix}
        if self.file is not None:
            line["file"] = self.file
        return line


class Stopped(BaseException):
    """SIGTERM/SIGHUP/SIGINT arrived: the command ends quietly (status 0). BaseException so no handler eats it."""


def encode(obj: dict[str, Any]) -> str:
    # ensure_ascii: device strings (hostnames, file names) may hold anything; escaped, the line stays one line
    # of plain ASCII whatever the SSH channel's or the terminal's encoding.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str)


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to stdout and flush it (BrokenPipeError propagates: the reader has gone)."""
    sys.stdout.write(encode(obj) + "\n")
    sys.stdout.flush()


def result(command: str, **fields: Any) -> dict[str, Any]:
    """A {"type": "result"} object for `command`."""
    obj: dict[str, Any] = {"type": "result", "command": command}
    obj.update(fields)
    return obj


def event(name: str, **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "event", "event": name}
    obj.update(fields)
    return obj
