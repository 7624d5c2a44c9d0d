"""The SSH pool: one connection per device, reused and re-opened when dropped, a bound on concurrent work,
and the operations the rest of FleetDesk calls: run, push, run_many, fetch_host_key (from asyncssh_transport).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from types import TracebackType

from fleetdesk.errors import ConfigError, FleetDeskError, RemoteCommandError, TransportError
from fleetdesk.transport.asyncssh_transport import AsyncsshSession
from fleetdesk.transport.paramiko_transport import ParamikoSession
from fleetdesk.transport.push import BLOCK_SIZE, LocalFile, digest_file, push_file
from fleetdesk.transport.results import DeviceOutcome, FanOutResult, ProgressCallback, PushResult, RunResult
from fleetdesk.transport.session import DeviceSession, RemoteLines
from fleetdesk.transport.target import TRANSPORTS, SSHTarget

DEFAULT_MAX_OPERATIONS = 32
# Handshakes cost the laptop CPU (key exchange, signatures): bound them apart from the work itself.
DEFAULT_MAX_CONNECTING = 16
# SFTP writes outstanding per push: with 255 KiB blocks, 16 keep a LAN busy without a big memory bill.
DEFAULT_REQUESTS_IN_FLIGHT = 16


class SSHPool:
    """`async with SSHPool() as pool: await pool.run(target, "uname -m")`. Not shared between event loops."""

    def __init__(self, *, max_operations: int = DEFAULT_MAX_OPERATIONS,
                 max_connecting: int = DEFAULT_MAX_CONNECTING,
                 requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT, block_size: int = BLOCK_SIZE) -> None:
        self.max_operations = max_operations
        self.max_connecting = max_connecting
        self.requests_in_flight = requests_in_flight
        self.block_size = block_size
        self._operations = asyncio.Semaphore(max_operations)
        self._connecting = asyncio.Semaphore(max_connecting)
        self._sessions: dict[str, tuple[SSHTarget, DeviceSession]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._digests: dict[tuple[object, ...], asyncio.Future[LocalFile]] = {}
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> SSHPool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _paramiko_executor(self) -> ThreadPoolExecutor:
        # paramiko blocks: it gets its own threads, as many as operations and handshakes at once, so a
        # fan-out over 30 devices is not serialised behind the loop's small default executor.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.max_operations + self.max_connecting,
                                                thread_name_prefix="fleetdesk-paramiko")
        return self._executor

    async def session(self, target: SSHTarget) -> DeviceSession:
        """The device's open session, connecting (or reconnecting after a drop or a changed target) as needed."""
        lock = self._locks.setdefault(target.device, asyncio.Lock())
        async with lock:
            held = self._sessions.get(target.device)
            if held is not None:
                if held[0] == target and held[1].is_open:
                    return held[1]
                del self._sessions[target.device]
                await _close_quietly(held[1])
            async with self._connecting:
                if target.transport == "asyncssh":
                    session: DeviceSession = await AsyncsshSession.connect(target)
                elif target.transport == "paramiko":
                    session = await ParamikoSession.connect(target, self._paramiko_executor())
                else:
                    raise ConfigError(f"unknown SSH transport {target.transport!r}", device=target.device,
                                      step="connect", fix=f"use one of: {', '.join(TRANSPORTS)}")
            self._sessions[target.device] = (target, session)
            return session

    async def run(self, target: SSHTarget, command: str, *, timeout: float | None = 60.0,
                  check: bool = False) -> RunResult:
        """Run `command` (already shell-quoted; see transport.shell) on the device. With `check`, a non-zero
        exit raises RemoteCommandError; otherwise the result carries the exit status."""
        async with self._operations:
            session = await self.session(target)
            result = await session.run(command, timeout=timeout)
        if check and result.exit_status != 0:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            raise RemoteCommandError(
                f"command exited with {result.exit_status if result.exit_status is not None else result.exit_signal}"
                f": {command[:120]}" + (f" ({last[:200]})" if last else ""),
                exit_status=result.exit_status, stderr=result.stderr, device=target.device, step="run",
                fix="see the command's error output")
        return result

    async def digest(self, local_path: str | os.PathLike[str]) -> LocalFile:
        """Size and SHA-256 (whole and per block) of a local file, computed once per file version."""
        path = os.fspath(local_path)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", step="push", cause=exc,
                              fix="check the local file's path") from None
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, self.block_size)
        future = self._digests.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._digests[key] = asyncio.ensure_future(
                loop.run_in_executor(None, digest_file, path, self.block_size))
        try:
            return await asyncio.shield(future)
        except OSError as exc:
            self._digests.pop(key, None)
            raise ConfigError(f"cannot read {path}: {exc.strerror}", step="push", cause=exc,
                              fix="check the local file") from None

    async def push(self, target: SSHTarget, local_path: str | os.PathLike[str], remote_path: str, *,
                   mode: int | None = 0o644, progress: ProgressCallback | None = None,
                   make_dirs: bool = True) -> PushResult:
        """Put a local file at `remote_path` on the device (see transport.push for the guarantees)."""
        # The file is hashed while the device is reached (a thread; hashlib lets go of the interpreter lock):
        # 0.12 s per 100 MB here that no longer holds back the first byte. A local file that cannot be read is
        # still the error reported, whatever the device answered.
        digesting = asyncio.ensure_future(self.digest(local_path))
        try:
            async with self._operations:
                try:
                    session = await self.session(target)
                except FleetDeskError:
                    await digesting
                    raise
                local = await digesting
                return await push_file(session, local, remote_path, mode=mode, progress=progress,
                                       requests_in_flight=self.requests_in_flight, make_dirs=make_dirs)
        finally:
            digesting.cancel()

    @asynccontextmanager
    async def stream(self, target: SSHTarget, command: str) -> AsyncIterator[RemoteLines]:
        """`async with pool.stream(target, cmd) as lines: async for line in lines: ...` over the device's
        pooled connection. A stream lives as long as the device streams, so it takes no operation slot
        (a streaming fleet would hold them all); leaving the block kills the command on the device."""
        session = await self.session(target)
        lines = session.stream(command)
        try:
            await lines.open()
            yield lines
        finally:
            await lines.close()

    async def run_many(self, targets: Iterable[SSHTarget], command: str, *,
                       timeout: float | None = 60.0) -> FanOutResult:
        """Run one command on every target at once; one outcome per device, one failure hides no other."""
        targets = list(targets)
        answers = await asyncio.gather(*(self.run(t, command, timeout=timeout) for t in targets),
                                       return_exceptions=True)
        outcomes = []
        for target, answer in zip(targets, answers, strict=True):
            if isinstance(answer, RunResult):
                outcomes.append(DeviceOutcome(target.device, result=answer))
            elif isinstance(answer, FleetDeskError):
                outcomes.append(DeviceOutcome(target.device, error=answer))
            elif isinstance(answer, Exception | asyncio.CancelledError):
                outcomes.append(DeviceOutcome(target.device, error=TransportError(
                    f"unexpected error: {answer!r}", device=target.device, step="run", cause=answer)))
            else:
                raise answer
        return FanOutResult(tuple(outcomes))

    def abort(self, target: SSHTarget) -> None:
        """Drop the device's connection at once (operations on it fail as lost); the next call reconnects."""
        held = self._sessions.pop(target.device, None)
        if held is not None:
            held[1].abort()

    async def close(self) -> None:
        """Close every connection; the pool can still be used afterwards (it reconnects)."""
        held, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(_close_quietly(session) for _, session in held))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


async def _close_quietly(session: DeviceSession) -> None:
    try:
        await session.close()
    except (FleetDeskError, OSError):
        pass


async def run_many(targets: Iterable[SSHTarget], command: str, *, timeout: float | None = 60.0,
                   pool: SSHPool | None = None) -> FanOutResult:
    """Fan a command out to many devices; with no pool given, a temporary one is opened and closed."""
    if pool is not None:
        return await pool.run_many(targets, command, timeout=timeout)
    async with SSHPool() as own:
        return await own.run_many(targets, command, timeout=timeout)
