"""`fleetdesk runtime build|list|show|import-wheel` and `fleetdesk provision`: offline runtime bundles per device
profile, and installing one (with the agent and the fleet key) on devices."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from fleetdesk.cli.options import choose_devices, with_json
from fleetdesk.cli.output import emit, safe, summary, table, when
from fleetdesk.cli.session import opened_access, with_fleet


def _store() -> Any:
    from fleetdesk.runtime.store import RuntimeStore

    return RuntimeStore.default()


def _profile(name: str) -> Any:
    from fleetdesk.config import Settings
    from fleetdesk.profiles import load_profiles

    return load_profiles(Settings.load().user_profiles_dir).get(name)


def _runtime_line(runtime: Any) -> str:
    versions = ", ".join(f"{w.project} {w.version}" for w in runtime.wheels)
    return f"{runtime.id}  {runtime.arch}  {runtime.python}  {runtime.size / 1e6:.1f} MB  {versions}"


def _runtime_text(runtime: Any) -> str:
    lines = [f"runtime {runtime.id}", f"  for:          {', '.join(runtime.profiles) or '-'} "
                                      f"({runtime.arch}, {runtime.python})",
             f"  requirements: {', '.join(runtime.requirements)}",
             f"  created:      {when(runtime.created)}",
             f"  size:         {runtime.size / 1e6:.1f} MB in {len(runtime.wheels)} wheels",
             f"  folder:       {safe(runtime.path)}"]
    if runtime.base:
        lines.append(f"  based on:     {runtime.base}")
    if runtime.tools:
        lines.append("  made with:    " + ", ".join(f"{k} {v}" for k, v in sorted(runtime.tools.items())))
    rows = [("WHEEL", "PROJECT", "VERSION", "SIZE", "SHA-256")]
    rows += [(w.file, w.project, w.version, f"{w.size / 1e6:.1f} MB", w.sha256[:16]) for w in runtime.wheels]
    return "\n".join(lines) + "\n\n" + table(rows)


def cmd_runtime_build(args: argparse.Namespace) -> int:
    from fleetdesk.runtime.wheelhouse import build_runtime

    profile = _profile(args.profile)
    with opened_access(args) as access:
        access.require("release", "runtime.build", targets=(f"profile:{profile.name}",))
        # Progress goes to stderr always: stdout carries only the result (text or JSON).
        runtime, created = asyncio.run(build_runtime(profile, _store(), requirements=args.requirement or None,
                                                     progress=lambda m: print(m, file=sys.stderr, flush=True)))
        if created:
            access.record("runtime.build", targets=(f"runtime:{runtime.id}", f"profile:{profile.name}"),
                          after={"wheels": [w.file for w in runtime.wheels]})
    data = {**runtime.to_json(), "created_now": created}
    verb = "built" if created else "already stored (same wheels); nothing copied"
    emit(args, data, f"{verb}: {_runtime_line(runtime)}")
    return 0


def cmd_runtime_list(args: argparse.Namespace) -> int:
    runtimes = _store().list()
    rows = [("ID", "PROFILES", "ARCH", "PYTHON", "SIZE", "CREATED", "FROM", "WHEELS")]
    rows += [(r.id, ",".join(r.profiles) or "-", r.arch, r.python, f"{r.size / 1e6:.1f} MB",
              r.created.astimezone().strftime("%Y-%m-%d %H:%M"), "package" if r.shipped else "this laptop",
              ", ".join(f"{w.project} {w.version}" for w in r.wheels)) for r in runtimes]
    empty = "no runtimes yet: `fleetdesk runtime build --profile P` while this laptop reaches a package index"
    emit(args, [r.to_json() for r in runtimes], table(rows) if runtimes else empty)
    return 0


def cmd_runtime_show(args: argparse.Namespace) -> int:
    runtime = _store().get(args.id)
    emit(args, runtime.to_json(), _runtime_text(runtime))
    return 0


def cmd_runtime_import_wheel(args: argparse.Namespace) -> int:
    from fleetdesk.runtime.wheelhouse import import_wheel

    store = _store()
    base = store.get(args.base) if args.base else None
    profile = _profile(args.profile)
    with opened_access(args) as access:
        access.require("release", "runtime.import", targets=(f"file:{Path(args.file).name}",))
        runtime, created = import_wheel(Path(args.file), profile, store, base=base)
        if created:
            access.record("runtime.import", targets=(f"runtime:{runtime.id}", f"profile:{profile.name}"),
                          after={"wheel": Path(args.file).name, "base": runtime.base})
    data = {**runtime.to_json(), "created_now": created}
    verb = "new runtime" if created else "already stored"
    emit(args, data, f"{verb}: {_runtime_line(runtime)}" + (f" (based on {runtime.base})" if runtime.base else ""))
    return 0


class _ProgressPrinter:
    """One line per step and device, and push progress at most every 10 %, so a terminal stays readable."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._last: dict[tuple[str, str], int] = {}

    def __call__(self, event: Any) -> None:
        key = (event.device, event.step)
        if event.total:
            tenth = int(10 * event.done / event.total)
            if self._last.get(key) == tenth:
                return
            self._last[key] = tenth
            text = f"{event.message} {event.done / 1e6:.1f}/{event.total / 1e6:.1f} MB"
        else:
            text = event.message
        print(f"{safe(event.device)}: {event.step}: {safe(text)}", file=self.stream, flush=True)


def _outcome_line(o: Any) -> str:
    if o.error is not None:
        return f"{safe(o.device)}: {o.status}: {safe(o.error.message)}" + (
            f" — {safe(o.error.fix)}" if o.error.fix else "")
    what = "; ".join(o.changed) if o.changed else "nothing changed"
    return (f"{safe(o.device)}: ok in {o.seconds:.1f} s, {o.bytes_sent / 1e6:.1f} MB sent, runtime {o.runtime_id}, "
            f"onnxruntime {safe(o.onnxruntime)} ({', '.join(safe(p) for p in o.providers)}); {safe(what)}")


def cmd_provision(args: argparse.Namespace) -> int:
    from fleetdesk.runtime.provision import provision

    async def work(fleet: Any) -> int:
        devices = fleet.select(args.devices, group=args.group, all_devices=args.all)
        printer = _ProgressPrinter(sys.stderr)
        outcomes = await provision(fleet, devices, args.runtime, progress=printer, concurrency=args.concurrency,
                                   replace_fleet_key=args.replace_fleet_key)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("succeeded", "failed", "unreachable")}
        text = "\n".join(_outcome_line(o) for o in outcomes) + "\n" + summary(counts)
        emit(args, {"outcomes": [o.to_dict() for o in outcomes], "summary": counts}, text)
        return 0 if counts["succeeded"] == len(outcomes) else 1

    return with_fleet(args, work)


def add_runtime(sub: Any) -> None:
    runtime = sub.add_parser("runtime", help="offline runtime bundles (wheelhouses) for device profiles")
    runtime_sub = runtime.add_subparsers(dest="runtime_command", required=True, metavar="ACTION")

    p = with_json(runtime_sub.add_parser("build", help="download a profile's wheels for its platform (needs an index)"))
    p.add_argument("--profile", required=True, metavar="P", help="device profile, e.g. rpi4")
    p.add_argument("--requirement", action="append", metavar="REQ",
                   help="instead of the profile's [runtime] wheels (repeatable), e.g. 'onnxruntime>=1.17'")
    p.set_defaults(func=cmd_runtime_build)

    p = with_json(runtime_sub.add_parser("list", help="the stored runtimes, newest first"))
    p.set_defaults(func=cmd_runtime_list)

    p = with_json(runtime_sub.add_parser("show", help="one runtime's wheels and origin"))
    p.add_argument("id", metavar="ID", help="runtime id (or its first characters)")
    p.set_defaults(func=cmd_runtime_show)

    p = with_json(runtime_sub.add_parser("import-wheel",
                                         help="add a wheel you brought (e.g. NVIDIA's onnxruntime-gpu)"))
    p.add_argument("file", metavar="FILE", help="the .whl file")
    p.add_argument("--profile", required=True, metavar="P", help="the device profile it is for")
    p.add_argument("--base", metavar="ID", help="runtime whose other wheels to keep (default: the newest for P)")
    p.set_defaults(func=cmd_runtime_import_wheel)



def add_provision(sub: Any) -> None:
    p = with_json(sub.add_parser("provision", help="install the runtime, agent and fleet key on devices"))
    choose_devices(p)
    p.add_argument("--runtime", metavar="ID", help="runtime to install (default: the newest for each profile)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="devices at once (default 8)")
    p.add_argument("--replace-fleet-key", action="store_true",
                   help="give a device that trusts another fleet key (its keys/fleet.pub) this laptop's instead; "
                        "without it such a device is refused, untouched, and both fingerprints are shown")
    p.set_defaults(func=cmd_provision)
