"""The rollout wizard's per-wave table: a row per wave, an Override check box and that wave's own WavePolicy.

It reads RolloutPlan.wave_policies off its rows and marks the cell a PlanError names ("wave_policies[1].errors").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from fleetdesk.errors import PlanError
from fleetdesk.rollout.policy import WavePolicy

from .overview import colours
from .text import tooltip_text

# The columns, and which WavePolicy field each editable one holds.
WAVE_COLUMNS = ("Wave", "Override", "Success", "Errors", "Soak s", "Approve")
WAVE, OVERRIDE, SUCCESS, ERRORS, SOAK, APPROVE = range(len(WAVE_COLUMNS))
WAVE_FIELD_COLUMN = {"success": SUCCESS, "errors": ERRORS, "soak_s": SOAK, "approve": APPROVE}
WAVE_ROWS_SHOWN = 5  # rows on screen before the table scrolls


@dataclass(frozen=True)
class CommonPolicy:
    """The common policy as the wizard's fields hold it (as typed, maybe not valid): what an unchecked row shows."""

    success: str
    errors: str
    soak: str
    approve: bool


def wave_label(index: int, size: int | None, waves: int, spec: int | str = "") -> str:
    """A row head: "1 · canary · 1 device", "2 · 5 devices", or the waves entry ("3 · 50%") while no device is
    chosen (the canary as plan_text names it: a first wave of one device, more waves after)."""
    if size is None:
        return f"{index + 1} · {spec}"
    canary = " · canary" if index == 0 and size == 1 and waves > 1 else ""
    return f"{index + 1}{canary} · {size} device{'' if size == 1 else 's'}"


def _seconds_text(text: str, name: str) -> float:
    """A soak cell ("300", "300 s") as seconds; PlanError naming `name` when it is not a number."""
    stripped = text.strip().removesuffix("s").strip()
    try:
        return float(stripped)
    except ValueError:
        raise PlanError(f"{text!r} is not a number of seconds", field=name,
                        fix="give the soak time in seconds (0 or more)") from None


class WavePolicyTable(QTableWidget):
    """One row per wave: Wave, Override, Success, Errors, Soak s, Approve. `common()` gives what unchecked rows
    show; `edited` fires after the operator changes a cell."""

    edited = Signal()

    def __init__(self, common: Callable[[], CommonPolicy], parent: QWidget | None = None) -> None:
        super().__init__(0, len(WAVE_COLUMNS), parent)
        self._common = common
        self._count = 0  # rows in use; rows past it are hidden and left out of the plan
        self._invalid_cells: list[QTableWidgetItem] = []
        self.setObjectName("WavePolicies")
        self.setHorizontalHeaderLabels(list(WAVE_COLUMNS))
        self.verticalHeader().hide()
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.CurrentChanged
                             | QAbstractItemView.EditTrigger.DoubleClicked
                             | QAbstractItemView.EditTrigger.EditKeyPressed
                             | QAbstractItemView.EditTrigger.AnyKeyPressed)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(WAVE, QHeaderView.ResizeMode.Stretch)
        self.setToolTip(tooltip_text(
            "Check Override to give a wave its own thresholds, soak and approval; an unchecked wave "
            "follows the common values (shown greyed). Click a cell of an overridden wave to edit it."))
        self.itemChanged.connect(self._cell_changed)

    def show_waves(self, sizes: Sequence[int], specs: Sequence[int | str]) -> None:
        """One row per wave (or per waves entry while no device is chosen); rows past that are hidden, their
        overrides kept for while the operator is still typing but left out of the plan."""
        count = len(sizes) if sizes else len(specs)
        blocked = self.blockSignals(True)
        try:
            for row in range(self.rowCount(), count):
                self.insertRow(row)
                head = QTableWidgetItem()
                head.setFlags(Qt.ItemFlag.ItemIsEnabled)
                self.setItem(row, WAVE, head)
                for column in (OVERRIDE, APPROVE):
                    check = QTableWidgetItem()
                    check.setCheckState(Qt.CheckState.Unchecked)
                    self.setItem(row, column, check)
                for column in (SUCCESS, ERRORS, SOAK):
                    self.setItem(row, column, QTableWidgetItem())
                self._sync_row(row, copy=True)
            for row in range(self.rowCount()):
                self.setRowHidden(row, row >= count)
                if row < count:
                    label = wave_label(row, sizes[row] if sizes else None, count,
                                       "" if sizes else specs[min(row, len(specs) - 1)])
                    self._cell(row, WAVE).setText(label)
                    self._sync_row(row, copy=False)
        finally:
            self.blockSignals(blocked)
        self._count = count
        shown = min(count, WAVE_ROWS_SHOWN)
        rows = sum(self.rowHeight(r) for r in range(shown)) if shown else 0
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + rows + 2 * self.frameWidth() + 2)

    def policies(self) -> tuple[WavePolicy | None, ...]:
        """RolloutPlan.wave_policies: a WavePolicy for each overridden wave in use, None for the others (no
        trailing Nones). PlanError names the cell ("wave_policies[1].errors")."""
        out: list[WavePolicy | None] = []
        for row in range(self._count):
            if self._cell(row, OVERRIDE).checkState() != Qt.CheckState.Checked:
                out.append(None)
                continue
            try:
                soak_s = _seconds_text(self._cell(row, SOAK).text(), "soak_s")
                out.append(WavePolicy.from_text(
                    self._cell(row, SUCCESS).text(), self._cell(row, ERRORS).text(), soak_s=soak_s,
                    approve=self._cell(row, APPROVE).checkState() == Qt.CheckState.Checked))
            except PlanError as exc:
                raise PlanError(exc.message.removeprefix(f"{exc.field}: "),
                                field=f"wave_policies[{row}].{exc.field}", fix=exc.fix) from None
        while out and out[-1] is None:
            out.pop()
        return tuple(out)

    def mark(self, field: str | None) -> bool:
        """Colour the cell a PlanError's field names; False when the field is not a cell of this table."""
        head, _, tail = (field or "").partition(".")
        if not (head.startswith("wave_policies[") and head.endswith("]") and tail in WAVE_FIELD_COLUMN):
            return False
        item = self.item(int(head[len("wave_policies["):-1]), WAVE_FIELD_COLUMN[tail])
        if item is not None:
            colour = QColor(colours()["error"])
            colour.setAlpha(70)
            blocked = self.blockSignals(True)
            try:
                item.setBackground(colour)
            finally:
                self.blockSignals(blocked)
            self._invalid_cells.append(item)
        return True

    def unmark(self) -> None:
        blocked = self.blockSignals(True)
        try:
            for item in self._invalid_cells:
                item.setData(Qt.ItemDataRole.BackgroundRole, None)
        finally:
            self.blockSignals(blocked)
        self._invalid_cells = []

    def _cell(self, row: int, column: int) -> QTableWidgetItem:
        """A cell of a row `show_waves` made: every one of its cells has an item."""
        item = self.item(row, column)
        assert item is not None
        return item

    def _cell_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == OVERRIDE:
            self._sync_row(item.row(), copy=True)
        self.edited.emit()

    def _sync_row(self, row: int, *, copy: bool) -> None:
        """An unchecked row shows the common values, greyed and not editable; checking it (copy=True) copies them
        in for editing. An overridden row keeps what the operator typed."""
        overridden = self._cell(row, OVERRIDE).checkState() == Qt.CheckState.Checked
        blocked = self.blockSignals(True)
        try:
            if copy or not overridden:
                common = self._common()
                self._cell(row, SUCCESS).setText(common.success)
                self._cell(row, ERRORS).setText(common.errors)
                self._cell(row, SOAK).setText(common.soak)
                self._cell(row, APPROVE).setCheckState(Qt.CheckState.Checked if common.approve
                                                       else Qt.CheckState.Unchecked)
            editable = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsEditable | Qt.ItemFlag.ItemIsSelectable
            for column in (SUCCESS, ERRORS, SOAK):
                self._cell(row, column).setFlags(editable if overridden else Qt.ItemFlag.NoItemFlags)
                self._cell(row, column).setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            checkable = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable
            self._cell(row, APPROVE).setFlags(checkable if overridden else Qt.ItemFlag.ItemIsUserCheckable)
            self._cell(row, OVERRIDE).setFlags(checkable)
        finally:
            self.blockSignals(blocked)
