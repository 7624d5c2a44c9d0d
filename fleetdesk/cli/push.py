"""`fleetdesk model push REF DEVICE... | --group G | --all`: a model put on devices without activating it, as the
window's Deploy does and through the same core function (fleetdesk.rollout.push.push_model): each device gets the
artifact chosen for its profile, staged as rollouts stage it (checked against the signed manifest before any byte
is sent, resumable, verified on the device). Activating is `fleetdesk rollout start`'s business.

Exit status: 0 when every device holds the artifact, 1 when any did not (each one's line says why and the fix),
2 for a usage error (an unknown model or device, no device chosen).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from fleetdesk.cli.options import choose_devices, with_json
from fleetdesk.cli.output import emit, safe, summary
from fleetdesk.cli.session import with_fleet
from fleetdesk.errors import ConfigError


def _size(size: float) -> str:
    if size < 1e3:
        return f"{size:.0f} B"
    if size < 1e6:
        return f"{size / 1e3:.1f} kB"
    return f"{size / 1e6:.2f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


class _ProgressPrinter:
    """On stderr, one line per device at each tenth of its artifact while bytes move (a device that already holds
    it says so in its result line only), so that a long push shows life and a terminal stays readable."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._start: dict[int, tuple[float, int]] = {}  # device id -> (when its bytes first moved, bytes then)

    def __call__(self, step: Any) -> None:
        if not 0 < step.done < step.total:
            return
        now = time.monotonic()
        began, base = self._start.setdefault(step.device.id, (now, step.done))
        tenth = int(10 * step.done / step.total)
        if self._last.get(step.device.id) == tenth:
            return
        self._last[step.device.id] = tenth
        line = f"{safe(step.device.name)}: pushing {_size(step.done)} of {_size(step.total)}"
        if now - began > 0.2 and step.done > base:
            rate = (step.done - base) / (now - began)
            line += f", {_size(rate)}/s, about {(step.total - step.done) / rate:.0f} s left"
        print(line, file=sys.stderr, flush=True)


def _outcome_line(o: Any) -> str:
    if o.error is not None:
        return f"{safe(o.device.name)}: {o.status}: {safe(o.error.message)}" + (
            f" — {safe(o.error.fix)}" if o.error.fix else "")
    what = "already there" if o.already_there else "pushed"
    return (f"{safe(o.device.name)}: {what}, artifact {o.artifact[:12]} ({safe(o.device.profile or 'no profile')}), "
            f"{_size(o.bytes_sent)} sent, {_size(o.bytes_reused)} reused, verified on the device "
            f"in {o.seconds:.1f} s")


def cmd_model_push(args: argparse.Namespace) -> int:
    # Imported here: the store and SSH are not needed to print help or parse arguments.
    from fleetdesk.artifacts.store import ArtifactStore
    from fleetdesk.rollout.push import push_model

    async def work(fleet: Any) -> int:
        # With the inventory: a model another laptop imported is pushed too, its files fetched (verified) from the
        # shared store as push_model asks the store for them.
        store = ArtifactStore.default(inventory=fleet.inventory)
        devices = fleet.select(args.devices, group=args.group, all_devices=args.all)
        record = await asyncio.to_thread(store.model, args.ref)
        if not devices:
            where = f"group {args.group!r} has" if args.group is not None else "the inventory has"
            raise ConfigError(f"no devices to push {record.ref} to: {where} none",
                              fix="add devices to it (`fleetdesk group DEVICE... --name G`)" if args.group
                              is not None else "add devices first (`fleetdesk discover` or `fleetdesk add HOST`)")
        print(f"pushing {safe(record.ref)} to {len(devices)} device(s)", file=sys.stderr, flush=True)
        result = await push_model(fleet, store, record, devices, progress=_ProgressPrinter())
        text = "\n".join(_outcome_line(o) for o in result.outcomes) + "\n" + summary(result.counts)
        emit(args, result.to_dict(), text)
        return 0 if result.ok else 1

    return with_fleet(args, work)


def add_push(model_sub: Any) -> None:
    """`push` among `fleetdesk model`'s actions."""
    p = with_json(model_sub.add_parser(
        "push", help="put a model on devices without activating it (each gets its profile's signed artifact)"))
    p.add_argument("ref", metavar="REF", help="NAME (newest version) or NAME@VERSION")
    choose_devices(p)
    p.set_defaults(func=cmd_model_push)
