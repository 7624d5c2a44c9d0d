"""`fleetdesk trust DEVICE`: pinning a device's host key after the operator checked its fingerprint (typed in,
confirmed at the prompt, or imported from known_hosts). Nothing connects to a device whose key is not trusted."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from fleetdesk.cli.options import with_json
from fleetdesk.cli.output import emit, safe
from fleetdesk.cli.session import with_fleet
from fleetdesk.errors import HostKeyUnknownError


def cmd_trust(args: argparse.Namespace) -> int:
    async def work(fleet: Any) -> int:
        device = fleet.inventory.device(args.device)
        if args.known_hosts is not None:
            keys = fleet.trust_from_known_hosts(device, args.known_hosts or None)
            emit(args, {"device": device.name, "trusted": [k.fingerprint for k in keys], "source": "known_hosts"},
                 "\n".join(f"{safe(device.name)}: trusted {k.fingerprint} ({k.key_type}) from known_hosts"
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
            print(f"{safe(device.label)} presents a {key.key_type} host key with fingerprint\n\n  {key.fingerprint}\n")
            answer = input("Is this the fingerprint the device shows at its console? Type yes to trust it: ")
            if answer.strip().lower() != "yes":
                print("not trusted", file=sys.stderr)
                return 1
            fingerprint = key.fingerprint
        outcome = await fleet.trust(device, fingerprint)
        data = {"device": outcome.device.name, "fingerprint": outcome.key.fingerprint, "key_type": outcome.key.key_type,
                "replaced": list(outcome.replaced), "already_trusted": outcome.already_trusted}
        if outcome.already_trusted:
            text = f"{safe(device.name)}: {outcome.key.fingerprint} was already trusted"
        elif outcome.replaced:
            text = (f"{safe(device.name)}: now trusts {outcome.key.fingerprint} instead of "
                    f"{', '.join(outcome.replaced)}")
        else:
            text = f"{safe(device.name)}: trusted {outcome.key.fingerprint} ({outcome.key.key_type})"
        emit(args, data, text)
        return 0

    return with_fleet(args, work)


def add_trust(sub: Any) -> None:
    p = with_json(sub.add_parser("trust", help="trust a device's host key after checking its fingerprint"))
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--fingerprint", metavar="SHA256:...", help="the fingerprint you checked at the device")
    p.add_argument("--known-hosts", nargs="?", const="", metavar="FILE",
                   help="trust the keys your known_hosts already has for it (default file: ~/.ssh/known_hosts)")
    p.set_defaults(func=cmd_trust)
