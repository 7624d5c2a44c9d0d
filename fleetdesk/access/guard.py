"""Who is acting, what their roles allow, and the signed audit entry of everything they change.

`Access(inventory, operator)` is the one gate the core operations pass: `require(permission, action, devices=…)`
before a change (a refusal is audited and raised as AccessDeniedError, and nothing changes), `record(action, …)`
after it. The acting operator is the name given (`--operator`), else $FLEETDESK_OPERATOR, else the OS user.

A fresh inventory has no operators: whoever acts first becomes its first admin, with a key made on this laptop
(the OS user, as before operators existed). Once operators exist, an unknown name is refused.

Every call here reads or writes the inventory and may ask the OS keyring: from the event loop, run it on the
inventory's thread.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fleetdesk import chain
from fleetdesk.access import roles as rl
from fleetdesk.access.keys import OperatorKey
from fleetdesk.access.verify import Verification, fleet_key_b64, verify_trail
from fleetdesk.errors import AccessDeniedError, AccessError, FleetDeskError
from fleetdesk.inventory.audit import (
    AuditCheckpoint,
    AuditDraft,
    AuditEntry,
    AuditRepo,
    Operator,
    OperatorRepo,
    Signer,
    add_operator,
    update_operator,
)
from fleetdesk.inventory.records import Device
from fleetdesk.inventory.repository import Inventory
from fleetdesk.text import visible_text

__all__ = ["CHECKPOINT_EVERY", "Access", "FleetKey", "operator_name"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
FLEET_ID_LENGTH = 16  # hex digits of the genesis hash that name the fleet in keyring accounts
CHECKPOINT_EVERY = 100  # entries: every hundredth is signed as a checkpoint, whatever else makes them


class FleetKey(Protocol):
    """The fleet signing key (fleetdesk.artifacts.signing.FleetSigningKey), as checkpoints need it."""

    def exists(self) -> bool: ...

    def public_pem(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def operator_name(name: str) -> str:
    """`name` checked as an operator name: 1–64 letters, digits, ``. _ @ -``, starting with a letter or digit."""
    if not _NAME.fullmatch(name or ""):
        raise AccessError(f"{name!r} is not an operator name",
                          fix="use 1–64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return name


def _os_user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "operator"


def default_operator() -> str:
    """The operator a command runs as when none is named: $FLEETDESK_OPERATOR, else the OS user (an OS account
    name such as "Jane Doe" made an operator name: "Jane-Doe")."""
    named = os.environ.get("FLEETDESK_OPERATOR", "").strip()
    if named:
        return named
    return re.sub(r"[^A-Za-z0-9._@-]", "-", _os_user()).strip(".-_@")[:64] or "operator"


class Access:
    """The acting operator of one inventory: role checks and signed audit entries."""

    def __init__(self, inventory: Inventory, operator: str | None = None) -> None:
        self.inventory = inventory
        self.audit = AuditRepo(inventory)
        self.operators = OperatorRepo(inventory)
        self.name = operator_name((operator or "").strip() or default_operator())
        self._fleet_id: str | None = None
        self._lock = threading.Lock()  # one bootstrap at a time in this process
        self._fleet_key: FleetKey | None = None

    # -- who -------------------------------------------------------------------------------------------

    @property
    def fleet_id(self) -> str:
        """This fleet's name in keyring accounts: the start of its audit trail's genesis hash."""
        if self._fleet_id is None:
            self._fleet_id = self.audit.entry(1).hash[:FLEET_ID_LENGTH]
        return self._fleet_id

    def operator(self) -> Operator | None:
        """The acting operator; None while the inventory has no operators (the first to act becomes admin)."""
        found = self.operators.get(self.name)
        if found is not None and found.active:
            return found
        if not self.operators.list():
            return None
        raise AccessError(f"there is no operator {self.name} in this fleet",
                          fix="pass --operator NAME (or set FLEETDESK_OPERATOR) as one of: "
                              + ", ".join(o.name for o in self.operators.list())
                              + "; an admin adds operators with `fleetdesk operator add`")

    def switch(self, name: str) -> Operator | None:
        """Act as `name` from now on (the window's "Switch operator…"): an unknown name is refused, nothing
        changes. Returns that operator (None on a fresh inventory: they become its first admin)."""
        other = Access(self.inventory, name)
        found = other.operator()
        self.name = other.name
        return found

    def roles(self) -> tuple[str, ...]:
        current = self.operator()
        return ("admin",) if current is None else current.roles

    # -- may they ---------------------------------------------------------------------------------------

    def why_not(self, permission: str, devices: Sequence[Device] = ()) -> str | None:
        """None when the acting operator may do it; else why not and who can change that (the window's tooltips)."""
        refusal = self._refusal(permission, devices)
        return None if refusal is None else f"{refusal[0]} — {refusal[1]}"

    def require(self, permission: str, action: str, *, devices: Sequence[Device] = (),
                targets: Sequence[str] = ()) -> None:
        """Raise AccessDeniedError (after auditing the refusal) unless the acting operator may do `action`."""
        refusal = self._refusal(permission, devices)
        if refusal is None:
            return
        reason, fix = refusal
        named = tuple(targets) or tuple(f"device:{d.id}" for d in devices)
        self.record(action, outcome="refused", targets=named, after={"permission": permission, "reason": reason})
        raise AccessDeniedError(reason, operator=self.name, permission=permission, fix=fix)

    def _refusal(self, permission: str, devices: Sequence[Device]) -> tuple[str, str] | None:
        granted = rl.PERMISSIONS[permission]
        current = self.operator()
        if current is None:
            return None
        admins = ", ".join(o.name for o in self.operators.list() if "admin" in o.roles) or "none left"
        if not rl.allows(current.roles, permission):
            roles = rl.granting_roles(permission)
            return (f"operator {current.name} ({', '.join(current.roles)}) may not {granted.doing}: that needs "
                    f"the role {' or '.join(roles)}",
                    f"an admin ({admins}) can grant it: `fleetdesk operator set-role {current.name} "
                    f"{' '.join([*current.roles, roles[0]])}`")
        if granted.on_devices and current.groups:
            outside = [visible_text(d.name) for d in devices if not set(d.groups) & set(current.groups)]
            if outside:
                return (f"operator {current.name} may act only on devices in {', '.join(current.groups)}; "
                        f"not on {', '.join(outside)}",
                        f"choose devices of {', '.join(current.groups)}, or ask an admin ({admins}) to widen the "
                        "scope")
        return None

    # -- what they did ----------------------------------------------------------------------------------

    def record(self, action: str, *, outcome: str = "ok", targets: Sequence[str] = (), before: Any = None,
               after: Any = None) -> AuditEntry:
        """Append the signed entry of what the acting operator did (the first admin is made first if need be)."""
        key = self._key()
        return self._append(AuditDraft(self.name, action, outcome, tuple(targets), before, after), key)

    def sign_checkpoints_with(self, fleet_key: FleetKey | None) -> None:
        """Sign checkpoints with the fleet key: every CHECKPOINT_EVERY entries, and when asked (`checkpoint`)."""
        self._fleet_key = fleet_key

    def checkpoint(self) -> AuditCheckpoint | None:
        """The fleet key's checkpoint of the trail's newest entry, kept in the inventory (to hand to devices and
        to export); None when there is no fleet key to sign with yet (nothing was signed for a device either)."""
        if self._fleet_key is None or not self._fleet_key.exists():
            return None
        newest = self.audit.entries(limit=1)[0]
        return self._keep_checkpoint(newest)

    def verify(self) -> Verification:
        """The whole trail checked (fleetdesk.access.verify), and against the checkpoints the inventory keeps when
        the fleet key is here. Reads every entry: run it off the loop."""
        here = self._fleet_key is not None and self._fleet_key.exists()
        key = fleet_key_b64(self._fleet_key.public_pem()) if here and self._fleet_key is not None else None
        return verify_trail(self.audit, fleet_key=key)

    def _keep_checkpoint(self, entry: AuditEntry) -> AuditCheckpoint:
        assert self._fleet_key is not None
        signature = self._fleet_key.sign(chain.checkpoint_message(entry.seq, entry.hash))
        made = AuditCheckpoint(entry.seq, entry.hash, base64.b64encode(signature).decode("ascii"))
        self.audit.keep_checkpoint(made)
        return made

    def _append(self, draft: AuditDraft, signer: Signer, change: Callable[[Any], object] | None = None) -> AuditEntry:
        """AuditRepo.append, and the checkpoint every CHECKPOINT_EVERY entries (best effort: a fleet key that cannot
        sign now never stops the change the entry records; the next checkpoint covers this entry too)."""
        entry = self.audit.append(draft, signer, change=change)
        if entry.seq % CHECKPOINT_EVERY == 0 and self._fleet_key is not None and self._fleet_key.exists():
            try:
                self._keep_checkpoint(entry)
            except FleetDeskError as exc:
                log.warning("no audit checkpoint of entry %d: %s", entry.seq, exc.message)
        return entry

    def whoami(self) -> dict[str, Any]:
        current = self.operator()
        if current is None:
            return {"operator": self.name, "roles": ["admin"], "groups": [], "first": True,
                    "key_here": None}
        return {"operator": current.name, "roles": list(current.roles), "groups": list(current.groups),
                "first": False, "key_here": OperatorKey.load(self.name, self.fleet_id) is not None}

    # -- operators ---------------------------------------------------------------------------------------

    def add_operator(self, name: str, roles: Sequence[str], groups: Sequence[str] = ()) -> Operator:
        """A new operator with a key made on this laptop (their private half in this keyring)."""
        name = operator_name(name)
        chosen = rl.check_roles(roles)
        self.require("administer", "operator.add", targets=(f"operator:{name}",))
        existing = self.operators.get(name)
        if existing is not None and existing.active:
            raise AccessError(f"there is already an operator {name}",
                              fix=f"change their roles with `fleetdesk operator set-role {name} ROLE`")
        new_key = OperatorKey.create(name, self.fleet_id)
        after = {"name": name, "roles": list(chosen), "groups": sorted(set(groups)), "key": new_key.key}
        made: list[Operator] = []
        self._append(AuditDraft(self.name, "operator.add", "ok", (f"operator:{name}",),
                                None if existing is None else existing.to_dict(), after),
                     self._key(), change=lambda s: made.append(
                         add_operator(s, name, chosen, sorted(set(groups)), new_key.key)))
        return made[0]

    def set_roles(self, name: str, roles: Sequence[str], groups: Sequence[str] | None = None) -> Operator:
        chosen = rl.check_roles(roles)
        self.require("administer", "operator.set-role", targets=(f"operator:{name}",))
        before = self._existing(name)
        after = {"name": name, "roles": list(chosen),
                 "groups": sorted(set(groups)) if groups is not None else list(before.groups)}
        self._refuse_last_admin(before, chosen)
        made: list[Operator] = []
        self._append(AuditDraft(self.name, "operator.set-role", "ok", (f"operator:{name}",),
                                {"roles": list(before.roles), "groups": list(before.groups)}, after),
                     self._key(), change=lambda s: made.append(
                         update_operator(s, name, roles=chosen, groups=after["groups"])))
        return made[0]

    def remove_operator(self, name: str) -> Operator:
        """Remove an operator: they can no longer act, and their past entries stay theirs."""
        self.require("administer", "operator.remove", targets=(f"operator:{name}",))
        before = self._existing(name)
        self._refuse_last_admin(before, ())
        made: list[Operator] = []
        self._append(AuditDraft(self.name, "operator.remove", "ok", (f"operator:{name}",),
                                {"roles": list(before.roles), "key": before.public_key}, None),
                     self._key(), change=lambda s: made.append(update_operator(s, name, removed=True)))
        return made[0]

    def rekey(self, name: str) -> Operator:
        """A new key for `name`, made on this laptop (the old one no longer signs for them)."""
        if name != self.name:
            self.require("administer", "operator.key", targets=(f"operator:{name}",))
        before = self._existing(name)
        new_key = OperatorKey.create(name, self.fleet_id)
        made: list[Operator] = []
        signer = new_key if name == self.name else self._key()
        self._append(AuditDraft(self.name, "operator.key", "ok", (f"operator:{name}",),
                                {"key": before.public_key}, {"name": name, "key": new_key.key}),
                     signer, change=lambda s: made.append(update_operator(s, name, public_key=new_key.key)))
        return made[0]

    # -- plumbing -----------------------------------------------------------------------------------------

    def _existing(self, name: str) -> Operator:
        found = self.operators.get(name)
        if found is None or not found.active:
            raise AccessError(f"there is no operator {name}", fix="`fleetdesk operator list` names them")
        return found

    def _refuse_last_admin(self, before: Operator, roles: Sequence[str]) -> None:
        admins = [o.name for o in self.operators.list() if "admin" in o.roles]
        if "admin" in before.roles and "admin" not in roles and admins == [before.name]:
            raise AccessError(f"{before.name} is the fleet's last admin",
                              fix="make another operator admin first")

    def _key(self) -> OperatorKey:
        """The acting operator's key; for the first to act on a fresh inventory, made now, with them as admin."""
        with self._lock:
            if self.operator() is None:
                return self._bootstrap()
            return self._key_here()

    def _key_here(self) -> OperatorKey:
        key = OperatorKey.load(self.name, self.fleet_id)
        if key is None:
            raise AccessError(f"this laptop's keyring holds no signing key for operator {self.name}",
                              fix=f"act as an operator whose key is here (--operator), or have an admin give "
                                  f"{self.name} a key here with `fleetdesk operator rekey {self.name}`")
        return key

    def _bootstrap(self) -> OperatorKey:
        # A key left by an earlier try (the keyring write happened, the inventory's did not) is used again.
        key = OperatorKey.load(self.name, self.fleet_id) or OperatorKey.create(self.name, self.fleet_id)
        after = {"name": self.name, "roles": ["admin"], "groups": [], "key": key.key, "first": True}
        try:
            self._append(AuditDraft(self.name, "operator.add", "ok", (f"operator:{self.name}",), None, after),
                         key, change=lambda s: add_operator(s, self.name, ("admin",), (), key.key))
        except AccessError:
            # Another process made the first admin meanwhile: act as whoever that makes us.
            if self.operator() is None:
                raise
            return self._key_here()
        return key
