"""`fleetdesk runtime build|list|import-wheel` and `fleetdesk provision`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: Any, common: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
             choose: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add this module's subcommands to the `fleetdesk` parser."""
