"""The Rollouts tab: every rollout, and the chosen one live: waves as rows with each device's state, transfer
progress with bytes/s and ETA, the chosen device's health gates against their bounds, and the operator's buttons.

It only renders what the bridge sends (`set_rollouts`, `show_detail`, `add_event`) and says what the operator
asked for in `action_requested(action, rollout_id, options)`; the bridge turns that into engine calls.

The colours of states and statuses, the gate plot and the texts of the cells are in rollout_display.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.rollouts import DeviceRow, RolloutRow
from fleetdesk.rollout.engine import RolloutEvent

from .activities import human_bytes, human_duration
from .bridge_views import RolloutDetail
from .fleet_model import plain
from .rollout_display import (
    GatePlot,
    ShadowPlot,
    StateColourDelegate,
    gate_notes_html,
    gate_summary,
    journal_text,
    state_colour,
    status_colour,
)
from .text import tooltip_text

ROLLOUT_ROLE = Qt.ItemDataRole.UserRole + 31
DEVICE_ROLE = Qt.ItemDataRole.UserRole + 32
WAVE_ROLE = Qt.ItemDataRole.UserRole + 33
LIST_COLUMNS = ("ID", "Model", "Status", "Started", "Actor")
WAVE_COLUMNS = ("Wave / device", "Profile", "State", "Sent", "Gates", "Last step")
# Which buttons each rollout status allows (fleetdesk/rollout/engine.py: pause, resume, approve, abort, rollback).
ENABLED: Mapping[str, frozenset[str]] = {
    "planned": frozenset({"pause", "resume", "abort"}),
    "running": frozenset({"pause", "abort", "take-over"}),
    "paused": frozenset({"resume", "abort", "rollback"}),
    "waiting-approval": frozenset({"approve", "pause", "abort", "rollback"}),
    "aborted": frozenset({"rollback"}),
    "done": frozenset({"rollback"}),
    "failed": frozenset({"rollback"}),
    "rolling-back": frozenset(),
    "rolled-back": frozenset(),
}


@dataclass
class _Transfer:
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta: float | None = None


class RolloutsView(QWidget):
    """See the module docstring."""

    # "pause"|"resume"|"approve"|"abort"|"rollback"|"take-over", rollout id, options
    action_requested = Signal(str, int, object)
    rollout_chosen = Signal(int)  # the rollout to show (the bridge answers with show_detail)
    wizard_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("RolloutsView")
        self._rows: dict[int, RolloutRow] = {}
        self._wanted: int | None = None  # a rollout chosen before its row was listed
        self.detail: RolloutDetail | None = None
        self.transfers: dict[int, dict[int, _Transfer]] = {}  # rollout -> device -> its transfer
        # rollout -> device -> (requests compared, agreement, p95 ratio) of its shadow step, as events brought them
        self.shadow_points: dict[int, dict[int, list[tuple[float, float | None, float | None]]]] = {}
        self.events: dict[int, list[str]] = {}  # rollout -> its last event messages

        self.list = QTreeWidget(self)
        self.list.setObjectName("RolloutList")
        self.list.setHeaderLabels(list(LIST_COLUMNS))
        self.list.setRootIsDecorated(False)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.itemSelectionChanged.connect(self._chosen)
        self.list.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.list.setItemDelegateForColumn(2, StateColourDelegate(self.list))
        self.new_button = QPushButton("Roll out…", self)
        self.new_button.setToolTip(tooltip_text("Plan a new staged rollout of a model"))
        self.new_button.clicked.connect(self.wizard_requested)
        self.hint = QLabel("No rollouts yet. Drop a model on devices or a group, or use Roll out… to plan one.", self)
        self.hint.setObjectName("EmptyHint")
        self.hint.setWordWrap(True)
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.new_button)
        left_layout.addWidget(self.list, 1)
        left_layout.addWidget(self.hint)

        self.title = QLabel("", self)
        self.title.setObjectName("Heading")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.reason = QLabel("", self)
        self.reason.setObjectName("RolloutReason")
        self.reason.setWordWrap(True)
        self.reason.setTextFormat(Qt.TextFormat.PlainText)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("RolloutProgress")
        self.progress.setRange(0, 1000)
        self.progress_label = QLabel("", self)
        self.progress_label.setObjectName("RolloutTransfer")
        self.buttons: dict[str, QPushButton] = {}
        bar = QHBoxLayout()
        for action, text, tip in (
                ("pause", "Pause", "No new step starts; a device mid-step finishes that step"),
                ("resume", "Resume", "Drive the rollout again from where it stopped"),
                ("approve", "Approve next wave", "The wave reached its success threshold: start the next one"),
                ("abort", "Abort", "Devices not yet switched are skipped; a device under verification rolls back"),
                ("take-over", "Take over", "The FleetDesk driving it stopped (crashed, lid closed, network gone): "
                 "wait for its lease to run out, then drive it on from the journal"),
                ("rollback", "Roll back ▾", "Put devices back on the model they ran before")):
            button = QPushButton(text, self)
            button.setObjectName(f"Rollout_{action}")
            button.setToolTip(tooltip_text(tip))
            button.setStyleSheet("min-width: 0px; padding-left: 10px; padding-right: 10px;")
            self.buttons[action] = button
            bar.addWidget(button)
            if action != "rollback":
                button.clicked.connect(lambda _c=False, a=action: self._act(a, {}))
        bar.addStretch(1)
        self.rollback_menu = QMenu(self)
        self.rollback_device = self.rollback_menu.addAction("This device", lambda: self._rollback("device"))
        self.rollback_wave = self.rollback_menu.addAction("This wave", lambda: self._rollback("wave"))
        self.rollback_menu.addAction("The whole rollout", lambda: self._rollback("rollout"))
        self.buttons["rollback"].setMenu(self.rollback_menu)

        self.waves = QTreeWidget(self)
        self.waves.setObjectName("RolloutWaves")
        self.waves.setHeaderLabels(list(WAVE_COLUMNS))
        self.waves.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.waves.itemSelectionChanged.connect(self._device_chosen)
        self.waves.setItemDelegateForColumn(2, StateColourDelegate(self.waves))
        header = self.waves.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.gate_plot = GatePlot(self)
        self.gate_notes = QLabel("", self)  # why a gate has no bar, or what else its verdict noted
        self.gate_notes.setObjectName("GateNotes")
        self.gate_notes.setWordWrap(True)
        self.gate_notes.setTextFormat(Qt.TextFormat.RichText)
        self.event_log = QLabel("", self)
        self.event_log.setObjectName("RolloutEvents")
        self.event_log.setWordWrap(True)
        self.event_log.setTextFormat(Qt.TextFormat.PlainText)

        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.title)
        right_layout.addWidget(self.reason)
        right_layout.addLayout(bar)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.progress_label, 2)
        right_layout.addLayout(progress_row)
        gates = QWidget(right)
        gates_layout = QVBoxLayout(gates)
        gates_layout.setContentsMargins(0, 0, 0, 0)
        gates_layout.setSpacing(2)
        gates_layout.addWidget(self.gate_plot, 1)
        gates_layout.addWidget(self.gate_notes)
        # The shadow step's live plot, in a tab beside the gates; the tab bar shows only for a plan with one.
        self.shadow_plot = ShadowPlot(self)
        self.plot_tabs = QTabWidget(right)
        self.plot_tabs.setObjectName("RolloutPlots")
        self.plot_tabs.setDocumentMode(True)
        self.plot_tabs.addTab(gates, "Health gates")
        self.plot_tabs.addTab(self.shadow_plot, "Shadow step")
        lower = QSplitter(Qt.Orientation.Vertical, right)
        lower.setObjectName("RolloutLower")
        lower.addWidget(self.waves)
        lower.addWidget(self.plot_tabs)
        lower.setCollapsible(1, False)  # the plot never shrinks below the height its captions need
        lower.setSizes([260, 240])
        right_layout.addWidget(lower, 1)
        right_layout.addWidget(self.event_log)

        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("RolloutSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([400, 880])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.show_detail(None)

    # -- the list ---------------------------------------------------------------------------------------------

    def set_rollouts(self, rows: Sequence[RolloutRow]) -> None:
        before = self.selected_id()
        wanted = self._wanted if any(r.id == self._wanted for r in rows) else None
        chosen = wanted if wanted is not None else before
        self._rows = {r.id: r for r in rows}
        self.list.blockSignals(True)
        self.list.clear()
        for row in sorted(rows, key=lambda r: r.id, reverse=True):
            item = QTreeWidgetItem([str(row.id), plain(row.model_ref), row.status,
                                    row.created_at.astimezone().strftime("%m-%d %H:%M"), plain(row.actor)])
            item.setData(0, ROLLOUT_ROLE, row.id)
            item.setForeground(2, QBrush(QColor(status_colour(row.status))))
            if row.paused_reason:
                item.setToolTip(2, tooltip_text(plain(row.paused_reason)))
            self.list.addTopLevelItem(item)
            if row.id == chosen:
                item.setSelected(True)
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self.hint.setVisible(not rows)
        if wanted is not None:
            self._wanted = None
            if wanted != before:
                self.rollout_chosen.emit(wanted)
        if chosen is None and rows:
            self.select(max(self._rows))
        elif self.detail is not None and self.detail.row.id in self._rows:
            self._enable(self._rows[self.detail.row.id].status)

    def select(self, rollout_id: int) -> None:
        """Choose this rollout in the list; one not listed yet is chosen when `set_rollouts` brings its row."""
        for i in range(self.list.topLevelItemCount()):
            item = self.list.topLevelItem(i)
            assert item is not None  # i < topLevelItemCount()
            if item.data(0, ROLLOUT_ROLE) == rollout_id:
                self._wanted = None
                self.list.setCurrentItem(item)
                item.setSelected(True)
                return
        self._wanted = rollout_id

    def selected_id(self) -> int | None:
        items = self.list.selectedItems()
        return int(items[0].data(0, ROLLOUT_ROLE)) if items else None

    def _chosen(self) -> None:
        rid = self.selected_id()
        if rid is not None:
            self.rollout_chosen.emit(rid)

    # -- one rollout ------------------------------------------------------------------------------------------

    def show_detail(self, detail: RolloutDetail | None) -> None:
        """Show a rollout's waves and devices (or nothing); keeps the chosen device chosen."""
        previous = self.selected_device()
        self.detail = detail
        self.waves.blockSignals(True)
        self.waves.clear()
        if detail is None:
            self.title.setText("No rollout chosen")
            self.reason.setText("")
            self.reason.setVisible(False)  # an empty line would take the height the gate plot needs
            self._enable("")
            self.waves.blockSignals(False)
            self._show_progress()
            self._show_gates({})
            self._show_shadow(None)
            return
        row = detail.row
        self.title.setText(f"Rollout {row.id}: {plain(row.model_ref)} — {row.status}")
        self.title.setStyleSheet(f"color: {status_colour(row.status)};")
        reason = row.paused_reason
        if row.status == "running" and row.driver is not None and row.lease_until is not None:
            host, _, pid = row.driver.rpartition(":")
            reason = (f"Driven by the FleetDesk on {plain(host)} (process {plain(pid)}), lease until "
                      f"{row.lease_until.astimezone():%H:%M:%S}; takeover: {row.plan.get('takeover', 'ask')}")
        self.reason.setText(reason)
        self.reason.setVisible(bool(reason))
        waves: dict[int, list[DeviceRow]] = {}
        for device in detail.devices:
            waves.setdefault(device.wave, []).append(device)
        transfers = self.transfers.get(row.id, {})
        for wave, members in sorted(waves.items()):
            done = sum(1 for d in members if d.state == st.DONE)
            label = f"Wave {wave + 1}" + (" (canary)" if wave == 0 and len(members) == 1 and len(waves) > 1 else "")
            head = QTreeWidgetItem([label, "", f"{done} of {len(members)} done", "", "", ""])
            head.setData(0, WAVE_ROLE, wave)
            font = head.font(0)
            font.setBold(True)
            head.setFont(0, font)
            self.waves.addTopLevelItem(head)
            for device in members:
                name = detail.names.get(device.device_id, f"device {device.device_id}")
                transfer = transfers.get(device.device_id)
                sent = device.bytes_sent
                total = transfer.total if transfer is not None else 0
                if transfer is not None and device.state == st.STAGING:
                    sent = max(sent, transfer.done)
                sent_text = (f"{human_bytes(sent)} of {human_bytes(total)}" if total else
                             human_bytes(sent) if sent else "")
                last = detail.last.get(device.device_id)
                child = QTreeWidgetItem([plain(name), plain(detail.profiles.get(device.device_id, "")),
                                         device.state, sent_text, gate_summary(device.gates),
                                         plain(device.error) or journal_text(last)])
                child.setData(0, DEVICE_ROLE, device.device_id)
                child.setData(0, WAVE_ROLE, device.wave)
                colour = QColor(state_colour(device.state))
                child.setForeground(2, QBrush(colour))
                child.setText(2, f"● {device.state}")
                tip = plain(journal_text(last)) + (f"\n{plain(device.error)}" if device.error else "")
                for column in range(len(WAVE_COLUMNS)):
                    child.setToolTip(column, tooltip_text(tip))
                head.addChild(child)
                if device.device_id == previous:
                    child.setSelected(True)
            head.setExpanded(True)
        self.waves.blockSignals(False)
        self._enable(row.status)
        self._show_progress()
        self._device_chosen()

    def device_item(self, device_id: int) -> QTreeWidgetItem | None:
        for i in range(self.waves.topLevelItemCount()):
            head = self.waves.topLevelItem(i)
            assert head is not None  # i < topLevelItemCount()
            for j in range(head.childCount()):
                child = head.child(j)
                assert child is not None  # j < childCount()
                if child.data(0, DEVICE_ROLE) == device_id:
                    return child
        return None

    def select_device(self, device_id: int) -> None:
        item = self.device_item(device_id)
        if item is not None:
            self.waves.setCurrentItem(item)
            item.setSelected(True)

    def selected_device(self) -> int | None:
        items = self.waves.selectedItems()
        value = items[0].data(0, DEVICE_ROLE) if items else None
        return int(value) if value is not None else None

    def selected_wave(self) -> int | None:
        items = self.waves.selectedItems()
        value = items[0].data(0, WAVE_ROLE) if items else None
        return int(value) if value is not None else None

    def _device_chosen(self) -> None:
        device_id = self.selected_device()
        wave = self.selected_wave()
        self.rollback_device.setEnabled(device_id is not None)
        self.rollback_wave.setEnabled(wave is not None)
        if self.detail is None or device_id is None:
            self._show_gates({})
            self._show_shadow(None)
            return
        self._show_shadow(device_id)
        row = next((d for d in self.detail.devices if d.device_id == device_id), None)
        values = (row.gates or {}).get("values") or {} if row is not None else {}
        name = self.detail.names.get(device_id, f"device {device_id}")
        self._show_gates(values, f"Health gates of {name}")

    def _show_shadow(self, device_id: int | None) -> None:
        """The device's shadow step as it ran in this window, or with no device chosen the one that shadowed last
        (the plot is shown only for a plan with a shadow step)."""
        shadow = (self.detail.row.plan.get("shadow") if self.detail is not None else None) or None
        self.plot_tabs.setTabVisible(1, shadow is not None)
        self.plot_tabs.tabBar().setVisible(shadow is not None)
        if self.detail is None or shadow is None:
            self.plot_tabs.setCurrentIndex(0)
            return
        seen = self.shadow_points.get(self.detail.row.id, {})
        if device_id is None and seen:
            device_id = list(seen)[-1]
        points = seen.get(device_id, []) if device_id is not None else []
        name = self.detail.names.get(device_id, f"device {device_id}") if device_id is not None else ""
        self.shadow_plot.show_points(points, {k: shadow.get(k) for k in ("min_agreement", "p95_ratio_max")},
                                     f"Shadow step of {name}" if name else "")

    def _show_gates(self, values: Mapping[str, Any], title: str = "") -> None:
        self.gate_plot.show_gates(values, title)
        self.gate_notes.setText(gate_notes_html(self.gate_plot.notes))
        self.gate_notes.setVisible(bool(self.gate_plot.notes))

    def _enable(self, status: str) -> None:
        allowed = ENABLED.get(status, frozenset())
        if self.detail is not None and self.detail.driven_here:
            allowed -= {"take-over"}
        for action, button in self.buttons.items():
            button.setEnabled(action in allowed)
        self.buttons["resume"].setText("Start" if status == "planned" else "Resume")

    # -- live events ------------------------------------------------------------------------------------------

    def add_event(self, event: RolloutEvent) -> None:
        """A RolloutEvent from the engine: progress updates the transfer figures at once; every event is logged."""
        if event.kind == "progress" and event.device_id is not None:
            transfer = self.transfers.setdefault(event.rollout_id, {}).setdefault(event.device_id, _Transfer())
            transfer.done, transfer.total = event.bytes_done, event.bytes_total
            transfer.rate, transfer.eta = event.rate_bytes_s, event.eta_s
            if self.detail is not None and self.detail.row.id == event.rollout_id:
                item = self.device_item(event.device_id)
                if item is not None:
                    item.setText(3, f"{human_bytes(event.bytes_done)} of {human_bytes(event.bytes_total)}")
        elif event.kind == "state" and event.device_id is not None and event.state not in (st.STAGING, None):
            ended = self.transfers.get(event.rollout_id, {}).get(event.device_id)
            if ended is not None:
                ended.rate, ended.eta = 0.0, None  # its copy ended
                ended.done = ended.total if event.state != st.FAILED else ended.done
        elif event.kind == "gates" and event.device_id is not None and event.figures is not None:
            figures = event.figures
            seen = self.shadow_points.setdefault(event.rollout_id, {})
            points = seen.pop(event.device_id, [])  # kept last: the device that shadowed last
            points.append((figures.get("compared") or 0.0, figures.get("agreement"), figures.get("p95_ratio")))
            seen[event.device_id] = points
            if self.detail is not None and self.detail.row.id == event.rollout_id and \
                    self.selected_device() in (None, event.device_id):
                self._show_shadow(event.device_id)
        if event.kind != "progress":
            log = self.events.setdefault(event.rollout_id, [])
            log.append(plain(event.message))
            del log[:-4]
        if self.detail is not None and self.detail.row.id == event.rollout_id:
            self._show_progress()

    def _show_progress(self) -> None:
        rid = self.detail.row.id if self.detail is not None else None
        transfers = list(self.transfers.get(rid, {}).values()) if rid is not None else []
        if self.detail is not None and not transfers:
            planned = {d["device_id"]: d.get("size_bytes", 0) for d in self.detail.row.resolved.get("devices", [])}
            total = sum(planned.values())
            sent = sum(min(d.bytes_sent, planned.get(d.device_id, 0)) if planned.get(d.device_id) else 0
                       for d in self.detail.devices)
            if total:
                done_devices = sum(1 for d in self.detail.devices if d.state in st.TERMINAL)
                self.progress.setValue(int(sent / total * 1000))
                self.progress_label.setText(f"{human_bytes(sent)} of {human_bytes(total)} sent; "
                                            f"{done_devices} of {len(self.detail.devices)} device(s) finished")
            else:
                self.progress.setValue(0)
                self.progress_label.setText("")
        elif transfers:
            done = sum(t.done for t in transfers)
            total = sum(t.total for t in transfers)
            rate = sum(t.rate for t in transfers if t.eta is not None)
            etas = [t.eta for t in transfers if t.eta is not None]
            self.progress.setValue(int(done / total * 1000) if total else 0)
            text = f"{human_bytes(done)} of {human_bytes(total)}"
            if rate > 0:
                text += f", {human_bytes(rate)}/s"
            if etas:
                text += f", about {human_duration(max(etas))} left"
            self.progress_label.setText(text)
        else:
            self.progress.setValue(0)
            self.progress_label.setText("")
        self.event_log.setText("\n".join(self.events.get(rid, [])) if rid is not None else "")
        self.event_log.setVisible(bool(self.event_log.text()))

    # -- buttons ----------------------------------------------------------------------------------------------

    def _act(self, action: str, options: dict[str, Any]) -> None:
        if self.detail is not None:
            # The version this view shows: another operator's action since then refuses this one (issue 23).
            self.action_requested.emit(action, self.detail.row.id, {**options, "seen_version": self.detail.row.version})

    def _rollback(self, scope: str) -> None:
        if scope == "device" and self.selected_device() is not None:
            self._act("rollback", {"device_id": self.selected_device()})
        elif scope == "wave" and self.selected_wave() is not None:
            self._act("rollback", {"wave": self.selected_wave()})
        elif scope == "rollout":
            self._act("rollback", {})

    def refresh_theme(self) -> None:
        self.gate_plot.refresh_theme()
        if self.detail is not None:
            self.show_detail(self.detail)
