"""The inventory as the rest of FleetDesk sees it: devices, their host keys and groups, as frozen records.

One Engine, one short transaction per call; writers queue on the database's write lock.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from types import TracebackType

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from fleetdesk.errors import DeviceNotFoundError, EditConflictError, FleetDeskError, InventoryError
from fleetdesk.inventory.database import for_writing, open_database, unavailable_error, unreachable, unreachable_error
from fleetdesk.inventory.edits import check_edit, count_edit
from fleetdesk.inventory.migrate import check_sqlite_file, upgrade
from fleetdesk.inventory.models import (
    AddressRow,
    DeviceRow,
    GroupMemberRow,
    GroupRow,
    HostKeyRow,
    NameRow,
    OperatorRow,
    ServiceRow,
)
from fleetdesk.inventory.records import Device, Edit, Group, HostKey, ProbeFacts, ServiceRecord, Sighting
from fleetdesk.transport.hostkey import parse_public_key
from fleetdesk.transport.target import TRANSPORTS

# ProbeFacts.hostname is stored in devices.hostname, which an mDNS host name fills until the first probe.
_FACT_COLUMNS = tuple(f.name for f in fields(ProbeFacts) if f.name != "hostname")
DEFAULT_SSH_PORT = 22
_NOT_FOUND_FIX = "run `fleetdesk devices` to see the names, addresses and ids the inventory knows"


def open_inventory(url: str) -> Inventory:
    """Open the inventory at `url`, migrating an older database to the current schema.

    A database from a newer FleetDesk raises DatabaseTooNewError and is left byte-for-byte untouched.
    """
    check_sqlite_file(url)
    engine = open_database(url)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return Inventory(engine)


class Inventory:
    """Every read and write of devices, host keys and groups. Methods return records, never ORM rows."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(for_writing(engine), expire_on_commit=False)
        self._revision = 0
        self._revision_lock = threading.Lock()

    @property
    def revision(self) -> int:
        """How many write transactions this Inventory has committed (any table, runtimes too): a value that
        moved says a record read before may be out of date. Writes by another process are not counted."""
        return self._revision

    @property
    def engine(self) -> Engine:
        """The database engine, for the repositories of later parts (runtimes, telemetry) that share it."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- devices -------------------------------------------------------------------------------------

    def devices(self, *, group: str | None = None, ids: Iterable[int] | None = None) -> list[Device]:
        """All devices, by name; only the members of `group` when given (an unknown group is an error), only
        those of `ids` when given (ids not in the inventory are left out: a shared inventory's window reads what
        another laptop changed this way, in one go)."""
        with self._session() as session:
            query = select(DeviceRow).options(*_DEVICE_LOADS)
            if ids is not None:
                query = query.where(DeviceRow.id.in_(list(ids)))
            if group is not None:
                group_row = _group_row(session, group)
                query = query.join(GroupMemberRow).where(GroupMemberRow.group_id == group_row.id)
            rows = session.scalars(query).all()
            return sorted((_device(row) for row in rows), key=lambda d: (d.name.casefold(), d.name, d.id))

    def device(self, ref: str | int) -> Device:
        """The device with this id, name, hostname, address or mDNS name (a name always wins)."""
        with self._session() as session:
            return _device(_find(session, ref))

    def record_sighting(self, sighting: Sighting) -> Device:
        """Add or update the device a sighting shows; the same mDNS host name or address means the same device."""
        return self.record_sightings([sighting])[0]

    def record_sightings(self, sightings: Sequence[Sighting], *, added: set[int] | None = None) -> list[Device]:
        """record_sighting for many, in one transaction (a browse that hears a whole floor at once); the ids of
        devices this made (not known before) go into `added` when given."""
        for sighting in sightings:
            if not sighting.host_name and not _dedupe(sighting.addresses):
                raise InventoryError("a sighting with neither an address nor a host name cannot be recorded",
                                     fix="record services once their address or host name is resolved",
                                     step="record sighting")
        with self._session(write=True) as session:
            # A device's services arrive together: later sightings of a host name already matched in this
            # batch go to that row without a query (and the autoflush each query would cost).
            by_host: dict[str, DeviceRow] = {}
            rows = [_record(session, sighting, online=True, recent=by_host, added=added) for sighting in sightings]
            session.flush()
            return [_device(row) for row in rows]

    def add_device(self, host: str, *, port: int = 22, username: str = "root", name: str | None = None) -> Device:
        """Add a device the operator names by hostname or address; one already known is returned unchanged."""
        host = host.strip()
        if not host:
            raise InventoryError("no host given", fix="give a hostname or an address, e.g. 198.18.1.10")
        _check_port(port)
        if not username:
            raise InventoryError("the user name is empty", fix="give the SSH user, e.g. root")
        # A ".local" name is an mDNS host name: the device may already be known by its announcement.
        host_name = host if host.endswith(".") else host + "."
        sighting = Sighting("manual", (host,), port=port,
                            host_name=host_name if host_name.lower().endswith(".local.") else None)
        with self._session(write=True) as session:
            known = _match(session, sighting)
            if known is not None:
                return _device(known)
            wanted = name.strip() if name is not None else None
            if wanted is not None:
                _check_free_name(session, wanted, None)
            row = _record(session, sighting, online=False, name=wanted or host)
            row.username = username
            return _device(row)

    def set_online(self, device_id: int, online: bool) -> Device:
        with self._session(write=True) as session:
            row = _get(session, device_id)
            row.online = online
            if online:
                row.last_seen = _now()
            return _device(row)

    def save_probe(self, device_id: int, facts: ProbeFacts, *, profile: str | None) -> Device:
        """Store what a probe learnt. A machine id already on another row merges both rows into the older one.

        The returned device's id is the survivor's: it differs from `device_id` when this row was the newer.
        """
        with self._session(write=True) as session:
            row = _get(session, device_id)
            now = _now()
            for name in _FACT_COLUMNS:
                setattr(row, name, getattr(facts, name))
            row.profile = profile
            row.probed_at = now
            row.online = True
            row.last_seen = now
            if facts.hostname:
                row.hostname = facts.hostname
            if not facts.machine_id:
                return _device(row)
            twins = session.scalars(select(DeviceRow).where(DeviceRow.machine_id == facts.machine_id,
                                                            DeviceRow.id != row.id)).all()
            keep, *gone = sorted([row, *twins], key=lambda r: (r.first_seen, r.id))
            for other in gone:
                _absorb(session, keep, other, fresh=row)
            session.expire_all()
            return _device(_get(session, keep.id))

    def set_connection(self, device_id: int, *, username: str | None = None, port: int | None = None,
                       transport: str | None = None, password_account: str | None = None,
                       identity_file: str | None = None, edit: Edit | None = None) -> Device:
        """Change how to reach a device; None leaves a setting as it is, "" clears password_account/identity_file.
        With `edit`, refused (EditConflictError) when the device changed since the version the operator saw."""
        if username is not None and not username.strip():
            raise InventoryError("the user name is empty", fix="give the SSH user, e.g. root")
        if port is not None:
            _check_port(port)
        if transport is not None and transport not in TRANSPORTS:
            raise InventoryError(f"{transport!r} is not a transport", fix=f"use one of: {', '.join(TRANSPORTS)}")
        with self._session(write=True) as session:
            row = _get(session, device_id)
            _edited(row, edit)
            if username is not None:
                row.username = username.strip()
            if port is not None:
                row.port = port
            if transport is not None:
                row.transport = transport
            if password_account is not None:
                row.password_account = password_account or None
            if identity_file is not None:
                row.identity_file = identity_file or None
            return _device(row)

    def rename(self, device_id: int, name: str, *, edit: Edit | None = None) -> Device:
        name = name.strip()
        with self._session(write=True) as session:
            row = _get(session, device_id)
            _edited(row, edit)
            _check_free_name(session, name, row.id)
            row.name = name
            return _device(row)

    def remove(self, device_id: int, *, edit: Edit | None = None) -> None:
        with self._session(write=True) as session:
            row = _get(session, device_id)
            _edited(row, edit)
            session.delete(row)

    def service_records(self, device_id: int) -> list[ServiceRecord]:
        """The latest announcement of each mDNS service the device made, TXT bytes as received."""
        with self._session() as session:
            row = _get(session, device_id)
            return [ServiceRecord(s.service_type, s.instance_name, s.host_name, s.port, _decode_txt(s.txt),
                                  s.last_seen) for s in row.services]

    # -- host keys -----------------------------------------------------------------------------------

    def host_keys(self, device_id: int) -> list[HostKey]:
        with self._session() as session:
            return [_host_key(k) for k in _get(session, device_id).host_keys]

    def trusted_device_ids(self) -> set[int]:
        """The devices that have at least one pinned host key (one query, for the fleet view)."""
        with self._session() as session:
            return set(session.scalars(select(HostKeyRow.device_id).distinct()))

    def pin_host_key(self, device_id: int, public_key: str, *, source: str = "operator") -> HostKey:
        """Trust `public_key` ("ssh-ed25519 AAAA... [comment]") for the device; pinning it twice is harmless."""
        with self._session(write=True) as session:
            row = _get(session, device_id)
            try:
                key = parse_public_key(public_key)
            except FleetDeskError as exc:
                raise InventoryError(exc.message, fix=exc.fix, device=row.name, step="pin host key") from None
            for pinned in row.host_keys:
                if pinned.fingerprint == key.fingerprint:
                    return _host_key(pinned)
            pinned = HostKeyRow(key_type=key.key_type, public_key=key.line, fingerprint=key.fingerprint,
                                source=source, pinned_at=_now())
            row.host_keys.append(pinned)
            session.flush()
            return _host_key(pinned)

    def forget_host_keys(self, device_id: int) -> None:
        """Drop every pinned key of the device, before the operator re-trusts a changed one."""
        with self._session(write=True) as session:
            row = _get(session, device_id)
            session.execute(delete(HostKeyRow).where(HostKeyRow.device_id == row.id))

    # -- groups --------------------------------------------------------------------------------------
    # An edit of a group is what an operator changes of the group itself: its name, its members (added or taken
    # out) and its existence (deleted). Each counts the group's version; with `edit`, one made from an older
    # version than the stored one is refused (EditConflictError) and writes nothing. A device removed from the
    # inventory, or two rows of one device merged by a probe, change memberships as a consequence of a device's
    # own change: those do not count, as sightings do not count for a device.

    def add_to_group(self, name: str, device_ids: list[int], *, edit: Edit | None = None) -> Group:
        """Put devices in the group `name`, creating it on first use (an edit with no seen version creates it;
        one with a seen version is refused if the group was deleted since)."""
        name = _group_name(name)
        with self._session(write=True) as session:
            rows = [_get(session, device_id) for device_id in device_ids]
            group = session.scalars(select(GroupRow).where(GroupRow.name == name)).one_or_none()
            if group is None:
                _gone(name, edit)
                group = GroupRow(name=name, created_at=_now(), version=1,
                                 changed_by=edit.by if edit is not None else None, changed_at=_now())
                session.add(group)
                session.flush()
            elif any(row not in group.devices for row in rows):
                count_edit(group, edit, **_group_words(group))
            for row in rows:
                if row not in group.devices:
                    group.devices.append(row)
            session.flush()
            return _group(group)

    def remove_from_group(self, name: str, device_ids: list[int], *, edit: Edit | None = None) -> Group:
        """Take devices out of a group; a group left with no devices is deleted (its record comes back empty)."""
        name = _group_name(name)
        with self._session(write=True) as session:
            group = _edited_group(session, name, edit, count=False)
            rows = [_get(session, device_id) for device_id in device_ids]
            if any(row in group.devices for row in rows):
                count_edit(group, edit, **_group_words(group))
            for row in rows:
                if row in group.devices:
                    group.devices.remove(row)
            session.flush()
            result = _group(group)
            if not group.devices:
                session.delete(group)
            return result

    def rename_group(self, name: str, new_name: str, *, edit: Edit | None = None) -> Group:
        """Call a group something else (its members stay). Refused while an operator's scope names it: their
        scope would silently lose the group's devices."""
        name, new_name = _group_name(name), _group_name(new_name)
        with self._session(write=True) as session:
            group = _edited_group(session, name, edit, count=False)
            if new_name == group.name:
                return _group(group)  # nothing changes: not an edit
            count_edit(group, edit, **_group_words(group))
            taken = session.scalars(select(GroupRow).where(GroupRow.name == new_name)).one_or_none()
            if taken is not None:
                raise InventoryError(f"there is a group named {new_name!r} already", step="rename group",
                                     fix="choose another name, or move the devices into that group")
            _check_unscoped(session, name, "rename")
            group.name = new_name
            session.flush()
            return _group(group)

    def delete_group(self, name: str, *, edit: Edit | None = None) -> Group:
        """Delete a group; its devices stay in the inventory. Returns the group as it was. Refused while an
        operator's scope names it."""
        name = _group_name(name)
        with self._session(write=True) as session:
            group = _edited_group(session, name, edit)
            _check_unscoped(session, name, "delete")
            result = _group(group)
            session.delete(group)
            return result

    def group(self, name: str) -> Group:
        """The group called `name` (InventoryError naming the groups there are, if none is)."""
        with self._session() as session:
            return _group(_group_row(session, _group_name(name)))

    def groups(self) -> list[Group]:
        with self._session() as session:
            rows = session.scalars(select(GroupRow).options(selectinload(GroupRow.devices))).all()
            return sorted((_group(g) for g in rows), key=lambda g: (g.name.casefold(), g.name))

    # -- plumbing ------------------------------------------------------------------------------------

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One short transaction; library errors become InventoryError here, where SQLAlchemy is called."""
        maker = self._writes if write else self._reads
        try:
            with maker.begin() as session:
                yield session
            if write:
                with self._revision_lock:
                    self._revision += 1
        except IntegrityError as exc:
            raise InventoryError(f"the inventory refused the change ({exc.orig})",
                                 fix="another FleetDesk may have changed the same device; try again",
                                 cause=exc) from None
        except DBAPIError as exc:
            if unreachable(exc):
                # The server went away (stopped, restarting, network): DatabaseUnreachableError, for reads and
                # writes alike. Every pooled connection went with it, and not each one says so the same way (a
                # terminated session can look like a refused statement): a fresh pool connects anew once it answers.
                self._engine.dispose()
                raise unreachable_error(self._engine, exc) from None
            if not isinstance(exc, OperationalError):
                raise self._unusable(exc) from None
            if not write:
                raise self._unusable(exc) from None
            # A full disk or another writer's lock: the caller may try the same write again later.
            raise unavailable_error(self._engine, exc) from None
        except SQLAlchemyError as exc:
            raise self._unusable(exc) from None

    def _unusable(self, exc: SQLAlchemyError) -> InventoryError:
        shown = self._engine.url.render_as_string(hide_password=True)
        return InventoryError(f"cannot use the inventory {shown} ({exc.__class__.__name__}: {exc})",
                              fix="check that the database is reachable and writable", cause=exc)


_DEVICE_LOADS = (selectinload(DeviceRow.addresses), selectinload(DeviceRow.names),
                 selectinload(DeviceRow.services), selectinload(DeviceRow.groups))


def _now() -> datetime:
    return datetime.now(UTC)


_DEVICE_FIX = ("look at the device as it is now (the window shows it; `fleetdesk devices` lists it) and make your "
               "change again if it still applies")
_GROUP_FIX = ("look at the group as it is now (the window shows it; `fleetdesk group` lists the groups) and make your "
              "change again if it still applies")


def _edited(row: DeviceRow, edit: Edit | None) -> None:
    """A device's edit (fleetdesk.inventory.repository): see `count_edit`."""
    count_edit(row, edit, what=repr(row.name), fix=_DEVICE_FIX, step="edit device", device=row.name)


def _edited_group(session: Session, name: str, edit: Edit | None, *, count: bool = True) -> GroupRow:
    """The group to edit, its edit checked (and counted, unless the caller counts it once it knows the edit changes
    something); one deleted since the operator read it is a conflict."""
    group = session.scalars(select(GroupRow).where(GroupRow.name == name)).one_or_none()
    if group is None:
        _gone(name, edit)
        group = _group_row(session, name)  # raises: no such group, and no view of one to conflict with
    if count:
        count_edit(group, edit, **_group_words(group))
    elif edit is not None:
        check_edit(group, edit, **_group_words(group))
    return group


def _group_words(group: GroupRow) -> dict[str, str]:
    return {"what": f"the group {group.name!r}", "fix": _GROUP_FIX, "step": "edit group"}


def _gone(name: str, edit: Edit | None) -> None:
    """The operator edits a group they saw, which is gone now: deleted (or renamed) by someone meanwhile."""
    if edit is not None and edit.seen_version is not None:
        raise EditConflictError(
            f"the group {name!r} was deleted or renamed after you read it (you saw version {edit.seen_version}); "
            "your change was not made", fix=_GROUP_FIX, step="edit group", seen_version=edit.seen_version)


def _check_unscoped(session: Session, name: str, doing: str) -> None:
    """No operator's scope names the group `name` (their roles would silently lose its devices)."""
    scoped = sorted(o.name for o in session.scalars(select(OperatorRow).where(OperatorRow.removed_at.is_(None)))
                    if name in json.loads(o.groups or "[]"))
    if scoped:
        raise InventoryError(f"cannot {doing} the group {name!r}: the scope of {', '.join(scoped)} names it",
                             step=f"{doing} group",
                             fix="change their scope first: `fleetdesk operator set-role NAME ROLE... --groups G,…`")


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return _now()
    # A naive time from a caller is taken as UTC, which is what every FleetDesk module produces.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _match_key(name: str) -> str:
    """mDNS names compare case-insensitively for ASCII letters only (RFC 6762 section 16); a final dot is optional."""
    name = name[:-1] if name.endswith(".") else name
    return "".join(c.lower() if c.isascii() else c for c in name)


def _host_label(host_name: str) -> str:
    label = host_name[:-1] if host_name.endswith(".") else host_name
    return label[:-len(".local")] if label.lower().endswith(".local") else label


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise InventoryError(f"{port} is not a TCP port", fix="give a port from 1 to 65535 (SSH listens on 22)")


def _group_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InventoryError("the group name is empty", fix='give a name such as "line A"')
    return name


def _get(session: Session, device_id: int) -> DeviceRow:
    row = session.get(DeviceRow, device_id)
    if row is None:
        raise DeviceNotFoundError(f"no device with id {device_id} in the inventory", fix=_NOT_FOUND_FIX)
    return row


def _group_row(session: Session, name: str) -> GroupRow:
    row = session.scalars(select(GroupRow).where(GroupRow.name == name)).one_or_none()
    if row is None:
        known = sorted(session.scalars(select(GroupRow.name)).all())
        raise InventoryError(f"no group named {name!r}",
                             fix=f"groups: {', '.join(known)}" if known else
                             "create one with `fleetdesk group DEVICE... --name NAME`")
    return row


def _find(session: Session, ref: str | int) -> DeviceRow:
    if isinstance(ref, int):
        return _get(session, ref)
    by_name = session.scalars(select(DeviceRow).where(DeviceRow.name == ref)).one_or_none()
    if by_name is not None:
        return by_name
    ids: set[int] = set()
    if ref.isdigit() and session.get(DeviceRow, int(ref)) is not None:
        ids.add(int(ref))
    ids.update(session.scalars(select(DeviceRow.id).where(DeviceRow.hostname == ref)))
    ids.update(session.scalars(select(AddressRow.device_id).where(AddressRow.address == ref)))
    ids.update(session.scalars(select(NameRow.device_id).where(NameRow.match_key == _match_key(ref))))
    if not ids:
        raise DeviceNotFoundError(f"no device called {ref!r} in the inventory", fix=_NOT_FOUND_FIX)
    if len(ids) > 1:
        rows = session.scalars(select(DeviceRow).where(DeviceRow.id.in_(ids)).order_by(DeviceRow.id)).all()
        listed = "; ".join(f"{r.name!r} (id {r.id})" for r in rows)
        raise InventoryError(f"{ref!r} matches {len(rows)} devices: {listed}",
                             fix="use the device's name or id instead")
    return _get(session, ids.pop())


def _check_free_name(session: Session, name: str, device_id: int | None) -> None:
    if not name:
        raise InventoryError("the device name is empty", fix="give a name such as line2-pi-07")
    holder = session.scalars(select(DeviceRow).where(DeviceRow.name == name)).one_or_none()
    if holder is not None and holder.id != device_id:
        raise InventoryError(f"the name {name!r} is already used by device {holder.id}",
                             fix="choose another name, or rename that device first")


def _free_name(session: Session, base: str) -> str:
    """`base`, or `base-2`, `base-3`... whichever no device holds yet."""
    taken = set(session.scalars(select(DeviceRow.name)))
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def _default_name(sighting: Sighting) -> str:
    # The host name first: it is the device's own name and the same for all its services, whereas
    # instance names vary per service (Avahi's _workstation._tcp adds the MAC address).
    if sighting.host_name and _host_label(sighting.host_name):
        return _host_label(sighting.host_name)
    if sighting.instance_name:
        return sighting.instance_name
    addresses = _dedupe(sighting.addresses)
    return addresses[0] if addresses else "device"


def _ssh_port(sighting: Sighting) -> int | None:
    """The SSH port a sighting tells of: a sweep's or a manual add's port, or an _ssh._tcp service's.

    Other services carry their own ports (avahi's _workstation._tcp announces 9, the discard port),
    which say nothing about where SSH listens.
    """
    if sighting.service_type is None or sighting.service_type.lower().rstrip(".") == "_ssh._tcp.local":
        return sighting.port
    return None


def _match(session: Session, sighting: Sighting, recent: dict[str, DeviceRow] | None = None) -> DeviceRow | None:
    """The row a sighting belongs to: the same mDNS host name, else a shared address on the same SSH port
    (for a service that tells no SSH port: a shared address, preferring the row on port 22).

    `recent` maps host names' match keys to the rows they matched earlier in the same transaction."""
    if sighting.host_name and recent is not None:
        row = recent.get(_match_key(sighting.host_name))
        if row is not None:
            return row
    if sighting.host_name:
        row = session.scalars(select(DeviceRow).join(NameRow).where(
            NameRow.kind == "host", NameRow.match_key == _match_key(sighting.host_name))
            .order_by(DeviceRow.first_seen, DeviceRow.id).limit(1)).first()
        if row is not None:
            return row
    addresses = _dedupe(sighting.addresses)
    if not addresses:
        return None
    port = _ssh_port(sighting)
    query = select(DeviceRow).join(AddressRow).where(AddressRow.address.in_(addresses))
    if port is not None:
        query = query.where(DeviceRow.port == port)
    else:
        query = query.order_by((DeviceRow.port != DEFAULT_SSH_PORT).asc())
    return session.scalars(query.order_by(DeviceRow.first_seen, DeviceRow.id).limit(1)).first()


def _record(session: Session, sighting: Sighting, *, online: bool, name: str | None = None,
            recent: dict[str, DeviceRow] | None = None, added: set[int] | None = None) -> DeviceRow:
    seen = _utc(sighting.seen_at)
    row = _match(session, sighting, recent)
    ssh_port = _ssh_port(sighting)
    if row is None:
        row = DeviceRow(name=_free_name(session, name or _default_name(sighting)), source=sighting.source,
                        port=ssh_port or DEFAULT_SSH_PORT, username="root", transport="asyncssh", first_seen=seen,
                        hostname="", online=False, **{f: getattr(ProbeFacts(), f) for f in _FACT_COLUMNS},
                        # Known empty: after the INSERT, reading them would otherwise cost a SELECT each.
                        addresses=[], names=[], services=[], host_keys=[], groups=[])
        session.add(row)
        session.flush()
        if added is not None:
            added.add(row.id)
    elif ssh_port is not None and sighting.source == "mdns" and row.port != ssh_port:
        # The device itself announces where its SSH listens (it may have been created from another service).
        row.port = ssh_port
    addresses = _dedupe(sighting.addresses)
    known = {a.address: a for a in row.addresses}
    taken = [address for address in addresses if address not in known]
    if taken:
        # An address is at one device at a time: a device that took over another's DHCP lease now owns it.
        # (An address this row already has cannot be on another row of the same port: this ran when it came.)
        session.execute(delete(AddressRow).where(
            AddressRow.address.in_(taken), AddressRow.device_id != row.id,
            AddressRow.device_id.in_(select(DeviceRow.id).where(DeviceRow.port == row.port))))
    for address in addresses:
        if address in known:
            known[address].last_seen = max(known[address].last_seen, seen)
        else:
            row.addresses.append(AddressRow(address=address, last_seen=seen))
    names = {(n.kind, n.name) for n in row.names}
    for kind, value in (("host", sighting.host_name), ("instance", sighting.instance_name)):
        if value and (kind, value) not in names:
            row.names.append(NameRow(kind=kind, name=value, match_key=_match_key(value)))
    if sighting.service_type:
        _record_service(row, sighting, seen)
    if sighting.host_name and not row.hostname:
        row.hostname = _host_label(sighting.host_name)
    if online:
        row.online = True
        row.last_seen = seen if row.last_seen is None else max(row.last_seen, seen)
    if recent is not None and sighting.host_name:
        recent[_match_key(sighting.host_name)] = row
    return row  # the next query's autoflush writes it


def _record_service(row: DeviceRow, sighting: Sighting, seen: datetime) -> None:
    assert sighting.service_type is not None
    instance = sighting.instance_name or ""
    for service in row.services:
        if service.service_type == sighting.service_type and service.instance_name == instance:
            if seen >= service.last_seen:
                service.host_name = sighting.host_name or ""
                service.port = sighting.port
                service.txt = _encode_txt(sighting.txt)
                service.last_seen = seen
            return
    row.services.append(ServiceRow(service_type=sighting.service_type, instance_name=instance,
                                   host_name=sighting.host_name or "", port=sighting.port,
                                   txt=_encode_txt(sighting.txt), last_seen=seen))


def _absorb(session: Session, keep: DeviceRow, gone: DeviceRow, *, fresh: DeviceRow) -> None:
    """Move everything `gone` knows onto `keep` (the older row), then delete `gone`.

    `fresh` is the row the probe was saved on: its facts are the newest, whichever row survives.
    """
    session.flush()
    if fresh is gone:
        for name in (*_FACT_COLUMNS, "profile", "probed_at", "hostname"):
            setattr(keep, name, getattr(gone, name))
    keep.first_seen = min(keep.first_seen, gone.first_seen)
    if gone.last_seen is not None and (keep.last_seen is None or gone.last_seen > keep.last_seen):
        keep.last_seen = gone.last_seen
    keep.online = keep.online or gone.online
    keep.password_account = keep.password_account or gone.password_account
    # Children move over unless `keep` already has the same one (the unique constraints say what "same" is).
    moves = (
        (AddressRow, AddressRow.address.not_in([a.address for a in keep.addresses])),
        (HostKeyRow, HostKeyRow.fingerprint.not_in([k.fingerprint for k in keep.host_keys])),
        (GroupMemberRow, GroupMemberRow.group_id.not_in([g.id for g in keep.groups])),
    )
    for table, not_on_keep in moves:
        session.execute(update(table).where(table.device_id == gone.id, not_on_keep)
                        .values(device_id=keep.id).execution_options(synchronize_session=False))
    for name_row in gone.names:
        if not any(n.kind == name_row.kind and n.name == name_row.name for n in keep.names):
            session.execute(update(NameRow).where(NameRow.id == name_row.id).values(device_id=keep.id)
                            .execution_options(synchronize_session=False))
    for service in gone.services:
        if not any(s.service_type == service.service_type and s.instance_name == service.instance_name
                   for s in keep.services):
            session.execute(update(ServiceRow).where(ServiceRow.id == service.id).values(device_id=keep.id)
                            .execution_options(synchronize_session=False))
    session.expire(gone)
    session.delete(gone)
    session.flush()


def _device(row: DeviceRow) -> Device:
    addresses = sorted(row.addresses, key=lambda a: (-a.last_seen.timestamp(), a.id))
    return Device(
        id=row.id, name=row.name, hostname=row.hostname,
        addresses=tuple(a.address for a in addresses),
        mdns_names=tuple(n.name for n in sorted(row.names, key=lambda n: n.id)),
        services=tuple(dict.fromkeys(s.service_type for s in sorted(row.services, key=lambda s: s.id))),
        port=row.port, username=row.username, transport=row.transport, password_account=row.password_account,
        profile=row.profile,
        facts=ProbeFacts(hostname=row.hostname if row.probed_at else "", **{f: getattr(row, f) for f in _FACT_COLUMNS}),
        probed_at=row.probed_at, first_seen=row.first_seen, last_seen=row.last_seen, online=row.online,
        groups=tuple(sorted(g.name for g in row.groups)), source=row.source, identity_file=row.identity_file,
        version=row.version)


def _host_key(row: HostKeyRow) -> HostKey:
    return HostKey(device_id=row.device_id, key_type=row.key_type, public_key=row.public_key,
                   fingerprint=row.fingerprint, source=row.source, pinned_at=row.pinned_at)


def _group(row: GroupRow) -> Group:
    return Group(name=row.name, device_ids=tuple(sorted(d.id for d in row.devices)), created_at=row.created_at,
                 version=row.version)


# TXT pairs are stored as length-prefixed bytes rather than DNS wire format, which cannot tell a key
# with no value from a key with an empty one once the key itself contains "=", nor hold strings over 255 bytes.
def _encode_txt(pairs: Iterable[tuple[bytes, bytes | None]]) -> bytes:
    out = bytearray()
    for key, value in pairs:
        out += struct.pack(">I", len(key)) + bytes(key)
        out += b"\x00" if value is None else b"\x01" + struct.pack(">I", len(value)) + bytes(value)
    return bytes(out)


def _decode_txt(data: bytes) -> tuple[tuple[bytes, bytes | None], ...]:
    pairs: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < len(data):
        (size,) = struct.unpack_from(">I", data, i)
        key = data[i + 4:i + 4 + size]
        i += 4 + size
        if data[i] == 0:
            pairs.append((key, None))
            i += 1
        else:
            (size,) = struct.unpack_from(">I", data, i + 1)
            pairs.append((key, data[i + 5:i + 5 + size]))
            i += 5 + size
    return tuple(pairs)

