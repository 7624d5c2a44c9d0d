"""A real OpenSSH sshd on 127.0.0.1 for the transport tests, started once per session from a temp dir.

Targets for it come from `make_target`, parametrised over both transports by the `transport` fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.transport import SSHTarget
from tests.conftest import skip_or_fail

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class LocalSSHD:
    """The running sshd: where it listens, its host keys as OpenSSH lines, and the client keys."""

    host: str
    port: int
    folder: Path
    ed25519_line: str
    ecdsa_line: str
    stranger_line: str  # a valid host key this server does NOT have
    client_key: str
    wrong_key: str
    log: Path

    def fingerprint(self, pub_file: str) -> str:
        """The fingerprint exactly as `ssh-keygen -lf` prints it."""
        out = subprocess.run(["ssh-keygen", "-lf", str(self.folder / pub_file)], capture_output=True, text=True,
                             check=True).stdout
        return out.split()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, kind: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSSHD]:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        skip_or_fail("OpenSSH server (/usr/sbin/sshd) and ssh-keygen are needed")
    if os.geteuid() != 0:
        skip_or_fail("the test sshd runs as root here (privilege separation, root login)")
    folder = tmp_path_factory.mktemp("sshd")
    ecdsa = _keygen(folder / "host_ecdsa", "ecdsa")
    ed25519 = _keygen(folder / "host_ed25519", "ed25519")
    stranger = _keygen(folder / "stranger", "ed25519")
    _keygen(folder / "client", "ed25519")
    _keygen(folder / "wrong", "ed25519")
    (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    # ECDSA is listed first on purpose: fetch_host_key must still choose Ed25519.
    config.write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {folder / 'host_ecdsa'}
HostKey {folder / 'host_ed25519'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PidFile {folder / 'sshd.pid'}
UsePAM no
StrictModes no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
MaxStartups 200
MaxSessions 100
LogLevel DEBUG1
# Offered only by a test that asks for it: where asyncssh's CBC padding packets must stay.
Ciphers +aes128-cbc
""")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    log = folder / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(log)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
    yield LocalSSHD("127.0.0.1", port, folder, ed25519, ecdsa, stranger, str(folder / "client"),
                    str(folder / "wrong"), log)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(params=["asyncssh", "paramiko"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def target_on(sshd: LocalSSHD, transport: str, **overrides: Any) -> SSHTarget:
    """A trusted, key-authenticated target on the test sshd over `transport`; keyword arguments override fields."""
    base = SSHTarget(device=f"dev-{transport}", host=sshd.host, port=sshd.port, username="root",
                     pinned_host_keys=(sshd.ed25519_line,), identity_files=(sshd.client_key,),
                     transport=transport, connect_timeout=10, use_agent=False)
    return replace(base, **overrides)


@pytest.fixture
def make_target(sshd: LocalSSHD, transport: str) -> Callable[..., SSHTarget]:
    """target_on for each transport in turn (the `transport` fixture)."""
    def make(**overrides: Any) -> SSHTarget:
        return target_on(sshd, transport, **overrides)
    return make
