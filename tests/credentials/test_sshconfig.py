"""~/.ssh/config is read as OpenSSH reads it: checked against `ssh -G`, OpenSSH's own resolver.

`ssh -G` prints the configuration it would use and exits before any connection is attempted.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetdesk.errors import ConfigError
from fleetdesk.transport.sshconfig import (
    SSHConfigEntry,
    apply_ssh_config,
    check_supported,
    known_hosts_files,
    resolve,
    resolve_target,
)
from fleetdesk.transport.target import SSHTarget
from tests.conftest import skip_or_fail

LOCAL = pwd.getpwuid(os.getuid())

MAIN_CONFIG = """\
# The operator's config: first obtained value wins, so specific blocks come first.
Include {tmp}/conf.d/*.conf
Host web* !web-bad
  HostName %h.Example.NET
  User alice
  IdentityFile ~/.ssh/id_first
  IdentityFile %d/keys/%h-%u-%r
Host db?
  Port=2200
  IdentityFile "{tmp}/with space/id key"
  IdentitiesOnly yes
Host jump-*
  ProxyJump bastion.example.net
Host direct-1
  ProxyJump none
  ProxyCommand none
Host direct-*
  ProxyCommand ssh -W %h:%p gateway
  # Inside a Host block an Include is conditional: only direct-* hosts read it.
  Include {tmp}/conf.d/*.direct
Host *
  Port 2222
  User bob
  IdentityFile /etc/fleet/shared_key
  ConnectTimeout 7
  UserKnownHostsFile ~/.ssh/fleet_known_hosts
"""

INCLUDED = """\
Host web1
  Port 9999
  IdentitiesOnly yes
  User carol
Match originalhost db1
  User dbadmin
"""

HOSTS = ["web1", "web2", "web-bad", "db1", "db22", "jump-7", "direct-1", "direct-2", "line2-pi-07", "198.18.1.5"]


@pytest.fixture
def ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shutil.which("ssh") is None:
        skip_or_fail("OpenSSH's ssh client is not installed (apt-get install openssh-client)")
    # OpenSSH takes ~ and %d from the passwd entry, Python from $HOME: make them agree for the comparison.
    monkeypatch.setenv("HOME", LOCAL.pw_dir)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-web.conf").write_text(INCLUDED)
    (tmp_path / "conf.d" / "ignored.txt").write_text("Host *\n  User never\n")
    (tmp_path / "conf.d" / "only.direct").write_text("Port 2300\n")
    config = tmp_path / "config"
    config.write_text(MAIN_CONFIG.format(tmp=tmp_path))
    return config


def ssh_g(host: str, config: Path) -> dict[str, list[str]]:
    proc = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    settings: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, []).append(value)
    return settings


def openssh_expand(path: str, *, hostname: str, user: str, port: str = "22") -> str:
    """ssh_config(5) TOKENS, which `ssh -G` prints unexpanded for IdentityFile/ProxyCommand, then a leading ~."""
    tokens = {"%d": LOCAL.pw_dir, "%h": hostname, "%u": LOCAL.pw_name, "%r": user, "%p": port, "%%": "%"}
    for token, value in tokens.items():
        path = path.replace(token, value)
    return LOCAL.pw_dir + path[1:] if path.startswith("~/") else path


@pytest.mark.parametrize("host", HOSTS)
def test_resolution_matches_openssh(ssh_config: Path, host: str) -> None:
    ours = resolve(host, config_path=ssh_config)
    theirs = ssh_g(host, ssh_config)
    assert ours.hostname == theirs["hostname"][0]
    assert (ours.port or 22) == int(theirs["port"][0])
    assert (ours.user or LOCAL.pw_name) == theirs["user"][0]
    assert ("yes" if ours.identities_only else "no") == theirs["identitiesonly"][0]
    assert ours.proxy_jump == (theirs["proxyjump"][0] if "proxyjump" in theirs else None)
    proxy_command = theirs.get("proxycommand", [None])[0]
    if proxy_command:
        proxy_command = openssh_expand(proxy_command, hostname=theirs["hostname"][0], user=theirs["user"][0],
                                       port=theirs["port"][0])
    assert ours.proxy_command == proxy_command
    assert str(ours.connect_timeout or "none") == theirs["connecttimeout"][0]
    assert ours.user_known_hosts_files == tuple(theirs["userknownhostsfile"][0].split())
    expected_files = [openssh_expand(p.strip('"'), hostname=theirs["hostname"][0], user=theirs["user"][0])
                      for p in theirs["identityfile"]]
    assert list(ours.identity_files) == expected_files


def test_first_value_negation_include_and_tokens(ssh_config: Path) -> None:
    web1 = resolve("web1", config_path=ssh_config)
    # Port/User from the file included at the top, HostName from the first block, IdentityFile appended.
    assert web1 == SSHConfigEntry(
        host="web1", hostname="web1.example.net", port=9999, user="carol",
        identity_files=(f"{LOCAL.pw_dir}/.ssh/id_first", f"{LOCAL.pw_dir}/keys/web1.example.net-{LOCAL.pw_name}-carol",
                        "/etc/fleet/shared_key"),
        identities_only=True, connect_timeout=7,
        user_known_hosts_files=(f"{LOCAL.pw_dir}/.ssh/fleet_known_hosts",), config_path=str(ssh_config))
    web2 = resolve("web2", config_path=ssh_config)
    assert (web2.hostname, web2.user, web2.port) == ("web2.example.net", "alice", 2222)
    bad = resolve("web-bad", config_path=ssh_config)  # excluded by !web-bad: only Host * applies
    assert (bad.hostname, bad.user, bad.port) == ("web-bad", "bob", 2222)
    db1 = resolve("db1", config_path=ssh_config)
    assert (db1.port, db1.user) == (2200, "dbadmin")  # Match originalhost in the included file
    assert db1.identity_files[0] == f"{ssh_config.parent}/with space/id key"
    assert resolve("db22", config_path=ssh_config).port == 2222  # db? is one character only


def test_unsupported_proxies_are_kept_and_refused_clearly(ssh_config: Path) -> None:
    jump = resolve("jump-7", config_path=ssh_config)
    assert jump.unsupported() == ("ProxyJump bastion.example.net",)
    with pytest.raises(ConfigError) as raised:
        check_supported(jump, device="line2-pi-07")
    assert "ProxyJump bastion.example.net" in raised.value.message and str(ssh_config) in raised.value.message
    assert raised.value.device == "line2-pi-07" and raised.value.fix
    assert resolve("direct-1", config_path=ssh_config).unsupported() == ()  # "none" came first for both
    direct = resolve("direct-2", config_path=ssh_config)
    assert direct.unsupported() == ("ProxyCommand ssh -W direct-2:2300 gateway",)
    assert direct.port == 2300  # from the Include inside the Host direct-* block
    check_supported(resolve("web1", config_path=ssh_config))


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("Host x\n  Port abc\n", 2, "Port"),
    ("Host x\n  User\n", 2, "User"),
    ("Host x\n\n  IdentityFile \"unterminated\n", 3, "quotation"),
    ("Host x\n  IdentitiesOnly perhaps\n", 2, "IdentitiesOnly"),
])
def test_malformed_config_names_file_and_line_as_openssh_does(tmp_path: Path, text: str, line: int,
                                                              reason: str) -> None:
    config = tmp_path / "bad_config"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        resolve("x", config_path=config)
    assert f"{config} line {line}" in raised.value.message
    assert reason in raised.value.message
    assert raised.value.fix and "ssh -G" in raised.value.fix
    if shutil.which("ssh"):
        proc = subprocess.run(["ssh", "-G", "-F", str(config), "x"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode != 0 and f"line {line}" in proc.stderr  # OpenSSH rejects the same line


def test_missing_and_unreadable_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config: no settings, not an error
    assert resolve("web1") == SSHConfigEntry(host="web1", hostname="web1")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("web1", config_path=tmp_path / "nope")
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        resolve("web1", config_path=tmp_path / "adir")
    binary = tmp_path / "binary"
    binary.write_bytes(b"Host \xff\xfe\n")
    with pytest.raises(ConfigError):
        resolve("web1", config_path=binary)


def test_default_location_is_home_ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host pi\n  HostName 198.18.1.2\n  User pi\n")
    (tmp_path / ".ssh" / "extra").write_text("Host pi\n  Port 2022\n")
    (tmp_path / ".ssh" / "config").write_text("Include extra\nHost pi\n  HostName 198.18.1.2\n  User pi\n")
    entry = resolve("pi")
    # A relative Include is read from ~/.ssh, as ssh_config(5) says for user configuration files.
    assert (entry.hostname, entry.user, entry.port) == ("198.18.1.2", "pi", 2022)
    assert entry.config_path == str(tmp_path / ".ssh" / "config")
    assert known_hosts_files(entry) == (f"{tmp_path}/.ssh/known_hosts", f"{tmp_path}/.ssh/known_hosts2")


def test_config_fills_what_the_inventory_did_not_set() -> None:
    target = SSHTarget(device="pi-7", host="pi-7.local", identity_files=("/keys/profile_key",))
    entry = SSHConfigEntry(host="pi-7.local", hostname="198.18.1.7", port=2022, user="pi",
                           identity_files=("/home/op/.ssh/factory", "/keys/profile_key"), identities_only=True,
                           connect_timeout=5)
    applied = apply_ssh_config(target, entry)
    assert applied == SSHTarget(device="pi-7", host="198.18.1.7", port=2022, username="pi",
                                identity_files=("/home/op/.ssh/factory", "/keys/profile_key"),
                                connect_timeout=5.0, use_agent=False)
    assert target.host == "pi-7.local"  # the original is a frozen value, untouched


def test_explicit_inventory_settings_win_over_the_config() -> None:
    target = SSHTarget(device="pi-7", host="198.18.1.70", port=22, username="fleet", identity_files=("/k",))
    entry = SSHConfigEntry(host="198.18.1.70", hostname="10.0.0.7", port=2022, user="pi", identity_files=("/c",))
    applied = apply_ssh_config(target, entry, explicit={"host", "port", "username", "identity_files"})
    assert applied == target
    partly = apply_ssh_config(target, entry, explicit={"username"})
    assert (partly.host, partly.port, partly.username, partly.identity_files) == ("10.0.0.7", 2022, "fleet",
                                                                                  ("/c", "/k"))
    with pytest.raises(ConfigError):
        apply_ssh_config(target, entry, explicit={"password"})


def test_an_empty_entry_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host other\n  User x\n")
    target = SSHTarget(device="d", host="198.18.1.9")
    assert resolve_target(target, config_path=config) == target


# -- a device goes by several names: its name here, its address, its mDNS host name ---------------------------

DEVICE_CONFIG = """\
Host floor-cam-*
  User operator
Host 198.18.1.* !198.18.1.99
  HostName 198.18.1.250
  User pi
  IdentityFile ~/.ssh/floor_key
  IdentityFile ~/.ssh/floor_key_old
Match originalhost *.local
  Port 2222
Host *
  User fallback
  IdentityFile ~/.ssh/id_ed25519
  ConnectTimeout 7
"""


@pytest.fixture
def device_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", LOCAL.pw_dir)  # ~ as OpenSSH expands it, for the comparison with `ssh -G`
    config = tmp_path / "config"
    config.write_text(DEVICE_CONFIG)
    return config


def test_an_address_block_applies_to_a_named_device_as_it_does_to_ssh_address(device_config: Path) -> None:
    config = device_config
    config.write_text("Host 198.18.1.7\n  User pi\n  IdentityFile ~/.ssh/floor_key\n")
    by_name_only = resolve("line3-cam", config_path=config)
    assert (by_name_only.user, by_name_only.identity_files) == (None, ())  # what `ssh line3-cam` reads
    entry = resolve("line3-cam", aliases=("198.18.1.7",), config_path=config)
    if shutil.which("ssh") is None:
        skip_or_fail("OpenSSH's ssh client is not installed (apt-get install openssh-client)")
    theirs = ssh_g("198.18.1.7", config)  # what `ssh 198.18.1.7` reads
    assert entry.user == theirs["user"][0] == "pi"
    assert list(entry.identity_files) == [openssh_expand(p, hostname="198.18.1.7", user="pi")
                                          for p in theirs["identityfile"]]
    assert entry.identity_files == (f"{LOCAL.pw_dir}/.ssh/floor_key",)


def test_first_value_wins_in_file_order_whichever_name_matched(device_config: Path) -> None:
    entry = resolve("floor-cam-1", aliases=("198.18.1.5", "floor-cam-1.local"), config_path=device_config)
    # User: the name's block comes first in the file; HostName and keys from the address's block; Port from the
    # Match on the mDNS name; the catch-all adds its key after the others and its timeout.
    assert (entry.user, entry.hostname, entry.port, entry.connect_timeout) == ("operator", "198.18.1.250", 2222, 7)
    assert entry.identity_files == (f"{LOCAL.pw_dir}/.ssh/floor_key", f"{LOCAL.pw_dir}/.ssh/floor_key_old",
                                    f"{LOCAL.pw_dir}/.ssh/id_ed25519")
    assert entry.aliases == ("198.18.1.5", "floor-cam-1.local")
    # The same file with the blocks the other way round: now the address's User comes first.
    swapped = device_config.parent / "swapped"
    swapped.write_text(DEVICE_CONFIG.replace("Host floor-cam-*\n  User operator\n", "")
                       + "Host floor-cam-*\n  User operator\n")
    assert resolve("floor-cam-1", aliases=("198.18.1.5",), config_path=swapped).user == "pi"


def test_a_negated_pattern_matching_any_name_rules_the_block_out(device_config: Path) -> None:
    excluded = resolve("floor-cam-9", aliases=("198.18.1.99",), config_path=device_config)
    assert (excluded.user, excluded.hostname, excluded.port) == ("operator", "floor-cam-9", None)
    assert excluded.identity_files == (f"{LOCAL.pw_dir}/.ssh/id_ed25519",)
    # A device none of whose names any specific block matches gets only the catch-all.
    other = resolve("dock-pc", aliases=("198.18.2.4",), config_path=device_config)
    assert (other.user, other.port, other.hostname) == ("fallback", None, "dock-pc")


def test_match_host_is_the_hostname_once_set_and_originalhost_every_name(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host 198.18.1.5\n  HostName cam.factory.lan\n"
                      "Match host 198.18.1.5\n  User never\n"  # HostName is set: Match host sees only it
                      "Match host cam.factory.lan !originalhost floor-cam-1.local\n  Port 2200\n"
                      "Match host cam.factory.lan originalhost floor-cam-1.local\n  User viahost\n")
    entry = resolve("floor-cam-1", aliases=("198.18.1.5", "floor-cam-1.local"), config_path=config)
    assert (entry.hostname, entry.user, entry.port) == ("cam.factory.lan", "viahost", None)
    alone = resolve("floor-cam-1", aliases=("198.18.1.5",), config_path=config)
    assert (alone.user, alone.port) == (None, 2200)  # "!originalhost floor-cam-1.local" holds without that name
    with pytest.raises(ConfigError, match="Missing host match pattern"):
        (tmp_path / "bad").write_text("Match host\n  User x\n")
        resolve("floor-cam-1", aliases=("198.18.1.5",), config_path=tmp_path / "bad")


def test_the_lines_that_applied_are_kept_with_file_line_directive_and_block(device_config: Path,
                                                                          tmp_path: Path) -> None:
    included = tmp_path / "cams.conf"
    included.write_text("Host floor-cam-1.local\n  ProxyJump none\n  User shadowed\n")
    device_config.write_text(f"Include {included}\n" + DEVICE_CONFIG)
    entry = resolve("floor-cam-1", aliases=("198.18.1.5", "floor-cam-1.local"), config_path=device_config)
    main = str(device_config)
    assert [str(line) for line in entry.applied] == [
        f"{included}:2: ProxyJump none  (Host floor-cam-1.local)",
        f"{included}:3: User shadowed  (Host floor-cam-1.local)",
        f"{main}:5: HostName 198.18.1.250  (Host 198.18.1.* !198.18.1.99)",
        f"{main}:7: IdentityFile ~/.ssh/floor_key  (Host 198.18.1.* !198.18.1.99)",
        f"{main}:8: IdentityFile ~/.ssh/floor_key_old  (Host 198.18.1.* !198.18.1.99)",
        f"{main}:10: Port 2222  (Match originalhost *.local)",
        f"{main}:13: IdentityFile ~/.ssh/id_ed25519  (Host *)",
        f"{main}:14: ConnectTimeout 7  (Host *)",
    ]
    assert entry.user == "shadowed"  # the included file came first: the later User lines did not apply
    assert (entry.applied[2].path, entry.applied[2].line, entry.applied[2].directive) == (main, 5, "HostName")
    # Where a value came from is not part of what it is.
    assert entry == dataclasses.replace(entry, applied=())


def test_the_name_itself_and_repeats_are_not_aliases(device_config: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    entry = resolve("198.18.1.5", aliases=("198.18.1.5", "", "cam.local", "cam.local"), config_path=device_config)
    assert entry.aliases == ("cam.local",)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config at all
    assert resolve("floor-cam-1", aliases=("198.18.1.5",)).aliases == ("198.18.1.5",)
