"""FleetDesk: run a fleet of edge AI devices from one laptop, with no cloud."""

__version__ = "0.1.0"
