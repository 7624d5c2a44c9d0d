"""The live telemetry dashboard: the fleet overview, one device's full plots under it, and the alert log.

It reads the bridge's `TelemetryStore` and `AlertMonitor` (subscribing to the store, never doing I/O) and
says what the operator wants in signals: stream these devices or stop, edit the thresholds, open a device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from PySide6.QtCore import QEvent, QModelIndex, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QHideEvent, QKeyEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.telemetry.alerts import AlertEvent, AlertMonitor
from fleetdesk.telemetry.buffers import Arrival, TelemetryStore

from .device_plots import DevicePlots
from .overview import DEVICE_ID_ROLE, FIRST_METRIC_COLUMN, OverviewModel, OverviewRow, SparklineDelegate, colours
from .text import tooltip_text, visible_text

ALERT_LOG_LIMIT = 500  # newest events kept in the list (the inventory keeps them all)
AGES_MS = 2000  # how often "no data for N s" is brought up to date while the dashboard is on screen


class Dashboard(QWidget):
    """See the module docstring. The window feeds it devices (`set_devices`, `upsert`, `remove`), stream
    states (`set_stream_state`) and alert events (`add_alert`)."""

    stream_requested = Signal(list, bool)  # device ids (empty: every trusted device), True to start
    thresholds_requested = Signal()
    device_opened = Signal(int)

    def __init__(self, store: TelemetryStore, monitor: AlertMonitor, parent: QWidget | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self.setObjectName("Dashboard")
        self.store = store
        self.monitor = monitor
        self._names: dict[int, str] = {}

        self.model = OverviewModel(store, monitor, self, clock=clock)
        self.table = QTableView(self)
        self.table.setObjectName("TelemetryOverview")
        self.table.setModel(self.model)
        self.delegate = SparklineDelegate(self.model, self.table)
        self.table.setItemDelegate(self.delegate)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(30)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        header = self.table.horizontalHeader()
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.resizeSection(0, 140)
        header.resizeSection(1, 120)
        header.setMinimumSectionSize(90)
        for column in range(FIRST_METRIC_COLUMN, self.model.columnCount()):
            # The sparklines share what is left: wider on a wide window, every metric still in view.
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(self._open_index)
        self.model.flushed.connect(self._update_summary)
        self.table.installEventFilter(self)
        self.table.selectionModel().selectionChanged.connect(lambda *_a: self._update_buttons())

        self.start_button = QPushButton("Start streaming", self)
        self.start_button.setObjectName("StartStreaming")
        self.start_button.setToolTip(tooltip_text(
            "Stream telemetry from the selected devices (every trusted device if none "
            "is selected), once a second"))
        self.start_button.clicked.connect(lambda: self.stream_requested.emit(self.selected_ids(), True))
        self.stop_button = QPushButton("Stop streaming", self)
        self.stop_button.setObjectName("StopStreaming")
        self.stop_button.setToolTip(tooltip_text(
            "Stop the selected devices' streams (every stream if none is selected)"))
        self.stop_button.clicked.connect(lambda: self.stream_requested.emit(self.selected_ids(), False))
        self.thresholds_button = QPushButton("Alert thresholds…", self)
        self.thresholds_button.setObjectName("ThresholdsButton")
        self.thresholds_button.clicked.connect(self.thresholds_requested.emit)
        self.summary = QLabel(self)
        self.summary.setObjectName("TelemetrySummary")

        self.plots = DevicePlots(store, monitor, self)
        self.plots.closed.connect(self.close_device)
        self.plots.hide()
        self.alert_log = QListWidget(self)
        self.alert_log.setObjectName("AlertLog")
        self.alert_log.setToolTip(tooltip_text("Alerts raised and cleared, newest first"))
        self.alert_log.setWordWrap(True)

        bar = QHBoxLayout()
        bar.addWidget(self.start_button)
        bar.addWidget(self.stop_button)
        bar.addWidget(self.thresholds_button)
        bar.addStretch(1)
        bar.addWidget(self.summary)
        top = QWidget(self)
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(bar)
        top_layout.addWidget(self.table, 1)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.setObjectName("DashboardSplitter")
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.plots)
        log_pane = QWidget(self)
        log_layout = QVBoxLayout(log_pane)
        log_layout.setContentsMargins(0, 2, 0, 0)
        log_layout.setSpacing(2)
        log_layout.addWidget(QLabel("Alerts, newest first", log_pane))
        log_layout.addWidget(self.alert_log, 1)
        self.splitter.addWidget(log_pane)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([500, 0, 110])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.splitter)

        self._ages = QTimer(self)
        self._ages.setInterval(AGES_MS)
        self._ages.timeout.connect(self._refresh_ages)
        self._unsubscribe: Callable[[], None] | None = store.subscribe(self._arrived)
        self._update_summary()
        self._update_buttons()

    # -- devices, from the window ---------------------------------------------------------------------------

    def set_devices(self, devices: Sequence[tuple[int, str, str]]) -> None:
        """(device id, name, status) of every device in the inventory, in the order to show them."""
        self._names = {d: n for d, n, _s in devices}
        self.model.set_devices([OverviewRow(d, n, s) for d, n, s in devices])
        self._update_summary()

    def upsert(self, device_id: int, name: str, status: str) -> None:
        self._names[device_id] = name
        self.model.upsert(device_id, name, status)

    def remove(self, device_id: int) -> None:
        self._names.pop(device_id, None)
        self.model.remove(device_id)
        if self.plots.device_id == device_id:
            self.close_device()

    def set_stream_state(self, device_id: int, text: str, live: bool, detail: str = "") -> None:
        """What the device's telemetry stream is doing, in words (from the hub, through the bridge)."""
        self.model.set_stream(device_id, text, live, detail)
        self._update_summary()

    def selected_ids(self) -> list[int]:
        rows = self.table.selectionModel().selectedRows(0)
        return [self.model.row_at(i.row()).device_id for i in rows]

    def select_devices(self, device_ids: Sequence[int]) -> None:
        selection = self.table.selectionModel()
        selection.clearSelection()
        for device_id in device_ids:
            row = self.model.row_of(device_id)
            if row is not None:
                selection.select(self.model.index(row, 0),
                                 selection.SelectionFlag.Select | selection.SelectionFlag.Rows)

    # -- samples and alerts --------------------------------------------------------------------------------

    def _arrived(self, arrival: Arrival) -> None:
        self.model.mark(arrival.device_id)
        if arrival.device_id == self.plots.device_id and self.plots.isVisible():
            self.plots.mark()

    def add_alert(self, event: AlertEvent) -> None:
        """Log an alert event at the top of the list and repaint the device's row now (not at the next flush)."""
        name = visible_text(self._names.get(event.device_id, f"device {event.device_id}"))
        moment = time.strftime("%H:%M:%S", time.localtime(event.at))
        item = QListWidgetItem(f"{moment}  {name}: {event.message}")
        item.setData(DEVICE_ID_ROLE, event.device_id)
        palette = colours()
        item.setForeground(QColor(palette["error"] if event.kind == "raised" else palette["ok"]))
        self.alert_log.insertItem(0, item)
        while self.alert_log.count() > ALERT_LOG_LIMIT:
            self.alert_log.takeItem(self.alert_log.count() - 1)
        row = self.model.row_of(event.device_id)
        if row is not None:
            self.model.dataChanged.emit(self.model.index(row, 0), self.model.index(row, self.model.columnCount() - 1))
        self._update_summary()

    def thresholds_changed(self) -> None:
        """The monitor has new thresholds: redraw the bounds and every row's colours."""
        self.plots.set_thresholds()
        if self.model.rowCount():
            self.model.dataChanged.emit(self.model.index(0, 0),
                                        self.model.index(self.model.rowCount() - 1, self.model.columnCount() - 1))
        self._update_summary()

    # -- the device view -------------------------------------------------------------------------------------

    def open_device(self, device_id: int) -> None:
        """Show one device's full plots under the overview."""
        name = self._names.get(device_id, f"device {device_id}")
        self.plots.show_device(device_id, name)  # drawn before it is shown: one layout, one paint
        self.plots.show()
        sizes = self.splitter.sizes()
        if sizes[1] < 200:
            log_height = min(sizes[2], 80)
            total = (sum(sizes) or 800) - log_height
            self.splitter.setSizes([total // 3, total - total // 3, log_height])
        self.device_opened.emit(device_id)

    def close_device(self) -> None:
        self.plots.stop()
        self.plots.device_id = None
        self.plots.hide()

    def _open_index(self, index: QModelIndex) -> None:
        if index.isValid():
            self.open_device(self.model.row_at(index.row()).device_id)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.table and event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent) \
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self._open_index(self.table.currentIndex())
            return True
        return super().eventFilter(watched, event)

    # -- housekeeping ----------------------------------------------------------------------------------------

    def _update_summary(self) -> None:
        ids = self.model.device_ids()
        alerting = len(self.monitor.alerting() & set(ids))
        text = f"{self.model.fresh_count()} of {len(ids)} device(s) streaming"
        if alerting:
            text += f" · {alerting} alerting"
        self.summary.setText(text)

    def _update_buttons(self) -> None:
        chosen = bool(self.selected_ids())
        self.start_button.setText("Start streaming" if chosen else "Start streaming all")
        self.stop_button.setText("Stop streaming" if chosen else "Stop all streams")

    def _refresh_ages(self) -> None:
        self.model.refresh_ages()
        self._update_summary()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._ages.start()

    def hideEvent(self, event: QHideEvent) -> None:
        self._ages.stop()
        super().hideEvent(event)

    def refresh_theme(self) -> None:
        self.plots.refresh_theme()
        self.table.viewport().update()

    def shutdown(self) -> None:
        """Stop listening to the store and every timer (the window is closing)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._ages.stop()
        self.model.stop()
        self.plots.stop()
