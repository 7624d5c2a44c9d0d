"""`fleetdesk ...`: every operation FleetDesk offers, scriptable, with --json output.

One module per command group (lab, devices, discovery, trust, runtime, telemetry, models, push, rollout, and
access: whoami, operator, audit; reports; database: the inventory's schema) over `output` (what is printed)
and `session` (the fleet a command opens);
COMMANDS below is the one table of them.
Errors are FleetDeskErrors printed as one line (message and fix) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fleetdesk import __version__, build_commit
from fleetdesk.cli import (
    access,
    database,
    devices,
    discovery,
    lab,
    models,
    reports,
    rollout,
    runtime,
    telemetry,
    trust,
)
from fleetdesk.errors import FleetDeskError

__all__ = ["COMMANDS", "EXIT_ERROR", "build_parser", "main"]

EXIT_ERROR = 2

# Every command, in the order `fleetdesk --help` lists them; each adds its parser (and its actions) to the
# command line's subparsers and names the function that runs it.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    lab.add_lab,
    devices.add_devices,
    discovery.add_discover,
    devices.add_add,
    devices.add_login,
    discovery.add_sweep,
    trust.add_trust,
    devices.add_probe,
    devices.add_rename,
    devices.add_group,
    devices.add_run,
    runtime.add_runtime,
    runtime.add_provision,
    telemetry.add_telemetry,
    telemetry.add_history,
    telemetry.add_events,
    models.add_model,  # with `model push` (fleetdesk/cli/push.py)
    rollout.add_rollout,
    access.add_whoami,
    access.add_operator,
    access.add_audit,
    reports.add_report,
    database.add_db,
)


class _VersionAction(argparse.Action):
    """`fleetdesk --version`: the version and its commit; the commit is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"fleetdesk {__version__} (commit {build_commit()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetdesk", description="Run a fleet of edge AI devices from this laptop.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and the commit it was built from")
    parser.add_argument("--db", metavar="URL", help="inventory database URL (default: FLEETDESK_DB, else SQLite in "
                                                    "the user data folder)")
    parser.add_argument("--ssh-config", metavar="FILE", help="ssh client config to honour (default ~/.ssh/config)")
    parser.add_argument("--operator", metavar="NAME", help="act as this operator (default: FLEETDESK_OPERATOR, "
                                                          "else your OS user)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    return parser


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
