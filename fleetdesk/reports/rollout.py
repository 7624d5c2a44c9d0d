"""The report of one rollout: its plan (waves, thresholds, gates, the shadow step), how each wave and each device
went (state, durations, bytes sent, the error), every gate measurement against its bound (the shadow gate's too), the
shadow step's figures per device (candidate against active model), the timeline from the journal, and what operators
did to it (approvals, pauses, rollbacks) from the audit trail.

The plan is read as the inventory stores it (ResolvedPlan.to_dict()): reports sit beside fleetdesk.rollout and
do not import it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from fleetdesk.inventory import Inventory
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.audit import AuditFilter, AuditRepo
from fleetdesk.inventory.rollouts import TAKEOVER, JournalEntry, RolloutRepo
from fleetdesk.reports.document import Cell, Chart, Column, Fact, Report, Series, Table, stamp
from fleetdesk.reports.selection import Filters, chosen_devices, scope_text

DEVICE_COLUMNS = (Column("device", "Device", 1.6), Column("wave", "Wave", 0.4), Column("profile", "Profile", 0.9),
                  Column("recipe", "Recipe", 0.8), Column("artifact", "Artifact", 0.9),
                  Column("previous", "Previous", 0.9), Column("state", "State", 0.8),
                  Column("attempts", "Tries", 0.4), Column("bytes_sent", "Bytes sent", 0.8),
                  Column("started", "Started", 1.2), Column("finished", "Last change", 1.2),
                  Column("seconds", "Seconds", 0.6), Column("error", "Error", 2.2))
WAVE_COLUMNS = (Column("wave", "Wave", 0.5), Column("devices", "Devices", 0.6), Column("success", "Success", 0.7),
                Column("errors", "Errors allowed", 0.8), Column("soak_s", "Soak s", 0.6),
                Column("approve", "Approval", 0.6), Column("done", "Done", 0.5), Column("failed", "Failed", 0.5),
                Column("unreachable", "Unreachable", 0.7), Column("rolled_back", "Rolled back", 0.7),
                Column("other", "Not finished", 0.7), Column("started", "Started", 1.2),
                Column("finished", "Last change", 1.2))
GATE_COLUMNS = (Column("device", "Device", 1.6), Column("gate", "Gate", 1.0), Column("value", "Measured", 0.7),
                Column("bound", "Bound", 0.7), Column("ok", "Pass", 0.4), Column("baseline", "Previous model", 0.8),
                Column("note", "Note", 3.0))
SHADOW_COLUMNS = (Column("device", "Device", 1.6), Column("verdict", "Verdict", 0.6),
                  Column("compared", "Compared", 0.6), Column("dropped", "Dropped", 0.6),
                  Column("failed", "Failed", 0.5),
                  Column("agreement", "Agreement", 0.7), Column("cosine", "Cosine p50", 0.7),
                  Column("max_abs", "Max abs diff p95", 0.8), Column("active_p95", "Active p95 ms", 0.7),
                  Column("candidate_p95", "Candidate p95 ms", 0.8), Column("ratio", "p95 ratio", 0.6),
                  Column("seconds", "Seconds", 0.6), Column("reason", "Reason", 2.6))
TIMELINE_COLUMNS = (Column("at", "At", 1.2), Column("device", "Device", 1.6), Column("from", "From", 0.8),
                    Column("event", "Event", 0.8), Column("to", "To", 0.8), Column("detail", "Detail", 3.5))
ACTION_COLUMNS = (Column("seq", "Entry", 0.4), Column("at", "At", 1.2), Column("operator", "Operator", 0.9),
                  Column("action", "Action", 1.0), Column("outcome", "Outcome", 0.6), Column("detail", "Detail", 3.5))
ENDS = {st.DONE: "done", st.FAILED: "failed", st.UNREACHABLE: "unreachable", st.ROLLED_BACK: "rolled_back"}
DETAIL_MOST = 300  # characters of a journal or audit detail printed; the JSON report holds the same cut text


def rollout_report(inventory: Inventory, rollout_id: int, filters: Filters) -> Report:
    repo = RolloutRepo(inventory)
    rollout = repo.get(rollout_id)  # RolloutNotFoundError names the id and how to list them
    resolved = rollout.resolved
    plan: dict[str, Any] = dict(resolved.get("plan") or {})
    planned = {int(d["device_id"]): d for d in resolved.get("devices", ())}
    if filters.group is not None or filters.device is not None:
        wanted = {d.id for d in chosen_devices(inventory, filters)}
    else:
        wanted = set(planned)
    rows = [r for r in repo.devices(rollout_id) if r.device_id in wanted]
    journal = repo.journal(rollout_id)
    names = {i: str(d.get("name", f"device {i}")) for i, d in planned.items()}
    since = rollout.created_at
    until = max([rollout.updated_at, *(e.at for e in journal)])
    if filters.since is not None or filters.until is not None:
        since, until = filters.since or since, filters.until or until
    if until <= since:
        until = since + timedelta(seconds=1)
    times: dict[int, list[JournalEntry]] = defaultdict(list)
    for entry in journal:
        if entry.device_id is not None:
            times[entry.device_id].append(entry)

    device_rows: list[tuple[Cell, ...]] = []
    gate_rows: list[tuple[Cell, ...]] = []
    shadow_rows: list[tuple[Cell, ...]] = []
    for row in sorted(rows, key=lambda r: (r.wave, names.get(r.device_id, ""), r.device_id)):
        seen = times.get(row.device_id, [])
        started, finished = (seen[0].at, seen[-1].at) if seen else (None, row.updated_at)
        info = planned.get(row.device_id, {})
        device_rows.append((names.get(row.device_id, f"device {row.device_id}"), row.wave + 1,
                            str(info.get("profile", "")), str(info.get("recipe", "")), row.artifact[:12],
                            (row.previous_artifact or "")[:12], row.state, row.attempts, row.bytes_sent,
                            stamp(started), stamp(finished),
                            round((finished - started).total_seconds(), 1) if started else None, row.error))
        baseline = row.gates.get("baseline") or {}
        shadow = row.gates.get("shadow")
        if isinstance(shadow, dict):
            shadow_rows.append(_shadow_row(names.get(row.device_id, f"device {row.device_id}"), shadow))
        measured_gates = {**{g: v for g, v in (shadow or {}).get("values", {}).items() if isinstance(v, dict)},
                          **(row.gates.get("values") or {})}
        for gate, measured in sorted(measured_gates.items()):
            gate_rows.append((names.get(row.device_id, f"device {row.device_id}"), gate, _number(measured.get("value")),
                              _number(measured.get("bound")), "yes" if measured.get("ok") else "no",
                              _number(baseline.get("p95_ms")) if gate.startswith("p95") else None,
                              str(measured.get("note", ""))))

    waves = resolved.get("waves") or []
    wave_rows = []
    for n, ids in enumerate(waves):
        in_wave = [r for r in rows if r.wave == n]
        counts = Counter(ENDS.get(r.state, "other") for r in in_wave)
        policy = _policy(plan, n)
        moments = [e.at for r in in_wave for e in times.get(r.device_id, [])]
        wave_rows.append((n + 1, len(ids), policy.get("success", ""), policy.get("errors", ""),
                          policy.get("soak_s"), "yes" if policy.get("approve") else "no", counts["done"],
                          counts["failed"], counts["unreachable"], counts["rolled_back"], counts["other"],
                          stamp(min(moments)) if moments else "", stamp(max(moments)) if moments else ""))

    entries = AuditRepo(inventory).entries(AuditFilter(target=f"rollout:{rollout_id}"), limit=None,
                                           newest_first=False)
    states = Counter(r.state for r in rows)
    gates = plan.get("gates") or {}
    facts: list[Fact] = [Fact("Rollout", rollout.id), Fact("Model", rollout.model_ref), Fact("Status", rollout.status),
                         Fact("Started by", rollout.actor), Fact("Created", stamp(rollout.created_at)),
                         Fact("Last change", stamp(rollout.updated_at)), Fact("Devices", len(rows)),
                         Fact("Waves", len(waves)), Fact("Bytes sent", sum(r.bytes_sent for r in rows))]
    if rollout.paused_reason:
        facts.append(Fact("Why it stopped", rollout.paused_reason))
    facts += [Fact(f"Gate {name}", "off" if value is None else value) for name, value in sorted(gates.items())]
    facts.append(Fact("Shadow step", _shadow_plan(plan.get("shadow"))))
    facts.append(Fact("Takeover", "automatic: a FleetDesk window on the same inventory takes it over when its driver "
                      "stops" if plan.get("takeover") == "auto" else
                      "ask: an operator takes it over when its driver stops"))
    takeovers = [e for e in journal if e.device_id is None and e.event == TAKEOVER]
    if takeovers:
        facts.append(Fact("Taken over", "; ".join(
            f"{stamp(e.at)}: from {e.detail.get('previous', '?')} to {e.detail.get('driver', '?')} "
            f"({e.detail.get('why', '')})" for e in takeovers)))
    facts += [Fact(f"Devices {state}", count) for state, count in sorted(states.items())]
    chart = Chart("by_state", "Devices by state", "bar", tuple(sorted(states)),
                  (Series("devices", tuple(float(states[s]) for s in sorted(states))),), unit="devices")
    tables = (
        Table("waves", "Waves", WAVE_COLUMNS, tuple(wave_rows), empty="the plan has no wave"),
        Table("devices", "Devices", DEVICE_COLUMNS, tuple(device_rows), empty="no device of this rollout matches"),
        Table("gates", "Gate measurements against their bounds", GATE_COLUMNS, tuple(gate_rows),
              empty="no gate was measured"),
        Table("shadow", "Shadow step: the candidate beside the active model on mirrored requests", SHADOW_COLUMNS,
              tuple(shadow_rows), empty="no device ran a shadow step"),
        Table("timeline", "Timeline (the rollout's journal)", TIMELINE_COLUMNS, tuple(
            (stamp(e.at), names.get(e.device_id, "") if e.device_id is not None else "(rollout)", e.from_state,
             e.event, e.to_state, _detail(e.detail)) for e in journal
            if e.device_id is None or e.device_id in wanted), empty="nothing was journaled"),
        Table("actions", "Operator actions (the audit trail)", ACTION_COLUMNS, tuple(
            (e.seq, stamp(e.at), e.operator, e.action, e.outcome, _detail(e.after)) for e in entries),
            empty="no operator action is recorded for this rollout"),
    )
    return Report("rollout", f"Rollout {rollout.id}: {rollout.model_ref}", scope_text(filters), since, until,
                  tuple(facts), (chart,), tables, (), {**filters.to_dict(), "rollout": str(rollout_id)})


def _policy(plan: dict[str, Any], wave: int) -> dict[str, Any]:
    own = plan.get("wave_policies") or []
    if wave < len(own) and own[wave]:
        return dict(own[wave])
    return dict(plan.get("policy") or {})


def _shadow_plan(shadow: Any) -> str:
    if not isinstance(shadow, dict):
        return "none"
    judged = [f"agreement >= {shadow['min_agreement']:g}" if shadow.get("min_agreement") is not None else "",
              f"p95 ratio <= {shadow['p95_ratio_max']:g}" if shadow.get("p95_ratio_max") is not None else ""]
    return (f"{'canary wave' if shadow.get('waves') == 'canary' else 'every device'}: share {shadow.get('share')}, "
            f"{shadow.get('min_requests')} requests within {shadow.get('max_wait_s')} s"
            + "".join(f", {j}" for j in judged if j) + f"; skipped (memory) counts as {shadow.get('on_skip')}")


def _shadow_row(device: str, shadow: dict[str, Any]) -> tuple[Cell, ...]:
    """One device's shadow verdict and figures (DeviceSteps keeps them in the row's gates["shadow"])."""
    found = shadow.get("figures")
    figures: dict[str, Any] = found if isinstance(found, dict) else {}
    outputs = [o for o in (figures.get("outputs") or {}).values() if isinstance(o, dict)]
    cosines = [_number((o.get("cosine") or {}).get("p50")) for o in outputs]
    diffs = [_number((o.get("max_abs_diff") or {}).get("p95")) for o in outputs]
    agreement = (shadow.get("values") or {}).get("shadow_agreement") or {}
    if shadow.get("applies") is False:
        verdict = "n/a"
    elif shadow.get("skipped"):
        verdict = f"skipped, {'pass' if shadow.get('passed') else 'fail'}"
    else:
        verdict = "pass" if shadow.get("passed") else "fail"
    return (device, verdict, figures.get("compared"), figures.get("dropped"), figures.get("failed"),
            _number(agreement.get("value")), min((c for c in cosines if c is not None), default=None),
            max((d for d in diffs if d is not None), default=None),
            _number((figures.get("active_ms") or {}).get("p95")),
            _number((figures.get("candidate_ms") or {}).get("p95")),
            _number(figures.get("p95_ratio")), _number(shadow.get("seconds")),
            str(shadow.get("reason") or shadow.get("why") or shadow.get("skipped") or ""))


def _number(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _detail(data: Any) -> str:
    if data in (None, {}, []):
        return ""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= DETAIL_MOST else text[:DETAIL_MOST - 1] + "…"
