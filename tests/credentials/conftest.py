"""Fixtures for the credential tests: the real private gnome-keyring from tests/keyring_daemon.py."""

from tests.keyring_daemon import keyring_daemon

__all__ = ["keyring_daemon"]
