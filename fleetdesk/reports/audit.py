"""The audit report over a period: every entry of the audit trail in it (of the chosen devices, with --device or
--group), and the result of verifying the whole trail (fleetdesk.access.verify), so the reader knows whether the
entries can be trusted."""

from __future__ import annotations

import json
from typing import Any

from fleetdesk.access.verify import verify_trail
from fleetdesk.inventory import Inventory
from fleetdesk.inventory.audit import AuditFilter, AuditRepo
from fleetdesk.reports.document import Column, Fact, Report, Table, stamp
from fleetdesk.reports.selection import Filters, chosen_devices, period, scope_text

ENTRY_COLUMNS = (Column("seq", "Entry", 0.4), Column("at", "At", 1.2), Column("operator", "Operator", 0.9),
                 Column("action", "Action", 1.1), Column("outcome", "Outcome", 0.6), Column("targets", "Targets", 1.3),
                 Column("before", "Before", 2.0), Column("after", "After", 2.4), Column("hash", "Hash", 0.9))
DETAIL_MOST = 400


def audit_report(inventory: Inventory, filters: Filters) -> Report:
    repo = AuditRepo(inventory)
    newest = repo.entries(limit=1)
    since, until = period(filters, [e.at for e in newest])
    entries = [e for e in repo.entries(AuditFilter(since=since), limit=None, newest_first=False) if e.at < until]
    if filters.group is not None or filters.device is not None:
        targets = {f"device:{d.id}" for d in chosen_devices(inventory, filters)}
        entries = [e for e in entries if targets & set(e.targets)]
    result = verify_trail(repo)
    operators = sorted({e.operator for e in entries if e.operator})
    facts = (Fact("Entries in the period", len(entries)), Fact("Operators who acted", len(operators)),
             Fact("Refusals", sum(1 for e in entries if e.outcome == "refused")),
             Fact("Trail verifies", "yes" if result.ok else "NO"), Fact("Entries checked", result.checked),
             Fact("Head entry", result.head_seq), Fact("Head hash", result.head_hash),
             Fact("Verification", str(result)))
    notes = [] if result.ok else [f"The audit trail does not verify at entry {result.seq}: {result.reason}. "
                                  "Entries from there on cannot be trusted."]
    if not entries:
        notes.append("Nothing was recorded in the audit trail in this period.")
    rows = tuple((e.seq, stamp(e.at), e.operator, e.action, e.outcome, " ".join(e.targets), _detail(e.before),
                  _detail(e.after), e.hash[:16]) for e in entries)
    return Report("audit", "Audit trail", scope_text(filters), since, until, facts, (), (
        Table("entries", "Entries", ENTRY_COLUMNS, rows, empty="no entry in this period"),), tuple(notes),
        filters.to_dict())


def _detail(data: Any) -> str:
    if data is None:
        return ""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= DETAIL_MOST else text[:DETAIL_MOST - 1] + "…"
