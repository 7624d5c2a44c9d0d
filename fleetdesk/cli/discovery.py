"""`fleetdesk discover|sweep`: finding devices on the network (mDNS, or an opt-in TCP/22 sweep of a CIDR) and
adding them to the inventory."""

from __future__ import annotations

import argparse
from typing import Any

from fleetdesk.cli.options import with_json
from fleetdesk.cli.output import device_json, devices_table, emit, progress, safe
from fleetdesk.cli.session import with_fleet


def cmd_discover(args: argparse.Namespace) -> int:
    say = progress(args)

    async def work(fleet: Any) -> int:
        def shown(device: Any) -> None:
            if not args.json:
                say(f"seen {safe(device.label)}")

        def recording(state: Any) -> None:
            # Told even with --json (on stderr): a browse whose sightings are not stored must not look fine.
            fix = f" — {state.error.fix}" if state.error is not None and state.error.fix else ""
            say(safe(state.text + fix))

        devices = await fleet.discover(args.interface or None, args.timeout, on_device=shown, on_state=recording)
        emit(args, [device_json(fleet, d) for d in devices],
             f"{len(devices)} device(s) found\n" + (devices_table(devices) if devices else ""))
        return 0

    return with_fleet(args, work)


def cmd_sweep(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        devices = await fleet.sweep(args.cidr, port=args.port, rate=args.rate)
        emit(args, [device_json(fleet, d) for d in devices],
             f"{len(devices)} SSH server(s) answered in {args.cidr}\n" + (devices_table(devices) if devices else ""))
        return 0

    return with_fleet(args, work)


def add_discover(sub: Any) -> None:
    p = with_json(sub.add_parser("discover", help="find devices on the network by mDNS and add them"))
    p.add_argument("--interface", action="append", metavar="ADDR",
                   help="browse only on the interface with this address (repeatable; default: all)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to listen (default 3)")
    p.set_defaults(func=cmd_discover)


def add_sweep(sub: Any) -> None:
    p = with_json(sub.add_parser("sweep", help="look for SSH servers across a network you name (opt-in)"))
    p.add_argument("cidr", metavar="CIDR", help="e.g. 192.168.10.0/24 (at most 1024 addresses)")
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--rate", type=float, help="connection attempts per second (default 200)")
    p.set_defaults(func=cmd_sweep)
