"""The paramiko compatibility transport: the same session interface as asyncssh, each blocking call run in a
thread executor so the loop never waits. Its exceptions are translated in `translate_error`, here only.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import paramiko

from fleetdesk.errors import (
    AuthFailedError,
    CommandTimeoutError,
    FleetDeskError,
    TransportError,
)
from fleetdesk.transport.results import RunResult, decode_output
from fleetdesk.transport.session import (
    CLOSE_WAIT,
    ByteRange,
    ConnectionLostError,
    RemoteLines,
    auth_refused,
    connection_lost,
    existing_identity_files,
    file_refused,
    no_handshake,
    password_of,
    refused_connection,
    unresolvable,
)
from fleetdesk.transport.target import SSHTarget
from fleetdesk.transport.trust import check_host_key, host_key_algorithms, public_key_of

T = TypeVar("T")

# paramiko's own SFTP request size (SFTPFile.MAX_REQUEST_SIZE); safe with every server it talks to.
WRITE_LEN = 32768
# Replies are collected and progress reported about once per this many bytes, always at a block's end.
ACK_EVERY = 1024 * 1024


class _Cancelled(Exception):
    """The asyncio side gave up on this call; the worker thread stops at its next check."""


def translate_error(exc: BaseException, target: SSHTarget, step: str) -> FleetDeskError:
    """The one place paramiko/socket errors become operator errors naming the device and the step."""
    if isinstance(exc, FleetDeskError):
        return exc
    if isinstance(exc, socket.gaierror):
        return unresolvable(target, step, exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return no_handshake(target, step, exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return auth_refused(target, step, exc)
    if isinstance(exc, paramiko.PasswordRequiredException):
        return AuthFailedError(f"an identity file is encrypted: {exc}", device=target.device, step=step, cause=exc,
                               fix="load the key into ssh-agent or store its passphrase in the keyring")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return refused_connection(target, step, exc)
    if isinstance(exc, paramiko.SSHException) and str(exc) == "No authentication methods available":
        # paramiko's words when it found no key file, agent key or password to try: nothing was even offered.
        return AuthFailedError(f"FleetDesk had no key or password to offer {target.username}@{target.host}:"
                               f"{target.port}", device=target.device, step=step, cause=exc,
                               fix="name the device's key (`fleetdesk login DEVICE --identity KEYFILE`, or an "
                                   "IdentityFile line in ~/.ssh/config), or store its password with "
                                   "`fleetdesk login DEVICE --password-stdin`")
    if step in ("push", "write") and isinstance(exc, OSError) and not isinstance(exc, ConnectionError | EOFError):
        return file_refused(target, "push", exc, exc)
    if isinstance(exc, EOFError | ConnectionError | paramiko.ChannelException) or (
            isinstance(exc, paramiko.SSHException) and step != "connect"):
        return connection_lost(target, step, exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
        return refused_connection(target, step, exc, os.strerror(exc.errno or 0))
    where = f"{target.host}:{target.port}"
    if isinstance(exc, paramiko.SSHException):
        return TransportError(f"SSH error talking to {where}: {exc}", device=target.device, step=step, cause=exc)
    return TransportError(f"unexpected error talking to {where}: {exc!r}", device=target.device, step=step, cause=exc)


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """No key is loaded into the client, so paramiko hands every presented key here, after key exchange
    and before authentication (SSHClient.connect): we accept pinned keys and raise for anything else."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        check_host_key(self.target, public_key_of(key.get_name(), key.asbytes()))


def _transport_for(target: SSHTarget) -> Callable[..., paramiko.Transport]:
    def factory(sock: socket.socket, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        known = set(options.ciphers)
        first = [c for c in target.preferred_ciphers if c in known]
        options.ciphers = tuple(first + [c for c in options.ciphers if c not in first])
        key_types = set(options.key_types)
        options.key_types = tuple(k for k in host_key_algorithms(target) if k in key_types)
        return transport
    return factory


def _connect_blocking(target: SSHTarget, password: str | None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()  # no load_system_host_keys(): trust is FleetDesk's, never ~/.ssh/known_hosts
    client.set_missing_host_key_policy(_PinnedKeyPolicy(target))
    try:
        client.connect(target.host, target.port, username=target.username, password=password,
                       # paramiko takes a str or a list of paths here; its stubs only allow a str.
                       key_filename=existing_identity_files(target) or None,  # type: ignore[arg-type]
                       look_for_keys=not target.identity_files, allow_agent=target.use_agent,
                       timeout=target.connect_timeout, banner_timeout=target.connect_timeout,
                       auth_timeout=target.connect_timeout, transport_factory=_transport_for(target))
    except BaseException:
        client.close()
        raise
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(30)
    return client


class ParamikoSession:
    """One authenticated paramiko connection to one device; every call runs on the pool's executor."""

    def __init__(self, target: SSHTarget, client: paramiko.SSHClient, executor: Executor) -> None:
        self.target = target
        self._client = client
        self._executor = executor
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        self._aborted = False

    @classmethod
    async def connect(cls, target: SSHTarget, executor: Executor) -> ParamikoSession:
        password = await password_of(target)
        loop = asyncio.get_running_loop()
        try:
            client = await loop.run_in_executor(executor, _connect_blocking, target, password)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise translate_error(exc, target, "connect") from None
        return cls(target, client, executor)

    async def _call(self, step: str, fn: Callable[[threading.Event], T]) -> T:
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.is_open:  # a write that failed because the cable was cut is not the device refusing it
                raise ConnectionLostError(f"the connection to {self.target.host} was lost ({exc})",
                                          device=self.target.device, step=step, cause=exc,
                                          fix="check the device and the network, then retry") from None
            raise translate_error(exc, self.target, step) from None

    @property
    def is_open(self) -> bool:
        transport = self._client.get_transport()
        return not self._aborted and transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("transport closed")
        return transport

    async def run(self, command: str, *, timeout: float | None) -> RunResult:
        started = time.monotonic()

        def blocking(cancel: threading.Event) -> tuple[int, bytes, bytes] | None:
            chan = self._transport().open_session(timeout=self.target.connect_timeout)
            try:
                chan.exec_command(command)
                chan.shutdown_write()  # stdin at EOF, as asyncssh's DEVNULL
                out, err = bytearray(), bytearray()
                deadline = None if timeout is None else time.monotonic() + timeout
                while True:
                    if chan.recv_ready():
                        out += chan.recv(65536)
                    elif chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    elif chan.exit_status_ready() and chan.eof_received:
                        # The transport thread may have buffered the last output (then EOF) after the checks above
                        # found none: EOF comes after all of it, so read what is buffered before returning.
                        while chan.recv_ready():
                            out += chan.recv(65536)
                        while chan.recv_stderr_ready():
                            err += chan.recv_stderr(65536)
                        return chan.recv_exit_status(), bytes(out), bytes(err)
                    elif chan.closed:
                        raise EOFError("channel closed before the command finished")
                    elif cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                        return None
                    else:
                        chan.status_event.wait(0.01)
            finally:
                chan.close()

        done = await self._call("run", blocking)
        if done is None:
            raise CommandTimeoutError(f"command did not finish within {timeout:g} s: {command[:120]}",
                                      device=self.target.device, step="run",
                                      fix="raise the timeout or check what the command waits for")
        status, out, err = done
        # paramiko reports -1 when the server sent exit-signal instead of exit-status (RFC 4254 6.10).
        return RunResult(device=self.target.device, command=command, exit_status=None if status < 0 else status,
                         stdout=decode_output(out), stderr=decode_output(err), exit_signal="unknown" if status < 0
                         else None, seconds=time.monotonic() - started, stdout_bytes=out, stderr_bytes=err)

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._sftp_lock:
            if self._sftp is None:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            assert self._sftp is not None
            return self._sftp

    async def write_ranges(self, remote_path: str, local_path: str, ranges: Sequence[ByteRange], *,
                           truncate_to: int | None, requests_in_flight: int,
                           on_written: Callable[[int], None]) -> None:
        # paramiko pipelines its writes itself (SFTPFile.set_pipelined); requests_in_flight does not apply.
        loop = asyncio.get_running_loop()

        def blocking(cancel: threading.Event) -> None:
            sftp = self._sftp_client()
            try:
                remote = sftp.open(remote_path, "r+")  # keep what an earlier push left: no truncation
            except FileNotFoundError:
                remote = sftp.open(remote_path, "w")
                remote.chmod(0o600)
            with open(local_path, "rb") as local:
                try:
                    remote.set_pipelined(True)
                    if truncate_to is not None:
                        remote.truncate(truncate_to)
                    pending = 0
                    for index, (offset, length) in enumerate(ranges):
                        for start in range(offset, offset + length, WRITE_LEN):
                            if cancel.is_set() or self._aborted:
                                raise _Cancelled
                            n = min(WRITE_LEN, offset + length - start)
                            pending += n
                            # Replies are collected only at range (block) ends: a non-pipelined write makes
                            # paramiko read every pending reply first (SFTPFile._write), so progress counts
                            # only whole blocks the device confirmed.
                            last = start + n == offset + length and (
                                pending >= ACK_EVERY or index == len(ranges) - 1)
                            remote.set_pipelined(not last)
                            local.seek(start)
                            remote.seek(start)
                            remote.write(local.read(n))
                            if last:
                                loop.call_soon_threadsafe(on_written, pending)
                                pending = 0
                finally:
                    if not self._aborted and self._transport_active():
                        remote.close()

        try:
            await self._call("push", blocking)
        except _Cancelled:
            raise ConnectionLostError("the push was interrupted", device=self.target.device, step="push") from None

    def stream(self, command: str) -> RemoteLines:
        return _ParamikoLines(self, command)

    def _transport_active(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def abort(self) -> None:
        self._aborted = True
        transport = self._client.get_transport()
        if transport is not None:
            transport.sock.close()  # cut the cable; the transport thread notices and stops on its own

    async def close(self) -> None:
        self._aborted = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._client.close)


# Chunks a stream's reader thread may hand the loop before it waits for the loop to take them.
STREAM_CHUNKS_AHEAD = 64
# How often a stream's reader thread wakes from a blocking read to check whether it should stop.
STREAM_POLL = 0.5


class _ParamikoLines(RemoteLines):
    """A command's stdout read by a thread of its own, chunks handed to the loop through a queue.

    A stream lives as long as the device streams, so it does not borrow a thread of the pool's
    paramiko executor: a fleet of streaming devices would hold every one and starve run and push.
    The open runs on that executor like any other call; the long read gets its own daemon thread.
    """

    def __init__(self, session: ParamikoSession, command: str) -> None:
        super().__init__(session.target, command)
        self._session = session
        self._chan: paramiko.Channel | None = None
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._room = threading.Semaphore(STREAM_CHUNKS_AHEAD)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    async def _open(self) -> None:
        def blocking(cancel: threading.Event) -> paramiko.Channel:
            chan = self._session._transport().open_session(timeout=self.target.connect_timeout)
            try:
                chan.exec_command(self.command)
                chan.shutdown_write()
            except BaseException:
                chan.close()
                raise
            chan.settimeout(STREAM_POLL)
            return chan

        self._chan = await self._session._call("stream", blocking)
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._pump, args=(loop, self._chan), daemon=True,
                                        name=f"fleetdesk-stream-{self.target.device[:40]}")
        self._thread.start()

    def _pump(self, loop: asyncio.AbstractEventLoop, chan: paramiko.Channel) -> None:
        def hand(item: bytes | BaseException) -> None:
            while not self._room.acquire(timeout=STREAM_POLL):
                if self._stopping.is_set():
                    return
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is reading any more
                self._stopping.set()

        try:
            while not self._stopping.is_set():
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(65536)
                    try:
                        loop.call_soon_threadsafe(self._keep_stderr, data)
                    except RuntimeError:  # the loop has closed: nobody is reading any more
                        return
                try:
                    data = chan.recv(65536)
                except TimeoutError:
                    continue
                hand(data)
                if not data:
                    return
        except (OSError, EOFError, paramiko.SSHException) as exc:
            hand(exc)

    async def _read_chunk(self) -> bytes:
        item = await self._queue.get()
        self._room.release()
        if isinstance(item, BaseException):
            raise translate_error(item, self.target, "stream")
        if item:
            return item
        chan = self._chan
        assert chan is not None
        await asyncio.get_running_loop().run_in_executor(self._session._executor, chan.status_event.wait,
                                                         CLOSE_WAIT)
        while chan.recv_stderr_ready():
            self._keep_stderr(chan.recv_stderr(65536))
        # paramiko keeps -1 when no exit-status came: the command died of a signal (exit-signal, RFC 4254
        # 6.10) if the connection is still up, or the connection went down under it.
        if chan.exit_status >= 0:
            self.exit_status = chan.exit_status
        elif self._session.is_open:
            self.exit_signal = "unknown"
        else:
            raise connection_lost(self.target, "stream", EOFError("the connection closed"))
        return b""

    async def _stop(self) -> None:
        self._stopping.set()
        chan = self._chan
        if chan is None:
            return
        # Closing the channel makes sshd hang up on the command (SIGHUP to its session, SIGPIPE on its
        # next write); paramiko has no signal request to send first.
        try:
            await asyncio.get_running_loop().run_in_executor(self._session._executor, self._close_quietly, chan)
        except RuntimeError:  # the pool's executor is shut down: the pool closed the connection already
            self._close_quietly(chan)

    @staticmethod
    def _close_quietly(chan: paramiko.Channel) -> None:
        try:
            chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the connection is gone, and the command with it
