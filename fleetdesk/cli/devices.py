"""`fleetdesk devices|add|login|group|probe|run`: the inventory of devices, how FleetDesk logs in to each, groups,
and one SSH round trip per device (identify it and match a profile, or run a command)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from datetime import UTC, datetime
from typing import Any

from fleetdesk.cli.options import choose_devices, with_json
from fleetdesk.cli.output import device_json, devices_table, emit, progress, safe, safe_block, summary
from fleetdesk.cli.session import with_fleet
from fleetdesk.errors import ConfigError, InventoryError
from fleetdesk.inventory.records import Group


def cmd_devices(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        devices = fleet.inventory.devices(group=args.group)
        empty = "no devices yet: try `fleetdesk discover` or `fleetdesk add HOST`"
        emit(args, [device_json(fleet, d) for d in devices], devices_table(devices) if devices else empty)
        return 0

    return with_fleet(args, work)


def cmd_add(args: argparse.Namespace) -> int:
    password = _read_password(args)

    async def work(fleet: Any) -> int:
        device = await fleet.add(args.host, port=args.port, username=args.user, name=args.name, password=password,
                                 transport=args.transport, interfaces=args.interface or None)
        text = f"added {safe(device.label)}; next: `fleetdesk trust {shlex.quote(device.name)}`"
        emit(args, device_json(fleet, device), text)
        return 0

    return with_fleet(args, work)


def cmd_login(args: argparse.Namespace) -> int:
    password = _read_password(args)

    async def work(fleet: Any) -> int:
        device = fleet.inventory.device(args.device)
        device = await fleet.set_login(device, username=args.user, port=args.port, password=password,
                                       transport=args.transport, identity_file=args.identity)
        text = (f"{safe(device.name)}: log in as {safe(device.username)} on port {device.port} over "
                f"{device.transport}" + ("; password in the OS keyring" if device.password_account else "")
                + (f"; key file {safe(device.identity_file)}" if device.identity_file else ""))
        emit(args, device_json(fleet, device), text)
        return 0

    return with_fleet(args, work)


def _read_password(args: argparse.Namespace) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    if not password:
        raise ConfigError("--password-stdin read an empty password", fix="pipe the password in, e.g. from a file")
    return password


def _probe_line(outcome: Any) -> str:
    d = outcome.device
    if outcome.error is not None:
        return f"{safe(d.name)}: {outcome.status}: {safe(outcome.error.message)}" + (
            f" — {safe(outcome.error.fix)}" if outcome.error.fix else "")
    f = outcome.facts
    profile = outcome.match.profile if outcome.match else "no matching profile"
    return (f"{safe(d.name)}: {profile}: {safe(f.model or f.dmi_product or f.cpu_model)}, {f.arch}, "
            f"{safe(f.os_name)}, {f.cpu_count} CPU, {f.ram_mb} MB RAM, Python {f.python or 'none'}")


def cmd_probe(args: argparse.Namespace) -> int:
    say = progress(args)

    async def work(fleet: Any) -> int:
        devices = fleet.select(args.devices, group=args.group, all_devices=args.all)
        outcomes = await fleet.probe(devices, on_outcome=None if args.json else lambda o: say(_probe_line(o)))
        counts = {s: sum(o.status == s for o in outcomes) for s in ("succeeded", "failed", "unreachable")}
        data = {"outcomes": [{"device": o.device.name, "status": o.status,
                              "profile": o.match.profile if o.match else None,
                              "reasons": list(o.match.reasons) if o.match else [],
                              "facts": dataclasses.asdict(o.facts) if o.facts else None,
                              "error": o.error.to_dict() if o.error else None} for o in outcomes],
                "summary": counts}
        emit(args, data, summary(counts))
        return 0 if counts["succeeded"] == len(outcomes) else 1

    return with_fleet(args, work)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.remote_command:
        raise ConfigError("no command to run", fix="put the command after --, e.g. fleetdesk run --all -- uname -a")
    # One word is taken as a shell command line as typed; several are quoted as separate arguments.
    command = args.remote_command[0] if len(args.remote_command) == 1 else shlex.join(args.remote_command)

    async def work(fleet: Any) -> int:
        devices = fleet.select(args.devices, group=args.group, all_devices=args.all)
        result = await fleet.run(devices, command, timeout=args.timeout)
        if not args.json:
            for o in result.outcomes:
                if o.result is not None:
                    head = f"== {safe(o.device)}: exit {o.result.exit_status}"
                    print(head)
                    for stream in (o.result.stdout, o.result.stderr):
                        if stream:
                            print(safe_block(stream))
                else:
                    print(f"== {safe(o.device)}: {o.status}: {safe(o.error)}")
        data = result.to_dict()
        emit(args, data, summary(data["summary"]))
        return 0 if result.ok else 1

    return with_fleet(args, work)


def cmd_rename(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        device = fleet.inventory.device(args.device)
        renamed = fleet.rename(device, args.name)
        emit(args, device_json(fleet, renamed), f"{safe(device.name)} is now {safe(renamed.name)}")
        return 0

    return with_fleet(args, work)


def cmd_group(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        if args.rename is not None or args.delete:
            return _edit_group(args, fleet)
        if not args.devices:
            groups = fleet.inventory.groups()
            names = {d.id: d.name for d in fleet.inventory.devices()}
            emit(args, [dataclasses.asdict(g) for g in groups],
                 "\n".join(f"{safe(g.name)}: {', '.join(safe(names.get(i, i)) for i in g.device_ids)}"
                           for g in groups) or "no groups yet")
            return 0
        if not args.name:
            raise ConfigError("no group name given", fix="add --name NAME, e.g. --name 'line A'")
        devices = fleet.select(args.devices)
        group = fleet.group(devices, args.name, remove=args.remove, seen=_seen_group(args, fleet))
        names = {d.id: d.name for d in fleet.inventory.devices()}
        emit(args, dataclasses.asdict(group),
             f"{safe(group.name)}: {', '.join(safe(names.get(i, i)) for i in group.device_ids) or 'empty'}")
        return 0

    return with_fleet(args, work)


def _seen_group(args: argparse.Namespace, fleet: Any) -> Any:
    """The group as the operator saw it (--seen-version V), or None: the group as read now is the one checked."""
    if args.seen_version is None:
        return None
    try:
        stored = fleet.inventory.group(args.name)
    except InventoryError:
        # Gone since the operator read it: any version they saw is refused (the group was deleted or renamed).
        return Group(name=args.name.strip(), device_ids=(), created_at=datetime.now(UTC), version=args.seen_version)
    return dataclasses.replace(stored, version=args.seen_version)


def _edit_group(args: argparse.Namespace, fleet: Any) -> int:
    """`fleetdesk group --name G --rename NEW` or `--delete`: a change of the group itself (its devices stay)."""
    if not args.name:
        raise ConfigError("no group name given", fix="add --name NAME, e.g. --name 'line A'")
    if args.devices or args.remove or (args.rename is not None and args.delete):
        raise ConfigError("--rename and --delete change the group itself: give only --name (and --seen-version)",
                          fix="e.g. fleetdesk group --name 'line A' --rename 'line A (north)'")
    seen = _seen_group(args, fleet) or fleet.inventory.group(args.name)
    if args.delete:
        fleet.delete_group(seen)
        emit(args, {"deleted": seen.name}, f"deleted the group {safe(seen.name)} (its devices stay)")
        return 0
    group = fleet.rename_group(seen, args.rename)
    emit(args, dataclasses.asdict(group), f"{safe(seen.name)} is now {safe(group.name)}")
    return 0


# -- the parsers, in the order `fleetdesk --help` lists them (fleetdesk/cli/__init__.py) ----------------------


def _login_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    p.add_argument("--user", default="root" if defaults else None, help="SSH user" + (" (default root)" if
                                                                                      defaults else ""))
    p.add_argument("--port", type=int, default=22 if defaults else None, help="SSH port")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the SSH password from stdin and keep it in the OS keyring")
    p.add_argument("--transport", choices=["asyncssh", "paramiko"], help="SSH library for this device")


def add_devices(sub: Any) -> None:
    p = with_json(sub.add_parser("devices", help="list the inventory"))
    p.add_argument("--group", metavar="G", help="only the devices in group G")
    p.set_defaults(func=cmd_devices)


def add_add(sub: Any) -> None:
    p = with_json(sub.add_parser("add", help="add a device by hostname or address"))
    p.add_argument("host", metavar="HOST")
    p.add_argument("--name", help="what to call it (default: HOST)")
    p.add_argument("--interface", action="append", metavar="ADDR",
                   help="resolve a .local name by mDNS only on this interface address (repeatable)")
    _login_options(p, defaults=True)
    p.set_defaults(func=cmd_add)


def add_login(sub: Any) -> None:
    p = with_json(sub.add_parser("login", help="change how FleetDesk logs in to a device"))
    p.add_argument("device", metavar="DEVICE")
    _login_options(p, defaults=False)
    p.add_argument("--identity", metavar="KEYFILE",
                   help="log in with this private key file ('' goes back to ~/.ssh/config and the defaults)")
    p.set_defaults(func=cmd_login)


def add_probe(sub: Any) -> None:
    p = with_json(sub.add_parser("probe", help="identify devices and match their profiles"))
    choose_devices(p)
    p.set_defaults(func=cmd_probe)


def add_rename(sub: Any) -> None:
    p = with_json(sub.add_parser("rename", help="call a device something else: fleetdesk rename DEVICE NEW_NAME"))
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("name", metavar="NEW_NAME")
    p.set_defaults(func=cmd_rename)


def add_group(sub: Any) -> None:
    p = with_json(sub.add_parser("group", help="put devices in a group, rename or delete one (no devices: list "
                                               "groups)"))
    p.add_argument("devices", nargs="*", metavar="DEVICE")
    p.add_argument("--name", metavar="NAME", help="the group, e.g. 'line A'")
    p.add_argument("--remove", action="store_true", help="take the devices out of the group instead")
    p.add_argument("--rename", metavar="NEW", help="call the group NEW (its devices stay in it)")
    p.add_argument("--delete", action="store_true", help="delete the group (its devices stay in the inventory)")
    p.add_argument("--seen-version", type=int, metavar="V",
                   help="change it only if no other operator changed the group since its version V")
    p.set_defaults(func=cmd_group)


def add_run(sub: Any) -> None:
    p = with_json(sub.add_parser("run", help="run a command on devices: fleetdesk run DEVICE|--group G -- COMMAND"))
    choose_devices(p)
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per device (default 60)")
    p.set_defaults(func=cmd_run, remote_command=[])
