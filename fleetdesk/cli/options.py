"""The options several commands share: --json, and the choice of devices (DEVICE... | --group G | --all)."""

from __future__ import annotations

import argparse


def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--json: the result as one JSON document on stdout (progress then goes to stderr)."""
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def choose_devices(p: argparse.ArgumentParser) -> None:
    """The devices a command acts on, as `Fleet.select` takes them: names, a group, or every device."""
    p.add_argument("devices", nargs="*", metavar="DEVICE", help="device name, address or id")
    p.add_argument("--group", metavar="G", help="every device in group G")
    p.add_argument("--all", action="store_true", help="every device in the inventory")
