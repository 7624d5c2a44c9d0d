"""What the command line prints: a result as text or, with --json, as one JSON document on stdout; progress
lines; tables; and device-supplied text made safe for a terminal (fleetdesk.text.visible_text)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fleetdesk.text import visible_text


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """The command's result: `data` as JSON with --json, else `text` (nothing when it is empty)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """A printer of progress lines: on stdout, or on stderr with --json (stdout carries only the JSON document)."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda message: print(message, file=stream, flush=True)


def safe(text: object) -> str:
    """Device-supplied text for a terminal: control characters (newlines, escapes) shown, never obeyed."""
    return visible_text(str(text))


def safe_block(text: str) -> str:
    """Command output of several lines: each line made safe, the line breaks kept."""
    return "\n".join(safe(line) for line in text.rstrip("\n").split("\n"))


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows (the first one the headings) in columns as wide as their widest cell; every cell made safe."""
    rows = [tuple(safe(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def when(moment: Any) -> str:
    """A stored moment in this laptop's time zone, to the second; "-" for none."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def summary(counts: dict[str, int]) -> str:
    """The last line of a command over several devices: unreachable devices are counted apart from failed ones."""
    return f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['unreachable']} unreachable"


def device_json(fleet: Any, device: Any) -> dict[str, Any]:
    """A device of the inventory as --json prints it, with the fingerprints of its trusted host keys."""
    data = dataclasses.asdict(device)
    data["trusted_host_keys"] = [k.fingerprint for k in fleet.inventory.host_keys(device.id)]
    return data


def devices_table(devices: Sequence[Any]) -> str:
    """Devices of the inventory, one row each, as `fleetdesk devices` shows them."""
    rows = [("NAME", "ADDRESS", "PROFILE", "ARCH", "OS", "ONLINE", "LAST SEEN", "GROUPS")]
    for d in devices:
        rows.append((d.name, d.address or "-", d.profile or "-", d.facts.arch or "-", d.facts.os_name or "-",
                     "yes" if d.online else "no", when(d.last_seen), ",".join(d.groups) or "-"))
    return table(rows)
