"""The asyncssh engine: connect with our own host-key trust, run commands, write file ranges over SFTP, and fetch a
new device's host key (untrusted) for the operator to compare.

Every asyncssh, socket and timeout exception is translated to a FleetDeskError in `translate_error`, here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncssh
from asyncssh.encryption import get_encryption_algs
from asyncssh.public_key import get_public_key_algs

from fleetdesk.errors import (
    CommandTimeoutError,
    FleetDeskError,
    TransportError,
)
from fleetdesk.transport.hostkey import PublicKey
from fleetdesk.transport.results import RunResult, decode_output
from fleetdesk.transport.session import (
    CLOSE_WAIT,
    ByteRange,
    ConnectTimeoutError,
    RemoteLines,
    auth_refused,
    connection_lost,
    existing_identity_files,
    file_refused,
    first_failure,
    no_handshake,
    password_of,
    refused_connection,
    unresolvable,
    unusable_identity,
)
from fleetdesk.transport.target import SSHTarget
from fleetdesk.transport.trust import check_host_key, host_key_algorithms, public_key_of

_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                       errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT}


def _send_cbc_padding_only() -> None:
    """asyncssh (2.24.1, the version tested here, and earlier ones) sends an empty SSH_MSG_IGNORE ahead of every
    packet once the connection is encrypted (`SSHConnection.send_packet`: "insert an ignore packet into the
    stream"). That is the countermeasure RFC 4251 (section 9.3.1) gives for CBC mode, where a packet's IV is the
    last ciphertext block an attacker has seen. FleetDesk's ciphers are AES-GCM, chacha20-poly1305 and AES-CTR
    (target.DEFAULT_CIPHERS and the profiles), none of which chains its IV that way (RFC 4344 recommends CTR for
    exactly this reason), so the extra packet guards nothing there. It doubles the packets of every push: each is
    one more encryption and socket write in this process and one more decryption by the device's sshd. Left out,
    a push costs this process about 0.45 s less CPU per GB (1.6 against 2.0 s/GB to a local sshd), and 20 pushes
    of 100 MB at once to the lab end about 0.4 s sooner (6.2 against 6.6 s). The padding stays wherever the
    cipher in use is a CBC one."""
    connection = asyncssh.connection.SSHConnection
    original = connection.send_packet
    if getattr(original, "fleetdesk_padding_rule", False):
        return
    empty = asyncssh.packet.String(b"")

    def send_packet(self: Any, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if (pkttype == asyncssh.constants.MSG_IGNORE and args == (empty,)
                and "-cbc" not in str(self.get_extra_info("send_cipher", ""))):
            return
        original(self, pkttype, *args, **kwargs)

    send_packet.fleetdesk_padding_rule = True  # type: ignore[attr-defined]
    connection.send_packet = send_packet  # type: ignore[method-assign]


_send_cbc_padding_only()

_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+: a read that fails rather than wait for the disk


def cached_piece(fd: int, length: int, offset: int) -> bytearray | None:
    """A piece of a file read on the loop when the page cache holds all of it, else None (read it in a thread).

    A push's file is mostly cached (SSHPool.digest read it, and the kernel is asked to read it ahead), and then
    a 255 KiB read is a copy of tens of microseconds, less than a thread hop: 20 pushes of 100 MB at once to the
    lab (the asyncssh run of benchmarks/push.py, alternated with a thread hop per piece) took 6.2-6.4 s of the
    laptop's CPU and 8.5-8.8 s, against 7.2-7.9 s of CPU and 9.5-10.4 s. RWF_NOWAIT keeps a piece that would
    wait for the disk off the loop (the window's, in the GUI).
    """
    if _NOWAIT is None:
        return None
    piece = bytearray(length)
    try:
        read = os.preadv(fd, [piece], offset, _NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: this filesystem cannot tell
        return None
    return piece if read == length else None


def cipher_order(preferred: Sequence[str]) -> list[str]:
    """The preferred ciphers first (SSHTarget.preferred_ciphers: the profile's, else DEFAULT_CIPHERS; those asyncssh
    knows), then asyncssh's own defaults, so a device that lacks the preferred ones still connects, as OpenSSH's
    `Ciphers` with a `^` prefix would."""
    known = {a.decode() for a in get_encryption_algs()}
    first = [c for c in preferred if c in known]
    rest = [a.decode() for a in asyncssh.encryption.get_default_encryption_algs() if a.decode() not in first]
    return first + rest


def translate_error(exc: BaseException, target: SSHTarget, step: str) -> FleetDeskError:
    """The one place asyncssh/socket errors become operator errors naming the device and the step."""
    if isinstance(exc, FleetDeskError):
        return exc
    if isinstance(exc, socket.gaierror):
        return unresolvable(target, step, exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return no_handshake(target, step, exc)
    if isinstance(exc, asyncssh.PermissionDenied):
        return auth_refused(target, step, exc)
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return unusable_identity(target, step, exc, str(exc))
    if isinstance(exc, asyncssh.ConnectionLost | asyncssh.ChannelOpenError | asyncssh.DisconnectError):
        return connection_lost(target, step, exc)
    if isinstance(exc, asyncssh.SFTPError):
        return file_refused(target, step, exc, exc.reason)
    if isinstance(exc, OSError) and (exc.errno in _UNREACHABLE_ERRNOS or isinstance(exc, ConnectionError)):
        return refused_connection(target, step, exc, os.strerror(exc.errno or 0))
    where = f"{target.host}:{target.port}"
    if isinstance(exc, asyncssh.Error):
        return TransportError(f"SSH error talking to {where}: {exc}", device=target.device, step=step, cause=exc)
    return TransportError(f"unexpected error talking to {where}: {exc!r}", device=target.device, step=step, cause=exc)


async def fetch_host_key(target: SSHTarget) -> PublicKey:
    """The key the device uses for key exchange with us (Ed25519 preferred), fetched WITHOUT trusting it,
    so the operator can compare its fingerprint before `fleetdesk trust`. Nothing is authenticated."""
    algs = [a for a in host_key_algorithms(target) if a.encode() in asyncssh.public_key.get_public_key_algs()]
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(target.host, target.port, server_host_key_algs=algs, config=None),
            timeout=target.connect_timeout)
    except TimeoutError as exc:
        raise ConnectTimeoutError(f"no SSH handshake from {target.host}:{target.port} within "
                                  f"{target.connect_timeout:g} s", device=target.device, step="fetch host key",
                                  fix="check that the device is on and on this network", cause=exc) from None
    except (OSError, asyncssh.Error) as exc:
        raise translate_error(exc, target, "fetch host key") from None
    if key is None:
        raise TransportError("the device sent no host key", device=target.device, step="fetch host key")
    return public_key_of(key.algorithm.decode(), key.public_data)


class _Client(asyncssh.SSHClient):
    """Checks the host key against the target's pins during key exchange, before any credential is sent."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.refusal: FleetDeskError | None = None
        self.lost = False

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        try:
            check_host_key(self.target, public_key_of(key.algorithm.decode(), key.public_data))
        except FleetDeskError as exc:
            self.refusal = exc  # asyncssh only sees "not trusted"; connect() raises this instead
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _connect_options(target: SSHTarget, password: str | None) -> dict[str, Any]:
    known_key_algs = {a.decode() for a in get_public_key_algs()}
    return {
        "port": target.port,
        "username": target.username,
        # Nothing is trusted up front, so every presented key reaches _Client.validate_host_public_key.
        # `()` would make asyncssh read ~/.ssh/known_hosts and None would switch checking off.
        "known_hosts": ([], [], []),
        "x509_trusted_certs": None,
        "config": None,  # the target is already resolved from ~/.ssh/config; never apply it twice
        "server_host_key_algs": [a for a in host_key_algorithms(target) if a in known_key_algs],
        "encryption_algs": cipher_order(target.preferred_ciphers),
        "agent_path": () if target.use_agent else None,
        # Files named (even if all missing) mean exactly those; none named means OpenSSH's defaults.
        "client_keys": existing_identity_files(target) if target.identity_files else (),
        "password": password,
        "kbdint_auth": password is not None,
        "connect_timeout": target.connect_timeout,
        "login_timeout": target.connect_timeout,
        "keepalive_interval": 30,
        "keepalive_count_max": 3,
    }


class AsyncsshSession:
    """One authenticated asyncssh connection to one device, with one SFTP client opened on first push."""

    def __init__(self, target: SSHTarget, conn: asyncssh.SSHClientConnection, client: _Client) -> None:
        self.target = target
        self._conn = conn
        self._client = client
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()

    @classmethod
    async def connect(cls, target: SSHTarget) -> AsyncsshSession:
        client = _Client(target)
        password = await password_of(target)
        try:
            conn, _ = await asyncssh.create_connection(lambda: client, target.host,
                                                       **_connect_options(target, password))
        except asyncssh.HostKeyNotVerifiable as exc:
            raise (client.refusal or translate_error(exc, target, "connect")) from None
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            if client.refusal is not None:
                raise client.refusal from None
            raise translate_error(exc, target, "connect") from None
        return cls(target, conn, client)

    @property
    def is_open(self) -> bool:
        return not self._client.lost

    async def run(self, command: str, *, timeout: float | None) -> RunResult:
        started = time.monotonic()
        try:
            process = await self._conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
        except (OSError, asyncssh.Error) as exc:
            raise translate_error(exc, self.target, "run") from None
        try:
            completed = await process.wait(check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            self._stop(process)
            raise CommandTimeoutError(f"command did not finish within {timeout:g} s: {command[:120]}",
                                      device=self.target.device, step="run",
                                      fix="raise the timeout or check what the command waits for") from None
        except asyncio.CancelledError:
            self._stop(process)
            raise
        except (OSError, asyncssh.Error) as exc:
            raise translate_error(exc, self.target, "run") from None
        out, err = completed.stdout or b"", completed.stderr or b""
        assert isinstance(out, bytes) and isinstance(err, bytes)
        return RunResult(device=self.target.device, command=command, exit_status=completed.exit_status,
                         stdout=decode_output(out), stderr=decode_output(err), exit_signal=(
                             completed.exit_signal[0] if completed.exit_signal else None),
                         seconds=time.monotonic() - started, stdout_bytes=out, stderr_bytes=err)

    @staticmethod
    def _stop(process: asyncssh.SSHClientProcess[bytes]) -> None:
        # OpenSSH's sshd honours the "signal" channel request (RFC 4254 6.9) since 7.9; older ones ignore it,
        # and closing the channel then leaves the command to die of SIGPIPE/SIGHUP.
        try:
            process.send_signal("KILL")
        except (OSError, asyncssh.Error):
            pass
        process.close()

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        async with self._sftp_lock:
            if self._sftp is None:
                try:
                    self._sftp = await self._conn.start_sftp_client()
                except (OSError, asyncssh.Error) as exc:
                    raise translate_error(exc, self.target, "push") from None
            return self._sftp

    async def write_ranges(self, remote_path: str, local_path: str, ranges: Sequence[ByteRange], *,
                           truncate_to: int | None, requests_in_flight: int,
                           on_written: Callable[[int], None]) -> None:
        sftp = await self._sftp_client()
        # OpenSSH's sftp-server answers limits@openssh.com with max-write-length 256 KiB - 1024
        # (sftp-server.c, SFTP_MAX_MSG_LENGTH - 1024): split our blocks to fit, never beyond.
        write_len = sftp.limits.max_write_len or 32768
        pieces = [(off + i, min(write_len, length - i)) for off, length in ranges for i in range(0, length, write_len)]
        loop = asyncio.get_running_loop()
        fd = os.open(local_path, os.O_RDONLY)
        with contextlib.suppress(OSError, AttributeError):  # advice only; not every platform has it
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        try:
            try:
                # block_size=0: one SFTP request per write() call; we size and parallelise them ourselves.
                remote = await sftp.open(remote_path, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT,
                                         asyncssh.SFTPAttrs(permissions=0o600), encoding=None, block_size=0)
            except (OSError, asyncssh.Error) as exc:
                raise translate_error(exc, self.target, "push") from None
            try:
                if truncate_to is not None:
                    await remote.truncate(truncate_to)
                todo = iter(pieces)

                async def writer() -> None:
                    for offset, length in todo:  # the shared iterator hands each piece to one writer
                        data: bytes | bytearray | None = cached_piece(fd, length, offset)
                        if data is None:  # not (all) in the page cache: the disk wait goes to a thread
                            data = await loop.run_in_executor(None, os.pread, fd, length, offset)
                        # asyncssh sends any bytes-like object, but annotates `data` as AnyStr, which leaves out
                        # bytearray; bytes(data) would copy every piece.
                        await remote.write(data, offset)  # type: ignore[type-var]
                        on_written(length)

                await first_failure([writer() for _ in range(max(1, min(requests_in_flight, len(pieces))))])
            finally:
                if not self._client.lost:
                    await asyncio.shield(self._close_quietly(remote))
        except (OSError, asyncssh.Error) as exc:
            raise translate_error(exc, self.target, "push") from None
        finally:
            os.close(fd)

    @staticmethod
    async def _close_quietly(remote: asyncssh.SFTPClientFile) -> None:
        try:
            await remote.close()
        except (OSError, asyncssh.Error):
            pass

    def stream(self, command: str) -> RemoteLines:
        return _AsyncsshLines(self, command)

    def abort(self) -> None:
        self._client.lost = True
        self._conn.abort()

    async def close(self) -> None:
        self._client.lost = True
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), timeout=5)
        except (TimeoutError, OSError, asyncssh.Error):
            pass


class _AsyncsshLines(RemoteLines):
    """A command's stdout read in chunks as asyncssh receives them; stderr drained by a task of its own."""

    def __init__(self, session: AsyncsshSession, command: str) -> None:
        super().__init__(session.target, command)
        self._session = session
        self._process: asyncssh.SSHClientProcess[bytes] | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        try:
            self._process = await self._session._conn.create_process(self.command, encoding=None,
                                                                     stdin=asyncssh.DEVNULL)
        except (OSError, asyncssh.Error) as exc:
            raise translate_error(exc, self.target, "stream") from None
        self._stderr_task = asyncio.get_running_loop().create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self._process is not None
        try:
            while data := await self._process.stderr.read(65536):
                self._keep_stderr(data)
        except (OSError, asyncssh.Error):
            pass  # the stdout reader reports the lost connection

    async def _read_chunk(self) -> bytes:
        assert self._process is not None
        try:
            data = await self._process.stdout.read(65536)
        except (OSError, asyncssh.Error) as exc:
            raise translate_error(exc, self.target, "stream") from None
        if data:
            return data
        # EOF on stdout: the exit status follows (RFC 4254 6.10) just before the channel closes.
        try:
            await asyncio.wait_for(self._process.wait_closed(), CLOSE_WAIT)
        except (TimeoutError, OSError, asyncssh.Error):
            pass
        # asyncssh reports exit status -1 with an exit signal (RFC 4254 6.10): no status then.
        status = self._process.exit_status
        self.exit_status = status if status is not None and status >= 0 else None
        signal = self._process.exit_signal
        self.exit_signal = signal[0] if signal else None
        if self.exit_status is None and self.exit_signal is None and not self._session.is_open:
            raise connection_lost(self.target, "stream", ConnectionError("the connection closed"))
        return b""

    async def _stop(self) -> None:
        if self._stderr_task is not None:
            self._stderr_task.cancel()
        process = self._process
        if process is None:
            return
        if process.exit_status is None and process.exit_signal is None and self._session.is_open:
            AsyncsshSession._stop(process)
        else:
            process.close()
        try:
            await asyncio.wait_for(process.wait_closed(), CLOSE_WAIT)
        except (TimeoutError, OSError, asyncssh.Error):
            pass
