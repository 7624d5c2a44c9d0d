"""The transport contract, proven on both engines against a real OpenSSH sshd on 127.0.0.1:
run, timeouts, host-key trust before authentication, auth failure, unreachable, fan-out, ciphers, reconnect."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetdesk.errors import (
    AuthFailedError,
    CommandTimeoutError,
    HostKeyChangedError,
    HostKeyUnknownError,
    RemoteCommandError,
    UnreachableError,
)
from fleetdesk.transport import SSHPool, SSHTarget, fetch_host_key, run_many, shell_join
from tests.transport.conftest import LocalSSHD, free_port

Make = Callable[..., SSHTarget]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_run_returns_exit_status_stdout_and_stderr(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            result = await pool.run(make_target(), "echo out; echo err >&2; exit 7")
            assert (result.exit_status, result.stdout, result.stderr) == (7, "out\n", "err\n")
            assert not result.ok and result.device == make_target().device
            with pytest.raises(RemoteCommandError) as caught:
                await pool.run(make_target(), "echo boom >&2; exit 3", check=True)
            assert caught.value.exit_status == 3 and "boom" in caught.value.stderr
            assert caught.value.device == make_target().device and caught.value.step == "run"
    run(go())


def test_the_last_output_of_a_quick_command_is_never_lost(make_target: Make) -> None:
    # The output's last packet, EOF and the exit status arrive close together; paramiko's reader once returned
    # when it saw EOF after finding no data, losing a line that came in between (a push probe read "target -1 -"
    # without its "partial" line). Many short two-write commands at once give that race its chances.
    async def go() -> list[str]:
        async with SSHPool() as pool:
            target = make_target()
            results = await asyncio.gather(*(pool.run(target, f"echo a{i} && echo b{i} >&2 && echo c{i}")
                                             for i in range(150)))
            # stderr's end only: this machine's login shell may add lines of its own before the command runs.
            return [r.stdout + "|" + r.stderr[-len(f"b{i}\n"):] for i, r in enumerate(results)]
    outputs = run(go())
    assert outputs == [f"a{i}\nc{i}\n|b{i}\n" for i in range(150)]


def test_one_connection_per_device_reused_and_reopened_after_a_drop(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            target = make_target()
            first = await pool.session(target)
            await pool.run(target, "true")
            assert await pool.session(target) is first
            pool.abort(target)
            assert (await pool.run(target, "echo back")).stdout == "back\n"
            assert await pool.session(target) is not first
    run(go())


def test_command_timeout_raises_and_the_pool_stays_usable(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(CommandTimeoutError) as caught:
                await pool.run(make_target(), "sleep 30", timeout=0.5)
            assert caught.value.step == "run" and caught.value.device == make_target().device
            assert (await pool.run(make_target(), "echo still")).stdout == "still\n"
    run(go())


def test_output_that_is_not_utf8_is_kept_and_does_not_crash(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            result = await pool.run(make_target(), r"printf 'ok\377\376end'; printf '\300' >&2")
            assert result.stdout_bytes == b"ok\xff\xfeend" and result.stderr_bytes == b"\xc0"
            assert result.stdout == "ok\ufffd\ufffdend"
    run(go())


def test_unknown_host_key_is_refused_with_the_ssh_keygen_fingerprint(make_target: Make, sshd: LocalSSHD) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(HostKeyUnknownError) as caught:
                await pool.run(make_target(pinned_host_keys=()), "true")
            err = caught.value
            assert err.fingerprint == sshd.fingerprint("host_ed25519.pub")
            assert err.public_key == sshd.ed25519_line
            assert err.step == "connect" and err.device == make_target().device
            assert f"--fingerprint {err.fingerprint}" in (err.fix or "")
    run(go())


def test_changed_host_key_is_refused_naming_both_keys_and_nothing_runs(make_target: Make, sshd: LocalSSHD,
                                                                      tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(HostKeyChangedError) as caught:
                await pool.run(make_target(pinned_host_keys=(sshd.stranger_line,)),
                               shell_join(["touch", str(marker)]))
            err = caught.value
            pinned, presented = sshd.fingerprint("stranger.pub"), sshd.fingerprint("host_ed25519.pub")
            assert err.pinned == (pinned,) and err.presented == presented
            assert pinned in err.message and presented in err.message
            assert err.public_key == sshd.ed25519_line and "trust" in (err.fix or "")
    run(go())
    assert not marker.exists()


def test_a_pinned_ecdsa_key_is_enough_when_the_device_also_has_ed25519(make_target: Make, sshd: LocalSSHD) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            assert (await pool.run(make_target(pinned_host_keys=(sshd.ecdsa_line,)), "echo hi")).stdout == "hi\n"
    run(go())


def test_fetch_host_key_prefers_ed25519(make_target: Make, sshd: LocalSSHD) -> None:
    key = run(fetch_host_key(make_target(pinned_host_keys=())))
    assert key.line == sshd.ed25519_line and key.fingerprint == sshd.fingerprint("host_ed25519.pub")


def test_wrong_key_is_auth_failed(make_target: Make, sshd: LocalSSHD) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(AuthFailedError) as caught:
                await pool.run(make_target(identity_files=(sshd.wrong_key,)), "true")
            assert caught.value.step == "connect" and caught.value.device == make_target().device
    run(go())


def test_closed_port_is_unreachable(make_target: Make) -> None:
    async def go() -> None:
        async with SSHPool() as pool:
            with pytest.raises(UnreachableError) as caught:
                await pool.run(make_target(port=free_port()), "true")
            assert caught.value.step == "connect" and caught.value.device == make_target().device
            assert "127.0.0.1" in caught.value.message
    run(go())


def test_profile_cipher_is_the_one_negotiated(make_target: Make, sshd: LocalSSHD) -> None:
    pattern = re.compile(r"client->server cipher: aes256-gcm@openssh.com")
    before = len(pattern.findall(sshd.log.read_text()))

    async def go() -> None:
        async with SSHPool() as pool:
            await pool.run(make_target(ciphers=("aes256-gcm@openssh.com", "aes128-gcm@openssh.com")), "true")
    run(go())
    assert len(pattern.findall(sshd.log.read_text())) == before + 1


def test_a_device_with_no_profile_yet_negotiates_aes128_gcm_first(sshd: LocalSSHD, transport: str,
                                                                   tmp_path: Path) -> None:
    """Fleet.target for a device not probed yet (no profile) offers AES-GCM first, not asyncssh's chacha20 first;
    a profile's own order still wins. sshd takes the first cipher of the client's list that it supports."""
    from fleetdesk.fleet import Fleet
    from fleetdesk.inventory import ProbeFacts, open_inventory
    from fleetdesk.profiles import ProfileSet, load_profiles

    (tmp_path / "ssh_config").write_text("")
    inventory = open_inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
    fleet = Fleet(inventory, ProfileSet(profiles={"rpi4": load_profiles().get("rpi4")}),
                  ssh_config=tmp_path / "ssh_config")
    device = inventory.add_device(sshd.host, port=sshd.port, name=f"new-{transport}")
    inventory.set_connection(device.id, transport=transport, identity_file=sshd.client_key)
    inventory.pin_host_key(device.id, sshd.ed25519_line)
    device = inventory.device(device.id)
    assert device.profile is None

    def negotiated(target: SSHTarget) -> list[str]:
        start = len(sshd.log.read_bytes())

        async def go() -> None:
            async with SSHPool() as pool:
                await pool.run(target, "true")
        run(go())
        return re.findall(r"client->server cipher: (\S+)", sshd.log.read_bytes()[start:].decode())

    try:
        assert negotiated(fleet.reach(device).target) == ["aes128-gcm@openssh.com"]
        # The same device once a Pi 4 profile matched it: that profile's order is the one offered (chacha20 first;
        # paramiko has no chacha20, so the profile's next choice).
        pi = inventory.save_probe(device.id, ProbeFacts(arch="aarch64"), profile="rpi4")
        assert fleet.profiles.get("rpi4").ssh_ciphers == ("chacha20-poly1305@openssh.com", "aes128-ctr")
        wanted = "chacha20-poly1305@openssh.com" if transport == "asyncssh" else "aes128-ctr"
        assert negotiated(fleet.reach(pi).target) == [wanted]
    finally:
        inventory.close()


def test_fan_out_reports_every_device_and_unreachable_is_not_failed(make_target: Make) -> None:
    good = [make_target(device=f"good-{i}") for i in range(3)]
    down = make_target(device="down", port=free_port())
    untrusted = make_target(device="untrusted", pinned_host_keys=())
    fanout = run(run_many([*good, down, untrusted], "echo $((6 * 7))", timeout=30))
    assert [o.device for o in fanout.outcomes] == ["good-0", "good-1", "good-2", "down", "untrusted"]
    assert fanout.succeeded == ("good-0", "good-1", "good-2")
    assert fanout.unreachable == ("down",)
    assert fanout.failed == ("untrusted",)
    assert all(fanout.outcome(t.device).result.stdout == "42\n" for t in good)  # type: ignore[union-attr]
    assert isinstance(fanout.outcome("untrusted").error, HostKeyUnknownError)
    assert fanout.to_dict()["summary"] == {"succeeded": 3, "failed": 1, "unreachable": 1}
    assert not fanout.ok


def test_fan_out_counts_non_zero_exit_as_failed(make_target: Make) -> None:
    targets = [make_target(device="a"), replace(make_target(device="b"))]
    fanout = run(run_many(targets, "test \"$((1 + 1))\" = 3", timeout=30))
    assert fanout.failed == ("a", "b") and fanout.outcome("a").result.exit_status == 1  # type: ignore[union-attr]
