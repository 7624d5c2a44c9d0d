"""The fleet table's data: one row per device, updated in place as the bridge reports, and its filter.

`FleetTableModel` keeps rows keyed by device id so a status change repaints one row; `FleetFilter`
narrows by text, group and status and sorts by each column's own key (times as times, not text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from PySide6.QtCore import (
    QAbstractTableModel,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QStyle

from .bridge_views import DeviceView
from .icons import status_icon
from .text import tooltip_text, visible_text

COLUMNS = ("Status", "Hostname", "Address", "Profile", "Architecture", "Runtime", "Active model", "Last seen")
DEVICE_IDS_MIME = "application/x-fleetdesk-device-ids"
DEVICE_ID_ROLE = Qt.ItemDataRole.UserRole + 1
SORT_ROLE = Qt.ItemDataRole.UserRole + 2
STATUS_TEXT = {
    "online": "Online",
    "offline": "Offline",
    "untrusted": "Untrusted",
    "unreachable": "Unreachable",
    "busy": "Busy",
}
NONE_YET = "—"
# Built once: the table asks for every visible cell's flags on each paint.
ROW_FLAGS = (Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsDragEnabled
             | Qt.ItemFlag.ItemIsDropEnabled)
Index = QModelIndex | QPersistentModelIndex


plain = visible_text  # device text in a cell: control and invisible characters spelled out


def alert_icon() -> QIcon:
    """The warning sign of a device with raised telemetry alerts (the style's own, as in the dashboard)."""
    style = QApplication.style()
    return style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning) if style is not None else QIcon()


def when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    local = moment.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def encode_device_ids(ids: Iterable[int]) -> QMimeData:
    data = QMimeData()
    data.setData(DEVICE_IDS_MIME, json.dumps(sorted(set(ids))).encode())
    return data


def decode_device_ids(data: QMimeData) -> list[int]:
    if not data.hasFormat(DEVICE_IDS_MIME):
        return []
    try:
        ids = json.loads(bytes(data.data(DEVICE_IDS_MIME).data()).decode())
    except (ValueError, UnicodeDecodeError):
        return []
    return [i for i in ids if isinstance(i, int)] if isinstance(ids, list) else []


class FleetTableModel(QAbstractTableModel):
    """Rows of `DeviceView`; `upsert` changes one row (or appends one), `reset` replaces them all."""

    def __init__(self, parent: object | None = None) -> None:
        super().__init__(parent)  # type: ignore[arg-type]
        self._rows: list[DeviceView] = []
        self._row_of: dict[int, int] = {}
        self._alerts: dict[int, tuple[str, ...]] = {}  # device id -> its raised telemetry alerts, in words

    # -- changes -----------------------------------------------------------------------------------

    def reset(self, views: Sequence[DeviceView]) -> None:
        self.beginResetModel()
        self._rows = list(views)
        self._row_of = {v.id: n for n, v in enumerate(self._rows)}
        self.endResetModel()

    def upsert(self, view: DeviceView) -> None:
        row = self._row_of.get(view.id)
        if row is None:
            row = len(self._rows)
            self.beginInsertRows(QModelIndex(), row, row)
            self._rows.append(view)
            self._row_of[view.id] = row
            self.endInsertRows()
            return
        if self._rows[row] == view:
            return
        self._rows[row] = view
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))

    def set_alerts(self, device_id: int, messages: Sequence[str]) -> None:
        """Mark a device's Hostname cell with a warning sign while telemetry alerts are raised on it."""
        before = self._alerts.get(device_id, ())
        if tuple(messages) == before:
            return
        if messages:
            self._alerts[device_id] = tuple(messages)
        else:
            self._alerts.pop(device_id, None)
        row = self._row_of.get(device_id)
        if row is not None:
            self.dataChanged.emit(self.index(row, 1), self.index(row, 1))

    def alerts(self, device_id: int) -> tuple[str, ...]:
        return self._alerts.get(device_id, ())

    def remove(self, device_id: int) -> None:
        row = self._row_of.get(device_id)
        if row is None:
            return
        self._alerts.pop(device_id, None)
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._rows[row]
        self._row_of = {v.id: n for n, v in enumerate(self._rows)}
        self.endRemoveRows()

    # -- reading -----------------------------------------------------------------------------------

    def view_at(self, row: int) -> DeviceView:
        return self._rows[row]

    def view_of(self, device_id: int) -> DeviceView | None:
        row = self._row_of.get(device_id)
        return self._rows[row] if row is not None else None

    def views(self) -> list[DeviceView]:
        return list(self._rows)

    def counts(self) -> tuple[int, int]:
        """(devices that are not offline, all devices), for the status bar."""
        online = sum(v.status != "offline" for v in self._rows)
        return online, len(self._rows)

    # -- Qt model interface --------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        return ROW_FLAGS if index.isValid() else Qt.ItemFlag.ItemIsDropEnabled

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid():
            return None
        view = self._rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(view, column)
        if role == SORT_ROLE:
            return self._sort_key(view, column)
        if role == DEVICE_ID_ROLE:
            return view.id
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return status_icon(view.status)
        if role == Qt.ItemDataRole.DecorationRole and column == 1 and view.id in self._alerts:
            return alert_icon()
        if role == Qt.ItemDataRole.ToolTipRole:
            return tooltip_text(self._tooltip(view)
                                + "".join(f"\nTelemetry alert: {m}" for m in self._alerts.get(view.id, ())))
        return None

    @staticmethod
    def _text(view: DeviceView, column: int) -> str:
        device = view.device
        if column == 0:
            return STATUS_TEXT[view.status]
        if column == 1:
            return plain(device.name)
        if column == 2:
            return plain(device.address) or NONE_YET
        if column == 3:
            return plain(device.profile or "") or ("not probed" if device.probed_at is None else "no match")
        if column == 4:
            return plain(device.facts.arch) or NONE_YET
        if column == 5:
            runtime = view.runtime
            return f"onnxruntime {plain(runtime.onnxruntime)}" if runtime and runtime.onnxruntime else NONE_YET
        if column == 6:
            return NONE_YET  # filled in by the rollout issue
        return when(device.last_seen)

    @staticmethod
    def _sort_key(view: DeviceView, column: int) -> object:
        if column == 0:
            return ("busy", "unreachable", "untrusted", "online", "offline").index(view.status)
        if column == 7:
            seen = view.device.last_seen
            return seen.timestamp() if seen else 0.0
        if column == 2:
            from ipaddress import ip_address

            try:
                return f"{ip_address(view.device.address).version}{int(ip_address(view.device.address)):039d}"
            except ValueError:
                return f"9{view.device.address}"
        return FleetTableModel._text(view, column).casefold()

    @staticmethod
    def _tooltip(view: DeviceView) -> str:
        lines = [f"{plain(view.device.name)}: {STATUS_TEXT[view.status].lower()}"]
        if view.status == "untrusted":
            lines.append("Its host key is not trusted yet: use Trust… to check the fingerprint.")
        if view.problem:
            lines.append(plain(view.problem))
        runtime = view.runtime
        if runtime is not None:
            lines.append(f"Runtime {runtime.runtime_id[:12]}, agent {plain(runtime.agent_version)}, Python "
                         f"{plain(runtime.python)}; execution providers: {', '.join(map(plain, runtime.providers))}"
                         f" (provisioned {when(runtime.provisioned_at)})")
        return "\n".join(lines)

    def mimeTypes(self) -> list[str]:
        return [DEVICE_IDS_MIME, "text/uri-list"]

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:
        return encode_device_ids(self._rows[i.row()].id for i in indexes if i.isValid())

    def supportedDragActions(self) -> Qt.DropAction:
        return Qt.DropAction.MoveAction | Qt.DropAction.CopyAction


class FleetFilter(QSortFilterProxyModel):
    """Narrows the table by free text, a group and a status; sorts by each column's key."""

    def __init__(self, parent: object | None = None) -> None:
        super().__init__(parent)  # type: ignore[arg-type]
        self._text = ""
        self._group: str | None = None
        self._status: str | None = None
        self.setSortRole(SORT_ROLE)
        self.setDynamicSortFilter(True)

    @property
    def group(self) -> str | None:
        return self._group

    def set_text(self, text: str) -> None:
        self._refilter(lambda: setattr(self, '_text', text.strip().casefold()))

    def set_group(self, group: str | None) -> None:
        self._refilter(lambda: setattr(self, '_group', group))

    def set_status(self, status: str | None) -> None:
        self._refilter(lambda: setattr(self, '_status', status))

    def _refilter(self, change: Callable[[], None]) -> None:
        # Qt 6.10 deprecates invalidateRowsFilter for begin/endFilterChange; 6.9 (our floor) has only the former.
        if hasattr(self, "endFilterChange"):
            self.beginFilterChange()
            change()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            change()
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        model = self.sourceModel()
        assert isinstance(model, FleetTableModel)
        view = model.view_at(source_row)
        if self._status is not None and view.status != self._status:
            return False
        if self._group is not None and self._group not in view.device.groups:
            return False
        if self._text:
            device = view.device
            # Each typed word must begin a word of the device ("line a" finds group "line A", not every
            # name with an "a" in it; "198.18.1" finds addresses by prefix).
            words = " ".join((device.name, device.hostname, *device.addresses, device.profile or "",
                              device.facts.arch, device.facts.os_name, *device.groups)).casefold().split()
            return all(any(w.startswith(typed) for w in words) for typed in self._text.split())
        return True

    def device_ids(self, rows: Iterable[QModelIndex]) -> list[int]:
        return list(dict.fromkeys(int(self.data(i.siblingAtColumn(0), DEVICE_ID_ROLE)) for i in rows))
