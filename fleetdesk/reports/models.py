"""The models report: every model version in this laptop's store, its variants per device profile (size,
accuracy, latency, and why each was chosen or rejected), and which devices run each version now."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from fleetdesk.artifacts.records import Artifact, ModelRecord
from fleetdesk.inventory import Inventory
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.reports.document import Cell, Chart, Column, Fact, Report, Series, Table, stamp
from fleetdesk.reports.selection import Filters, active_models, chosen_devices, period, scope_text

MODEL_COLUMNS = (Column("model", "Model", 1.2), Column("version", "Version", 0.5), Column("imported", "Imported", 1.1),
                 Column("source_sha256", "Source SHA-256", 1.2), Column("profiles", "Profiles", 1.5),
                 Column("devices", "Devices running it", 0.7), Column("synthetic", "Accuracy on", 0.9))
VARIANT_COLUMNS = (Column("model", "Model", 1.1), Column("version", "Version", 0.5), Column("profile", "Profile", 0.9),
                   Column("recipe", "Recipe", 0.8), Column("status", "Status", 0.7), Column("chosen", "Chosen", 0.5),
                   Column("size_bytes", "Bytes", 0.7), Column("size_pct", "% of FP32", 0.5),
                   Column("cosine", "Lowest cosine", 0.6), Column("top1", "Top-1 agreement", 0.6),
                   Column("latency_ms", "Latency ms", 0.6), Column("artifact", "Artifact", 0.9),
                   Column("reason", "Why", 3.0))
RUNS_COLUMNS = (Column("device", "Device", 1.6), Column("profile", "Profile", 1.0), Column("model", "Model", 1.2),
                Column("version", "Version", 0.5), Column("artifact", "Artifact", 1.0), Column("since", "Since", 1.2))

# Where a version runs is what rollouts record as activated: the one path that switches a device's model.
PUSH_NOTE = ("Only a rollout activates a model. `fleetdesk model push` and the window's Deploy copy a model onto "
             "devices without switching to it, so a pushed version is listed as running once a rollout activates it.")


def models_report(inventory: Inventory, records: Sequence[ModelRecord], artifacts: Sequence[Artifact],
                  filters: Filters) -> Report:
    devices = chosen_devices(inventory, filters)
    running = active_models(RolloutRepo(inventory), artifacts)
    chosen_ids = {d.id for d in devices}
    imported = [_moment(r.imported_at) for r in records]
    since, until = period(filters, [*imported, *(a.since for i, a in running.items() if i in chosen_ids)],
                          days=365)
    by_artifact = {a.id: a for a in artifacts}
    runs_on: dict[str, list[str]] = defaultdict(list)
    runs_rows: list[tuple[Cell, ...]] = []
    for d in devices:
        active = running.get(d.id)
        if active is None:
            continue
        runs_on[f"{active.name}@{active.version}" if active.name else f"artifact {active.artifact[:12]}"].append(
            d.name)
        runs_rows.append((d.name, d.profile or "", active.name, active.version, active.artifact[:12],
                          stamp(active.since)))
    model_rows: list[tuple[Cell, ...]] = []
    variant_rows: list[tuple[Cell, ...]] = []
    for r in sorted(records, key=lambda r: (r.name, _version_key(r.version))):
        report = r.report
        model_rows.append((r.name, r.version, stamp(_moment(r.imported_at)), r.source_sha256[:16],
                           ", ".join(sorted(r.artifacts)), len(runs_on.get(r.ref, [])),
                           "" if report is None else ("synthetic inputs" if report.synthetic else "operator samples")))
        if report is None:
            continue
        for profile in report.profiles:
            baseline = profile.variant("fp32") or (profile.variants[0] if profile.variants else None)
            for v in profile.variants:
                artifact = r.artifacts.get(profile.profile, "") if v.recipe == profile.chosen else ""
                variant_rows.append((
                    r.name, r.version, profile.profile, v.recipe, v.status, "yes" if v.recipe == profile.chosen
                    else "no", v.size_bytes, round(100.0 * v.size_bytes / baseline.size_bytes, 1)
                    if baseline and baseline.size_bytes else None,
                    None if v.accuracy is None else round(v.accuracy.cosine, 5),
                    None if v.accuracy is None or v.accuracy.top1_agreement is None
                    else round(v.accuracy.top1_agreement, 4),
                    None if v.measured_latency_ms is None else round(v.measured_latency_ms, 3),
                    (by_artifact[artifact].id[:12] if artifact in by_artifact else artifact[:12]), v.reason))
    counts = sorted(runs_on.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    chart = Chart("devices_per_version", "Devices per model version", "bar", tuple(k for k, _ in counts),
                  (Series("devices", tuple(float(len(v)) for _, v in counts)),), unit="devices")
    facts = (Fact("Model versions", len(records)), Fact("Variants", len(variant_rows)),
             Fact("Devices chosen", len(devices)), Fact("Devices running a model", len(runs_rows)))
    notes = (PUSH_NOTE,) if records else ("There is nothing to report: no model has been imported on this laptop.",)
    return Report("models", "Models", scope_text(filters), since, until, facts, (chart,), (
        Table("models", "Model versions", MODEL_COLUMNS, tuple(model_rows), empty="no model imported"),
        Table("variants", "Variants per profile", VARIANT_COLUMNS, tuple(variant_rows), empty="no variant"),
        Table("running", "Where each version runs", RUNS_COLUMNS, tuple(runs_rows),
              empty="no chosen device runs a model a rollout activated")), notes, filters.to_dict())


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)
