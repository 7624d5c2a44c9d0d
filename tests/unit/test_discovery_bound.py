"""Which discovery sightings are let go when more are held than the bound allows (the inventory refusing writes)."""

from __future__ import annotations

from fleetdesk.discovery.mdns import DiscoveryEvent
from fleetdesk.discovery.recorder import bound_events
from fleetdesk.inventory.records import Sighting

SSH, WORKSTATION = "_ssh._tcp.local.", "_workstation._tcp.local."


def event(host: str, service: str = SSH, port: int = 22) -> DiscoveryEvent:
    return DiscoveryEvent("seen", Sighting("mdns", ("198.18.1.7",), port=port, host_name=f"{host}.local.",
                                           instance_name=host, service_type=service))


def test_under_the_bound_nothing_is_let_go() -> None:
    events = [event("a"), event("a"), event("b")]
    assert bound_events(events, 3) == (events, 0)


def test_superseded_sightings_of_the_same_device_and_service_go_first_oldest_first() -> None:
    a1, b, a2, c, a3 = event("a", port=1), event("b"), event("a", port=2), event("c"), event("a", port=3)
    assert bound_events([a1, b, a2, c, a3], 4) == ([b, a2, c, a3], 1)
    assert bound_events([a1, b, a2, c, a3], 3) == ([b, c, a3], 2)


def test_then_the_oldest_of_a_device_that_keeps_another_sighting_then_the_oldest_of_all() -> None:
    a_ssh, b, a_ws, c = event("a"), event("b"), event("a", WORKSTATION), event("c")
    # Nothing superseded: a's older service goes before b or c is forgotten.
    assert bound_events([a_ssh, b, a_ws, c], 3) == ([b, a_ws, c], 1)
    # Every device heard once: the oldest goes.
    assert bound_events([b, a_ws, c], 2) == ([a_ws, c], 1)


def test_a_host_name_is_one_device_whatever_its_case() -> None:
    old, new = event("Line2-Pi-07", port=1), event("line2-pi-07", port=2)
    kept, dropped = bound_events([old, event("b"), new], 2)
    assert (kept, dropped) == ([event("b"), new], 1)
