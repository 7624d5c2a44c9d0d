"""The Audit view: the trail's newest entries with filters (operator, action, device), and Verify.

It does no I/O: `refresh_requested(AuditFilter)` and `verify_requested()` ask the window, which reads through the
bridge off the loop and hands back `show_entries(...)` and `show_verification(...)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from PySide6.QtCore import QEvent, QPoint, Qt, Signal
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.access import Verification
from fleetdesk.inventory.audit import AuditEntry, AuditFilter

from .text import tooltip_text, visible_text

COLUMNS = ("#", "When", "Operator", "Action", "Outcome", "Targets", "Change")


def entry_cells(entries: Sequence[AuditEntry]) -> list[tuple[str, ...]]:
    """Each entry's cells in COLUMNS order, as shown; pure, for a worker thread (a long trail's JSON takes a while
    to decode)."""
    rows = []
    for e in entries:
        change = {k: v for k, v in (("before", e.before), ("after", e.after)) if v is not None}
        texts = (str(e.seq), e.at.astimezone().strftime("%Y-%m-%d %H:%M:%S"), e.operator or "-", e.action,
                 e.outcome, " ".join(e.targets) or "-", json.dumps(change, ensure_ascii=False) if change else "")
        rows.append(tuple(map(visible_text, texts)))
    return rows


class EntryTable(QTableWidget):
    """The entries. A cell's whole text is its tooltip, made when the pointer rests on the cell: escaping a
    tooltip for each of 500 rows' seven cells as the table fills held the loop past 100 ms on a loaded machine."""

    def tooltip_at(self, pos: QPoint) -> str:
        """The tooltip of the cell at `pos` (viewport coordinates): its whole text, escaped; "" for none."""
        item = self.itemAt(pos)
        return tooltip_text(item.text()) if item is not None and item.text() else ""

    def viewportEvent(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            tip = self.tooltip_at(event.pos())
            if tip:
                QToolTip.showText(event.globalPos(), tip, self.viewport())
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().viewportEvent(event)


class AuditDialog(QDialog):
    refresh_requested = Signal(object)  # AuditFilter
    verify_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("AuditDialog")
        self.setWindowTitle("Audit trail")
        self.operator = QLineEdit(self)
        self.operator.setPlaceholderText("operator")
        self.action = QLineEdit(self)
        self.action.setPlaceholderText("action, or a family such as rollout.")
        self.target = QLineEdit(self)
        self.target.setPlaceholderText("target, e.g. device:3 or rollout:7")
        self.refresh = QPushButton("Refresh", self)
        self.refresh.setShortcut("F5")
        self.verify = QPushButton("Verify", self)
        self.verify.setToolTip(tooltip_text("Check every entry's hash, chain and signature (runs in the background)"))
        filters = QHBoxLayout()
        for widget in (self.operator, self.action, self.target, self.refresh, self.verify):
            filters.addWidget(widget)
        for edit in (self.operator, self.action, self.target):
            edit.returnPressed.connect(self._refresh)
        self.refresh.clicked.connect(self._refresh)
        self.verify.clicked.connect(self._verify)

        self.table = EntryTable(0, len(COLUMNS), self)
        self.table.setObjectName("AuditTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        # Column widths from the rows in sight: measuring every cell of a long trail stalls the loop.
        self.table.horizontalHeader().setResizeContentsPrecision(0)
        self.status = QLabel("", self)
        self.status.setObjectName("AuditStatus")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(filters)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        self.resize(1000, 560)

    def query(self) -> AuditFilter:
        return AuditFilter(operator=self.operator.text().strip() or None, action=self.action.text().strip() or None,
                           target=self.target.text().strip() or None)

    def _refresh(self) -> None:
        self.status.setText("reading…")
        self.refresh_requested.emit(self.query())

    def _verify(self) -> None:
        self.verify.setEnabled(False)
        self.status.setText("verifying every entry…")
        self.verify_requested.emit()

    def show_entries(self, rows: Sequence[Sequence[str]]) -> None:
        """Show rows made by `entry_cells`."""
        self.table.setUpdatesEnabled(False)  # one repaint when all are in, not one per cell
        try:
            self.table.setRowCount(len(rows))
            for row, cells in enumerate(rows):
                for column, shown in enumerate(cells):
                    self.table.setItem(row, column, QTableWidgetItem(shown))
        finally:
            self.table.setUpdatesEnabled(True)
        self.status.setText(f"{len(rows)} entries, newest first" if rows else "no entries match")

    def show_verification(self, result: Verification) -> None:
        self.verify.setEnabled(True)
        self.status.setText(str(result))
        self.status.setProperty("problem", not result.ok)

    def show_problem(self, text: str) -> None:
        self.verify.setEnabled(True)
        self.status.setText(text)
