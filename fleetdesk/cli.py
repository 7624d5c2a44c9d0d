"""`fleetdesk ...`: every operation FleetDesk offers, scriptable, with --json output.

Errors are FleetDeskErrors printed as one line (message and fix) with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fleetdesk import __version__
from fleetdesk.errors import ConfigError, FleetDeskError, HostKeyUnknownError
from fleetdesk.text import visible_text

EXIT_ERROR = 2


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda message: print(message, file=stream, flush=True)


def _lab_table(state: Any) -> str:
    rows = [("NAME", "ADDRESS", "PROFILE", "ARCH", "FAULTS")]
    for dev in state.devices:
        faults = ",".join(f"{k}={v}" if v is not True else k for k, v in sorted(dev.faults.items())) or "-"
        rows.append((dev.name, dev.address, dev.profile, dev.arch, faults))
    lines = [_table(rows), ""]
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


# -- the fleet -------------------------------------------------------------------------------------


def _safe(text: object) -> str:
    """Device-supplied text for a terminal: control characters (newlines, escapes) shown, never obeyed."""
    return visible_text(str(text))


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    rows = [tuple(_safe(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _when(moment: Any) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _device_json(fleet: Any, device: Any) -> dict[str, Any]:
    data = dataclasses.asdict(device)
    data["trusted_host_keys"] = [k.fingerprint for k in fleet.inventory.host_keys(device.id)]
    return data


def _devices_table(devices: Sequence[Any]) -> str:
    rows = [("NAME", "ADDRESS", "PROFILE", "ARCH", "OS", "ONLINE", "LAST SEEN", "GROUPS")]
    for d in devices:
        rows.append((d.name, d.address or "-", d.profile or "-", d.facts.arch or "-", d.facts.os_name or "-",
                     "yes" if d.online else "no", _when(d.last_seen), ",".join(d.groups) or "-"))
    return _table(rows)


def _open_fleet(args: argparse.Namespace) -> Any:
    from fleetdesk.fleet import Fleet

    return Fleet.open(args.db, ssh_config=getattr(args, "ssh_config", None))


def _with_fleet(args: argparse.Namespace, work: Any) -> int:
    """Open the inventory and the SSH pool, run `work(fleet)` on one event loop, close both."""

    async def go() -> int:
        fleet = _open_fleet(args)
        try:
            return int(await work(fleet))
        finally:
            await fleet.close()

    return asyncio.run(go())


def cmd_devices(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        devices = fleet.inventory.devices(group=args.group)
        empty = "no devices yet: try `fleetdesk discover` or `fleetdesk add HOST`"
        _emit(args, [_device_json(fleet, d) for d in devices], _devices_table(devices) if devices else empty)
        return 0

    return _with_fleet(args, work)


def cmd_discover(args: argparse.Namespace) -> int:
    say = _progress(args)

    async def work(fleet: Any) -> int:
        def shown(device: Any) -> None:
            if not args.json:
                say(f"seen {_safe(device.label)}")

        def recording(state: Any) -> None:
            # Told even with --json (on stderr): a browse whose sightings are not stored must not look fine.
            fix = f" — {state.error.fix}" if state.error is not None and state.error.fix else ""
            say(_safe(state.text + fix))

        devices = await fleet.discover(args.interface or None, args.timeout, on_device=shown, on_state=recording)
        _emit(args, [_device_json(fleet, d) for d in devices],
              f"{len(devices)} device(s) found\n" + (_devices_table(devices) if devices else ""))
        return 0

    return _with_fleet(args, work)


def cmd_add(args: argparse.Namespace) -> int:
    password = _read_password(args)

    async def work(fleet: Any) -> int:
        device = await fleet.add(args.host, port=args.port, username=args.user, name=args.name, password=password,
                                 transport=args.transport, interfaces=args.interface or None)
        text = f"added {_safe(device.label)}; next: `fleetdesk trust {shlex.quote(device.name)}`"
        _emit(args, _device_json(fleet, device), text)
        return 0

    return _with_fleet(args, work)


def cmd_login(args: argparse.Namespace) -> int:
    password = _read_password(args)

    async def work(fleet: Any) -> int:
        device = fleet.inventory.device(args.device)
        device = await fleet.set_login(device, username=args.user, port=args.port, password=password,
                                       transport=args.transport, identity_file=args.identity)
        text = (f"{_safe(device.name)}: log in as {_safe(device.username)} on port {device.port} over "
                f"{device.transport}" + ("; password in the OS keyring" if device.password_account else "")
                + (f"; key file {_safe(device.identity_file)}" if device.identity_file else ""))
        _emit(args, _device_json(fleet, device), text)
        return 0

    return _with_fleet(args, work)


def _read_password(args: argparse.Namespace) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    if not password:
        raise ConfigError("--password-stdin read an empty password", fix="pipe the password in, e.g. from a file")
    return password


def cmd_sweep(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        devices = await fleet.sweep(args.cidr, port=args.port, rate=args.rate)
        _emit(args, [_device_json(fleet, d) for d in devices],
              f"{len(devices)} SSH server(s) answered in {args.cidr}\n" + (_devices_table(devices) if devices else ""))
        return 0

    return _with_fleet(args, work)


def cmd_trust(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        device = fleet.inventory.device(args.device)
        if args.known_hosts is not None:
            keys = fleet.trust_from_known_hosts(device, args.known_hosts or None)
            _emit(args, {"device": device.name, "trusted": [k.fingerprint for k in keys], "source": "known_hosts"},
                  "\n".join(f"{_safe(device.name)}: trusted {k.fingerprint} ({k.key_type}) from known_hosts"
                            for k in keys))
            return 0
        fingerprint = args.fingerprint
        if fingerprint is None:
            key = await fleet.presented_key(device)
            if args.json or not sys.stdin.isatty():
                raise HostKeyUnknownError(
                    f"presents {key.key_type} key {key.fingerprint}; not trusted without your confirmation",
                    fingerprint=key.fingerprint, public_key=key.line, device=device.name, step="trust",
                    fix=f"compare it with the device's own and run "
                        f"`fleetdesk trust {shlex.quote(device.name)} --fingerprint {key.fingerprint}`")
            print(f"{_safe(device.label)} presents a {key.key_type} host key with fingerprint\n\n  {key.fingerprint}\n")
            answer = input("Is this the fingerprint the device shows at its console? Type yes to trust it: ")
            if answer.strip().lower() != "yes":
                print("not trusted", file=sys.stderr)
                return 1
            fingerprint = key.fingerprint
        outcome = await fleet.trust(device, fingerprint)
        data = {"device": outcome.device.name, "fingerprint": outcome.key.fingerprint, "key_type": outcome.key.key_type,
                "replaced": list(outcome.replaced), "already_trusted": outcome.already_trusted}
        if outcome.already_trusted:
            text = f"{_safe(device.name)}: {outcome.key.fingerprint} was already trusted"
        elif outcome.replaced:
            text = (f"{_safe(device.name)}: now trusts {outcome.key.fingerprint} instead of "
                    f"{', '.join(outcome.replaced)}")
        else:
            text = f"{_safe(device.name)}: trusted {outcome.key.fingerprint} ({outcome.key.key_type})"
        _emit(args, data, text)
        return 0

    return _with_fleet(args, work)


def _probe_line(outcome: Any) -> str:
    d = outcome.device
    if outcome.error is not None:
        return f"{_safe(d.name)}: {outcome.status}: {_safe(outcome.error.message)}" + (
            f" — {_safe(outcome.error.fix)}" if outcome.error.fix else "")
    f = outcome.facts
    profile = outcome.match.profile if outcome.match else "no matching profile"
    return (f"{_safe(d.name)}: {profile}: {_safe(f.model or f.dmi_product or f.cpu_model)}, {f.arch}, "
            f"{_safe(f.os_name)}, {f.cpu_count} CPU, {f.ram_mb} MB RAM, Python {f.python or 'none'}")


def cmd_probe(args: argparse.Namespace) -> int:
    say = _progress(args)

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
        _emit(args, data, _summary(counts))
        return 0 if counts["succeeded"] == len(outcomes) else 1

    return _with_fleet(args, work)


def _summary(counts: dict[str, int]) -> str:
    return f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['unreachable']} unreachable"


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
                    head = f"== {_safe(o.device)}: exit {o.result.exit_status}"
                    print(head)
                    for stream in (o.result.stdout, o.result.stderr):
                        if stream:
                            print(_safe_block(stream))
                else:
                    print(f"== {_safe(o.device)}: {o.status}: {_safe(o.error)}")
        data = result.to_dict()
        _emit(args, data, _summary(data["summary"]))
        return 0 if result.ok else 1

    return _with_fleet(args, work)


def _safe_block(text: str) -> str:
    return "\n".join(_safe(line) for line in text.rstrip("\n").split("\n"))


def cmd_group(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        if not args.devices:
            groups = fleet.inventory.groups()
            names = {d.id: d.name for d in fleet.inventory.devices()}
            _emit(args, [dataclasses.asdict(g) for g in groups],
                  "\n".join(f"{_safe(g.name)}: {', '.join(_safe(names.get(i, i)) for i in g.device_ids)}"
                            for g in groups) or "no groups yet")
            return 0
        if not args.name:
            raise ConfigError("no group name given", fix="add --name NAME, e.g. --name 'line A'")
        devices = fleet.select(args.devices)
        group = fleet.group(devices, args.name, remove=args.remove)
        names = {d.id: d.name for d in fleet.inventory.devices()}
        _emit(args, dataclasses.asdict(group),
              f"{_safe(group.name)}: {', '.join(_safe(names.get(i, i)) for i in group.device_ids) or 'empty'}")
        return 0

    return _with_fleet(args, work)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetdesk", description="Run a fleet of edge AI devices from this laptop.")
    parser.add_argument("--version", action="version", version=f"fleetdesk {__version__}")
    parser.add_argument("--db", metavar="URL", help="inventory database URL (default: FLEETDESK_DB, else SQLite in "
                                                    "the user data folder)")
    parser.add_argument("--ssh-config", metavar="FILE", help="ssh client config to honour (default ~/.ssh/config)")
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

    _fleet_parsers(sub)
    return parser


def _fleet_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        return p

    def choose(p: argparse.ArgumentParser) -> None:
        p.add_argument("devices", nargs="*", metavar="DEVICE", help="device name, address or id")
        p.add_argument("--group", metavar="G", help="every device in group G")
        p.add_argument("--all", action="store_true", help="every device in the inventory")

    p = common(sub.add_parser("devices", help="list the inventory"))
    p.add_argument("--group", metavar="G", help="only the devices in group G")
    p.set_defaults(func=cmd_devices)

    p = common(sub.add_parser("discover", help="find devices on the network by mDNS and add them"))
    p.add_argument("--interface", action="append", metavar="ADDR",
                   help="browse only on the interface with this address (repeatable; default: all)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to listen (default 3)")
    p.set_defaults(func=cmd_discover)

    def login_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
        p.add_argument("--user", default="root" if defaults else None, help="SSH user" + (" (default root)" if
                                                                                          defaults else ""))
        p.add_argument("--port", type=int, default=22 if defaults else None, help="SSH port")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the SSH password from stdin and keep it in the OS keyring")
        p.add_argument("--transport", choices=["asyncssh", "paramiko"], help="SSH library for this device")

    p = common(sub.add_parser("add", help="add a device by hostname or address"))
    p.add_argument("host", metavar="HOST")
    p.add_argument("--name", help="what to call it (default: HOST)")
    p.add_argument("--interface", action="append", metavar="ADDR",
                   help="resolve a .local name by mDNS only on this interface address (repeatable)")
    login_options(p, defaults=True)
    p.set_defaults(func=cmd_add)

    p = common(sub.add_parser("login", help="change how FleetDesk logs in to a device"))
    p.add_argument("device", metavar="DEVICE")
    login_options(p, defaults=False)
    p.add_argument("--identity", metavar="KEYFILE",
                   help="log in with this private key file ('' goes back to ~/.ssh/config and the defaults)")
    p.set_defaults(func=cmd_login)

    p = common(sub.add_parser("sweep", help="look for SSH servers across a network you name (opt-in)"))
    p.add_argument("cidr", metavar="CIDR", help="e.g. 192.168.10.0/24 (at most 1024 addresses)")
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--rate", type=float, help="connection attempts per second (default 200)")
    p.set_defaults(func=cmd_sweep)

    p = common(sub.add_parser("trust", help="trust a device's host key after checking its fingerprint"))
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--fingerprint", metavar="SHA256:...", help="the fingerprint you checked at the device")
    p.add_argument("--known-hosts", nargs="?", const="", metavar="FILE",
                   help="trust the keys your known_hosts already has for it (default file: ~/.ssh/known_hosts)")
    p.set_defaults(func=cmd_trust)

    p = common(sub.add_parser("probe", help="identify devices and match their profiles"))
    choose(p)
    p.set_defaults(func=cmd_probe)

    p = common(sub.add_parser("group", help="put devices in a group (no devices: list groups)"))
    p.add_argument("devices", nargs="*", metavar="DEVICE")
    p.add_argument("--name", metavar="NAME", help="the group, e.g. 'line A'")
    p.add_argument("--remove", action="store_true", help="take the devices out of the group instead")
    p.set_defaults(func=cmd_group)

    p = common(sub.add_parser("run", help="run a command on devices: fleetdesk run DEVICE|--group G -- COMMAND"))
    choose(p)
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per device (default 60)")
    p.set_defaults(func=cmd_run, remote_command=[])

    # Commands of later parts live in their own modules; each adds its parsers here.
    from fleetdesk import cli_models, cli_rollout, cli_runtime, cli_telemetry

    cli_runtime.register(sub, common, choose)
    cli_telemetry.register(sub, common, choose)
    cli_models.register(sub, common, choose)
    cli_rollout.register(sub, common, choose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `fleetdesk run DEVICE -- COMMAND...`: everything after the first -- is the remote command.
    remote: list[str] | None = None
    if "--" in argv:
        at = argv.index("--")
        argv, remote = argv[:at], argv[at + 1:]
    args = parser.parse_args(argv)
    if remote is not None:
        if args.command != "run":
            parser.error("-- is only used by `fleetdesk run ... -- COMMAND`")
        args.remote_command = remote
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
