"""The operator's ~/.ssh/config reaches a device the way `ssh ADDRESS` would, through the real CLI and a real sshd.

A new user adds a device by address with a name of their own (`fleetdesk add ADDR --name floor-cam-1`); their
~/.ssh/config has a `Host ADDR` block naming the key that device takes. `ssh ADDR` logs in with it; so must
FleetDesk, although the device is called floor-cam-1 here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.transport.conftest import LocalSSHD


class Operator:
    """A fresh operator: an empty home (no keys, no agent, no inventory) and the `fleetdesk` command."""

    def __init__(self, home: Path) -> None:
        self.home = home
        (home / ".ssh").mkdir(parents=True)
        self.env = dict(os.environ, HOME=str(home), FLEETDESK_DATA_DIR=str(home / "data"),
                        FLEETDESK_CONFIG_DIR=str(home / "config"))
        self.env.pop("SSH_AUTH_SOCK", None)  # only what the ssh config names can log in
        self.env.pop("FLEETDESK_DB", None)

    def ssh_config(self, text: str) -> None:
        (self.home / ".ssh" / "config").write_text(text)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fleetdesk", *args], capture_output=True, text=True,
                              env=self.env, stdin=subprocess.DEVNULL, timeout=120, check=False)

    def ok(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, f"fleetdesk {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout


def test_a_host_block_for_the_address_logs_in_to_a_device_added_under_another_name(
        sshd: LocalSSHD, transport: str, tmp_path: Path) -> None:
    operator = Operator(tmp_path / "home")
    operator.ssh_config(f"Host {sshd.host}\n  IdentityFile {sshd.client_key}\n  IdentitiesOnly yes\n")
    # `ssh ADDRESS` with this config logs in: the block is what the operator relies on.
    ssh = subprocess.run(["ssh", "-F", str(operator.home / ".ssh" / "config"), "-p", str(sshd.port),
                          "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                          "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", f"root@{sshd.host}", "echo in"],
                         capture_output=True, text=True, env=operator.env, stdin=subprocess.DEVNULL, timeout=60,
                         check=False)
    assert (ssh.returncode, ssh.stdout) == (0, "in\n"), ssh.stderr

    operator.ok("add", sshd.host, "--port", str(sshd.port), "--name", "floor-cam-1", "--transport", transport)
    operator.ok("trust", "floor-cam-1", "--fingerprint", sshd.fingerprint("host_ed25519.pub"))
    probed = operator.cli("probe", "floor-cam-1")
    assert probed.returncode == 0, probed.stdout + probed.stderr
    assert "1 succeeded, 0 failed, 0 unreachable" in probed.stdout
    assert "refused every key" not in probed.stdout + probed.stderr

    # Without the block nothing names the key: the same device is refused, so the block is what logged in.
    operator.ssh_config("Host floor-cam-2\n  IdentityFile /nonexistent\n")
    refused = operator.cli("probe", "floor-cam-1")
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "0 succeeded, 1 failed" in said
    # asyncssh offers "none" and is refused; paramiko finds nothing to offer and says so.
    assert ("refused every key and password offered" if transport == "asyncssh"
            else "no key or password to offer") in said
