"""Form fields the dialogs share."""

from __future__ import annotations

from PySide6.QtWidgets import QDoubleSpinBox, QWidget


def number_spin(parent: QWidget, low: float, high: float, decimals: int, suffix: str = "", value: float = 0.0, *,
                tracking: bool = True) -> QDoubleSpinBox:
    """A number field from `low` to `high` with `decimals` places and a unit `suffix` (" ms", " %"), at `value`.
    tracking=False: valueChanged only once the operator finished typing (Enter, or leaving the field)."""
    spin = QDoubleSpinBox(parent)
    spin.setRange(low, high)
    spin.setDecimals(decimals)
    spin.setSuffix(suffix)
    spin.setValue(value)
    spin.setKeyboardTracking(tracking)
    return spin
