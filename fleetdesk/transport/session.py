"""What every transport offers the pool and the push engine: one open, authenticated session to one device.

asyncssh_transport and paramiko_transport implement it; the errors only transports raise live here too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Protocol

from fleetdesk.errors import AuthFailedError, CommandTimeoutError, TransportError, UnreachableError
from fleetdesk.transport import credentials
from fleetdesk.transport.results import RunResult, decode_output
from fleetdesk.transport.target import SSHTarget

# (offset, length) of one byte range of the local file to write at the same offset on the device.
ByteRange = tuple[int, int]


class ConnectTimeoutError(CommandTimeoutError, UnreachableError):
    """The device did not complete the SSH handshake in time: a timeout, and for a fan-out, unreachable."""


class ConnectionLostError(UnreachableError):
    """An open connection to the device dropped in the middle of an operation."""


class RemoteWriteError(TransportError):
    """The device refused an SFTP open/write/close (permissions, disk full, missing directory)."""


class PushVerifyError(TransportError):
    """The file on the device still did not hash to the local SHA-256 after a repair pass."""


class DeviceSession(Protocol):
    """One authenticated connection to one device. Methods raise FleetDeskError subclasses only."""

    target: SSHTarget

    @property
    def is_open(self) -> bool: ...

    async def run(self, command: str, *, timeout: float | None) -> RunResult:
        """Run one command; never raises for a non-zero exit status."""
        ...

    async def write_ranges(self, remote_path: str, local_path: str, ranges: Sequence[ByteRange], *,
                           truncate_to: int | None, requests_in_flight: int,
                           on_written: Callable[[int], None]) -> None:
        """Write byte ranges of `local_path` at the same offsets into `remote_path` (created, never truncated
        except to `truncate_to`), with up to `requests_in_flight` SFTP writes outstanding."""
        ...

    def abort(self) -> None:
        """Drop the connection now, without a goodbye (an operator's cancel, a test's cut cable)."""
        ...

    async def close(self) -> None: ...

    def stream(self, command: str) -> RemoteLines:
        """The lines of a long-running command's stdout as they come, without taking a slot of the pool:
        `async with session.stream(cmd) as lines: async for line in lines: ...`; closing kills the command."""
        ...


# One line of a stream longer than this is cut here and handed on in pieces (a device that never sends a
# newline must not make the laptop buffer without end).
MAX_LINE_BYTES = 1 << 20
# The end of a stream's stderr kept for the error message when the command fails.
STDERR_KEPT = 4096
# How long closing a stream waits for the device to confirm the channel closed (a cut link never does).
CLOSE_WAIT = 2.0


class RemoteLines:
    """Lines (without the newline; bytes that are not UTF-8 become U+FFFD) of one remote command's stdout.

    Each transport opens the command in `_open`, returns stdout chunks from `_read_chunk` (b"" at EOF),
    and kills the command in `_stop`. stderr is drained beside stdout (unread, it would fill the channel's
    window and stall stdout) and its last few KiB kept in `stderr_tail`. At EOF `exit_status` (or
    `exit_signal`) is set; a connection that drops raises ConnectionLostError (an UnreachableError).
    """

    def __init__(self, target: SSHTarget, command: str) -> None:
        self.target = target
        self.command = command
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.bytes_read = 0
        self._stderr = bytearray()
        self._buffer = bytearray()
        self._eof = False
        self._opened = False
        self._closed = False

    @property
    def stderr_tail(self) -> str:
        return decode_output(bytes(self._stderr))

    def _keep_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-STDERR_KEPT]

    async def __aenter__(self) -> RemoteLines:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        if not self._opened:
            self._opened = True
            await self._open()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        while True:
            at = self._buffer.find(b"\n", 0, MAX_LINE_BYTES)
            if at >= 0:
                line = bytes(self._buffer[:at])
                del self._buffer[:at + 1]
                return decode_output(line)
            if len(self._buffer) >= MAX_LINE_BYTES or (self._eof and self._buffer):
                line = bytes(self._buffer[:MAX_LINE_BYTES])
                del self._buffer[:MAX_LINE_BYTES]
                return decode_output(line)
            if self._eof:
                raise StopAsyncIteration
            chunk = await self._read_chunk()
            self.bytes_read += len(chunk)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def close(self) -> None:
        """Stop the command if it still runs (idempotent); what was not read is dropped."""
        if self._opened and not self._closed:
            self._closed = True
            await self._stop()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _read_chunk(self) -> bytes:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError


async def first_failure(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run jobs together; on the first exception cancel the others and raise that exception as is
    (not wrapped in an ExceptionGroup, so callers catch the FleetDeskError they expect)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def password_of(target: SSHTarget) -> str | None:
    """The device's password from the keyring, read off the loop (D-Bus may wait on an unlock prompt)."""
    if not target.password_account:
        return None
    return await asyncio.to_thread(credentials.get_secret, target.password_account)


def existing_identity_files(target: SSHTarget) -> list[str]:
    """The target's identity files that exist. As with OpenSSH, a configured file that is missing is
    skipped, not an error (ssh(1) only mentions it under -v); the other credentials are still tried."""
    return [p for p in target.identity_files if os.path.isfile(os.path.expanduser(p))]


# The operator's wording of the failures both transports meet; each library's translate_error picks one.

def unresolvable(target: SSHTarget, step: str, cause: BaseException) -> UnreachableError:
    return UnreachableError(f"cannot resolve {target.host!r}", device=target.device, step=step, cause=cause,
                            fix="check the device's hostname or use its address")


def no_handshake(target: SSHTarget, step: str, cause: BaseException) -> ConnectTimeoutError:
    return ConnectTimeoutError(f"no SSH handshake from {target.host}:{target.port} within "
                               f"{target.connect_timeout:g} s", device=target.device, step=step, cause=cause,
                               fix="check that the device is on and on this network")


def auth_refused(target: SSHTarget, step: str, cause: BaseException) -> AuthFailedError:
    return AuthFailedError(f"{target.username}@{target.host}:{target.port} refused every key and password offered",
                           device=target.device, step=step, cause=cause,
                           fix="add the operator's public key to the device's authorized_keys, or store "
                               "the password with `fleetdesk login DEVICE --password-stdin`")


def refused_connection(target: SSHTarget, step: str, cause: BaseException, reason: str = "") -> UnreachableError:
    return UnreachableError(f"{target.host}:{target.port} did not accept an SSH connection"
                            + (f" ({reason})" if reason else ""), device=target.device, step=step, cause=cause,
                            fix="check that the device is on, on this network, and runs sshd")


def connection_lost(target: SSHTarget, step: str, cause: BaseException) -> ConnectionLostError:
    return ConnectionLostError(f"the connection to {target.host}:{target.port} was lost "
                               f"({cause or type(cause).__name__})", device=target.device, step=step, cause=cause,
                               fix="check the device and the network, then retry")


def file_refused(target: SSHTarget, step: str, cause: BaseException, reason: object) -> RemoteWriteError:
    return RemoteWriteError(f"the device refused a file operation: {reason}", device=target.device, step=step,
                            cause=cause, fix="check the path, its permissions and free space")


def unusable_identity(target: SSHTarget, step: str, cause: BaseException, what: str) -> AuthFailedError:
    return AuthFailedError(f"an identity file cannot be used: {what}", device=target.device, step=step,
                           cause=cause, fix="check the identity files configured for this device")
