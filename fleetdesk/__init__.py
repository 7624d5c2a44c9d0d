"""FleetDesk: run a fleet of edge AI devices from one laptop, with no cloud."""

import warnings

__version__ = "0.1.0"

# cryptography 51 deprecates DSA and warns whenever a module touches its DSA names;
# asyncssh and paramiko name them while importing, though FleetDesk never offers or
# accepts a DSA key. Without this filter every command would open with five warnings
# on stderr that the operator can do nothing about.
warnings.filterwarnings("ignore", message=r"DSA is deprecated", module=r"(asyncssh|paramiko)(\.|$)")
