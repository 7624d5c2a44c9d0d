"""The one object between the widgets and the core: it runs fleet work on the qasync loop and reports in signals.

Widgets never touch the inventory, SSH or the network; they call a method of one of the bridge's parts (which
starts a registered Activity) and render what that part's signals carry (`DeviceView` values, groups, trust
requests; see bridge_views). The parts, one per concern, share one `BridgeContext`:

- `devices` (bridge_devices): the devices and groups, discovery, probing, provisioning, trust, logins, removal;
- `models` (bridge_models): the signed model store and pushing artifacts;
- `rollouts` (bridge_rollouts): the rollout engine and the rollouts this window drives;
- `telemetry` (bridge_telemetry): live streams, their buffers and the alerts;
- `access` (bridge_access): who is signed in, switching operator, and the audit trail;
- `shared` (bridge_shared): on a shared PostgreSQL inventory, other laptops' changes as they commit.
"""

from __future__ import annotations

import logging
import time

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.config import Settings
from fleetdesk.fleet import Fleet

from .activities import Activities
from .bridge_access import AccessPart
from .bridge_context import BridgeContext
from .bridge_devices import DevicesPart
from .bridge_models import ModelsPart
from .bridge_reports import ReportsPart
from .bridge_rollouts import RolloutsPart
from .bridge_shared import SharedInventoryPart
from .bridge_telemetry import TelemetryPart

log = logging.getLogger(__name__)


class FleetBridge:
    """Owns the `Fleet` for the window through its parts; `close()` is the one way to end it."""

    def __init__(self, fleet: Fleet, activities: Activities) -> None:
        self.fleet = fleet
        self.activities = activities
        self.context = BridgeContext(fleet, activities)
        self.devices = DevicesPart(self.context)
        # Made before the window subscribes: its alerts judge each sample before the dashboard paints it, and it
        # forgets a removed device before the window does.
        self.telemetry = TelemetryPart(self.context, self.devices)
        self.models = ModelsPart(self.context, self.devices)
        self.rollouts = RolloutsPart(self.context, self.devices, self.models)
        self.access = AccessPart(self.context)
        self.reports = ReportsPart(self.context, self.models)
        self.shared = SharedInventoryPart(self.context, self.devices, self.rollouts, self.access, self.models)
        # Every hundredth audit entry is signed as a checkpoint with the fleet key (fleetdesk.access.guard).
        fleet.access.sign_checkpoints_with(FleetSigningKey.default(Settings.load()))

    async def close(self) -> None:
        """Cancel every activity newest first, then close SSH and the inventory, in that order."""
        if self.context.closed:
            return
        self.context.closed = True
        started = time.monotonic()
        await self.shared.close()  # no other laptop's change is applied while the rest closes
        await self.telemetry.close_streams()  # the streams first: they use the SSH pool closed below
        # Rollouts this window drives pause at their next step boundary; only then is the rest cancelled.
        await self.rollouts.close()
        await self.activities.cancel_all()
        await self.telemetry.alerts_written()
        await self.fleet.close()
        self.context.db_thread.shutdown(wait=True)
        log.debug("bridge closed in %.2f s", time.monotonic() - started)
