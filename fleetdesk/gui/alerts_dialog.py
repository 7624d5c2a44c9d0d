"""The alert thresholds dialog: one line per metric (on/off, above or below, bound, hold time, hysteresis).

Opened with `open()`; does no I/O and emits `submitted(list[Threshold])` with exactly what the operator set.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.errors import FleetDeskError
from fleetdesk.telemetry.alerts import DEFAULT_THRESHOLDS, Threshold
from fleetdesk.telemetry.sample import METRIC_LABELS, METRICS

from .fields import number_spin

# The error counter is cumulative since the model server started, so a bound on it would never clear.
EDITABLE = tuple(m for m in METRICS if m != "infer_errors")
# What a rule starts at when the operator switches it on (bound, above, hold s, hysteresis).
_STARTING = {"load1": (4.0, True, 30.0, 0.5), "gpu_power_w": (20.0, True, 10.0, 2.0),
             "infer_rate": (1.0, False, 30.0, 0.5), "gpu_temp_c": (85.0, True, 5.0, 5.0)}


def _starting(metric: str) -> Threshold:
    for threshold in DEFAULT_THRESHOLDS:
        if threshold.metric == metric:
            return threshold
    if metric in _STARTING:
        bound, above, hold, hysteresis = _STARTING[metric]
        return Threshold(metric, bound, above, hold, hysteresis, enabled=False)
    if metric.endswith("_ms"):
        return Threshold(metric, 100.0, True, 10.0, 10.0, enabled=False)
    return Threshold(metric, 90.0, True, 10.0, 5.0, enabled=False)


class _Line:
    """The widgets of one metric's rule."""

    def __init__(self, metric: str, grid: QGridLayout, row: int, parent: QWidget) -> None:
        self.metric = metric
        self.enabled = QCheckBox(METRIC_LABELS[metric], parent)
        self.enabled.setObjectName(f"enabled-{metric}")
        self.side = QComboBox(parent)
        self.side.addItem("above", True)
        self.side.addItem("below", False)
        decimals = 2 if metric.startswith("drift_") else 1  # a PSI bound is 0.25, a shift 1.5 standard deviations
        self.bound = number_spin(parent, -1e6, 1e6, decimals, tracking=False)
        self.bound.setObjectName(f"bound-{metric}")
        self.hold = number_spin(parent, 0, 86400, 0, " s", tracking=False)
        self.hold.setObjectName(f"hold-{metric}")
        self.hysteresis = number_spin(parent, 0, 1e6, decimals, tracking=False)
        self.hysteresis.setObjectName(f"hysteresis-{metric}")
        for column, widget in enumerate((self.enabled, self.side, self.bound, self.hold, self.hysteresis)):
            grid.addWidget(widget, row, column)
        self.enabled.toggled.connect(self._enable)

    def _enable(self, on: bool) -> None:
        for widget in (self.side, self.bound, self.hold, self.hysteresis):
            widget.setEnabled(on)

    def show(self, threshold: Threshold) -> None:
        self.enabled.setChecked(threshold.enabled)
        self.side.setCurrentIndex(0 if threshold.above else 1)
        self.bound.setValue(threshold.bound)
        self.hold.setValue(threshold.hold_s)
        self.hysteresis.setValue(threshold.hysteresis)
        self._enable(threshold.enabled)

    def threshold(self) -> Threshold:
        return Threshold(self.metric, self.bound.value(), bool(self.side.currentData()), self.hold.value(),
                         self.hysteresis.value(), self.enabled.isChecked())


class ThresholdsDialog(QDialog):
    """See the module docstring; rules that are switched off are kept (with their values) for next time."""

    submitted = Signal(list)  # list[Threshold]

    def __init__(self, thresholds: Sequence[Threshold], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ThresholdsDialog")
        self.setWindowTitle("Alert thresholds")
        intro = QLabel("A device is marked, and an event logged, when a value stays past its bound for the hold "
                       "time. The alert clears once the value is back past the bound by the hysteresis.", self)
        intro.setWordWrap(True)
        grid = QGridLayout()
        for column, heading in enumerate(("Metric", "", "Bound", "Hold for", "Hysteresis")):
            label = QLabel(heading, self)
            label.setStyleSheet("font-weight: 600")
            grid.addWidget(label, 0, column)
        self.lines = {metric: _Line(metric, grid, n + 1, self) for n, metric in enumerate(EDITABLE)}
        self.error = QLabel(self)
        self.error.setObjectName("ErrorText")
        self.error.setWordWrap(True)
        self.error.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
                                   | QDialogButtonBox.StandardButton.RestoreDefaults, self)
        buttons.accepted.connect(self._submit)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults).clicked.connect(
            lambda: self.show_thresholds(DEFAULT_THRESHOLDS))
        self.buttons = buttons
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(grid)
        layout.addWidget(self.error)
        layout.addWidget(buttons, 0, Qt.AlignmentFlag.AlignRight)
        self.show_thresholds(thresholds)

    def show_thresholds(self, thresholds: Sequence[Threshold]) -> None:
        given = {t.metric: t for t in thresholds}
        for metric, line in self.lines.items():
            line.show(given.get(metric) or _starting(metric))

    def thresholds(self) -> list[Threshold]:
        return [line.threshold() for line in self.lines.values()]

    def _submit(self) -> None:
        try:
            chosen = self.thresholds()
        except FleetDeskError as exc:  # a bound the Threshold refuses: say which, keep the dialog open
            self.error.setText(str(exc))
            self.error.show()
            return
        self.submitted.emit(chosen)
        self.accept()
