"""A real, private OS keyring for tests: a session D-Bus plus gnome-keyring-daemon's Secret Service.

Import `keyring_daemon` into a conftest.py to use the session fixture; `private_keyring()` starts another one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

KEYRING_PASSWORD = "fleetdesk-test-login"  # the throwaway login keyring of a temp HOME

# A session bus with no service directories: nothing on this machine gets D-Bus-activated behind the
# test's back (Debian ships an org.freedesktop.secrets activation file that would start a second,
# unmanaged gnome-keyring-daemon against the real HOME). The policy is dbus's own session.conf one.
_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={socket_dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

_STARTUP_TIMEOUT = 15.0


@dataclass(frozen=True)
class KeyringDaemon:
    """A running private Secret Service: its bus address and the temp HOME that holds its keyrings."""

    bus_address: str
    home: Path
    password: str
    bus_pid: int
    daemon_pid: int | None  # None for a bus with no Secret Service on it


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        from tests.conftest import skip_or_fail  # here: tests.conftest imports this module (benchmarks too)

        skip_or_fail(f"{binary} is not installed (apt-get install gnome-keyring dbus-x11)")
    return str(path)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _start_bus(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    dbus_daemon = _require("dbus-daemon")
    socket_dir = base / "bus"
    socket_dir.mkdir(parents=True, exist_ok=True)
    config = base / "session-bus.conf"
    config.write_text(_BUS_CONFIG.format(socket_dir=socket_dir))
    # --nofork keeps the bus our child, so teardown stops exactly the process we started.
    bus = subprocess.Popen([dbus_daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert bus.stdout is not None
    address = bus.stdout.readline().decode().strip()
    if not address:
        _stop(bus)
        pytest.fail(f"dbus-daemon printed no bus address (exit status {bus.poll()})")
    return bus, address


def _wait_for_default_collection(address: str, daemon: subprocess.Popen[bytes]) -> None:
    import secretstorage
    from jeepney.io.blocking import open_dbus_connection

    deadline = time.monotonic() + _STARTUP_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            break
        try:
            with open_dbus_connection(address) as connection:
                collection = secretstorage.get_default_collection(connection)
                if not collection.is_locked():
                    return
        except (secretstorage.exceptions.SecretStorageException, OSError, ConnectionError) as exc:
            last_error = exc
        time.sleep(0.05)
    stderr = b""
    if daemon.poll() is not None and daemon.stderr is not None:
        stderr = daemon.stderr.read()
    pytest.fail(f"gnome-keyring-daemon did not offer an unlocked login keyring: {last_error!r} "
                f"{stderr.decode(errors='replace')[-500:]}")


@contextmanager
def private_keyring(base: Path, *, with_secret_service: bool = True,
                    unlock: bool = True) -> Iterator[KeyringDaemon]:
    """Start a private session bus (and, by default, an unlocked gnome-keyring on it); stop both after.

    Only the child processes get the temp HOME / XDG dirs, so the real user's keyring is never touched.
    os.environ and keyring's backend are left alone: see `use_keyring_daemon` for that.
    """
    if with_secret_service:
        _require("gnome-keyring-daemon")
        try:
            import secretstorage  # noqa: F401
        except ImportError:
            from tests.conftest import skip_or_fail

            skip_or_fail("the secretstorage package is not installed (pip install secretstorage)")
    home = base / "home"
    runtime = base / "run"
    for directory in (home, runtime):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    bus, address = _start_bus(base)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        if with_secret_service:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "XDG_RUNTIME_DIR": str(runtime),
                "XDG_DATA_HOME": str(home / ".local" / "share"),
                "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CACHE_HOME": str(home / ".cache"),
                "DBUS_SESSION_BUS_ADDRESS": address,
            }
            # --unlock reads the login keyring's password from stdin and creates that keyring if it is
            # missing; --foreground keeps the daemon our child (gnome-keyring-daemon(1)).
            argv = ["gnome-keyring-daemon", "--foreground", "--components=secrets"]
            if unlock:
                argv.append("--unlock")
            daemon = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
            assert daemon.stdin is not None
            if unlock:
                daemon.stdin.write(KEYRING_PASSWORD.encode())
            daemon.stdin.close()
            if unlock:
                _wait_for_default_collection(address, daemon)
        yield KeyringDaemon(bus_address=address, home=home, password=KEYRING_PASSWORD, bus_pid=bus.pid,
                            daemon_pid=daemon.pid if daemon else None)
    finally:
        if daemon is not None:
            _stop(daemon)
        _stop(bus)


@contextmanager
def use_keyring_daemon(daemon: KeyringDaemon) -> Iterator[None]:
    """Point this process (env and the `keyring` package) at `daemon`'s bus; restore both after."""
    import keyring
    from keyring.backends import SecretService

    old_address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    old_backend = keyring.get_keyring()
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = daemon.bus_address
    keyring.set_keyring(SecretService.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(old_backend)
        if old_address is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = old_address


@contextmanager
def some_keyring(folder: Path) -> Iterator[None]:
    """The keyring this process already has when it is usable, else a private daemon under `folder` (benchmarks)."""
    from fleetdesk.transport import credentials

    if credentials.keyring_status().usable:
        yield
        return
    with private_keyring(folder / "keyring") as daemon, use_keyring_daemon(daemon):
        yield


@pytest.fixture(scope="session")
def keyring_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyringDaemon]:
    """A real gnome-keyring Secret Service for the whole session; `keyring` uses it while it runs."""
    base = tmp_path_factory.mktemp("keyring")
    with private_keyring(base) as daemon, use_keyring_daemon(daemon):
        yield daemon
