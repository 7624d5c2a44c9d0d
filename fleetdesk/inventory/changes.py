"""What other FleetDesks change in a shared PostgreSQL inventory, as they commit it: `ChangeFeed` LISTENs on the
channel the inventory's triggers notify (migration 0010) and hands each burst of changes to its caller, so a
window reloads only what changed instead of polling the whole inventory.

The feed runs on a thread of its own with its own connection (autocommit, as LISTEN needs). When the database
goes away it says so (`on_state(False, reason)`), retries with backoff, and says so again when it is back; what
was committed meanwhile was not announced to it, so the caller reads everything again then (catch-up).
SQLite has no other laptop to hear from: `ChangeFeed.for_url` gives None for it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CHANNEL = "fleetdesk_changes"  # the migration's channel (0010_change_notifications)
BURST_S = 0.05  # notifications arriving this close together are handed over as one burst
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # reconnecting after the database went away: then every 5 s


@dataclass(frozen=True)
class Change:
    """One row changed by a committed transaction (of any FleetDesk, this one's included)."""

    table: str
    op: str  # INSERT, UPDATE or DELETE
    row_id: int | None
    device_id: int | None
    rollout_id: int | None
    group_id: int | None
    from_pid: int  # the PostgreSQL backend that committed it

    @classmethod
    def parse(cls, payload: str, pid: int) -> Change | None:
        try:
            data = json.loads(payload)
            return cls(str(data["table"]), str(data["op"]), _int(data.get("id")), _int(data.get("device")),
                       _int(data.get("rollout")), _int(data.get("group")), pid)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a change notification that is not FleetDesk's: %.200r", payload)
            return None

    @property
    def device(self) -> int | None:
        """The device this change is about, if it is about one."""
        return self.row_id if self.table == "devices" else self.device_id


def _int(value: object) -> int | None:
    return None if value in (None, "") else int(str(value))


class ChangeFeed:
    """Changes committed to a shared inventory, handed over in bursts on the feed's own thread."""

    def __init__(self, conninfo: str, on_changes: Callable[[Sequence[Change]], None],
                 on_state: Callable[[bool, str], None] = lambda _up, _why: None) -> None:
        self._conninfo = conninfo
        self._on_changes = on_changes
        self._on_state = on_state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    @classmethod
    def for_url(cls, url: str, on_changes: Callable[[Sequence[Change]], None],
                on_state: Callable[[bool, str], None] = lambda _up, _why: None) -> ChangeFeed | None:
        """A feed for the inventory at SQLAlchemy `url`; None when it is not PostgreSQL."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            return None
        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(conninfo, on_changes, on_state)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleetdesk-changes", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        import psycopg

        failures = 0
        was_up: bool | None = None
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self.connected.set()
                    if was_up is not True:
                        self._on_state(True, "")
                    was_up = True
                    self._listen(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stop.is_set():
                    break
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                if was_up is not False:
                    self._on_state(False, reason)
                was_up = False
                self._stop.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
        self.connected.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        burst: list[Change] = []
        first = 0.0
        while not self._stop.is_set():
            # The first change of a burst wakes the feed at once; what follows within BURST_S joins it. Waits are
            # short so that a stop is noticed.
            wait = 0.5 if not burst else BURST_S - (time.monotonic() - first)
            if wait > 0:
                for note in conn.notifies(timeout=wait, stop_after=1 if not burst else 256):
                    change = Change.parse(note.payload, note.pid)
                    if change is not None:
                        if not burst:
                            first = time.monotonic()
                        burst.append(change)
            if burst and (time.monotonic() - first >= BURST_S or len(burst) >= 256):
                self._hand_over(burst)
                burst = []
        if burst:
            self._hand_over(burst)

    def _hand_over(self, burst: list[Change]) -> None:
        try:
            self._on_changes(tuple(dict.fromkeys(burst)))  # one of each: a row touched twice is read once
        except Exception:  # the caller's bug must not end the feed
            log.exception("handling inventory changes failed")
