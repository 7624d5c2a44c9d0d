"""The activity and log view: every background operation with its progress, a way to cancel it, and its outcome.

`ActivityModel` mirrors an `Activities` registry newest first; `ActivityView` adds the toolbar, the
error panel for a failed operation and the log of finished work.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from PySide6.QtCore import (
    QAbstractItemModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    Qt,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import QAction, QColor, QFont, QFontDatabase, QKeySequence, QPainter, QPalette, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFrame,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QToolBar,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.errors import FleetDeskError
from fleetdesk.gui.activities import CANCELLED, FAILED, SUCCEEDED, Activities, Activity, human_duration
from fleetdesk.gui.icons import icon
from fleetdesk.gui.text import tooltip_text, visible_text

COLUMNS = ("Operation", "Devices", "Progress", "Detail", "Elapsed", "Outcome")
OPERATION, DEVICES, PROGRESS, DETAIL, ELAPSED, OUTCOME = range(len(COLUMNS))

# The raw progress (float 0..1 or None) for the delegate; DisplayRole carries the same as text.
PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 1
ACTIVITY_ROLE = Qt.ItemDataRole.UserRole + 2

WORKING = "working…"

Index = QModelIndex | QPersistentModelIndex
_ROOT = QModelIndex()  # the invisible root of a flat model


def outcome_text(activity: Activity) -> str:
    """The one-line outcome an operator reads: what it did, or what went wrong."""
    if activity.state == FAILED:
        return visible_text(activity.error.message if activity.error is not None else (activity.summary or "failed"))
    if activity.state == CANCELLED:
        return "cancelled"
    if activity.state == SUCCEEDED:
        return visible_text(activity.summary or "done")
    if activity.problem is not None:  # still running, held back by it
        return visible_text(activity.problem.message)
    return ""


def shown_error(activity: Activity) -> FleetDeskError | None:
    """The error the operator is shown for an activity: why it failed, or what holds it back while it runs."""
    return activity.error if activity.state == FAILED else activity.problem if activity.running else None


def error_color(palette: QPalette) -> QColor:
    """The theme's error red: FleetDesk's palettes carry it as BrightText (fleetdesk/gui/theme.py).

    A palette whose BrightText is not a red (Fusion's own is white) gets one that reads on its base.
    """
    bright = palette.color(QPalette.ColorRole.BrightText)
    if bright.hsvSaturation() > 100 and (bright.hsvHue() <= 20 or bright.hsvHue() >= 340):
        return bright
    return QColor("#ff7b72") if palette.color(QPalette.ColorRole.Base).lightness() < 128 else QColor("#c8372d")


class ActivityModel(QAbstractItemModel):
    """A flat table of activities, newest first, kept current from the registry's signals.

    `elapsed_timer` is the one timer that repaints the Elapsed column of running rows once a
    second; it runs only while some activity runs.
    """

    def __init__(self, activities: Activities, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._activities = activities
        self._rows: list[Activity] = []
        self.error_color = QColor("#b3261e")
        self.elapsed_timer = QTimer(self)
        self.elapsed_timer.setObjectName("ActivityElapsedTimer")
        self.elapsed_timer.setInterval(1000)
        self.elapsed_timer.timeout.connect(self._tick)
        activities.added.connect(self._on_added)
        for activity in reversed(activities.all()):  # all() is oldest first
            self._watch(activity)
            self._rows.append(activity)
        self._update_timer()

    # -- the registry's side -------------------------------------------------------------------

    def _watch(self, activity: Activity) -> None:
        activity.changed.connect(self._on_changed)

    @Slot(object)
    def _on_added(self, activity: Activity) -> None:
        self.beginInsertRows(QModelIndex(), 0, 0)
        self._rows.insert(0, activity)
        self.endInsertRows()
        self._watch(activity)
        self._update_timer()

    @Slot()
    def _on_changed(self) -> None:
        activity = self.sender()
        if not isinstance(activity, Activity) or activity not in self._rows:
            return
        row = self._rows.index(activity)
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
        self._update_timer()

    @Slot()
    def _tick(self) -> None:
        for row, activity in enumerate(self._rows):
            if activity.running:
                index = self.index(row, ELAPSED)
                self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole])
        self._update_timer()

    def _update_timer(self) -> None:
        if any(a.running for a in self._rows):
            if not self.elapsed_timer.isActive():
                self.elapsed_timer.start()
        else:
            self.elapsed_timer.stop()

    def clear_finished(self) -> None:
        """Drop finished activities from the registry and from the table; running ones stay."""
        self._activities.clear_finished()
        for row in range(len(self._rows) - 1, -1, -1):
            activity = self._rows[row]
            if not activity.running:
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._rows[row]
                self.endRemoveRows()
                activity.changed.disconnect(self._on_changed)
        self._update_timer()

    def activity(self, index: Index) -> Activity | None:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        return self._rows[index.row()]

    def activities(self) -> list[Activity]:
        """The rows, newest first."""
        return list(self._rows)

    # -- QAbstractItemModel --------------------------------------------------------------------

    def index(self, row: int, column: int, parent: Index = _ROOT) -> QModelIndex:
        if parent.isValid() or not (0 <= row < len(self._rows) and 0 <= column < len(COLUMNS)):
            return QModelIndex()
        return self.createIndex(row, column)

    # The stubs overload parent() (the QObject parent) and parent(child) (an index's parent): one override
    # cannot match both signatures.
    def parent(self, child: Index | None = None) -> QModelIndex:  # type: ignore[override]
        return QModelIndex()  # flat: every row hangs off the root

    def rowCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        horizontal = orientation == Qt.Orientation.Horizontal
        if horizontal and role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        activity = self.activity(index)
        if activity is None:
            return None
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(activity, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(activity, column)
        if role == PROGRESS_ROLE:
            return activity.progress if activity.running or activity.state == SUCCEEDED else None
        if role == ACTIVITY_ROLE:
            return activity
        if role == Qt.ItemDataRole.ForegroundRole and column == OUTCOME and shown_error(activity) is not None:
            return self.error_color
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (DEVICES, ELAPSED):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, activity: Activity, column: int) -> str:
        if column == OPERATION:
            return visible_text(activity.title)
        if column == DEVICES:
            count = len(activity.devices)
            return "—" if count == 0 else f"{count} device" if count == 1 else f"{count} devices"
        if column == PROGRESS:
            if not activity.running and activity.state != SUCCEEDED:
                return ""  # how far a failed or cancelled operation got says little: the outcome says it
            if activity.progress is None:
                return WORKING
            return f"{activity.progress * 100:.0f} %"
        if column == DETAIL:
            return visible_text(activity.detail)
        if column == ELAPSED:
            return human_duration(activity.elapsed)
        if column == OUTCOME:
            return outcome_text(activity)
        return ""

    def _tooltip(self, activity: Activity, column: int) -> str | None:
        error = shown_error(activity)
        if column == OUTCOME and error is not None:
            fix = f"\nFix: {visible_text(error.fix)}" if error.fix else ""
            return tooltip_text(visible_text(error.message) + fix)
        if column in (OPERATION, DETAIL, OUTCOME):
            text = self._display(activity, column)
            return tooltip_text(text) if text else None
        return None


class ProgressDelegate(QStyledItemDelegate):
    """Draws the Progress column as a progress bar; "working…" while the total is unknown."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        progress = index.data(PROGRESS_ROLE)
        if progress is None:
            super().paint(painter, option, index)  # the text: "working…" or nothing
            return
        item = QStyleOptionViewItem(option)
        self.initStyleOption(item, index)
        item.text = ""
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, item, painter, widget)
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(3, 3, -3, -3)
        bar.state = option.state | QStyle.StateFlag.State_Horizontal
        bar.direction = option.direction
        bar.fontMetrics = option.fontMetrics
        bar.palette = option.palette
        bar.minimum, bar.maximum = 0, 1000
        bar.progress = round(float(progress) * 1000)
        bar.text = str(index.data(Qt.ItemDataRole.DisplayRole))
        bar.textVisible = True
        bar.textAlignment = Qt.AlignmentFlag.AlignCenter
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, None)

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        hint = super().sizeHint(option, index)
        return QSize(hint.width(), max(hint.height(), option.fontMetrics.height() + 10))


class ErrorPanel(QFrame):
    """What went wrong with one failed activity: the message, the fix, and expandable details."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ActivityErrorPanel")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        self.message_label = _plain_label("ErrorMessage", self)
        bold = QFont(self.message_label.font())
        bold.setBold(True)
        self.message_label.setFont(bold)
        self.fix_label = _plain_label("ErrorFix", self)
        self.details_button = QToolButton(self)
        self.details_button.setObjectName("ErrorDetailsToggle")
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setAutoRaise(True)
        self.details_button.toggled.connect(self._toggle_details)
        self.details = QPlainTextEdit(self)
        self.details.setObjectName("ErrorDetails")
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.details.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.details.setVisible(False)
        layout.addWidget(self.message_label)
        layout.addWidget(self.fix_label)
        layout.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.details)

    def show_activity(self, activity: Activity) -> None:
        error = shown_error(activity)
        message = error.message if error is not None else outcome_text(activity)
        how = ":" if activity.running else " failed:"  # a running one is held back, and trying again
        self.message_label.setText(f"{visible_text(activity.title)}{how} {visible_text(message)}")
        fix = visible_text(error.fix) if error is not None and error.fix else None
        self.fix_label.setText(f"Fix: {fix}" if fix else "Fix: none known — the details below say what happened")
        lines = []
        if error is not None:
            lines += [
                f"Device: {visible_text(error.device or '—')}",
                f"Step: {visible_text(error.step or '—')}",
                f"Error: {type(error).__name__}",
                f"Cause: {error.cause!r}" if error.cause is not None else "Cause: —",
            ]
        lines.append(f"Ran for {human_duration(activity.elapsed)}")
        self.details.setPlainText("\n".join(lines))
        if self.details_button.isChecked():
            self._fit_details()

    @Slot(bool)
    def _toggle_details(self, shown: bool) -> None:
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        if shown:
            self._fit_details()
        self.details.setVisible(shown)

    def _fit_details(self) -> None:
        # Tall enough for every line without a scroll bar; measured now, with the theme's font applied.
        self.details.ensurePolished()
        lines = self.details.document().blockCount() + 1
        margins = 2 * (self.details.frameWidth() + round(self.details.document().documentMargin()))
        self.details.setFixedHeight(lines * self.details.fontMetrics().lineSpacing() + margins)


class ActivityView(QWidget):
    """The list of background operations with Cancel and Clear finished, the failure panel and the log."""

    log_added = Signal(str)  # one "HH:MM:SS title — outcome" line per finished activity

    def __init__(self, activities: Activities, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ActivityView")
        self._activities = activities
        self._log: list[str] = []
        self._logged: set[int] = set()
        self._shown_failure: Activity | None = None

        self.model = ActivityModel(activities, self)
        self.model.error_color = error_color(self.palette())

        self.toolbar = QToolBar(self)
        self.toolbar.setObjectName("ActivityToolbar")
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.cancel_action = QAction(icon("cancel"), "Cancel", self)
        self.cancel_action.setObjectName("CancelActivity")
        self.cancel_action.setShortcut(QKeySequence(Qt.Key.Key_Delete))
        # Delete cancels only while the operator is in this view: elsewhere it may mean "remove".
        self.cancel_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.cancel_action.setToolTip(tooltip_text("Cancel the selected running operations (Delete)"))
        self.cancel_action.triggered.connect(self.cancel_selected)
        self.clear_action = QAction("Clear finished", self)
        self.clear_action.setObjectName("ClearFinishedActivities")
        self.clear_action.setToolTip(tooltip_text("Remove finished operations from the list; the log keeps them"))
        self.clear_action.triggered.connect(self.clear_finished)
        self.toolbar.addAction(self.cancel_action)
        self.toolbar.addAction(self.clear_action)
        self.addAction(self.cancel_action)  # so the shortcut works with focus anywhere in the view

        self.tree = QTreeView(self)
        self.tree.setObjectName("ActivityList")
        self.tree.setModel(self.model)
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.tree.setItemDelegateForColumn(PROGRESS, ProgressDelegate(self.tree))
        self._columns_sized = False

        self.error_panel = ErrorPanel(self)
        self.error_panel.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.error_panel)

        self.tree.selectionModel().selectionChanged.connect(self._selection_changed)
        self.model.dataChanged.connect(self._selection_changed)
        self.model.rowsRemoved.connect(self._selection_changed)
        activities.added.connect(self._watch)
        for activity in activities.all():
            self._watch(activity)
        self._selection_changed()

    def showEvent(self, event: QShowEvent) -> None:
        if not self._columns_sized:  # sized from the font the theme gives the list, known once shown
            self._columns_sized = True
            self._size_columns()
        super().showEvent(event)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:  # a theme switch: the failure red follows it
            self.model.error_color = error_color(self.palette())
            self.tree.viewport().update()
        super().changeEvent(event)

    def _size_columns(self) -> None:
        self.tree.ensurePolished()
        header = self.tree.header()
        metrics = self.tree.fontMetrics()
        header.setStretchLastSection(False)
        widths = {
            OPERATION: metrics.horizontalAdvance("Push yolov8n.onnx to line A") + 24,
            DEVICES: metrics.horizontalAdvance("999 devices") + 24,
            PROGRESS: metrics.horizontalAdvance(WORKING) * 2 + 24,
            ELAPSED: metrics.horizontalAdvance("59 min 59 s") + 24,
        }
        for column, width in widths.items():
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(column, width)
        # What it is doing and how it ended are the long texts: they share whatever width is left.
        for column in (DETAIL, OUTCOME):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)

    # -- operator actions ----------------------------------------------------------------------

    def selected_activities(self) -> list[Activity]:
        rows = sorted({index.row() for index in self.tree.selectionModel().selectedRows()})
        return [a for a in (self.model.activity(self.model.index(row, 0)) for row in rows) if a is not None]

    @Slot()
    def cancel_selected(self) -> None:
        for activity in self.selected_activities():
            if activity.running:
                activity.cancel()

    @Slot()
    def clear_finished(self) -> None:
        self.model.clear_finished()

    def log_lines(self) -> list[str]:
        """One "HH:MM:SS title — outcome" line per finished activity, oldest first; Clear finished keeps them."""
        return list(self._log)

    # -- keeping the view current --------------------------------------------------------------

    @Slot(object)
    def _watch(self, activity: Activity) -> None:
        activity.changed.connect(self._log_if_finished)
        self._log_activity(activity)

    @Slot()
    def _log_if_finished(self) -> None:
        activity = self.sender()
        if isinstance(activity, Activity):
            self._log_activity(activity)

    def _log_activity(self, activity: Activity) -> None:
        if activity.running or activity.finished is None or activity.id in self._logged:
            return
        self._logged.add(activity.id)
        activity.changed.disconnect(self._log_if_finished)
        # `finished` is monotonic; the log wants the wall-clock time it ended.
        ended = datetime.now() - timedelta(seconds=time.monotonic() - activity.finished)
        outcome = outcome_text(activity)
        if activity.state == FAILED:
            outcome = f"failed: {outcome}"
        line = f"{ended:%H:%M:%S} {visible_text(activity.title)} — {outcome}"
        self._log.append(line)
        self.log_added.emit(line)

    @Slot()
    def _selection_changed(self) -> None:
        selected = self.selected_activities()
        self.cancel_action.setEnabled(any(a.running for a in selected))
        self.clear_action.setEnabled(any(not a.running for a in self.model.activities()))
        failed = next((a for a in selected if shown_error(a) is not None), None)
        if failed is not None and (failed is not self._shown_failure or failed.running):
            self.error_panel.show_activity(failed)  # a finished activity once: it does not change
        self._shown_failure = failed
        self.error_panel.setVisible(failed is not None)


def _plain_label(name: str, parent: QWidget) -> QLabel:
    label = QLabel(parent)
    label.setObjectName(name)
    label.setTextFormat(Qt.TextFormat.PlainText)  # messages carry device strings: never rich text
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


__all__ = ["COLUMNS", "ActivityModel", "ActivityView", "ErrorPanel", "ProgressDelegate", "outcome_text", "shown_error"]
