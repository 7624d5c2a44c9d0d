"""`fleetdesk whoami`, `fleetdesk operator …` and `fleetdesk audit …`: who acts, their roles, and the audit trail.

Every command runs as the operator the global `--operator` names (else $FLEETDESK_OPERATOR, else the OS user);
changes to operators are audited, and reading the audit trail needs the audit permission (auditor or admin).

`audit verify` exits 0 when the trail verifies and 1 when it does not, naming the first entry that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetdesk.cli.options import choose_devices, with_json
from fleetdesk.cli.output import emit, safe, table, when
from fleetdesk.cli.session import opened_access, with_fleet
from fleetdesk.errors import ConfigError, FleetDeskError

EXPORT_FORMAT = "fleetdesk-audit-export/2"  # /2 adds the fleet key and the checkpoints; /1 is still read
_AGO = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


# -- whoami ---------------------------------------------------------------------------------------------------

def cmd_whoami(args: argparse.Namespace) -> int:
    with opened_access(args) as access:
        me = access.whoami()
    scope = ", ".join(me["groups"]) or "the whole fleet"
    text = f"{safe(me['operator'])}: {', '.join(me['roles'])} on {scope}"
    if me["first"]:
        text += " (no operators yet: the first change makes you this fleet's first admin)"
    elif me["key_here"] is False:
        text += " — this laptop holds no signing key for you, so you can look but not change anything"
    emit(args, me, text)
    return 0


# -- operator -------------------------------------------------------------------------------------------------

def cmd_operator(args: argparse.Namespace) -> int:
    with opened_access(args) as access:
        return int(_OPERATOR_ACTIONS[args.action](args, access))


def _groups(text: str | None) -> list[str]:
    return [g.strip() for g in (text or "").split(",") if g.strip()]


def _op_add(args: argparse.Namespace, access: Any) -> int:
    op = access.add_operator(args.name, args.role, _groups(args.groups))
    emit(args, op.to_dict(), f"added operator {safe(op.name)} ({', '.join(op.roles)}); their signing key is "
                                   "in this laptop's keyring")
    return 0


def _op_list(args: argparse.Namespace, access: Any) -> int:
    access.require("view", "operator.list")
    ops = access.operators.list(include_removed=args.removed)
    rows = [("NAME", "ROLES", "GROUPS", "ADDED", "REMOVED")]
    rows += [(o.name, ",".join(o.roles), ",".join(o.groups) or "(all)", when(o.created_at), when(o.removed_at))
             for o in ops]
    emit(args, [o.to_dict() for o in ops], table(rows) if ops else
         "no operators yet: the first change makes the one who makes it this fleet's admin")
    return 0


def _op_show(args: argparse.Namespace, access: Any) -> int:
    access.require("view", "operator.show")
    op = access.operators.get(args.name)
    if op is None:
        raise ConfigError(f"there is no operator {args.name}", fix="`fleetdesk operator list` names them")
    text = "\n".join([f"operator  {safe(op.name)}", f"roles     {', '.join(op.roles)}",
                      f"groups    {', '.join(op.groups) or '(the whole fleet)'}", f"key       {op.public_key}",
                      f"added     {when(op.created_at)}", f"removed   {when(op.removed_at)}"])
    emit(args, op.to_dict(), text)
    return 0


def _op_set_role(args: argparse.Namespace, access: Any) -> int:
    op = access.set_roles(args.name, args.roles, None if args.groups is None else _groups(args.groups))
    emit(args, op.to_dict(), f"{safe(op.name)} is now {', '.join(op.roles)}"
                                   f" on {', '.join(op.groups) or 'the whole fleet'}")
    return 0


def _op_remove(args: argparse.Namespace, access: Any) -> int:
    op = access.remove_operator(args.name)
    emit(args, op.to_dict(), f"removed operator {safe(op.name)}; their past entries stay theirs")
    return 0


def _op_rekey(args: argparse.Namespace, access: Any) -> int:
    op = access.rekey(args.name)
    emit(args, op.to_dict(), f"{safe(op.name)} has a new signing key, in this laptop's keyring")
    return 0


_OPERATOR_ACTIONS = {"add": _op_add, "list": _op_list, "show": _op_show, "set-role": _op_set_role,
                     "remove": _op_remove, "rekey": _op_rekey}


# -- audit ----------------------------------------------------------------------------------------------------

def parse_since(text: str, option: str = "--since") -> datetime:
    """`--since` (or `option`): an ISO date or time (this laptop's zone unless it says), or an age such as 90m,
    12h, 7d."""
    found = _AGO.fullmatch(text.strip())
    if found:
        return datetime.now(UTC) - timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} is neither a date nor an age",
                          fix="give e.g. 2026-12-01, '2026-12-01 08:00', 90m, 12h or 7d") from None
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    with opened_access(args) as access:
        return int(_AUDIT_ACTIONS[args.action](args, access))


def _entry_line(e: Any) -> tuple[str, ...]:
    return (str(e.seq), when(e.at), e.operator or "-", e.action, e.outcome, " ".join(e.targets) or "-")


def _audit_list(args: argparse.Namespace, access: Any) -> int:
    from fleetdesk.inventory.audit import AuditFilter

    access.require("audit", "audit.list")
    target = None
    if args.device:
        target = f"device:{access.inventory.device(args.device).id}"
    query = AuditFilter(since=parse_since(args.since) if args.since else None, operator=args.operator_name,
                        target=target, action=args.action_name)
    found = access.audit.entries(query, limit=args.limit)
    rows = [("SEQ", "AT", "OPERATOR", "ACTION", "OUTCOME", "TARGETS")] + [_entry_line(e) for e in found]
    emit(args, [e.to_dict() for e in found], table(rows) if found else "no audit entries match")
    return 0


def _audit_show(args: argparse.Namespace, access: Any) -> int:
    access.require("audit", "audit.show")
    e = access.audit.entry(args.seq)
    text = "\n".join([
        f"entry      {e.seq}", f"at         {when(e.at)}", f"operator   {safe(e.operator) or '-'}",
        f"action     {safe(e.action)}", f"outcome    {safe(e.outcome)}",
        f"targets    {safe(' '.join(e.targets)) or '-'}", f"before     {safe(json.dumps(e.before))}",
        f"after      {safe(json.dumps(e.after))}", f"previous   {e.prev_hash}", f"hash       {e.hash}",
        f"key        {e.key or '-'}", f"signature  {e.signature or '-'}"])
    emit(args, e.to_dict(), text)
    return 0


def _audit_verify(args: argparse.Namespace, access: Any) -> int:
    access.require("audit", "audit.verify")
    if args.with_devices:
        return _verify_with_devices(args)
    result = _verify_export(args) if args.file else access.verify()
    emit(args, result.to_dict(), str(result))
    return 0 if result.ok else 1


def _verify_export(args: argparse.Namespace) -> Any:
    """An export checked with the public keys alone: the operators' (from the trail) and the fleet key's, which
    `--fleet-key` pins (else the one the export names, a claim the checkpoints are then checked against)."""
    from fleetdesk.access import against_checkpoints, fleet_key_b64
    from fleetdesk.access.verify import verify_entries

    export = read_export(Path(args.file))
    result = verify_entries([export.entries], export.legacy)
    key = export.fleet_key
    if args.fleet_key:
        try:
            key = fleet_key_b64(Path(args.fleet_key).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the fleet key {args.fleet_key}: {exc}",
                              fix="give the fleet's public key (PEM) as `fleetdesk model export-key` writes it") \
                from None
    if not key:
        return result
    by_seq = {e.seq: e for e in export.entries}
    return against_checkpoints(result, [("the export's checkpoint", c) for c in export.checkpoints], key,
                               lambda seqs: {s: by_seq[s] for s in seqs if s in by_seq})


def _verify_with_devices(args: argparse.Namespace) -> int:
    """The trail, then every checkpoint the chosen devices (default: every provisioned one) hold."""
    from fleetdesk.artifacts.store import ArtifactStore
    from fleetdesk.inventory.runtimes import DeviceRuntimes
    from fleetdesk.rollout.checkpoints import verify_with_devices
    from fleetdesk.rollout.device_ops import DeviceOps

    async def work(fleet: Any) -> int:
        if args.devices or args.group or args.all:
            devices = fleet.select(args.devices, group=args.group, all_devices=args.all)
        else:
            runtimes = DeviceRuntimes(fleet.inventory)
            devices = [d for d in fleet.inventory.devices() if runtimes.get(d.id) is not None]
        result, witnesses = await verify_with_devices(DeviceOps(fleet, ArtifactStore.default()), devices)
        lines = [str(result)]
        for w in witnesses:
            held = f"{len(w.checkpoints)} checkpoint(s), newest entry {w.checkpoints[-1]['seq']}" \
                if w.checkpoints else "no checkpoints"
            lines.append(f"  {safe(w.device)}: " + (f"not asked: {safe(w.error)}" if w.error else held))
        emit(args, {**result.to_dict(), "devices": [{"device": w.device, "checkpoints": len(w.checkpoints),
                                                     "newest": w.checkpoints[-1]["seq"] if w.checkpoints else None,
                                                     "error": w.error or None} for w in witnesses]},
             "\n".join(lines))
        return 0 if result.ok else 1

    return with_fleet(args, work)


def _audit_export(args: argparse.Namespace, access: Any) -> int:
    from fleetdesk.access import fleet_key_b64
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.config import Settings

    access.require("audit", "audit.export")
    dest = Path(args.file)
    partial = dest.with_name(dest.name + ".partial")
    fleet_key = FleetSigningKey.default(Settings.load(args.db))
    count = 0
    try:
        with partial.open("w", encoding="ascii") as out:
            out.write(json.dumps({"format": EXPORT_FORMAT, "legacy": access.audit.legacy_rows(),
                                  "fleet_key": fleet_key_b64(fleet_key.public_pem()) if fleet_key.exists() else None},
                                 sort_keys=True) + "\n")
            for batch in access.audit.walk():
                for entry in batch:
                    out.write(json.dumps({"entry": entry.to_dict()}, sort_keys=True) + "\n")
                    count += 1
            checkpoints = access.audit.checkpoints()
            for checkpoint in checkpoints:
                out.write(json.dumps({"checkpoint": checkpoint.to_dict()}, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
        partial.replace(dest)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the audit export {dest}: {exc.strerror or exc}",
                          fix="choose a folder you can write to, with free space") from None
    access.record("audit.export", targets=(f"file:{dest.name}",),
                  after={"entries": count, "checkpoints": len(checkpoints)})
    emit(args, {"file": str(dest), "entries": count, "checkpoints": len(checkpoints)},
         f"wrote {count} entries and {len(checkpoints)} checkpoint(s) to {dest}")
    return 0


@dataclass(frozen=True)
class Export:
    """What an `audit export` file holds."""

    legacy: list[dict[str, Any]]
    entries: list[Any]  # AuditEntry
    checkpoints: list[Any]  # AuditCheckpoint
    fleet_key: str | None  # base64 raw, as the file claims it


def read_export(path: Path) -> Export:
    """An `audit export` file, ready for verify_entries and against_checkpoints."""
    from fleetdesk.inventory.audit import AuditCheckpoint, AuditEntry

    try:
        lines = path.read_text(encoding="ascii").splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("format") not in (EXPORT_FORMAT, "fleetdesk-audit-export/1"):
            raise ValueError(f"its first line does not say {EXPORT_FORMAT}")
        entries, checkpoints = [], []
        for line in lines[1:]:
            item = json.loads(line)
            if "checkpoint" in item:
                c = item["checkpoint"]
                checkpoints.append(AuditCheckpoint(int(c["seq"]), str(c["hash"]), str(c["signature"])))
                continue
            data = item["entry"]
            entries.append(AuditEntry(
                seq=int(data["seq"]), at=datetime.strptime(data["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                operator=data["operator"], action=data["action"], targets_text=_canonical(list(data["targets"])),
                before_text=_canonical(data["before"]), after_text=_canonical(data["after"]),
                outcome=data["outcome"], prev_hash=data["prev_hash"], hash=data["hash"], key=data["key"],
                signature=data["signature"]))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the audit export {path}: {exc}",
                          fix="give the file `fleetdesk audit export` wrote") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FleetDeskError(f"{path} is not an audit export FleetDesk can read ({exc})",
                             fix="give the file `fleetdesk audit export` wrote, unchanged") from None
    key = head.get("fleet_key")
    return Export(list(head.get("legacy", [])), entries, checkpoints, key if isinstance(key, str) else None)


def _canonical(value: Any) -> str:
    from fleetdesk.chain import canonical_json

    return canonical_json(value)


_AUDIT_ACTIONS = {"list": _audit_list, "show": _audit_show, "verify": _audit_verify, "export": _audit_export}


# -- parsers --------------------------------------------------------------------------------------------------

def add_whoami(sub: Any) -> None:
    p = with_json(sub.add_parser("whoami", help="the operator this command runs as, their roles and scope"))
    p.set_defaults(func=cmd_whoami)


def add_operator(sub: Any) -> None:
    from fleetdesk.access.roles import ROLES

    p = sub.add_parser("operator", help="operators and their roles (admin)")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = with_json(acts.add_parser("add", help="add an operator; their signing key is made in this keyring"))
    q.add_argument("name", metavar="NAME")
    q.add_argument("--role", action="append", required=True, choices=list(ROLES),
                   help="a role (repeat for several)")
    q.add_argument("--groups", metavar="G,…", help="limit their device actions to these groups")
    q = with_json(acts.add_parser("list", help="the operators"))
    q.add_argument("--removed", action="store_true", help="also those removed")
    q = with_json(acts.add_parser("show", help="one operator"))
    q.add_argument("name", metavar="NAME")
    q = with_json(acts.add_parser("set-role", help="give an operator these roles (and optionally a group scope)"))
    q.add_argument("name", metavar="NAME")
    q.add_argument("roles", nargs="+", metavar="ROLE", choices=list(ROLES))
    q.add_argument("--groups", metavar="G,…", help="limit their device actions to these groups ('' for all)")
    q = with_json(acts.add_parser("remove", help="remove an operator (their past entries stay theirs)"))
    q.add_argument("name", metavar="NAME")
    q = with_json(acts.add_parser("rekey", help="make a new signing key for an operator in this keyring"))
    q.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_operator)


def add_audit(sub: Any) -> None:
    p = sub.add_parser("audit", help="the audit trail: list, show, verify, export (auditor)")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = with_json(acts.add_parser("list", help="entries, newest first"))
    q.add_argument("--since", metavar="WHEN", help="a date/time, or an age such as 12h or 7d")
    q.add_argument("--operator", dest="operator_name", metavar="NAME", help="entries by this operator")
    q.add_argument("--device", metavar="DEVICE", help="entries that touched this device")
    q.add_argument("--action", dest="action_name", metavar="ACTION",
                   help="this action, or a family ending in '.' (rollout.)")
    q.add_argument("--limit", type=int, default=200, metavar="N", help="at most N entries (default 200)")
    q = with_json(acts.add_parser("show", help="one entry, whole"))
    q.add_argument("seq", type=int, metavar="SEQ")
    q = with_json(acts.add_parser("verify", help="check every entry's hash, chain and signature"))
    q.add_argument("--file", metavar="FILE", help="check an `audit export` file instead of the inventory")
    q.add_argument("--fleet-key", metavar="PEM",
                   help="with --file: check its checkpoints with this fleet public key, not the one it names")
    q.add_argument("--with-devices", action="store_true",
                   help="also check the trail against the checkpoints devices hold (default: every provisioned one)")
    choose_devices(q)
    q = with_json(acts.add_parser("export", help="write the trail as JSON lines, verifiable with `verify --file`"))
    q.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_audit)
