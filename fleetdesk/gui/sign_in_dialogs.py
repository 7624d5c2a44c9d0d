"""The operator's decisions about signing in to devices: trusting a host key, and the credentials to sign in with.

Kept apart from dialogs.py (sweeping and adding devices), which takes its plain-text helpers from here. Each dialog
is opened with `open()`, does no I/O, and emits one signal with exactly what the operator chose.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from PySide6.QtCore import QDir, Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.gui.text import visible_text
from fleetdesk.inventory.records import HostKey
from fleetdesk.transport.credentials import KeyringStatus
from fleetdesk.transport.hostkey import PublicKey

# What OpenSSH calls each key type, and the file under /etc/ssh that holds it on a stock sshd.
_KEY_KINDS = {
    "ssh-ed25519": ("ED25519", "ssh_host_ed25519_key.pub"),
    "ssh-rsa": ("RSA", "ssh_host_rsa_key.pub"),
    "ecdsa-sha2-nistp256": ("ECDSA", "ssh_host_ecdsa_key.pub"),
    "ecdsa-sha2-nistp384": ("ECDSA", "ssh_host_ecdsa_key.pub"),
    "ecdsa-sha2-nistp521": ("ECDSA", "ssh_host_ecdsa_key.pub"),
}

_SOURCES = {"operator": "trusted by the operator", "known_hosts": "imported from known_hosts"}


def display_text(text: str, limit: int = 80) -> str:
    """A device-supplied string as the operator should see it, elided in the middle beyond `limit` characters.

    Controls and invisible characters are spelled out as in the device pane, by `visible_text` (a U+202E override
    would otherwise reverse what the operator reads); the elision never cuts a spelled-out character in two.
    """
    tokens = [visible_text(ch) for ch in text]  # one token per character, however it is spelled out
    if sum(map(len, tokens)) <= limit:
        return "".join(tokens)
    room = limit - 1  # the ellipsis takes one
    head: list[str] = []
    used = 0
    for token in tokens:
        if used + len(token) > room // 2:
            break
        head.append(token)
        used += len(token)
    tail: list[str] = []
    for token in reversed(tokens[len(head):]):
        if used + len(token) > room:
            break
        tail.append(token)
        used += len(token)
    return "".join(head) + "…" + "".join(reversed(tail))


def plain_label(text: str, parent: QWidget, name: str = "", *, wrap: bool = True, selectable: bool = False) -> QLabel:
    """A plain-text label: device strings are never interpreted as HTML."""
    label = QLabel(parent)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    label.setWordWrap(wrap)
    if name:
        label.setObjectName(name)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                      | Qt.TextInteractionFlag.TextSelectableByKeyboard)
    return label


def column_headings(grid: QGridLayout, parent: QWidget, titles: tuple[str, ...]) -> None:
    """Bold plain-text headings in row 0 of `grid`, one per column."""
    for column, text in enumerate(titles):
        heading = plain_label(text, parent, "ColumnHeading")
        bold = heading.font()
        bold.setBold(True)
        heading.setFont(bold)
        grid.addWidget(heading, 0, column)


def _monospace(label: QLabel, scale: float = 1.0) -> QLabel:
    """A fixed-width font, `scale` times the usual size; the theme's QSS (by object name) overrides the size."""
    font = label.font()
    if scale != 1.0 and font.pointSizeF() > 0:
        font.setPointSizeF(font.pointSizeF() * scale)
    font.setFamilies([QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()])
    font.setStyleHint(font.StyleHint.Monospace)
    label.setFont(font)
    return label


def _key_kind(key_type: str) -> tuple[str, str]:
    return _KEY_KINDS.get(key_type, (display_text(key_type, 40), "ssh_host_*_key.pub"))


def _when(moment: datetime) -> str:
    # The inventory stores UTC; a naive value from SQLite is UTC too.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- trust -------------------------------------------------------------------------------------------------


class TrustDialog(QDialog):
    """Asks the operator to trust a device's host key: a new one, or one that replaces a key trusted before.

    `trusted` carries the presented fingerprint, and only ever follows a click on the trust button.
    """

    trusted = Signal(str)

    def __init__(self, device_label: str, presented: PublicKey, pinned: Sequence[HostKey] = (), address: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("TrustDialog")
        self.presented = presented
        self.key_changed = bool(pinned)
        name = display_text(device_label)
        kind, key_file = _key_kind(presented.key_type)
        layout = QVBoxLayout(self)

        self.warning: QFrame | None = None
        self.checked_box: QCheckBox | None = None
        self.pinned_labels: list[QLabel] = []
        if self.key_changed:
            self.setWindowTitle(f"The host key of {display_text(device_label, 40)} changed")
            self.warning = QFrame(self)
            self.warning.setObjectName("KeyChangedWarning")
            banner = QVBoxLayout(self.warning)
            title = plain_label(f"⚠  The identity of {name} CHANGED", self.warning, "Heading")
            body = plain_label(
                "The device presents a different host key from the one FleetDesk trusted. Either it was "
                "reinstalled or its SSH keys were regenerated, or someone in the middle is impersonating it. "
                "Do not trust the new key unless you know why it changed.", self.warning)
            banner.addWidget(title)
            banner.addWidget(body)
            layout.addWidget(self.warning)
            layout.addSpacing(6)
        else:
            self.setWindowTitle(f"Trust {display_text(device_label, 40)}?")
            layout.addWidget(plain_label(f"Trust {name}?", self, "Heading"))
            layout.addWidget(plain_label(
                "FleetDesk has never connected to this device, so it cannot know yet whether this key really is "
                "the device's own. Compare the fingerprint below with the one the device prints on its own "
                "console (its screen or serial line):", self))
        command = _monospace(plain_label(f"ssh-keygen -lf /etc/ssh/{key_file}", self, "ConsoleCommand",
                                    wrap=False, selectable=True))
        command.setIndent(16)

        self.fingerprint_label = _monospace(plain_label(presented.fingerprint, self, "FingerprintLabel", wrap=False,
                                                   selectable=True), 1.5)
        self.copy_button = QPushButton("Copy", self)
        self.copy_button.setObjectName("CopyFingerprint")
        self.copy_button.setAutoDefault(False)
        self.copy_button.clicked.connect(self._copy)
        where = f" by {display_text(address, 60)}" if address and address not in device_label else ""
        presented_caption = plain_label(f"{kind} host key presented{where}", self, "KeyType")

        if self.key_changed:
            columns = QGridLayout()
            columns.setHorizontalSpacing(24)
            column_headings(columns, self, ("Trusted until now", "Presented now"))
            # Row by row, so captions, fingerprints and the lines under them align across the two columns.
            for index, key in enumerate(pinned):
                old_kind, _ = _key_kind(key.key_type)
                fp = _monospace(plain_label(key.fingerprint, self, "PinnedFingerprint", wrap=False, selectable=True),
                                1.2)
                fp.setFrameShape(QFrame.Shape.StyledPanel)  # a box like the presented one's (the theme may restyle)
                fp.setMargin(4)
                self.pinned_labels.append(fp)
                source = _SOURCES.get(key.source, f"source: {display_text(key.source, 40)}")
                row = 1 + 3 * index
                columns.addWidget(plain_label(f"{old_kind} host key", self, "KeyType"), row, 0,
                                  Qt.AlignmentFlag.AlignBottom)
                columns.addWidget(fp, row + 1, 0)
                columns.addWidget(plain_label(f"since {_when(key.pinned_at)}, {source}", self, "PinnedSince"),
                                  row + 2, 0, Qt.AlignmentFlag.AlignTop)
            columns.addWidget(presented_caption, 1, 1, Qt.AlignmentFlag.AlignBottom)
            columns.addWidget(self.fingerprint_label, 2, 1)
            # Copy goes under the fingerprint rather than beside it, so the two columns fit a 1366-pixel screen.
            columns.addWidget(self.copy_button, 3, 1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
            columns.setColumnStretch(1, 1)
            layout.addLayout(columns)
            layout.addSpacing(8)
            layout.addWidget(plain_label("Before you replace it, compare the new fingerprint with the one the device "
                                    "prints on its own console:", self))
            layout.addWidget(command)
            self.checked_box = QCheckBox("I checked the new fingerprint at the device", self)
            self.checked_box.setObjectName("CheckedAtDevice")
            layout.addWidget(self.checked_box, 0, Qt.AlignmentFlag.AlignLeft)  # clickable only where it shows
        else:
            layout.addWidget(command)
            layout.addWidget(plain_label("Trust it only if the two are the same, character for character.", self))
            layout.addSpacing(8)
            layout.addWidget(presented_caption)
            fingerprint_row = QHBoxLayout()
            fingerprint_row.addWidget(self.fingerprint_label, 1)
            fingerprint_row.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignVCenter)
            layout.addLayout(fingerprint_row)

        buttons = QDialogButtonBox(self)
        self.trust_button = QPushButton("Replace the trusted key" if self.key_changed else "Trust this key", self)
        self.trust_button.setObjectName("TrustButton")
        # Enter must never trust: the trust button is never a default, not even while it has focus.
        self.trust_button.setAutoDefault(False)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("CancelButton")
        buttons.addButton(self.trust_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(self.cancel_button, QDialogButtonBox.ButtonRole.RejectRole)
        self.cancel_button.setDefault(True)
        self.trust_button.clicked.connect(self._trust)
        self.cancel_button.clicked.connect(self.reject)
        layout.addSpacing(4)
        layout.addWidget(buttons)
        if self.checked_box is not None:
            self.trust_button.setEnabled(False)
            self.checked_box.toggled.connect(self.trust_button.setEnabled)
        self.cancel_button.setFocus()

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.presented.fingerprint)
        self.copy_button.setText("Copied")

    def _trust(self) -> None:
        if self.checked_box is not None and not self.checked_box.isChecked():
            return
        self.trusted.emit(self.presented.fingerprint)
        self.accept()


# -- credentials -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """How FleetDesk signs in to the devices: exactly one of a private key file or a password."""

    username: str
    key_file: str | None
    password: str | None = field(default=None, repr=False)


def devices_heading(device_labels: Sequence[str], shown: int = 3) -> str:
    """"line2-pi-07" for one device, "5 devices: a, b, c and 2 more" for several."""
    names = [display_text(label, 60) for label in device_labels]
    if len(names) == 1:
        return names[0]
    listed = ", ".join(names[:shown])
    rest = len(names) - shown
    return f"{len(names)} devices: {listed}" + (f" and {rest} more" if rest > 0 else "")


def key_file_problem(path: str) -> str | None:
    """Why `path` cannot be used as a private key file, or None."""
    if not path.strip():
        return "Choose the private key file (for example ~/.ssh/id_ed25519)."
    full = os.path.expanduser(path.strip())
    shown = display_text(path.strip(), 120)
    if not os.path.exists(full):
        return f"There is no file at {shown}: choose an existing private key file."
    if os.path.isdir(full):
        return f"{shown} is a folder: choose the private key file inside it."
    if not os.access(full, os.R_OK):
        return f"{shown} cannot be read by you: fix its permissions (chmod 600, owned by you)."
    if full.endswith(".pub"):
        return f"{shown} is the public half of a key: choose the private key file, without .pub."
    return None


class CredentialsDialog(QDialog):
    """User name and a key file or a password for one or more devices; passwords go only to the OS keyring."""

    submitted = Signal(object)  # Credentials

    def __init__(self, device_labels: Sequence[str], username: str, keyring: KeyringStatus, key_file: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("CredentialsDialog")
        self.setWindowTitle("Sign-in credentials")
        self.setMinimumWidth(self.fontMetrics().averageCharWidth() * 80)
        self.keyring = keyring
        self.file_dialog: QFileDialog | None = None
        layout = QVBoxLayout(self)
        self.heading = plain_label(f"Sign-in for {devices_heading(device_labels)}", self, "Heading")
        layout.addWidget(self.heading)

        form = QFormLayout()
        self.username_edit = QLineEdit(username, self)
        self.username_edit.setObjectName("UsernameEdit")
        self.username_edit.setPlaceholderText("the device's login name, e.g. root")
        form.addRow(plain_label("User name", self, wrap=False), self.username_edit)

        self.key_radio = QRadioButton("Key file", self)
        self.password_radio = QRadioButton("Password", self)
        self._mode = QButtonGroup(self)
        self._mode.addButton(self.key_radio)
        self._mode.addButton(self.password_radio)
        modes = QHBoxLayout()
        modes.addWidget(self.key_radio)
        modes.addWidget(self.password_radio)
        modes.addStretch(1)
        form.addRow(plain_label("Sign in with", self, wrap=False), modes)

        self.key_file_edit = QLineEdit(key_file, self)
        self.key_file_edit.setObjectName("KeyFileEdit")
        self.key_file_edit.setPlaceholderText("~/.ssh/id_ed25519")
        self.browse_button = QPushButton("Browse…", self)
        self.browse_button.setAutoDefault(False)
        self.browse_button.clicked.connect(self._browse)
        key_row = QHBoxLayout()
        key_row.addWidget(self.key_file_edit, 1)
        key_row.addWidget(self.browse_button)
        form.addRow(plain_label("Key file", self, wrap=False), key_row)

        self.password_edit = QLineEdit(self)
        self.password_edit.setObjectName("PasswordEdit")
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.show_password = QPushButton("Show", self)
        self.show_password.setObjectName("ShowPassword")
        self.show_password.setCheckable(True)
        self.show_password.setAutoDefault(False)
        self.show_password.toggled.connect(self._show_password)
        password_row = QHBoxLayout()
        password_row.addWidget(self.password_edit, 1)
        password_row.addWidget(self.show_password)
        form.addRow(plain_label("Password", self, wrap=False), password_row)
        layout.addLayout(form)

        self.keyring_problem: QFrame | None = None
        self.keyring_note: QLabel | None = None
        if keyring.usable:
            self.keyring_note = plain_label(
                f"The password is stored in the OS keyring ({display_text(keyring.backend, 80)}), never in "
                "FleetDesk's database.", self, "KeyringNote")
            layout.addWidget(self.keyring_note)
        else:
            self.password_radio.setEnabled(False)
            self.password_radio.setText("Password (needs the OS keyring)")
            self.keyring_problem = QFrame(self)
            self.keyring_problem.setObjectName("KeyringProblem")
            box = QVBoxLayout(self.keyring_problem)
            box.addWidget(plain_label("Passwords cannot be stored until the OS keyring works. Key files still work.",
                                 self.keyring_problem, "KeyringProblemTitle"))
            self.keyring_problem_text = plain_label(
                f"Problem: {keyring.message}\nFix: {keyring.fix or 'see the keyring documentation'}",
                self.keyring_problem, "KeyringProblemText", selectable=True)
            box.addWidget(self.keyring_problem_text)
            layout.addWidget(self.keyring_problem)

        self.reason = plain_label("", self, "ErrorText")
        layout.addWidget(self.reason)
        buttons = QDialogButtonBox(self)
        self.save_button = buttons.addButton("Save", QDialogButtonBox.ButtonRole.AcceptRole)
        self.save_button.setObjectName("SaveButton")
        self.cancel_button = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.save_button.clicked.connect(self._submit)
        self.cancel_button.clicked.connect(self.reject)
        layout.addWidget(buttons)

        if key_file or not keyring.usable:
            self.key_radio.setChecked(True)
        else:
            self.password_radio.setChecked(True)
        for edit in (self.username_edit, self.key_file_edit, self.password_edit):
            edit.textChanged.connect(self._validate)
        self.key_radio.toggled.connect(self._validate)
        self._validate()

    def problem(self) -> str | None:
        """Why the credentials cannot be saved yet, or None."""
        user = self.username_edit.text().strip()
        if not user:
            return "Type the user name FleetDesk signs in as (for example root)."
        if any(c.isspace() for c in user):
            return "A user name has no spaces: type the device's login name."
        if self.key_radio.isChecked():
            return key_file_problem(self.key_file_edit.text())
        if not self.password_edit.text():
            return "Type the password, or sign in with a key file."
        return None

    def credentials(self) -> Credentials:
        user = self.username_edit.text().strip()
        if self.key_radio.isChecked():
            return Credentials(user, os.path.expanduser(self.key_file_edit.text().strip()), None)
        return Credentials(user, None, self.password_edit.text())

    def _validate(self) -> None:
        by_key = self.key_radio.isChecked()
        for widget in (self.key_file_edit, self.browse_button):
            widget.setEnabled(by_key)
        for widget in (self.password_edit, self.show_password):
            widget.setEnabled(not by_key)
        problem = self.problem()
        self.reason.setText(problem or "")
        self.save_button.setEnabled(problem is None)

    def _show_password(self, shown: bool) -> None:
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Normal if shown else QLineEdit.EchoMode.Password)
        self.show_password.setText("Hide" if shown else "Show")

    def _browse(self) -> None:
        start = os.path.expanduser("~/.ssh")
        dialog = QFileDialog(self, "Choose the private key file", start if os.path.isdir(start) else "")
        dialog.setObjectName("KeyFileChooser")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.setFilter(dialog.filter() | QDir.Filter.Hidden)  # keys live in ~/.ssh, a hidden folder
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(self.key_file_edit.setText)
        dialog.destroyed.connect(self._forget_file_dialog)
        self.file_dialog = dialog
        dialog.open()

    def _forget_file_dialog(self) -> None:
        self.file_dialog = None

    def _submit(self) -> None:
        if self.problem() is not None:
            return
        self.submitted.emit(self.credentials())
        self.accept()
