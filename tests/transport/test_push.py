"""Push, proven on both engines against the real sshd on 127.0.0.1 (whose files the test can read directly):
fresh, skipped when identical, resumed after a cut, corruption repaired, hostile names, disk full, sh fallback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from fleetdesk.errors import ConfigError, DiskFullError, TransportError, UnreachableError
from fleetdesk.transport import BLOCK_SIZE, SSHPool, SSHTarget, digest_file, partial_path
from fleetdesk.transport.asyncssh_transport import cached_piece
from fleetdesk.transport.push import _PROBE_PY, _PROBE_SH, DIGEST_XATTR, parse_probe
from fleetdesk.transport.shell import python_command, sh_command
from tests.conftest import skip_or_fail
from tests.transport.conftest import LocalSSHD, free_port, target_on

Make = Callable[..., SSHTarget]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_push_is_verified_renamed_into_place_and_an_unchanged_one_sends_nothing(
        make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "model.onnx", 3 * BLOCK_SIZE + 1234)
    dest = tmp_path / "remote" / "deeper" / "model.onnx"
    seen: list[tuple[int, int]] = []

    async def go() -> None:
        async with SSHPool() as pool:
            first = await pool.push(make_target(), source, str(dest), progress=lambda d, t: seen.append((d, t)))
            assert (first.bytes_sent, first.skipped, first.size) == (source.stat().st_size, False,
                                                                     source.stat().st_size)
            assert first.sha256 == sha(source)
            again = await pool.push(make_target(), source, str(dest))
            assert (again.bytes_sent, again.skipped) == (0, True)
    run(go())
    assert dest.read_bytes() == source.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o644
    assert not Path(partial_path(str(dest))).exists()
    assert seen[-1] == (source.stat().st_size, source.stat().st_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_device_records_the_digest_it_checked_and_an_unchanged_file_is_known_by_it(
        make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "r.bin", 3 * BLOCK_SIZE + 7)
    dest = tmp_path / "r.remote"

    def record() -> list[str]:
        return os.getxattr(dest, DIGEST_XATTR).decode("ascii").split()

    def written_long_ago() -> None:
        # As a file that sat on the device for a while: the record of a file written in the same clock tick as the
        # record is not trusted, so the next probe hashes it and records it again.
        st = dest.stat()
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))

    async def go() -> None:
        async with SSHPool() as pool:
            assert not (await pool.push(make_target(), source, str(dest))).skipped
            written_long_ago()
            assert (await pool.push(make_target(), source, str(dest))).skipped  # hashed on the device, then recorded
            st = dest.stat()
            ino, size, mtime, _at, digest = record()
            assert (int(ino), int(size), int(mtime), digest) == (st.st_ino, st.st_size, st.st_mtime_ns, sha(source))
            # The record, not the bytes, is what an unchanged probe reads: a record naming another digest for the
            # same inode, size and mtime makes the push send the file again (and the record is right afterwards).
            forged = record()
            forged[4] = "0" * 64
            os.setxattr(dest, DIGEST_XATTR, " ".join(forged).encode("ascii"))
            again = await pool.push(make_target(), source, str(dest))
            assert (again.skipped, again.bytes_sent) == (False, source.stat().st_size)
            assert record()[4] == sha(source)
            # Any write moves the mtime, which voids the record: same size, other bytes, sent again.
            written_long_ago()
            assert (await pool.push(make_target(), source, str(dest))).skipped
            with dest.open("r+b") as f:
                f.write(b"\xff" * 16)
            changed = await pool.push(make_target(), source, str(dest))
            assert (changed.skipped, changed.bytes_sent) == (False, source.stat().st_size)
    run(go())
    assert sha(dest) == sha(source)


def test_a_push_cut_at_half_resumes_sending_at_most_one_block_beyond_what_was_missing(
        make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "big.bin", 40 * BLOCK_SIZE + 77)
    size = source.stat().st_size
    dest = tmp_path / "big.bin.remote"
    target = make_target()
    done_at_cut: list[int] = []

    async def go() -> None:
        async with SSHPool() as pool:
            def cut_at_half(done: int, total: int) -> None:
                if done >= total // 2 and not done_at_cut:
                    done_at_cut.append(done)
                    pool.abort(target)

            with pytest.raises(TransportError):
                await pool.push(target, source, str(dest), progress=cut_at_half)
            assert done_at_cut and not dest.exists() and Path(partial_path(str(dest))).exists()
            resumed = await pool.push(target, source, str(dest))
            missing = size - done_at_cut[0]
            assert resumed.bytes_sent <= missing + BLOCK_SIZE
            assert resumed.bytes_reused >= done_at_cut[0] - BLOCK_SIZE and resumed.resumed
            assert resumed.bytes_sent + resumed.bytes_reused == size
    run(go())
    assert sha(dest) == sha(source)
    assert not Path(partial_path(str(dest))).exists()


def test_blocks_corrupted_on_the_device_between_attempts_are_the_only_ones_re_sent(
        make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "c.bin", 12 * BLOCK_SIZE)
    dest = tmp_path / "c.remote"
    partial = Path(partial_path(str(dest)))
    target = make_target()

    async def go() -> None:
        async with SSHPool() as pool:
            # A complete partial file (as if cut just before the rename), then two blocks damaged on disk.
            partial.write_bytes(source.read_bytes())
            with partial.open("r+b") as f:
                for block in (2, 9):
                    f.seek(block * BLOCK_SIZE + 100)
                    f.write(b"\0garbage\0")
            result = await pool.push(target, source, str(dest))
            assert result.bytes_sent == 2 * BLOCK_SIZE
            assert result.resumed_from == 2 * BLOCK_SIZE
    run(go())
    assert sha(dest) == sha(source) and not partial.exists()


def test_damage_during_the_transfer_is_caught_by_the_device_hash_and_repaired(
        make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "d.bin", 24 * BLOCK_SIZE)
    dest = tmp_path / "d.remote"
    partial = Path(partial_path(str(dest)))
    damaged: list[int] = []

    def damage_first_block(done: int, total: int) -> None:
        # Every block is acknowledged, the device has not hashed yet: flip bytes behind the transfer's back.
        if done == total and not damaged and partial.exists():
            with partial.open("r+b") as f:
                f.write(b"\xff" * 16)
            damaged.append(done)

    async def go() -> None:
        async with SSHPool() as pool:
            result = await pool.push(make_target(), source, str(dest), progress=damage_first_block)
            assert damaged
            assert result.bytes_sent == source.stat().st_size + BLOCK_SIZE
    run(go())
    assert sha(dest) == sha(source)


HOSTILE_NAMES = ["with space", "it's", 'double"quote', "$(touch pwned)", "`touch pwned2`", "semi;touch pwned3",
                 "new\nline", "-dash", "ünïcødé"]


def test_hostile_remote_names_are_written_exactly_and_nothing_executes(make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "src", 5000)
    folder = tmp_path / "out dir $(touch pwned4)"
    home = Path(os.path.expanduser("~root"))
    before = {p.name for p in home.iterdir()}

    async def go() -> None:
        async with SSHPool() as pool:
            for name in HOSTILE_NAMES:
                assert (await pool.push(make_target(), source, str(folder / name))).bytes_sent == 5000
            assert (await pool.push(make_target(), source, str(folder / HOSTILE_NAMES[3]))).skipped
    run(go())
    assert sorted(os.listdir(folder)) == sorted(HOSTILE_NAMES)
    assert all((folder / name).read_bytes() == source.read_bytes() for name in HOSTILE_NAMES)
    assert sorted(os.listdir(tmp_path)) == sorted(["src", folder.name])
    assert {p.name for p in home.iterdir()} - before == set()


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_reported_and_leaves_the_old_file_and_no_partial(make_target: Make, tmp_path: Path,
                                                                      small_disk: Path) -> None:
    source = random_file(tmp_path / "huge", 3 * 1024 * 1024)
    dest = small_disk / "model.onnx"
    dest.write_bytes(b"the old model")
    target = make_target()

    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(DiskFullError) as caught:
                await pool.push(target, source, str(dest))
            assert caught.value.device == target.device and caught.value.step == "push"
            assert "free space on" in (caught.value.fix or "")
    run(go())
    assert dest.read_bytes() == b"the old model"
    assert sorted(os.listdir(small_disk)) == ["model.onnx"]


def test_the_sh_fallback_answers_exactly_like_python(make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "f", 5 * BLOCK_SIZE + 3)
    target_file = tmp_path / "t"
    target_file.write_bytes(source.read_bytes())
    partial = Path(partial_path(str(target_file)))
    partial.write_bytes(source.read_bytes()[: 2 * BLOCK_SIZE + 10])
    local = digest_file(str(source))
    args = (str(target_file), str(partial), BLOCK_SIZE, local.size, "0")

    async def go() -> tuple[str, str]:
        async with SSHPool() as pool:
            py = await pool.run(make_target(), python_command(_PROBE_PY, *args), check=True)
            sh = await pool.run(make_target(), sh_command(_PROBE_SH, *args), check=True)
            return py.stdout, sh.stdout
    py, sh = run(go())
    assert py == sh
    state = parse_probe(py)
    assert (state.target_size, state.target_sha256) == (local.size, local.sha256)
    assert state.partial_blocks == (*local.block_hashes[:2], state.partial_blocks[2])
    assert state.partial_blocks[2] != local.block_hashes[2]


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (written back first), as a long-idle artifact would be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_piece_is_read_on_the_loop_only_when_the_page_cache_holds_all_of_it(tmp_path: Path) -> None:
    source = random_file(tmp_path / "p.bin", 2 * BLOCK_SIZE)
    data = source.read_bytes()
    fd = os.open(source, os.O_RDONLY)
    try:
        assert cached_piece(fd, BLOCK_SIZE, BLOCK_SIZE) == data[BLOCK_SIZE:]
        assert cached_piece(fd, BLOCK_SIZE, BLOCK_SIZE + 10) is None  # runs past the end: read it the usual way
        evict(source)
        assert cached_piece(fd, BLOCK_SIZE, 0) is None  # it would wait for the disk: not on the loop
    finally:
        os.close(fd)


def test_a_file_out_of_the_page_cache_is_pushed_whole(make_target: Make, tmp_path: Path) -> None:
    source = random_file(tmp_path / "cold.bin", 12 * BLOCK_SIZE + 99)
    dest = tmp_path / "cold.remote"

    async def go() -> None:
        async with SSHPool() as pool:
            await pool.digest(source)
            evict(source)  # hashed long ago: the pieces come from the disk, through a thread
            assert (await pool.push(make_target(), source, str(dest))).bytes_sent == source.stat().st_size
    run(go())
    assert sha(dest) == sha(source)


@pytest.mark.parametrize(("cipher", "padded"), [("aes128-gcm@openssh.com", False),
                                                ("chacha20-poly1305@openssh.com", False),
                                                ("aes128-ctr", False), ("aes128-cbc", True)])
def test_asyncssh_sends_its_padding_packets_only_with_a_cbc_cipher(
        sshd: LocalSSHD, tmp_path: Path, caplog: pytest.LogCaptureFixture, cipher: str, padded: bool) -> None:
    """asyncssh's empty SSH_MSG_IGNORE ahead of every packet guards CBC only; with the others FleetDesk leaves it
    out (asyncssh_transport._send_cbc_padding_only), which halves the packets of a push. Counted from asyncssh's
    own packet log."""
    source = random_file(tmp_path / "padding.bin", 2 * BLOCK_SIZE)
    target = target_on(sshd, "asyncssh", ciphers=(cipher,))  # padding is asyncssh's alone: one transport

    async def go() -> None:
        async with SSHPool() as pool:
            await pool.push(target, source, str(tmp_path / "pushed.bin"))

    asyncssh.set_debug_level(3)
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncssh"):
            run(go())
    finally:
        asyncssh.set_debug_level(1)
    sent = [m for m in (r.getMessage() for r in caplog.records) if "] Sent " in m]
    data = sum("MSG_CHANNEL_DATA" in m for m in sent)
    ignores = sum("MSG_IGNORE" in m for m in sent)
    negotiated = re.findall(r"client->server cipher: (\S+)", sshd.log.read_text())
    assert negotiated and negotiated[-1] == cipher, negotiated[-3:]
    assert data >= 2 * BLOCK_SIZE // 32768, sent[:20]  # the file went in channel packets of at most 32 KiB
    assert (tmp_path / "pushed.bin").read_bytes() == source.read_bytes()
    if padded:
        assert ignores >= data, (ignores, data)
    else:
        assert ignores == 0, (ignores, data)


def test_the_file_is_hashed_while_the_device_is_reached_and_its_own_errors_come_first(
        make_target: Make, tmp_path: Path) -> None:
    """pool.push hashes the local file beside connecting; an unreadable file is the error named even when the
    device cannot be reached either, and a readable one to a closed port is the device's error."""
    closed = make_target(port=free_port())
    source = random_file(tmp_path / "ok.bin", BLOCK_SIZE + 5)

    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(ConfigError, match="cannot read"):
                await pool.push(closed, tmp_path / "missing.bin", str(tmp_path / "dest.bin"))
            with pytest.raises(UnreachableError):
                await pool.push(closed, source, str(tmp_path / "dest.bin"))
            pushed = await pool.push(make_target(), source, str(tmp_path / "dest.bin"))
            assert pushed.bytes_sent == source.stat().st_size
    run(go())
    assert (tmp_path / "dest.bin").read_bytes() == source.read_bytes()
