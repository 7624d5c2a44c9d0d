"""`fleetdesk ...`: every operation FleetDesk offers, scriptable, with --json output.

Errors are FleetDeskErrors printed as one line (message and fix) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from fleetdesk import __version__
from fleetdesk.errors import FleetDeskError

EXIT_ERROR = 2


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)


def _progress(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda message: print(message, file=stream, flush=True)


def _lab_table(state: Any) -> str:
    rows = [("NAME", "ADDRESS", "PROFILE", "ARCH", "FAULTS")]
    for dev in state.devices:
        faults = ",".join(f"{k}={v}" if v is not True else k for k, v in sorted(dev.faults.items())) or "-"
        rows.append((dev.name, dev.address, dev.profile, dev.arch, faults))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("")
    lines.append(f"ssh key:     {state.ssh_key}")
    lines.append(f"known hosts: {state.known_hosts}")
    lines.append(f"try:         ssh -i {state.ssh_key} -o UserKnownHostsFile={state.known_hosts} "
                 f"root@{state.devices[0].address}" if state.devices else "")
    return "\n".join(lines).rstrip()


def cmd_lab_up(args: argparse.Namespace) -> int:
    from fleetdesk.lab.fleet import up

    state = up(args.devices, progress=_progress(args))
    _emit(args, state.to_json(), _lab_table(state))
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    from fleetdesk.lab.fleet import status

    state = status()
    if state is None:
        _emit(args, {"up": False, "devices": []}, "no lab is up")
        return 0
    data = state.to_json()
    data["up"] = state.phase == "up"
    text = _lab_table(state)
    if state.phase != "up":
        text = f"the lab is {state.phase!r} (an `up` is running or crashed; `fleetdesk lab down` cleans up)\n{text}"
    _emit(args, data, text)
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    from fleetdesk.lab.fleet import down

    removed = down(progress=_progress(args) if not args.json else (lambda _m: None))
    _emit(args, {"removed": removed}, "" if removed else "no lab was up; nothing to do")
    return 0


def cmd_lab_fault(args: argparse.Namespace) -> int:
    from fleetdesk.lab.faults import apply_fault

    result = apply_fault(args.device, args.fault, args.args)
    _emit(args, result.__dict__, f"{result.device}: {result.fault}: {result.detail}")
    return 0


def cmd_lab_image(args: argparse.Namespace) -> int:
    from fleetdesk.config import Settings
    from fleetdesk.lab.rootfs import ensure_base
    from fleetdesk.lab.system import require_root

    require_root()
    archs = ["x86_64", "aarch64"] if args.arch == "all" else [args.arch]
    built = {arch: str(ensure_base(Settings.load().lab_cache_dir, arch, _progress(args))) for arch in archs}
    _emit(args, built, "\n".join(f"{a}: {p}" for a, p in built.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetdesk", description="Run a fleet of edge AI devices from this laptop.")
    parser.add_argument("--version", action="version", version=f"fleetdesk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lab = sub.add_parser("lab", help="the virtual fleet for tests, demos and rehearsals (Linux, root)")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    p = lab_sub.add_parser("up", help="build a virtual fleet")
    p.add_argument("--devices", required=True, metavar="SPEC",
                   help="device kinds by profile name, e.g. rpi4:2,jetson-orin-nano:1,ipc-x86:3")
    p.add_argument("--json", action="store_true", help="print the lab as JSON")
    p.set_defaults(func=cmd_lab_up)

    p = lab_sub.add_parser("status", help="show the running lab")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lab_status)

    p = lab_sub.add_parser("down", help="tear the lab down (also after a crashed up)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lab_down)

    from fleetdesk.lab.faults import USAGE

    p = lab_sub.add_parser("fault", help="inject a fault into one device", description=f"FAULT: {USAGE}")
    p.add_argument("device", metavar="DEVICE", help="device name or address")
    p.add_argument("fault", metavar="FAULT", help=USAGE)
    p.add_argument("args", nargs="*", metavar="ARG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lab_fault)

    p = lab_sub.add_parser("image", help="build or refresh the cached root filesystems")
    p.add_argument("--arch", choices=["x86_64", "aarch64", "all"], default="all")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lab_image)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FleetDeskError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict(), indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
