"""The left side of the window: the groups tree (a drop target for devices) and the discovery panel.

Both only say what the operator wants (`group_chosen`, `devices_dropped`, `browse_toggled`, ...);
the main window passes that on to the bridge.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, QPoint, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.discovery.mdns import NetworkInterface
from fleetdesk.inventory.records import Group

from .fleet_model import DEVICE_IDS_MIME, decode_device_ids, plain
from .icons import icon
from .text import tooltip_text

ALL_DEVICES = None  # the tree's first item: no group filter
GROUP_ROLE = Qt.ItemDataRole.UserRole + 10


class GroupTree(QTreeWidget):
    """"All devices" and one item per group; dropping devices on a group puts them in it."""

    group_chosen = Signal(object)  # str | None
    devices_dropped = Signal(list, str, bool)  # device ids, group, move (from the group shown now)
    rename_requested = Signal(str)  # a group's name: the operator wants to call it something else
    delete_requested = Signal(str)  # a group's name: the operator wants it deleted

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("GroupTree")
        self.setHeaderLabels(["Groups"])
        self.setRootIsDecorated(False)
        self.setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DropOnly)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.viewport().installEventFilter(self)
        self._all = QTreeWidgetItem(["All devices"])
        self._all.setData(0, GROUP_ROLE, ALL_DEVICES)
        self.addTopLevelItem(self._all)
        self._all.setSelected(True)
        self.setCurrentItem(self._all)
        self.currentItemChanged.connect(self._chosen)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)

    def _menu(self, at: QPoint) -> None:
        item = self.itemAt(at)
        group = item.data(0, GROUP_ROLE) if item is not None else None
        if not group:
            return
        menu = QMenu(self)
        menu.addAction("Rename group…", lambda: self.rename_requested.emit(group))
        menu.addAction("Delete group", lambda: self.delete_requested.emit(group))
        menu.popup(self.viewport().mapToGlobal(at))

    def set_groups(self, groups: Sequence[Group], total: int) -> None:
        current = self.current_group()
        self.blockSignals(True)
        try:
            while self.topLevelItemCount() > 1:
                self.takeTopLevelItem(1)
            self._all.setText(0, f"All devices ({total})")
            chosen = self._all
            for group in sorted(groups, key=lambda g: g.name.casefold()):
                item = QTreeWidgetItem([f"{plain(group.name)} ({len(group.device_ids)})"])
                item.setData(0, GROUP_ROLE, group.name)
                item.setIcon(0, icon("group"))
                item.setToolTip(0, tooltip_text(f"Drop devices here to put them in {plain(group.name)!r}"))
                self.addTopLevelItem(item)
                if group.name == current:
                    chosen = item
            self.setCurrentItem(chosen)
        finally:
            self.blockSignals(False)
        if self.current_group() != current:
            self.group_chosen.emit(self.current_group())

    def set_total(self, total: int) -> None:
        self._all.setText(0, f"All devices ({total})")

    def current_group(self) -> str | None:
        item = self.currentItem()
        return item.data(0, GROUP_ROLE) if item is not None else None

    def choose(self, group: str | None) -> None:
        for n in range(self.topLevelItemCount()):
            item = self.topLevelItem(n)
            assert item is not None  # n is below topLevelItemCount()
            if item.data(0, GROUP_ROLE) == group:
                self.setCurrentItem(item)
                return

    def _chosen(self, item: QTreeWidgetItem | None, _previous: QTreeWidgetItem | None) -> None:
        self.group_chosen.emit(item.data(0, GROUP_ROLE) if item is not None else None)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # Drops land on the viewport; only device rows dragged from the fleet table are taken.
        if watched is self.viewport() and event.type() in (QEvent.Type.DragEnter, QEvent.Type.DragMove):
            assert isinstance(event, (QDragEnterEvent, QDragMoveEvent))
            item = self.itemAt(event.position().toPoint())
            if event.mimeData().hasFormat(DEVICE_IDS_MIME) and item is not None and item.data(0, GROUP_ROLE):
                event.acceptProposedAction()
            else:
                event.ignore()
            return True
        if watched is self.viewport() and event.type() == QEvent.Type.Drop:
            assert isinstance(event, QDropEvent)
            item = self.itemAt(event.position().toPoint())
            ids = decode_device_ids(event.mimeData())
            group = item.data(0, GROUP_ROLE) if item is not None else None
            if ids and group:
                move = event.dropAction() == Qt.DropAction.MoveAction and self.current_group() not in (None, group)
                event.acceptProposedAction()
                self.devices_dropped.emit(ids, group, move)
            else:
                event.ignore()
            return True
        return super().eventFilter(watched, event)


class DiscoveryPanel(QGroupBox):
    """Start/stop browsing, the network cards to browse on, add by hostname, sweep a typed range."""

    browse_toggled = Signal(bool)
    interfaces_changed = Signal(list)  # addresses; [] = all cards
    add_requested = Signal()
    sweep_requested = Signal()

    def __init__(self, interfaces: Sequence[NetworkInterface], chosen: Sequence[str],
                 parent: QWidget | None = None) -> None:
        super().__init__("Discovery", parent)
        self.setObjectName("DiscoveryPanel")
        layout = QVBoxLayout(self)
        self.browse_button = QPushButton(icon("discover"), "Start discovery", self)
        self.browse_button.setCheckable(True)
        self.browse_button.setToolTip(tooltip_text("Listen for devices announcing themselves by mDNS (Ctrl+B)"))
        self.browse_button.toggled.connect(self._toggled)
        self.state_label = QLabel("Not listening", self)
        self.state_label.setObjectName("EmptyHint")
        self.state_label.setTextFormat(Qt.TextFormat.PlainText)  # it can carry an error's text: never markup
        self.state_label.setWordWrap(True)
        layout.addWidget(self.browse_button)
        layout.addWidget(self.state_label)
        layout.addWidget(QLabel("Listen on:", self))
        self.interface_boxes: dict[str, QCheckBox] = {}
        for card in interfaces:
            box = QCheckBox(card.label, self)
            box.setChecked(card.address in chosen)
            box.toggled.connect(self._interfaces_toggled)
            self.interface_boxes[card.address] = box
            layout.addWidget(box)
        self.all_hint = QLabel("", self)
        self.all_hint.setObjectName("EmptyHint")
        self.all_hint.setWordWrap(True)
        layout.addWidget(self.all_hint)
        buttons = QHBoxLayout()
        self.add_button = QPushButton(icon("add-device"), "Add…", self)
        self.add_button.setToolTip(tooltip_text("Add a device by hostname or address (Ctrl+N)"))
        self.add_button.clicked.connect(self.add_requested)
        self.sweep_button = QPushButton(icon("sweep"), "Sweep…", self)
        self.sweep_button.setToolTip(tooltip_text(
            "Look for SSH servers across an address range you type (Ctrl+Shift+S)"))
        self.sweep_button.clicked.connect(self.sweep_requested)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.sweep_button)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self._show_all_hint()

    def refresh_icons(self) -> None:
        self.browse_button.setIcon(icon("stop" if self.browse_button.isChecked() else "discover"))
        self.add_button.setIcon(icon("add-device"))
        self.sweep_button.setIcon(icon("sweep"))

    def chosen_interfaces(self) -> list[str]:
        return [address for address, box in self.interface_boxes.items() if box.isChecked()]

    def set_browsing(self, on: bool, detail: str = "") -> None:
        self.browse_button.blockSignals(True)
        self.browse_button.setChecked(on)
        self.browse_button.blockSignals(False)
        self.browse_button.setText("Stop discovery" if on else "Start discovery")
        self.browse_button.setIcon(icon("stop" if on else "discover"))
        self.state_label.setText(detail or ("Listening" if on else "Not listening"))
        if not detail:
            self.state_label.setToolTip("")  # a recording problem's details end with what they described
        for box in self.interface_boxes.values():
            box.setEnabled(not on)  # a browser is bound to its cards; stop to change them

    def _toggled(self, on: bool) -> None:
        self.browse_toggled.emit(on)

    def _interfaces_toggled(self) -> None:
        self._show_all_hint()
        self.interfaces_changed.emit(self.chosen_interfaces())

    def _show_all_hint(self) -> None:
        self.all_hint.setText("" if self.chosen_interfaces() else "None ticked: every network card is used.")
