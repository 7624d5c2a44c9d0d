"""`fleetdesk rollout plan|start|status|list|journal|pause|resume|approve|run|abort|rollback`: staged rollouts from
a terminal. `start`, `resume`, `approve` and `run` drive the rollout in the foreground; Ctrl-C pauses it cleanly.
`run ID --take-over` takes over a rollout whose driver (another laptop) stopped, once its lease runs out.

Exit status: 0 done (or the action asked for succeeded), 3 paused or waiting for approval, 1 failed (or
aborted while running), 2 a usage error or any other FleetDesk error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fleetdesk.cli.options import with_json
from fleetdesk.cli.output import emit, safe, table, when
from fleetdesk.cli.session import open_fleet
from fleetdesk.errors import ConfigError, PlanError

EXIT_FAILED = 1
EXIT_STOPPED = 3  # paused or waiting for the operator's approval
_EXIT = {"done": 0, "paused": EXIT_STOPPED, "waiting-approval": EXIT_STOPPED, "failed": EXIT_FAILED,
         "aborted": EXIT_FAILED, "rolled-back": 0, "rolling-back": EXIT_FAILED, "running": EXIT_FAILED,
         "planned": 0}


def _store(fleet: Any) -> Any:
    from fleetdesk.artifacts.store import ArtifactStore

    # With the inventory: a model another laptop imported is found, its files fetched from the shared store.
    return ArtifactStore.default(inventory=fleet.inventory)


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


# -- the plan from the command line ------------------------------------------------------------------------


def _plan(args: argparse.Namespace, fleet: Any) -> Any:
    from fleetdesk.rollout.plan import RolloutPlan
    from fleetdesk.rollout.policy import Gates, Threshold, TransferPolicy, WavePolicy

    device_ids = tuple(dict.fromkeys(fleet.inventory.device(ref).id for ref in args.device or ()))
    waves: tuple[int | str, ...] = tuple(int(w) if w.strip().isdigit() else w.strip()
                                         for w in args.waves.split(",") if w.strip())
    policy = WavePolicy(success=Threshold.parse(args.success, name="--success"),
                        errors=Threshold.parse(args.errors, name="--errors"), soak_s=args.soak, approve=args.approve)
    defaults = Gates()
    gates = Gates(serving=not args.no_serving_gate,
                  p95_ms_max=args.p95_max,
                  p95_ratio_max=_off(args.p95_ratio, defaults.p95_ratio_max),
                  error_rate_max=_off(args.error_rate_max, defaults.error_rate_max),
                  golden_min_cosine=_off(args.golden_min, defaults.golden_min_cosine),
                  temperature_c_max=_off(args.temp_max, defaults.temperature_c_max),
                  memory_free_pct_min=_off(args.mem_free_min, defaults.memory_free_pct_min))
    transfer = TransferPolicy(max_parallel=args.max_parallel, bandwidth_bytes_s=args.bandwidth,
                              prestage=not args.no_prestage, retries=args.retries)
    return RolloutPlan(model=args.model, devices=device_ids, groups=tuple(args.group or ()),
                       profiles=tuple(args.profile or ()), waves=waves, policy=policy,
                       wave_policies=wave_policies_from_flags(args.wave_policy or (), policy), gates=gates,
                       transfer=transfer, unreachable=args.unreachable, unreachable_wait_s=args.unreachable_wait,
                       confirm_within_s=args.confirm_within, step_timeout_s=args.step_timeout,
                       approval_by_other=args.approval_by_other, shadow=_shadow(args), takeover=args.takeover,
                       on_database_loss=args.on_database_loss)


_SHADOW_FLAGS = {"shadow_min": "--shadow-min", "shadow_agree": "--shadow-agree",
                 "shadow_p95_ratio": "--shadow-p95-ratio", "shadow_max_wait": "--shadow-max-wait",
                 "shadow_canary_only": "--shadow-canary-only", "shadow_on_skip": "--shadow-on-skip"}


def _shadow(args: argparse.Namespace) -> Any:
    """The plan's shadow step from --shadow SHARE and its options; None without --shadow."""
    from fleetdesk.rollout.policy import ShadowPolicy

    if args.shadow is None:
        given = [flag for name, flag in _SHADOW_FLAGS.items() if getattr(args, name) not in (None, False)]
        if given:
            raise PlanError(f"{', '.join(given)} given without --shadow", field="--shadow",
                            fix="add --shadow SHARE (the share of live requests mirrored to the candidate, e.g. 0.5) "
                                "to run the shadow step, or leave its options out")
        return None
    defaults = ShadowPolicy()
    try:
        return ShadowPolicy(share=args.shadow,
                            min_requests=defaults.min_requests if args.shadow_min is None else args.shadow_min,
                            min_agreement=_off(args.shadow_agree, defaults.min_agreement),
                            p95_ratio_max=_off(args.shadow_p95_ratio, defaults.p95_ratio_max),
                            max_wait_s=defaults.max_wait_s if args.shadow_max_wait is None else args.shadow_max_wait,
                            waves="canary" if args.shadow_canary_only else "all",
                            on_skip=args.shadow_on_skip or defaults.on_skip)
    except PlanError as exc:
        flag = {"share": "--shadow", "min_requests": "--shadow-min", "min_agreement": "--shadow-agree",
                "p95_ratio_max": "--shadow-p95-ratio", "max_wait_s": "--shadow-max-wait"}.get(exc.field or "")
        raise PlanError(exc.message.removeprefix(f"{exc.field}: "), field=flag or exc.field, fix=exc.fix) from None


WAVE_POLICY_FLAG = "--wave-policy"
_WAVE_POLICY_FIX = ("write N:KEY=VAL[,KEY=VAL...] with N the wave (1 = the canary's) and keys success, errors, soak "
                    "and approve, e.g. --wave-policy 1:soak=300,approve=yes --wave-policy 2:errors=5%")
_YES_NO = {"yes": True, "no": False, "true": True, "false": False}


def wave_policies_from_flags(values: Sequence[str], common: Any) -> tuple[Any, ...]:
    """RolloutPlan.wave_policies from `--wave-policy N:KEY=VAL[,KEY=VAL...]` flags: wave N (1-based, as the operator
    counts waves) gets the common policy with those keys changed (success and errors: a count or a share;
    soak: seconds; approve: yes or no); the waves not named keep the common policy (None). PlanError naming
    the flag and the fix for anything else."""
    from fleetdesk.rollout.policy import Threshold

    def bad(value: str, problem: str, fix: str = _WAVE_POLICY_FIX) -> PlanError:
        return PlanError(f"{value!r}: {problem}", field=WAVE_POLICY_FLAG, fix=fix)

    by_wave: dict[int, Any] = {}
    for value in values:
        number, colon, settings = value.partition(":")
        if not colon or not settings.strip():
            raise bad(value, "no KEY=VAL after the wave number")
        if not number.strip().isdecimal() or int(number) < 1:
            raise bad(value, f"{number.strip()!r} is not a wave number (1 or more)")
        wave = int(number) - 1
        if wave in by_wave:
            raise bad(value, f"wave {wave + 1} is given twice",
                      fix=f"put every key of wave {wave + 1} in one {WAVE_POLICY_FLAG} {wave + 1}:KEY=VAL,KEY=VAL")
        changes: dict[str, Any] = {}
        for pair in settings.split(","):
            key, equals, raw = (part.strip() for part in pair.partition("="))
            if not equals or not key or not raw:
                raise bad(value, f"{pair.strip()!r} is not KEY=VAL")
            name = {"success": "success", "errors": "errors", "soak": "soak_s", "approve": "approve"}.get(key)
            if name is None:
                raise bad(value, f"unknown key {key!r}", fix="the keys are success, errors, soak and approve")
            if name in changes:
                raise bad(value, f"{key} is given twice", fix=f"give {key} once for wave {wave + 1}")
            if name in ("success", "errors"):
                try:
                    changes[name] = Threshold.parse(raw, name=key)
                except PlanError as exc:
                    raise bad(value, exc.message.removeprefix(f"{key}: "), fix=exc.fix or _WAVE_POLICY_FIX) from None
            elif name == "soak_s":
                try:
                    changes[name] = float(raw.removesuffix("s"))
                except ValueError:
                    raise bad(value, f"soak {raw!r} is not a number of seconds",
                              fix="give the soak in seconds (0 or more), e.g. soak=300") from None
            elif raw.lower() in _YES_NO:
                changes[name] = _YES_NO[raw.lower()]
            else:
                raise bad(value, f"approve {raw!r} is not yes or no", fix="write approve=yes or approve=no")
        try:
            by_wave[wave] = dataclasses.replace(common, **changes)
        except PlanError as exc:
            key = {"soak_s": "soak"}.get(exc.field or "", exc.field or "")
            raise bad(value, f"{key} {exc.message.removeprefix(f'{exc.field}: ')}".strip(),
                      fix=exc.fix or _WAVE_POLICY_FIX) from None
    if not by_wave:
        return ()
    return tuple(by_wave.get(i) for i in range(max(by_wave) + 1))


def _check_wave_policies(resolved: Any) -> None:
    """An override for a wave the rollout does not have is a mistake in the command, not something to ignore."""
    plan = resolved.plan
    count = len(resolved.waves)
    beyond = [i + 1 for i, p in enumerate(plan.wave_policies) if p is not None and i >= count]
    if beyond:
        sizes = ", ".join(str(len(w)) for w in resolved.waves)
        raise PlanError(f"wave {', '.join(map(str, beyond))} given, but the rollout has {count} "
                        f"wave{'s' if count != 1 else ''} (of {sizes} devices)", field=WAVE_POLICY_FLAG,
                        fix=f"give a wave from 1 to {count}, or change --waves")


def _off(value: float | None, default: float | None) -> float | None:
    """A gate option: not given -> the default bound; a negative number -> the gate is off."""
    if value is None:
        return default
    return None if value < 0 else value


# -- output ----------------------------------------------------------------------------------------------


def _row_json(row: Any) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    for key in ("plan", "resolved"):
        data.pop(key, None)
    return data


def _status_json(repo: Any, rollout_id: int) -> dict[str, Any]:
    row = repo.get(rollout_id)
    data = _row_json(row)
    data["plan"] = row.plan
    data["takeover"] = row.plan.get("takeover", "ask")
    data["devices"] = [dataclasses.asdict(d) for d in repo.devices(rollout_id)]
    return data


def _driver_text(row: Any) -> str:
    """Who drives the rollout and until when its lease runs; "" when nobody does."""
    if row.driver is None or row.lease_until is None:
        return ""
    host, _, pid = row.driver.rpartition(":")
    return f"driven by {safe(host)} (process {safe(pid)}), lease until {when(row.lease_until)}"


def _status_text(fleet: Any, repo: Any, rollout_id: int) -> str:
    from fleetdesk.rollout.plan import takeover_text

    row = repo.get(rollout_id)
    names = {d.id: d.name for d in fleet.inventory.devices()}
    head = f"rollout {row.id}: {safe(row.model_ref)}, {row.status}"
    if row.paused_reason:
        head += f" ({safe(row.paused_reason)})"
    head += f"; started by {safe(row.actor)}"
    driver = _driver_text(row)
    if driver and row.status in ("running", "planned"):
        head += f"; {driver}"
    policy = row.plan.get("takeover", "ask")
    head += f"\ntakeover ({policy}): {takeover_text(policy)}"
    rows = [("WAVE", "DEVICE", "STATE", "SENT", "GATES", "ERROR")]
    for d in sorted(repo.devices(rollout_id), key=lambda d: (d.wave, names.get(d.device_id, ""))):
        gates = d.gates or {}
        verdict = "-" if "passed" not in gates else ("pass" if gates["passed"] else "FAIL")
        rows.append((str(d.wave + 1), names.get(d.device_id, str(d.device_id)), d.state,
                     _mb(d.bytes_sent) if d.bytes_sent else "-", verdict, (d.error or "-")[:100]))
    return head + "\n" + table(rows)


class _Printer:
    """Progress lines for a rollout in the foreground: every state change, transfers at most every 2 s."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last: dict[int, float] = {}

    def __call__(self, event: Any) -> None:
        if event.kind == "progress":
            now = time.monotonic()
            finished = event.bytes_done >= event.bytes_total
            if not finished and now - self.last.get(event.device_id, 0.0) < 2.0:
                return
            self.last[event.device_id] = now
            eta = f", ETA {event.eta_s:.0f} s" if event.eta_s is not None and not finished else ""
            name = safe(event.message.split(":", 1)[0])
            line = (f"{name}: staging {_mb(event.bytes_done)} of {_mb(event.bytes_total)} at "
                    f"{event.rate_bytes_s / 1e6:.1f} MB/s{eta}")
        else:
            line = safe(event.message)
        print(line, file=self.stream, flush=True)


# -- commands --------------------------------------------------------------------------------------------


def _with_engine(args: argparse.Namespace, work: Callable[[Any, Any], Any], *, quiet: bool = False) -> int:
    """Open the fleet and the store, make an engine that prints progress, run `work(engine, fleet)`."""
    from fleetdesk.rollout.engine import RolloutEngine

    async def go() -> int:
        fleet = open_fleet(args)
        try:
            stream = sys.stderr if args.json else sys.stdout
            engine = RolloutEngine(fleet, _store(fleet), on_event=None if quiet else _Printer(stream))
            return int(await work(engine, fleet))
        finally:
            await fleet.close()

    return asyncio.run(go())


async def _drive(args: argparse.Namespace, engine: Any, fleet: Any, rollout_id: int,
                 drive: Callable[[], Awaitable[Any]] | None = None,
                 told: Callable[[], tuple[dict[str, Any], str]] | None = None) -> int:
    """Run the rollout in the foreground until it stops (`drive`, by default engine.run); the first Ctrl-C pauses
    it cleanly (the steps under way finish), a second one stops at once (the journal and the agents' deadlines keep
    the devices safe). Ctrl-C while this process does not drive it yet (take-over waiting) only stops waiting.
    `told`: what to add to the status printed at the end (JSON keys, a line of text)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    presses = 0

    def interrupted() -> None:
        nonlocal presses
        presses += 1
        if not engine.driving(rollout_id):
            if task is not None:
                task.cancel()
            return
        if presses == 1:
            print("pausing: the steps under way finish first (Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)
            with contextlib.suppress(Exception):
                engine.repo.set_status(rollout_id, "paused", reason="operator (Ctrl-C)", expect="running")
                fleet.access.record("rollout.pause", targets=(f"rollout:{rollout_id}",),
                                    after={"reason": "Ctrl-C in the terminal"})
        elif task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        row = await (drive() if drive is not None else engine.run(rollout_id))
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    data, text = _status_json(engine.repo, rollout_id), _status_text(fleet, engine.repo, rollout_id)
    if told is not None:
        more, line = told()
        data.update(more)
        text = f"{line}\n{text}" if line else text
    emit(args, data, text)
    return _EXIT.get(row.status, EXIT_FAILED)


def cmd_rollout_plan(args: argparse.Namespace) -> int:
    from fleetdesk.rollout.plan import plan_text, resolve

    async def work(engine: Any, fleet: Any) -> int:
        resolved = resolve(_plan(args, fleet), fleet.inventory, engine.store)
        _check_wave_policies(resolved)
        emit(args, resolved.to_dict(), plan_text(resolved))
        return 0

    return _with_engine(args, work, quiet=True)


def cmd_rollout_start(args: argparse.Namespace) -> int:
    from fleetdesk.rollout.plan import resolve

    async def work(engine: Any, fleet: Any) -> int:
        plan = _plan(args, fleet)
        if any(p is not None for p in plan.wave_policies):
            _check_wave_policies(resolve(plan, fleet.inventory, engine.store))
        rollout_id = await engine.start(plan)
        print(f"rollout {rollout_id} started", file=sys.stderr if args.json else sys.stdout, flush=True)
        return await _drive(args, engine, fleet, rollout_id)

    return _with_engine(args, work)


def cmd_rollout_resume(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        await engine.resume(args.id, seen=args.seen_version)
        return await _drive(args, engine, fleet, args.id)

    return _with_engine(args, work)


def cmd_rollout_approve(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        await engine.approve(args.id, seen=args.seen_version)
        if args.no_run:
            return _show(args, engine, fleet, args.id)
        return await _drive(args, engine, fleet, args.id)

    return _with_engine(args, work)


def cmd_rollout_run(args: argparse.Namespace) -> int:
    from fleetdesk.rollout.engine import RolloutBusyError

    outcome: list[Any] = []

    async def work(engine: Any, fleet: Any) -> int:
        async def drive() -> Any:
            result = await engine.take_over(args.id, wait=args.take_over)
            if not result.taken and result.row.status == "planned":
                raise ConfigError(result.reason.split(", not started")[0] + ", not started",
                                  fix=f"start it with `fleetdesk rollout resume {args.id}`")
            if not result.taken and result.row.status == "running":
                raise RolloutBusyError(result.reason, fix=f"`fleetdesk rollout run {args.id} --take-over` waits for "
                                       "its lease to run out (its FleetDesk stopped) and takes it over")
            outcome.append(result)
            return result.row

        def told() -> tuple[dict[str, Any], str]:
            result = outcome[0]
            if result.taken:
                line = (f"took rollout {args.id} over from {safe(result.previous)} after {result.waited_s:.0f} s"
                        if result.previous else f"drove rollout {args.id} (nobody else was driving it)")
            else:
                line = ""  # the engine said why (its event, printed as it came)
            return {"takeover": {**result.to_dict(), "policy": result.row.plan.get("takeover", "ask")}}, line

        return await _drive(args, engine, fleet, args.id, drive, told)

    return _with_engine(args, work)


def _show(args: argparse.Namespace, engine: Any, fleet: Any, rollout_id: int, code: int | None = None) -> int:
    emit(args, _status_json(engine.repo, rollout_id), _status_text(fleet, engine.repo, rollout_id))
    return 0 if code is None else code


def cmd_rollout_pause(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        await engine.pause(args.id, reason=args.reason, seen=args.seen_version)
        return _show(args, engine, fleet, args.id)

    return _with_engine(args, work, quiet=True)


def cmd_rollout_abort(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        await engine.abort(args.id, seen=args.seen_version)
        return _show(args, engine, fleet, args.id)

    return _with_engine(args, work)


def cmd_rollout_rollback(args: argparse.Namespace) -> int:
    if args.device is not None and args.wave is not None:
        raise ConfigError("--device and --wave both given", fix="roll back one device, one wave, or (neither) all")

    async def work(engine: Any, fleet: Any) -> int:
        device_id = fleet.inventory.device(args.device).id if args.device is not None else None
        wave = args.wave - 1 if args.wave is not None else None
        row = await engine.rollback(args.id, device_id=device_id, wave=wave, seen=args.seen_version)
        entries = await engine.db.audit_log(args.id)
        ok = bool(entries) and entries[0].action == "rollout.rollback" and entries[0].outcome == "ok"
        return _show(args, engine, fleet, args.id, 0 if ok and row.status != "failed" else EXIT_FAILED)

    return _with_engine(args, work)


def cmd_rollout_status(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        rollout_id = args.id
        if rollout_id is None:
            rows = engine.repo.list(active_only=True) or engine.repo.list()
            if not rows:
                emit(args, None, "no rollouts yet: `fleetdesk rollout plan MODEL --device D` shows what one does")
                return 0
            rollout_id = max(r.id for r in rows)
        return _show(args, engine, fleet, rollout_id)

    return _with_engine(args, work, quiet=True)


def cmd_rollout_list(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        rows = engine.repo.list(active_only=args.active)
        listing = [("ID", "MODEL", "STATUS", "DEVICES", "STARTED BY", "UPDATED")]
        for r in rows:
            listing.append((str(r.id), safe(r.model_ref), r.status, str(len(engine.repo.devices(r.id))),
                          safe(r.actor), when(r.updated_at)))
        emit(args, [_row_json(r) for r in rows], table(listing) if rows else "no rollouts yet")
        return 0

    return _with_engine(args, work, quiet=True)


def cmd_rollout_journal(args: argparse.Namespace) -> int:
    async def work(engine: Any, fleet: Any) -> int:
        engine.repo.get(args.id)  # a clear error for an unknown id
        names = {d.id: d.name for d in fleet.inventory.devices()}
        entries = engine.repo.journal(args.id)
        audit = await engine.db.audit_log(args.id)
        steps = [("AT", "DEVICE", "FROM", "EVENT", "TO")]
        for e in entries:
            who = "-" if e.device_id is None else names.get(e.device_id, str(e.device_id))
            steps.append((when(e.at), who, e.from_state or "-", e.event, e.to_state or "-"))
        actions = [("AT", "WHO", "ACTION", "OUTCOME")] + [(when(a.at), safe(a.operator), a.action, a.outcome)
                                                          for a in reversed(audit)]
        text = table(steps) + "\n\naudit log\n" + table(actions)
        emit(args, {"journal": [dataclasses.asdict(e) for e in entries],
                    "audit": [a.to_dict() for a in audit]}, text)
        return 0

    return _with_engine(args, work, quiet=True)


# -- the parser ------------------------------------------------------------------------------------------


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="NAME or NAME@VERSION in the artifact store")
    p.add_argument("--device", action="append", metavar="D", help="a target device (name, address or id; repeatable)")
    p.add_argument("--group", action="append", metavar="G", help="every device of group G (repeatable)")
    p.add_argument("--profile", action="append", metavar="P", help="every device matching profile P (repeatable)")
    p.add_argument("--waves", default="1,10%,50%,100%", metavar="LIST",
                   help="wave sizes as Ansible's serial: counts or shares of all targets (default 1,10%%,50%%,100%%)")
    p.add_argument("--success", default="100%", metavar="T",
                   help="devices of a wave that must be done (reached: >=) before the next starts (default 100%%)")
    p.add_argument("--errors", default="0", metavar="T",
                   help="failed devices a wave tolerates; more (exceeded: >) pauses the rollout (default 0)")
    p.add_argument("--soak", type=float, default=0.0, metavar="S", help="seconds of gate measurements (default 0)")
    p.add_argument("--approve", action="store_true", help="wait for `fleetdesk rollout approve` after every wave")
    p.add_argument(WAVE_POLICY_FLAG, action="append", metavar="N:KEY=VAL[,...]",
                   help="wave N's own policy (1 = the canary's; repeatable): keys success, errors, soak, "
                        "approve=yes|no; keys not given are the common ones, e.g. 1:soak=300,approve=yes")
    p.add_argument("--max-parallel", type=int, default=4, metavar="N", help="transfers at once (default 4)")
    p.add_argument("--bandwidth", type=int, metavar="B", help="cap per transfer in bytes/s (default none)")
    p.add_argument("--no-prestage", action="store_true",
                   help="activate each device as soon as it is staged, not after the whole wave is")
    p.add_argument("--retries", type=int, default=3, metavar="N", help="transfer retries with backoff (default 3)")
    p.add_argument("--unreachable", choices=["wait", "count"], default="wait",
                   help="wait for an unreachable device (default) or count it as failed")
    p.add_argument("--unreachable-wait", type=float, default=600.0, metavar="S",
                   help="how long a wave waits for unreachable devices (default 600)")
    p.add_argument("--confirm-within", type=float, default=300.0, metavar="S",
                   help="the device goes back by itself if not confirmed in S seconds (default 300)")
    p.add_argument("--step-timeout", type=float, default=600.0, metavar="S", help="any one step (default 600)")
    p.add_argument("--p95-max", type=float, metavar="MS", help="p95 latency bound in ms (default none)")
    p.add_argument("--p95-ratio", type=float, metavar="R",
                   help="p95 on the new model / on the old one, same device (default 1.5; negative: off)")
    p.add_argument("--error-rate-max", type=float, metavar="X", help="server errors per request (default 0.01)")
    p.add_argument("--golden-min", type=float, metavar="C",
                   help="lowest cosine agreement with the golden outputs (default 0.99; negative: off)")
    p.add_argument("--temp-max", type=float, metavar="C", help="hottest zone in °C (default 85; negative: off)")
    p.add_argument("--mem-free-min", type=float, metavar="PCT", help="free memory in %% (default 10; negative: off)")
    p.add_argument("--no-serving-gate", action="store_true", help="do not require the server to serve the model")
    p.add_argument("--approval-by-other", action="store_true",
                   help="four-eyes: each wave's approval must come from another operator than the one who starts it")
    p.add_argument("--takeover", choices=["ask", "auto"], default="ask",
                   help="when the FleetDesk driving it stops and its lease runs out: ask (default; an operator takes "
                        "it over with `rollout run ID --take-over`) or auto (a FleetDesk window open on the same "
                        "inventory takes it over by itself)")
    p.add_argument("--on-database-loss", choices=["pause", "resume"], default="pause",
                   help="when the inventory's database cannot be reached mid-rollout, the steps under way finish and "
                        "the driver reconnects; once it answers the rollout is paused with the outage as its reason: "
                        "pause (default; an operator resumes it) or resume (it goes on by itself)")
    p.add_argument("--shadow", type=float, metavar="SHARE",
                   help="shadow step before activation: the staged model runs beside the active one on this share "
                        "of live requests (0 < SHARE <= 1; 1 cost the requests answered meanwhile 9-30 %% on their "
                        "p95 in the lab, 0.25 1-17 %%) and is activated only if it agrees and is fast enough")
    p.add_argument("--shadow-min", type=int, metavar="N",
                   help="mirrored requests compared before the shadow verdict (default 200)")
    p.add_argument("--shadow-agree", type=float, metavar="X",
                   help="lowest agreement with the active model: top-1, or median cosine for outputs that are not "
                        "class scores (default 0.98; negative: off)")
    p.add_argument("--shadow-p95-ratio", type=float, metavar="R",
                   help="highest candidate p95 / active p95 on the same requests (default 1.2; negative: off)")
    p.add_argument("--shadow-max-wait", type=float, metavar="S",
                   help="time bound of the shadow step: fewer than --shadow-min requests by then fails it "
                        "(default 600)")
    p.add_argument("--shadow-canary-only", action="store_true",
                   help="only the first wave's devices shadow (default: every device)")
    p.add_argument("--shadow-on-skip", choices=["fail", "pass"],
                   help="a device with too little memory to load the candidate beside its model: fail (default; it "
                        "keeps its model and counts as failed) or pass (activated without a shadow)")


def add_rollout(sub: Any) -> None:
    rollout = sub.add_parser("rollout", help="staged rollouts of a model with health gates, pause and rollback")
    rs = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    p = with_json(rs.add_parser("plan", help="show the waves, devices, variants and thresholds (touches no device)"))
    _plan_options(p)
    p.set_defaults(func=cmd_rollout_plan)

    p = with_json(rs.add_parser("start", help="plan and run a rollout in the foreground (Ctrl-C pauses it)"))
    _plan_options(p)
    p.set_defaults(func=cmd_rollout_start)

    def with_id(name: str, text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        q = with_json(rs.add_parser(name, help=text))
        q.add_argument("id", type=int, metavar="ID")
        # An operator's action is refused when another operator acted on the rollout since the version given
        # (what `rollout status --json` showed as "version"), naming them: a script never acts on a stale view.
        q.add_argument("--seen-version", type=int, metavar="V",
                       help="act only if no other operator acted on the rollout since its version V")
        q.set_defaults(func=func)
        return q

    p = with_json(rs.add_parser("status", help="a rollout's devices and states (default: the latest active one)"))
    p.add_argument("id", type=int, nargs="?", metavar="ID")
    p.set_defaults(func=cmd_rollout_status)

    p = with_json(rs.add_parser("list", help="every rollout"))
    p.add_argument("--active", action="store_true", help="only those not finished")
    p.set_defaults(func=cmd_rollout_list)

    p = with_json(rs.add_parser("journal", help="every step of a rollout, in order, and its audit log"))
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_rollout_journal)

    p = with_id("pause", "stop starting new steps (the steps under way finish)", cmd_rollout_pause)
    p.add_argument("--reason", default="operator", help="why, for the status and the audit log")
    with_id("resume", "run a paused (or crashed) rollout again, in the foreground", cmd_rollout_resume)
    p = with_id("approve", "let the next wave start, and run it in the foreground", cmd_rollout_approve)
    p.add_argument("--no-run", action="store_true", help="only approve; another process drives it")
    p = with_id("run", "drive a running rollout nobody drives, in the foreground; with --take-over, one another "
                "laptop drove, once its lease runs out", cmd_rollout_run)
    p.add_argument("--take-over", action="store_true",
                   help="wait while another FleetDesk's lease on driving it is live (it is told who holds it and until "
                        "when), then take it over and carry on from the journal")
    with_id("abort", "no new steps; devices under verification roll back, the rest are skipped", cmd_rollout_abort)
    p = with_id("rollback", "put devices back on their previous model: all, one wave, or one device",
                cmd_rollout_rollback)
    p.add_argument("--device", metavar="D", help="only this device")
    p.add_argument("--wave", type=int, metavar="N", help="only wave N (1 = the canary's)")
