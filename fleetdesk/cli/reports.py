"""`fleetdesk report fleet|rollout ID|health|models|audit … -o PATH` and `fleetdesk report verify PATH`: offline
reports, signed by the fleet key.

Making a report needs the view permission (the audit report: audit) and is itself an audit entry
(`report.export`). `report verify` needs only the fleet's public key; it exits 0 when the report verifies and 1
when it does not, saying which file changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fleetdesk.cli.access import parse_since
from fleetdesk.cli.options import with_json
from fleetdesk.cli.output import emit, safe
from fleetdesk.cli.session import opened_access
from fleetdesk.errors import ReportError, ReportSignatureError

KIND_HELP = {"fleet": "devices by status, profile, runtime and model, then the inventory table",
             "rollout": "one rollout: plan, waves, each device's outcome, gate measurements, operator actions",
             "health": "CPU, GPU, memory, temperature, latency, availability over a period (default 7 days)",
             "models": "each model's variants per profile and where each version runs",
             "audit": "the audit trail over a period, with its verification (auditor)"}


def cmd_report(args: argparse.Namespace) -> int:
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.config import Settings
    from fleetdesk.reports.export import ReportRequest, export_report
    from fleetdesk.reports.selection import Filters

    filters = Filters(group=args.group, device=args.device,
                      since=parse_since(args.since) if args.since else None,
                      until=parse_since(args.until, "--until") if args.until else None)
    request = ReportRequest(args.kind, filters, args.format, Path(args.output), args.paper,
                            getattr(args, "rollout_id", None))
    with opened_access(args) as access:
        report, written = export_report(access, request, FleetSigningKey.default(Settings.load(args.db)))
    text = (f"wrote the {args.kind} report {written.path} ({written.bytes} bytes"
            + (f" in {len(written.files)} files" if len(written.files) > 1 else "")
            + f"), signed in {written.signature.name} by fleet key {written.key}")
    emit(args, {**written.to_dict(), "kind": args.kind, "since": report.since.isoformat(),
                "until": report.until.isoformat()}, safe(text))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.reports.signature import verify_report

    if args.key:
        try:
            public = Path(args.key).read_bytes()
        except OSError as exc:
            raise ReportError(f"cannot read the key {args.key}: {exc.strerror or exc}",
                              fix="pass the file `fleetdesk model export-key` wrote") from None
    else:
        local = FleetSigningKey.default().public_path
        if not local.is_file():
            raise ReportError("this laptop holds no fleet key to check the report with",
                              fix="pass the fleet's public key: --key FLEET.pem (`fleetdesk model export-key` "
                                  "writes it on the laptop that signed the report)")
        public = local.read_bytes()
    try:
        verified = verify_report(Path(args.path), public)
    except ReportSignatureError as exc:
        emit(args, {**exc.to_dict(), "ok": False, "path": args.path}, "")
        print(f"error: {safe(exc)}", file=sys.stderr)
        return 1
    emit(args, verified.to_dict(), safe(f"{verified.path} verifies: the {verified.kind} report from "
                                        f"{verified.since} to {verified.until}, {len(verified.files)} file(s), "
                                        f"signed by fleet key {verified.key}"))
    return 0


def _report_options(p: argparse.ArgumentParser) -> None:
    from fleetdesk.reports.formats import FORMATS, PAPERS

    p.add_argument("--group", metavar="G", help="only the devices of group G")
    p.add_argument("--device", metavar="D", help="only device D (name, address or id)")
    p.add_argument("--since", metavar="WHEN", help="start of the period: a date/time, or an age such as 7d")
    p.add_argument("--until", metavar="WHEN", help="end of the period (default: the newest data, not the clock)")
    p.add_argument("--format", required=True, choices=FORMATS, help="pdf, html, csv (a folder of files) or json")
    p.add_argument("--paper", default="a4", choices=sorted(PAPERS), help="PDF paper size (default a4)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="where to write it; PATH.sig is its "
                                                                        "signature")
    with_json(p)


def add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="offline reports (PDF, HTML, CSV, JSON), signed by the fleet key")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="REPORT")
    for kind, words in KIND_HELP.items():
        q = kinds.add_parser(kind, help=words)
        if kind == "rollout":
            q.add_argument("rollout_id", type=int, metavar="ID", help="the rollout (`fleetdesk rollout list`)")
        _report_options(q)
        q.set_defaults(func=cmd_report)
    q = with_json(kinds.add_parser("verify", help="check a report against its .sig with the fleet's public key"))
    q.add_argument("path", metavar="PATH", help="the report file (or a CSV report's folder)")
    q.add_argument("--key", metavar="PUBKEY.pem", help="the fleet's public key (default: this laptop's fleet key)")
    q.set_defaults(func=cmd_verify)
