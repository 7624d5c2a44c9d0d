"""Roles and what they allow: one table, checked by the core operations the CLI and the window share.

The roles follow Mender's and balena's (read access, release manager, deployments manager, admin) with hawkBit's
separate approval; every role may read. A role held with a scope of groups allows its device actions only on
devices in those groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetdesk.errors import AccessError

__all__ = ["PERMISSIONS", "ROLES", "Permission", "allows", "check_roles", "granting_roles"]


@dataclass(frozen=True)
class Permission:
    name: str
    doing: str  # what it lets an operator do, in words ("start, pause and roll back rollouts")
    on_devices: bool  # limited by a group scope


VIEW = Permission("view", "see the fleet, its telemetry and reports", False)
OPERATE = Permission("operate", "discover and probe devices, stream telemetry, run read-only agent commands", True)
RELEASE = Permission("release", "import, remove and export models and runtimes", False)
DEPLOY = Permission("deploy", "push models, provision runtimes, start, pause, resume, abort and roll back rollouts",
                    True)
APPROVE = Permission("approve", "approve a rollout's next wave", True)
ADMINISTER = Permission("administer", "manage operators and roles, trust host keys, set credentials, remove devices, "
                                      "export the fleet key and run commands on devices", True)
AUDIT = Permission("audit", "read and verify the audit trail and export it", False)

PERMISSIONS: dict[str, Permission] = {p.name: p for p in (VIEW, OPERATE, RELEASE, DEPLOY, APPROVE, ADMINISTER, AUDIT)}

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"view"}),
    "operator": frozenset({"view", "operate"}),
    "release-manager": frozenset({"view", "release"}),
    "deployer": frozenset({"view", "operate", "deploy"}),
    "approver": frozenset({"view", "approve"}),
    "auditor": frozenset({"view", "audit"}),
    "admin": frozenset(PERMISSIONS),
}


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """The roles, sorted and without repeats; an unknown one is an AccessError naming the known ones."""
    chosen = sorted({r.strip().lower() for r in roles if r.strip()})
    unknown = [r for r in chosen if r not in ROLES]
    if unknown:
        raise AccessError(f"unknown role {', '.join(unknown)}", fix=f"the roles are {', '.join(ROLES)}")
    if not chosen:
        raise AccessError("an operator needs at least one role", fix=f"give one of {', '.join(ROLES)}")
    return tuple(chosen)


def allows(roles: Sequence[str], permission: str) -> bool:
    return any(permission in ROLES.get(role, ()) for role in roles)


def granting_roles(permission: str) -> list[str]:
    """The roles that include `permission`, narrowest first (admin last)."""
    return sorted((r for r, perms in ROLES.items() if permission in perms), key=lambda r: (len(ROLES[r]), r))
