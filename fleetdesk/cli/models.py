"""`fleetdesk model import|list|show|verify|export|remove|export-key`: the signed artifact store from a terminal
(`fleetdesk model push`, which puts a model on devices, is in fleetdesk/cli/push.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetdesk.cli.options import with_json
from fleetdesk.cli.output import emit, safe, table
from fleetdesk.cli.push import add_push
from fleetdesk.cli.session import open_fleet, opened_access
from fleetdesk.errors import ConfigError

EXIT_PROBLEMS = 1


def _store() -> Any:
    from fleetdesk.artifacts.store import ArtifactStore

    return ArtifactStore.default()


@contextlib.contextmanager
def _fleet_store(args: argparse.Namespace) -> Iterator[Any]:
    """This laptop's store with the inventory's catalogue: the models other laptops imported are found too, and
    their files fetched from the shared store (FLEETDESK_SHARED_STORE) when a command needs them."""
    from fleetdesk.artifacts.store import ArtifactStore
    from fleetdesk.config import Settings
    from fleetdesk.inventory import open_inventory

    settings = Settings.load(args.db)
    with open_inventory(settings.db_url) as inventory:
        yield ArtifactStore.default(settings, inventory)


def record_json(record: Any) -> dict[str, Any]:
    return {"name": record.name, "version": record.version, "ref": record.ref, "source_sha256": record.source_sha256,
            "imported_at": record.imported_at, "baseline": record.baseline, "artifacts": dict(record.artifacts),
            "card": dict(record.card), "report": record.report.to_dict() if record.report else None}


def artifact_json(artifact: Any) -> dict[str, Any]:
    return {"id": artifact.id, "folder": artifact.folder, "name": artifact.name, "version": artifact.version,
            "recipe": artifact.recipe, "profiles": list(artifact.profiles), "model_file": artifact.model_file,
            "size_bytes": artifact.size_bytes, "created": artifact.created,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in artifact.files]}


def _mb(size: float) -> str:
    if size < 1e6:
        return f"{size / 1e3:.1f} kB"
    return f"{size / 1e6:.2f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms"


# -- import -------------------------------------------------------------------------------------------------


def _progress_line(step: Any) -> None:
    count = f" ({step.done}/{step.total})" if step.total else ""
    print(f"{step.stage}: {safe(step.message)}{count}", file=sys.stderr, flush=True)


def cmd_model_import(args: argparse.Namespace) -> int:
    from fleetdesk.artifacts.store import ArtifactStore
    from fleetdesk.model_import import DeviceBench, bench_devices, import_model

    async def go() -> Any:
        fleet = open_fleet(args)
        try:
            store = ArtifactStore.default(inventory=fleet.inventory)  # the import is catalogued for the fleet
            profiles = list(args.profile or []) or sorted({d.profile for d in fleet.inventory.devices() if d.profile})
            loop = asyncio.get_running_loop()
            bench = None
            if not args.no_device_bench:
                chosen = profiles or sorted(fleet.profiles.profiles)
                devices = bench_devices(fleet, chosen)
                if devices:
                    bench = DeviceBench(fleet, devices, loop)
                    names = ", ".join(d.name for ds in devices.values() for d in ds)
                    print(f"time-device: timing variants on {names}", file=sys.stderr, flush=True)
            cancel = threading.Event()
            work = loop.run_in_executor(None, functools.partial(
                import_model, args.file, access=fleet.access, name=args.name, version=args.version,
                samples=args.samples,
                profiles=profiles or None, store=store, catalog=fleet.profiles, progress=_progress_line,
                cancel=cancel, device_bench=bench))
            try:
                record = await asyncio.shield(work)
            except asyncio.CancelledError:
                # Ctrl-C: the worker stops at its next step, cleans its work folder and stores nothing.
                cancel.set()
                print("cancelling: waiting for the current step to stop", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):
                    await work
                raise KeyboardInterrupt from None
            if bench is not None:
                for device, message in sorted(bench.failures.items()):
                    print(f"time-device: {device}: {message}", file=sys.stderr, flush=True)
            return record
        finally:
            await fleet.close()

    record = asyncio.run(go())
    emit(args, record_json(record), _record_text(record))
    return 0


# -- list / show ---------------------------------------------------------------------------------------------


def cmd_model_list(args: argparse.Namespace) -> int:
    from fleetdesk.artifacts.fleet_models import fleet_models

    with _fleet_store(args) as store:
        models = fleet_models(store)
    rows = [("MODEL", "IMPORTED", "BY", "SIZE", "SOURCE SHA-256", "FILES", "VARIANTS")]
    for m in models:
        r = m.record
        chosen = ", ".join(f"{p.profile}: {p.chosen}" for p in r.report.profiles) if r.report else "-"
        rows.append((r.ref, r.imported_at[:19].replace("T", " "), m.imported_by or "-",
                     _mb(int(r.card.get("size_bytes", 0))), r.source_sha256[:16], m.where, chosen))
    empty = "no models yet: `fleetdesk model import FILE.onnx`"
    emit(args, [{**record_json(m.record), "files": m.where, "available": m.available, "imported_by": m.imported_by,
                 "artifacts_size_bytes": m.size_bytes} for m in models], table(rows) if models else empty)
    return 0


def _record_text(record: Any) -> str:
    card = record.card
    lines = [f"model {safe(record.ref)}",
             f"  source:      {safe(card.get('path', '-'))}",
             f"  sha256:      {record.source_sha256}",
             f"  imported:    {record.imported_at}",
             f"  size:        {_mb(int(card.get('size_bytes', 0)))}, {card.get('parameter_count', 0):,} parameters, "
             f"opset {card.get('opset', {}).get('ai.onnx', '-')}, IR {card.get('ir_version', '-')}",
             "  inputs:      " + "; ".join(_spec(s) for s in card.get("inputs", [])),
             "  outputs:     " + "; ".join(_spec(s) for s in card.get("outputs", [])),
             "  operators:   " + ", ".join(f"{safe(k)} x{v}" for k, v in sorted(card.get("operators", {}).items())),
             f"  baseline:    {record.baseline} (fp32, the model as imported)"]
    report = record.report
    if report is None:
        return "\n".join(lines)
    lines.append(f"  samples:     {report.samples} ({safe(report.samples_source)})")
    if report.synthetic:
        lines.append("  NOTE: accuracy checked on synthetic data only (no samples given: inputs were generated "
                     "from the declared shapes)")
    tol = report.tolerance
    lines.append(f"  tolerance:   max abs err <= {tol.max_abs_error:g} or cosine >= {tol.min_cosine:g}; "
                 f"top-1 agreement >= {tol.min_top1_agreement:g}")
    for result in report.profiles:
        base = result.variant("fp32")
        base_size = base.size_bytes if base and base.size_bytes else int(card.get("size_bytes", 0))
        base_ms = base.local_latency_ms if base else None
        artifact = record.artifacts.get(result.profile, "")
        lines += ["", f"profile {result.profile}: chosen {result.chosen}" + (f", artifact {artifact}" if artifact
                                                                            else "")]
        rows = [("VARIANT", "SIZE", "% FP32", "MAX ABS ERR", "COSINE", "TOP-1", "LOCAL", "x FP32", "DEVICE",
                 "STATUS", "REASON")]
        for v in result.variants:
            acc = v.accuracy
            size = v.size_bytes or (base_size if v.recipe == "fp32" else 0)
            rows.append((
                v.recipe, _mb(size) if size else "-", f"{100 * size / base_size:.0f}%" if size and base_size else "-",
                f"{acc.max_abs_error:.3g}" if acc else "-", f"{acc.cosine:.5f}" if acc else "-",
                f"{acc.top1_agreement:.0%}" if acc and acc.top1_agreement is not None else "-",
                _ms(v.local_latency_ms),
                f"{v.local_latency_ms / base_ms:.2f}" if v.local_latency_ms and base_ms else "-",
                ", ".join(f"{d} {ms:.3g} ms" for d, ms in sorted(v.device_latency_ms.items())) or "-",
                v.status, v.reason))
        lines += ["  " + line for line in table(rows).splitlines()]
    return "\n".join(lines)


def _spec(spec: dict[str, Any]) -> str:
    shape = "?" if spec.get("shape") is None else "x".join(str(d) for d in spec["shape"])
    return f"{safe(spec.get('name'))} {spec.get('dtype')} [{safe(shape)}]"


def cmd_model_show(args: argparse.Namespace) -> int:
    with _fleet_store(args) as store:  # shows a model of another laptop too, without fetching its files
        record = store.model(args.ref)
        data = record_json(record)
        data["artifact_details"] = {i: artifact_json(store.artifact(i))
                                    for i in sorted({record.baseline, *record.artifacts.values()})
                                    if (store.objects / i).is_dir()}
    emit(args, data, _record_text(record))
    return 0


# -- verify / export / remove / export-key -----------------------------------------------------------------


def cmd_model_verify(args: argparse.Namespace) -> int:
    with _fleet_store(args) as store:  # a model of another laptop: its files fetched from the shared store first
        results = store.verify(args.ref)
    bad = [r for r in results if not r.ok]
    lines = []
    for r in results:
        lines.append(f"{r.artifact[:16]}  {safe(r.ref) or '-'}: " + ("ok" if r.ok else "PROBLEM"))
        lines += [f"    {safe(p)}" for p in r.problems]
    lines.append(f"{len(results)} artifact(s) checked, {len(bad)} with problems" if results
                 else "nothing to verify: the store is empty")
    emit(args, {"results": [{"artifact": r.artifact, "ref": r.ref, "ok": r.ok, "problems": list(r.problems)}
                            for r in results], "ok": not bad}, "\n".join(lines))
    return EXIT_PROBLEMS if bad else 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from fleetdesk.model_import import export_model

    with opened_access(args) as access:
        path = export_model(_store(), access, args.ref, Path(args.dest), profile=args.profile)
    emit(args, {"path": str(path), "size_bytes": path.stat().st_size},
         f"wrote {path} ({_mb(path.stat().st_size)}): artifacts/<id>/ and keys/fleet.pub, "
         f"to unpack into a device's FleetDesk root")
    return 0


def cmd_model_remove(args: argparse.Namespace) -> int:
    with _fleet_store(args) as store:  # taken out of the fleet's catalogue too
        if "@" not in args.ref and len([r for r in store.models() if r.name == args.ref]) > 1:
            store.remove(args.ref)  # refuses, naming the versions to choose from
        record = store.model(args.ref)
        if not args.yes:
            if args.json or not sys.stdin.isatty():
                raise ConfigError(f"removing {record.ref} needs confirmation", step="remove model",
                                  fix=f"add --yes: fleetdesk model remove {record.ref} --yes")
            answer = input(f"Remove {record.ref} from the fleet's models and its artifacts from this laptop? "
                           "Type yes: ")
            if answer.strip().lower() != "yes":
                print("not removed", file=sys.stderr)
                return EXIT_PROBLEMS
        from fleetdesk.model_import import remove_model

        with opened_access(args) as access:
            _, gone = remove_model(store, access, record.ref)
    emit(args, {"removed": record.ref, "artifacts_removed": gone},
         f"removed {record.ref}; {len(gone)} artifact(s) deleted")
    return 0


def cmd_model_export_key(args: argparse.Namespace) -> int:
    from fleetdesk.model_import import export_fleet_key

    with opened_access(args) as access:
        pem = export_fleet_key(_store(), access)
    if args.file:
        Path(args.file).write_bytes(pem)
        print(f"wrote the fleet's public key to {args.file}", file=sys.stderr)
    else:
        sys.stdout.write(pem.decode())
    return 0


def add_model(sub: Any) -> None:
    model = sub.add_parser("model", help="import, optimize, sign and manage ONNX models")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    p = with_json(model_sub.add_parser("import", help="validate an .onnx, optimize it per device profile, sign, store"))
    p.add_argument("file", metavar="FILE", help="the .onnx file (external data next to it)")
    p.add_argument("--name", help="the model's name (default: the file name without .onnx)")
    p.add_argument("--version", help="its version (default: the next number for that name)")
    p.add_argument("--samples", metavar="DIR", help="folder of .npy/.npz sample inputs (default: generated from the "
                                                    "declared shapes: accuracy on synthetic data only)")
    p.add_argument("--profile", action="append", metavar="P",
                   help="optimize for this profile (repeatable; default: the inventory's, else every profile)")
    p.add_argument("--no-device-bench", action="store_true",
                   help="time variants on this laptop only, not on online devices of each profile")
    p.set_defaults(func=cmd_model_import)

    add_push(model_sub)

    p = with_json(model_sub.add_parser("list", help="the stored models and the variant chosen per profile"))
    p.set_defaults(func=cmd_model_list)

    p = with_json(model_sub.add_parser("show", help="a model's card and every variant's figures per profile"))
    p.add_argument("ref", metavar="REF", help="NAME (newest version) or NAME@VERSION")
    p.set_defaults(func=cmd_model_show)

    p = with_json(model_sub.add_parser("verify", help="check every byte and signature (exit 1 on any problem)"))
    p.add_argument("ref", nargs="?", metavar="REF", help="NAME, NAME@VERSION or an artifact id (default: all)")
    p.set_defaults(func=cmd_model_verify)

    p = with_json(model_sub.add_parser("export",
                                       help="a .tar of artifacts and the fleet key, laid out as a device root"))
    p.add_argument("ref", metavar="REF", help="NAME, NAME@VERSION or an artifact id")
    p.add_argument("dest", metavar="DEST", help="a folder (the file is named for the model) or a .tar path")
    p.add_argument("--profile", metavar="P", help="only the variant for this profile")
    p.set_defaults(func=cmd_model_export)

    p = with_json(model_sub.add_parser("remove", help="remove a model version and the artifacts only it uses"))
    p.add_argument("ref", metavar="REF", help="NAME@VERSION (or NAME when it has one version)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_model_remove)

    p = model_sub.add_parser("export-key", help="the fleet's public signing key (PEM) to stdout or FILE")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.set_defaults(func=cmd_model_export_key)
