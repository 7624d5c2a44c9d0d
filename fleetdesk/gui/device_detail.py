"""The device detail pane: everything FleetDesk knows about one device, and the profile it matched and why.

Device strings are data: every value is a plain-text, selectable label, with control and bidi characters made visible.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from PySide6.QtCore import QPoint, QSize, Qt, Signal, Slot
from PySide6.QtGui import QFont, QFontDatabase, QGuiApplication, QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.errors import FleetDeskError
from fleetdesk.gui.icons import STATUSES, status_icon
from fleetdesk.gui.text import visible_text
from fleetdesk.inventory.records import Device, HostKey
from fleetdesk.profiles.matcher import ProfileMatch
from fleetdesk.transport.sshconfig import SSHConfigEntry

EMPTY_HINT = "Select a device to see what FleetDesk knows about it"
NOT_PROBED = "Not probed yet — Probe to identify"
NOT_TRUSTED = "Not trusted yet — use Trust…"

_SOURCES = {"mdns": "mDNS announcement", "sweep": "network sweep", "manual": "added by hand"}
_KEY_SOURCES = {"operator": "trusted by the operator", "known_hosts": "imported from known_hosts"}
# Characters that reorder or hide text (bidi overrides, zero-width marks, line separators) and control
# characters are shown as escapes, so a name cannot pretend to be another one or break the layout;
# general categories per Unicode: Cc control, Cf format, Zl/Zp separators.
# Where a long unbroken run (a 255-byte mDNS label) may wrap on screen: a zero-width space every
# _RUN characters. DeviceText takes them out again when the operator copies.
_BREAK = "\u200b"
_RUN = 40
_LONG_RUN = re.compile(rf"\S{{{_RUN + 1},}}")


def _breakable(text: str) -> str:
    def split(run: re.Match[str]) -> str:
        word = run.group()
        return _BREAK.join(word[i:i + _RUN] for i in range(0, len(word), _RUN))
    return _LONG_RUN.sub(split, text)


def size_text(megabytes: int) -> str:
    """A size the probe reported in MiB, as people read it: "7.6 GB", "512 MB"."""
    if megabytes >= 1024:
        return f"{megabytes / 1024:.1f} GB"
    return f"{megabytes} MB"


def ssh_config_text(config: SSHConfigEntry | FleetDeskError) -> str:
    """The lines of the operator's ssh config that apply to a device, one a line: "FILE:LINE: Directive value
    (Host pattern)"; or that none does, or why the file cannot be read."""
    if isinstance(config, FleetDeskError):
        return visible_text(f"Cannot be read: {config.message}" + (f" — {config.fix}" if config.fix else ""))
    if config.config_path is None:
        return "No ~/.ssh/config — FleetDesk's own settings apply"
    if not config.applied:
        return visible_text(f"No line of {config.config_path} applies to this device")
    return "\n".join(visible_text(str(line)) for line in config.applied)


def when_text(moment: datetime | None) -> str:
    """A stored moment in the laptop's local time; the inventory keeps UTC (naive values are UTC)."""
    if moment is None:
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone():%Y-%m-%d %H:%M}"


class DeviceDetail(QWidget):
    """Identity, connection, trust, hardware, profile and groups of the selected device.

    Holds no I/O: `show_device` gets plain records; the buttons say what the operator wants.
    """

    probe_requested = Signal(int)  # device id
    trust_requested = Signal(int)  # device id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("DeviceDetail")
        self._device: Device | None = None
        self._rows: list[tuple[str, str, str]] = []
        self._shown: tuple[object, ...] = ()  # what show_device was last given
        self._form: QFormLayout  # the current device's form and its widget, rebuilt by show_device
        self._content: QWidget
        self._section_title = ""

        self.empty_hint = QLabel(EMPTY_HINT, self)
        self.empty_hint.setObjectName("EmptyHint")
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)

        self.scroll_area = QScrollArea(self)
        self.scroll_area.setObjectName("DeviceDetailScroll")
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty_hint)
        layout.addWidget(self.scroll_area)
        self.show_device(None, match=None, host_keys=(), status="")

    def device(self) -> Device | None:
        return self._device

    def rows(self) -> list[tuple[str, str, str]]:
        """What the pane shows, as (section, label, value) in display order: for copying and for tests."""
        return list(self._rows)

    def show_device(self, device: Device | None, *, match: ProfileMatch | None,
                    host_keys: Sequence[HostKey], status: str,
                    ssh_config: SSHConfigEntry | FleetDeskError | None = None) -> None:
        """`ssh_config`: what the operator's ssh config says for the device (None: not looked up)."""
        shown = (device, match, tuple(host_keys), status, ssh_config)
        if device is not None and shown == self._shown:
            return  # a live update that changes nothing here keeps the pane (and the operator's text selection)
        self._shown = shown
        same = device is not None and self._device is not None and device.id == self._device.id
        scroll_to = self.scroll_area.verticalScrollBar().value() if same else 0
        self._device = device
        self._rows = []
        self.empty_hint.setVisible(device is None)
        self.scroll_area.setVisible(device is not None)
        if device is None:
            self.scroll_area.setWidget(QWidget())  # drops the previous device's labels
            return
        content = QWidget()
        content.setObjectName("DeviceDetailContent")
        column = QVBoxLayout(content)
        column.addLayout(self._header(device, status, content))
        # One form for every section, so the names line up down the whole pane.
        self._form = QFormLayout()
        # A field too wide for the pane (a fingerprint, a long unbroken name) moves under its name
        # instead of pushing the pane wider than the window.
        self._form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self._form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self._content = content
        self._identity(device)
        self._connection(device, ssh_config)
        self._trust(host_keys)
        if device.probed_at is not None:
            self._hardware(device)
        self._profile(device, match)
        self._groups(device)
        column.addLayout(self._form)
        column.addStretch(1)
        self.scroll_area.setWidget(content)  # QScrollArea deletes the widget it showed before
        self.scroll_area.verticalScrollBar().setValue(scroll_to)

    # -- sections ------------------------------------------------------------------------------

    def _header(self, device: Device, status: str, parent: QWidget) -> QHBoxLayout:
        row = QHBoxLayout()
        title = _value_label(visible_text(device.name), parent, "Heading")  # the theme's heading style
        title.setAccessibleName("Device name")
        row.addWidget(title, 1)
        if status:
            if status in STATUSES:
                badge = QLabel(parent)
                badge.setObjectName("DeviceStatusIcon")
                badge.setTextFormat(Qt.TextFormat.PlainText)
                side = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
                badge.setPixmap(status_icon(status).pixmap(QSize(side, side), self.devicePixelRatioF()))
                row.addWidget(badge, 0, Qt.AlignmentFlag.AlignVCenter)
            text = _value_label(status, parent, "DeviceStatus")
            text.setWordWrap(False)
            text.setProperty("status", status)  # for the theme: QLabel#DeviceStatus[status="offline"]
            row.addWidget(text, 0, Qt.AlignmentFlag.AlignVCenter)
            self._rows.append(("", "Status", status))
        return row

    def _identity(self, device: Device) -> None:
        self._section("Identity")
        self._row("Name", visible_text(device.name))
        self._row("Hostname", visible_text(device.hostname) or "—")
        self._row("Addresses", "\n".join(visible_text(a) for a in device.addresses) or "none known")
        if device.mdns_names:
            self._row("mDNS names", "\n".join(visible_text(n) for n in device.mdns_names))
        if device.facts.machine_id:
            self._row("Machine ID", visible_text(device.facts.machine_id), mono=True)
        self._row("First seen", when_text(device.first_seen))
        self._row("Last seen", when_text(device.last_seen))
        self._row("Found by", _SOURCES.get(device.source, visible_text(device.source)))

    def _connection(self, device: Device, ssh_config: SSHConfigEntry | FleetDeskError | None) -> None:
        self._section("Connection")
        self._row("User", visible_text(device.username))
        self._row("Port", str(device.port))
        self._row("SSH library", visible_text(device.transport))
        stored = device.password_account is not None
        self._row("Password in keyring", "Yes — in the OS keyring" if stored else "No")
        if ssh_config is not None:
            # Which of the operator's lines gave it a user, key or port: the answer to "why this key?".
            self._row("SSH config", ssh_config_text(ssh_config), mono=True)

    def _trust(self, host_keys: Sequence[HostKey]) -> None:
        self._section("Trust")
        if not host_keys:
            self._row("Host key", NOT_TRUSTED)
            self._button("Trust…", "TrustButton", self._trust_clicked)
            return
        for key in host_keys:
            cell = QWidget(self._content)
            lines = QVBoxLayout(cell)
            lines.setContentsMargins(0, 0, 0, 0)
            lines.setSpacing(0)
            # Not "FingerprintLabel": that is the trust dialog's large comparison style.
            fingerprint = _value_label(visible_text(key.fingerprint), cell, "DetailFingerprint", breakable=False)
            fingerprint.setFont(_monospace())
            source = _KEY_SOURCES.get(key.source, visible_text(key.source))
            note = _value_label(f"{source} on {when_text(key.pinned_at)}", cell, "DetailNote")
            lines.addWidget(fingerprint)
            lines.addWidget(note)
            key_type = visible_text(key.key_type)
            self._form.addRow(_name_label(key_type, self._content), cell)
            self._rows.append(("Trust", key_type, f"{fingerprint.shown_text()}\n{note.shown_text()}"))

    def _hardware(self, device: Device) -> None:
        facts = device.facts
        self._section("Hardware & OS")
        rows: list[tuple[str, str]] = [("Architecture", facts.arch)]
        if facts.cpu_model or facts.cpu_count:
            cpu = facts.cpu_model or "CPU"
            rows.append(("CPU", f"{cpu} × {facts.cpu_count}" if facts.cpu_count else cpu))
        if facts.ram_mb:
            rows.append(("Memory", size_text(facts.ram_mb)))
        if facts.disk_total_mb:
            rows.append(("Disk", f"{size_text(facts.disk_free_mb)} free of {size_text(facts.disk_total_mb)}"))
        rows += [("Model", facts.model), ("Tegra release", facts.tegra_release),
                 ("DMI vendor", facts.dmi_vendor), ("DMI product", facts.dmi_product)]
        if facts.gpu:
            memory = size_text(facts.gpu_memory_mb) if facts.gpu_memory_mb else "shares system memory"
            rows.append(("GPU", f"{facts.gpu}, {memory}"))
        rows += [("OS", facts.os_name), ("Kernel", facts.kernel),
                 ("Python", facts.python or "not installed — the FleetDesk agent needs python3")]
        for label, value in rows:
            if value:  # an x86 PC has no Tegra release, a Pi no DMI: say nothing rather than "—" ten times
                self._row(label, visible_text(value))
        self._row("Probed", when_text(device.probed_at))

    def _profile(self, device: Device, match: ProfileMatch | None) -> None:
        self._section("Profile")
        if device.probed_at is None:
            self._row("Profile", NOT_PROBED)
            self._button("Probe", "ProbeButton", self._probe_clicked)
        elif match is not None:
            self._row("Profile", visible_text(match.profile))
            why = "\n".join(f"• {visible_text(reason)}" for reason in match.reasons)
            self._row("Why", why or "the profile has no rules: it matches any device")
            if match.others:
                self._row("Also matched", ", ".join(visible_text(o) for o in match.others))
        elif device.profile:
            self._row("Profile", visible_text(device.profile))
            self._row("Why", "Probe again to see which rules matched")
        else:
            self._row("Profile", "No device profile matches it — add one under device_profiles/ "
                                 "that describes this hardware, then probe again")

    def _groups(self, device: Device) -> None:
        self._section("Groups")
        groups = ", ".join(visible_text(g) for g in device.groups)
        self._row("Member of", groups or "No group — drag the device onto a group to add it")

    # -- building blocks -----------------------------------------------------------------------

    def _section(self, title: str) -> None:
        label = QLabel(self._content)
        label.setObjectName("DetailSection")
        label.setTextFormat(Qt.TextFormat.PlainText)
        label.setText(title)
        font = QFont(label.font())
        font.setBold(True)
        label.setFont(font)
        if self._form.rowCount():
            label.setContentsMargins(0, label.fontMetrics().height() // 2, 0, 0)  # air between sections
        self._form.addRow(label)  # spans both columns
        self._section_title = title

    def _row(self, label: str, value: str, *, mono: bool = False) -> None:
        field = _value_label(value, self._content, "DetailValue")
        if mono:
            field.setFont(_monospace())
        self._form.addRow(_name_label(label, self._content), field)
        self._rows.append((self._section_title, label, value))

    def _button(self, text: str, name: str, slot: Callable[[], None]) -> None:
        button = QPushButton(text, self._content)
        button.setObjectName(name)
        button.clicked.connect(slot)
        row = QHBoxLayout()
        row.addWidget(button)
        row.addStretch(1)
        self._form.addRow(_name_label("", self._content), row)

    @Slot()
    def _probe_clicked(self) -> None:
        if self._device is not None:
            self.probe_requested.emit(self._device.id)

    @Slot()
    def _trust_clicked(self) -> None:
        if self._device is not None:
            self.trust_requested.emit(self._device.id)


class DeviceText(QLabel):
    """Plain, selectable text that wraps even where the device sent no space; a copy gives the text as shown."""

    def __init__(self, text: str, parent: QWidget, name: str, *, breakable: bool = True) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.setTextFormat(Qt.TextFormat.PlainText)  # device strings are data, never markup
        self.setText(_breakable(text) if breakable else text)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)

    def shown_text(self) -> str:
        """The text without the invisible wrap points."""
        return self.text().replace(_BREAK, "")

    def copy(self, everything: bool = False) -> None:
        chosen = self.text() if everything or not self.hasSelectedText() else self.selectedText()
        QGuiApplication.clipboard().setText(chosen.replace(_BREAK, ""))

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy()
            event.accept()
            return
        super().keyPressEvent(event)

    @Slot(QPoint)
    def _menu(self, where: QPoint) -> None:
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        copy = menu.addAction("Copy")
        copy.setEnabled(self.hasSelectedText())
        copy.triggered.connect(lambda: self.copy())
        menu.addAction("Copy all").triggered.connect(lambda: self.copy(everything=True))
        menu.popup(self.mapToGlobal(where))


def _value_label(text: str, parent: QWidget, name: str, *, breakable: bool = True) -> DeviceText:
    return DeviceText(text, parent, name, breakable=breakable)


def _name_label(text: str, parent: QWidget) -> QLabel:
    label = QLabel(parent)
    label.setObjectName("DetailName")
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    # With a multi-line value, the name sits level with its first line, not halfway down.
    label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    return label


def _monospace() -> QFont:
    return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)


__all__ = ["EMPTY_HINT", "NOT_PROBED", "NOT_TRUSTED", "DeviceDetail", "DeviceText", "size_text", "ssh_config_text",
           "visible_text", "when_text"]
