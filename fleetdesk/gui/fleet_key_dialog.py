"""Asks the operator whether devices that trust another fleet key get this laptop's, showing both fingerprints.

Opened with `open()`, does no I/O; `replace_confirmed` (the device ids) only ever follows a click on the replace
button. Closing it any other way changes nothing: the devices stay as provisioning left them, untouched.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFrame, QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .bridge_views import FleetKeyRequest
from .sign_in_dialogs import column_headings, display_text, plain_label


def _fingerprint_label(text: str, parent: QWidget, name: str) -> QLabel:
    label = plain_label(text, parent, name, wrap=False, selectable=True)
    font = label.font()
    font.setFamilies([QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()])
    font.setStyleHint(font.StyleHint.Monospace)
    label.setFont(font)
    return label


class FleetKeyDialog(QDialog):
    """"Replace the fleet key?" for the devices of one provisioning run that trust another key."""

    replace_confirmed = Signal(list)  # list[int]: the device ids to provision again with this laptop's key

    def __init__(self, request: FleetKeyRequest, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("FleetKeyDialog")
        self.request = request
        count = len(request.devices)
        first = display_text(request.devices[0][1], 40)
        self.setWindowTitle(f"{first} trusts another fleet key" if count == 1
                            else f"{count} devices trust another fleet key")
        layout = QVBoxLayout(self)
        warning = QFrame(self)
        warning.setObjectName("FleetKeyWarning")
        banner = QVBoxLayout(warning)
        banner.addWidget(plain_label("⚠  Replace the fleet key?", warning, "Heading"))
        banner.addWidget(plain_label(
            ("This device trusts" if count == 1 else "These devices trust") + " another fleet key than this "
            "laptop's, so only models signed with that key run there (another laptop's fleet, most likely). With "
            "this laptop's key the models signed here run, and every model signed with the old key is refused. "
            f"Nothing was changed on {'it' if count == 1 else 'them'} yet. Replace the key only if you know why "
            "it differs.", warning))
        layout.addWidget(warning)

        columns = QGridLayout()
        columns.setHorizontalSpacing(24)
        column_headings(columns, self, ("Device", "Fleet key on the device"))
        self.device_key_labels: list[QLabel] = []
        for row, (_device_id, name, key) in enumerate(request.devices, start=1):
            columns.addWidget(plain_label(display_text(name, 60), self, "DeviceName"), row, 0)
            label = _fingerprint_label(key, self, "DeviceFleetKey")
            self.device_key_labels.append(label)
            columns.addWidget(label, row, 1)
        columns.setColumnStretch(1, 1)
        layout.addLayout(columns)
        layout.addSpacing(6)
        layout.addWidget(plain_label("This laptop's fleet key:", self, "KeyType"))
        self.laptop_key_label = _fingerprint_label(request.laptop_key, self, "LaptopFleetKey")
        layout.addWidget(self.laptop_key_label)

        buttons = QDialogButtonBox(self)
        self.replace_button = QPushButton("Replace the fleet key" if count == 1
                                          else f"Replace it on {count} devices", self)
        self.replace_button.setObjectName("ReplaceFleetKeyButton")
        # Enter must never replace a fleet's key: the button is never a default, not even while it has focus.
        self.replace_button.setAutoDefault(False)
        self.keep_button = QPushButton("Keep the device's key" if count == 1 else "Keep their keys", self)
        self.keep_button.setObjectName("KeepFleetKeyButton")
        buttons.addButton(self.replace_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(self.keep_button, QDialogButtonBox.ButtonRole.RejectRole)
        self.keep_button.setDefault(True)
        self.replace_button.clicked.connect(self._replace)
        self.keep_button.clicked.connect(self.reject)
        layout.addSpacing(4)
        layout.addWidget(buttons, 0, Qt.AlignmentFlag.AlignRight)
        self.keep_button.setFocus()

    def _replace(self) -> None:
        self.replace_confirmed.emit(self.request.device_ids)
        self.accept()
