"""What every transport offers the pool and the push engine: one open, authenticated session to one device.

asyncssh_transport and paramiko_transport implement it; the errors only transports raise live here too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from fleetdesk.errors import AuthFailedError, CommandTimeoutError, TransportError, UnreachableError
from fleetdesk.transport import credentials
from fleetdesk.transport.results import RunResult
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
