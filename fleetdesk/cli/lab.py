"""`fleetdesk lab up|status|down|fault|image`: the virtual fleet for tests, demos and rehearsals (Linux, root)."""

from __future__ import annotations

import argparse
from typing import Any

from fleetdesk.cli.output import emit, progress, table
from fleetdesk.config import Settings
from fleetdesk.lab.faults import USAGE, apply_fault
from fleetdesk.lab.fleet import down, status, up
from fleetdesk.lab.rootfs import ensure_base
from fleetdesk.lab.system import require_root


def _lab_table(state: Any) -> str:
    rows = [("NAME", "ADDRESS", "PROFILE", "ARCH", "FAULTS")]
    for dev in state.devices:
        faults = ",".join(f"{k}={v}" if v is not True else k for k, v in sorted(dev.faults.items())) or "-"
        rows.append((dev.name, dev.address, dev.profile, dev.arch, faults))
    lines = [table(rows), ""]
    lines.append(f"ssh key:     {state.ssh_key}")
    lines.append(f"known hosts: {state.known_hosts}")
    lines.append(f"try:         ssh -i {state.ssh_key} -o UserKnownHostsFile={state.known_hosts} "
                 f"root@{state.devices[0].address}" if state.devices else "")
    return "\n".join(lines).rstrip()


def cmd_lab_up(args: argparse.Namespace) -> int:
    state = up(args.devices, progress=progress(args))
    emit(args, state.to_json(), _lab_table(state))
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    state = status()
    if state is None:
        emit(args, {"up": False, "devices": []}, "no lab is up")
        return 0
    data = state.to_json()
    data["up"] = state.phase == "up"
    text = _lab_table(state)
    if state.phase != "up":
        text = f"the lab is {state.phase!r} (an `up` is running or crashed; `fleetdesk lab down` cleans up)\n{text}"
    emit(args, data, text)
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    removed = down(progress=progress(args) if not args.json else (lambda _m: None))
    emit(args, {"removed": removed}, "" if removed else "no lab was up; nothing to do")
    return 0


def cmd_lab_fault(args: argparse.Namespace) -> int:
    result = apply_fault(args.device, args.fault, args.args)
    emit(args, result.__dict__, f"{result.device}: {result.fault}: {result.detail}")
    return 0


def cmd_lab_image(args: argparse.Namespace) -> int:
    require_root()
    archs = ["x86_64", "aarch64"] if args.arch == "all" else [args.arch]
    built = {arch: str(ensure_base(Settings.load().lab_cache_dir, arch, progress(args))) for arch in archs}
    emit(args, built, "\n".join(f"{a}: {p}" for a, p in built.items()))
    return 0


def add_lab(sub: Any) -> None:
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
