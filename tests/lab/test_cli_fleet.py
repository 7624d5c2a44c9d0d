"""The operator's path through the real CLI against the lab: discover, trust, probe, group, run.

Each command is the installed `fleetdesk` in a subprocess with its own SQLite inventory and an
~/.ssh/config that names the lab key, so the operator's ssh config is honoured for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.inventory import open_inventory
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet

pytestmark = pytest.mark.lab
__all__ = ["keyring_daemon"]

LAB_BRIDGE = "198.18.0.1"
NOBODY_THERE = "198.18.1.250"  # inside the lab subnet, never given to a lab device in these tests


class Operator:
    """One operator's machine: a home with an ssh config, an inventory, and the CLI."""

    def __init__(self, home: Path, fleet: Fleet, *, identity: str | None = None) -> None:
        self.home = home
        self.fleet = fleet
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        identity_line = f"  IdentityFile {identity}\n" if identity else "  IdentityFile ~/.ssh/none\n"
        (ssh / "config").write_text(f"Host *\n{identity_line}  IdentitiesOnly yes\n")
        self.env = dict(fleet.env, HOME=str(home), FLEETDESK_DATA_DIR=str(home / "data"),
                        FLEETDESK_CONFIG_DIR=str(home / "config"))
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env.pop("FLEETDESK_DB", None)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.home / 'data' / 'fleetdesk.db'}"

    def cli(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fleetdesk", *args], capture_output=True, text=True,
                              input=stdin if stdin is not None else "", env=env or self.env, timeout=600, check=False)

    def json(self, *args: str, ok: bool = True, **kwargs: Any) -> Any:
        # --json goes before a `--` that starts a remote command.
        at = args.index("--") if "--" in args else len(args)
        proc = self.cli(*args[:at], "--json", *args[at:], **kwargs)
        if ok:
            assert proc.returncode == 0, f"fleetdesk {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout)


def host_key_fingerprint(device: dict[str, Any]) -> str:
    """The fingerprint `ssh-keygen -lf` prints for the device's own Ed25519 host key."""
    pub = Path(device["root"]) / "etc/ssh/ssh_host_ed25519_key.pub"
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def operator(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(tmp_path_factory.mktemp("operator"), fleet, identity=fleet.state["ssh_key"])
    found = op.json("discover", "--interface", LAB_BRIDGE, "--timeout", "3")
    assert {d["name"] for d in found} >= {d["name"] for d in fleet.devices}
    yield op


def test_discover_puts_each_lab_device_in_the_inventory_once(operator: Operator, fleet: Fleet) -> None:
    devices = {d["name"]: d for d in operator.json("devices")}
    for lab_device in fleet.devices:
        row = devices[lab_device["name"]]
        assert row["addresses"][0] == lab_device["address"]
        assert row["online"] is True
        # Seen as _ssh._tcp and _workstation._tcp, still one row.
        assert {"_ssh._tcp.local.", "_workstation._tcp.local."} <= set(row["services"])
    lab_addresses = {d["address"] for d in fleet.devices}
    ssh_rows = [d for d in devices.values() if d["port"] == 22 and set(d["addresses"]) & lab_addresses]
    assert len(ssh_rows) == len(fleet.devices)
    # Each device the browse found first is in an audit entry of who browsed, once (a device heard again is not new).
    found = operator.json("audit", "list", "--action", "device.discover")
    named = [name for e in found for name in e["after"]["devices"]]
    assert sorted(named) == sorted(set(named)) and set(named) >= {d["name"] for d in fleet.devices}, found


def test_a_new_host_key_is_shown_never_accepted(operator: Operator, fleet: Fleet) -> None:
    device = fleet.by_profile("ipc-x86-nvidia")
    expected = host_key_fingerprint(device)

    probe = operator.cli("probe", device["name"], "--json")
    assert probe.returncode == 1
    outcome = json.loads(probe.stdout)["outcomes"][0]
    assert outcome["error"]["error"] == "HostKeyUnknownError"
    assert outcome["error"]["fingerprint"] == expected

    trust = operator.cli("trust", device["name"])  # stdin is not a terminal: nobody to ask
    assert trust.returncode == 2
    assert expected in trust.stderr and "--fingerprint" in trust.stderr

    wrong = operator.cli("trust", device["name"], "--fingerprint", "SHA256:" + "A" * 43)
    assert wrong.returncode == 2 and expected in wrong.stderr
    trusted = {d["name"]: d["trusted_host_keys"] for d in operator.json("devices")}
    assert trusted[device["name"]] == []


def test_trusted_devices_are_probed_and_matched_to_their_profiles(operator: Operator, fleet: Fleet) -> None:
    first, *rest = fleet.devices
    trusted = operator.json("trust", first["name"], "--fingerprint", host_key_fingerprint(first))
    assert trusted["fingerprint"] == host_key_fingerprint(first)
    for device in rest:  # keys the operator already had in a known_hosts file
        imported = operator.json("trust", device["name"], "--known-hosts", fleet.state["known_hosts"])
        assert host_key_fingerprint(device) in imported["trusted"]

    proc = operator.cli("probe", "--all", "--json")
    report = json.loads(proc.stdout)
    # Only lab devices are in this inventory (a developer's shared lab may announce a stray test service too).
    assert proc.returncode == (0 if report["summary"]["succeeded"] == len(report["outcomes"]) else 1)
    by_name = {o["device"]: o for o in report["outcomes"]}
    for device in fleet.devices:
        outcome = by_name[device["name"]]
        assert outcome["status"] == "succeeded", outcome
        assert outcome["profile"] == device["profile"], outcome
        assert outcome["facts"]["arch"] == device["arch"]
        assert outcome["facts"]["hostname"] == device["name"]
    stored = {d["name"]: d for d in operator.json("devices")}
    assert all(stored[d["name"]]["profile"] == d["profile"] for d in fleet.devices)


def test_a_changed_host_key_is_refused_with_both_fingerprints_until_retrusted(operator: Operator,
                                                                               fleet: Fleet) -> None:
    device, other = fleet.devices[-1], fleet.devices[-2]
    real, impostor = host_key_fingerprint(device), host_key_fingerprint(other)
    other_key = (Path(other["root"]) / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    with open_inventory(operator.db_url) as inventory:  # as if the device had been pinned with another key
        row = inventory.device(device["name"])
        inventory.forget_host_keys(row.id)
        inventory.pin_host_key(row.id, other_key)

    refused = operator.cli("run", device["name"], "--json", "--", "touch /tmp/should-not-exist")
    assert refused.returncode == 1
    error = json.loads(refused.stdout)["outcomes"][0]["error"]
    assert error["error"] == "HostKeyChangedError"
    assert error["pinned"] == [impostor] and error["presented"] == real
    assert impostor in error["message"] and real in error["message"]
    assert not (Path(device["root"]) / "tmp/should-not-exist").exists()

    retrusted = operator.json("trust", device["name"], "--fingerprint", real)
    assert retrusted["replaced"] == [impostor]
    assert operator.json("run", device["name"], "--", "true")["summary"]["succeeded"] == 1


def test_run_fans_out_and_counts_the_unreachable_apart(operator: Operator, fleet: Fleet) -> None:
    operator.json("add", NOBODY_THERE, "--name", "ghost")
    x86 = [d["name"] for d in fleet.devices if d["arch"] == "x86_64"]
    operator.json("group", *x86, "ghost", "--name", "line A")
    operator.json("login", x86[0], "--transport", "paramiko")  # the compatibility transport, same contract

    proc = operator.cli("run", "--group", "line A", "--json", "--timeout", "30", "--",
                        "echo $(hostname) $((6*7))")
    assert proc.returncode == 1  # ghost did not answer
    result = json.loads(proc.stdout)
    assert result["summary"] == {"succeeded": len(x86), "failed": 0, "unreachable": 1}
    for outcome in result["outcomes"]:
        if outcome["device"] == "ghost":
            assert outcome["status"] == "unreachable"
            assert outcome["error"]["device"] == "ghost"
        else:
            assert outcome["result"]["stdout"] == f"{outcome['device']} 42\n"

    failing = operator.json("run", *x86[:2], "--", "exit 3", ok=False)
    assert failing["summary"] == {"succeeded": 0, "failed": 2, "unreachable": 0}
    ghost = next(d for d in operator.json("devices") if d["name"] == "ghost")
    assert ghost["online"] is False


def test_a_password_lives_in_the_keyring_only(fleet: Fleet, keyring_daemon: KeyringDaemon,
                                              tmp_path: Path) -> None:
    op = Operator(tmp_path / "home", fleet)  # no key file: only the password can log in
    device = fleet.by_profile("ipc-x86")
    env = dict(op.env, DBUS_SESSION_BUS_ADDRESS=keyring_daemon.bus_address)
    secret = "fleet-lab"

    no_keyring = dict(op.env, DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
    refused = op.cli("add", device["address"], "--user", "fleet", "--password-stdin", stdin=secret + "\n",
                     env=no_keyring)
    assert refused.returncode == 2 and "keyring" in refused.stderr.lower()
    assert op.json("devices") == []  # refused whole: no device without the password it came with

    added = op.json("add", device["address"], "--user", "fleet", "--password-stdin", stdin=secret + "\n", env=env)
    op.json("trust", added["name"], "--fingerprint", host_key_fingerprint(device), env=env)
    ran = op.cli("run", added["name"], "--json", "--", "id -un", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["outcomes"][0]["result"]["stdout"] == "fleet\n"

    listing = op.cli("devices", "--json", env=env).stdout
    database = b"".join(p.read_bytes() for p in (op.home / "data").glob("fleetdesk.db*"))
    for place in (json.dumps(added), listing, ran.stdout, ran.stderr, database.decode("latin-1")):
        assert secret not in place
    assert added["password_account"] and secret not in added["password_account"]


def test_hostile_names_are_shown_escaped_in_tables(operator: Operator) -> None:
    name = "evil\n$(touch /tmp/pwned)\x1b[2J"
    operator.json("add", "127.0.0.1", "--port", "2", "--name", name)
    table = operator.cli("devices").stdout
    assert "evil\\n$(touch /tmp/pwned)\\x1b[2J" in table
    assert "\x1b" not in table
    assert any(d["name"] == name for d in operator.json("devices"))
    assert not os.path.exists("/tmp/pwned")
