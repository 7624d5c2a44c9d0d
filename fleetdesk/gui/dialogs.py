"""The operator's decisions about which devices FleetDesk knows: sweeping a network for them, adding one by hand.

Each dialog is opened with `open()`, does no I/O, and emits one signal with exactly what the operator chose. The
trust and sign-in dialogs are in sign_in_dialogs.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.discovery.manual import is_host
from fleetdesk.discovery.sweep import DEFAULT_MAX_HOSTS, sweep_targets
from fleetdesk.errors import FleetDeskError

# Credentials, CredentialsDialog and TrustDialog are re-exported: window_devices (and lab tests) import them here.
from fleetdesk.gui.sign_in_dialogs import display_text, plain_label

# -- sweep -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """What a typed network means: the network to sweep and its host count, or why it cannot be swept."""

    network: str | None
    hosts: int
    problem: str | None


def plan_sweep(text: str, max_hosts: int = DEFAULT_MAX_HOSTS) -> SweepPlan:
    """Read the operator's text as a network to sweep, with the same limits the sweep itself enforces."""
    typed = text.strip()
    if not typed:
        return SweepPlan(None, 0, "Type the devices' network, like 192.168.10.0/24, or one address.")
    # ip_network() only says "does not appear to be an IPv4 or IPv6 network"; the class for the family names
    # the actual fault ("'33' is not a valid netmask").
    family = ipaddress.IPv6Network if ":" in typed else ipaddress.IPv4Network
    try:
        network = family(typed, strict=False)
    except ValueError as exc:
        return SweepPlan(None, 0, f"{display_text(typed, 60)} is not a network: {exc}. "
                                  "Type it like 192.168.10.0/24, or one address.")
    try:
        hosts = len(sweep_targets(str(network), max_hosts=max_hosts))
    except FleetDeskError as exc:
        reason = exc.message[:1].upper() + exc.message[1:]
        return SweepPlan(None, 0, f"{reason}: {exc.fix}." if exc.fix else f"{reason}.")
    return SweepPlan(str(network), hosts, None)


class SweepDialog(QDialog):
    """Confirms a sweep of a typed network: how many addresses it touches, on which port, and refuses too many."""

    confirmed = Signal(str, int)  # network, port

    def __init__(self, cidr: str = "", port: int = 22, max_hosts: int = DEFAULT_MAX_HOSTS,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("SweepDialog")
        self.setWindowTitle("Sweep a network for devices")
        self.max_hosts = max_hosts
        layout = QVBoxLayout(self)
        layout.addWidget(plain_label("Sweep a network for devices", self, "Heading"))
        form = QFormLayout()
        self.cidr_edit = QLineEdit(cidr, self)
        self.cidr_edit.setObjectName("CidrEdit")
        self.cidr_edit.setPlaceholderText("e.g. 192.168.10.0/24")
        form.addRow(plain_label("Network", self, wrap=False), self.cidr_edit)
        self.port_spin = QSpinBox(self)
        self.port_spin.setObjectName("PortSpin")
        self.port_spin.setRange(1, 65535)
        self.port_spin.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)  # five digits, not a row
        self.port_spin.setValue(port)
        form.addRow(plain_label("Port", self, wrap=False), self.port_spin)
        layout.addLayout(form)
        self.summary = plain_label("", self, "SweepSummary")
        layout.addWidget(self.summary)
        self.reason = plain_label("", self, "ErrorText")
        layout.addWidget(self.reason)
        self.reminder = plain_label("", self, "SweepReminder")
        layout.addWidget(self.reminder)
        buttons = QDialogButtonBox(self)
        self.sweep_button = buttons.addButton("Sweep", QDialogButtonBox.ButtonRole.AcceptRole)
        self.sweep_button.setObjectName("SweepButton")
        # As wide as its longest label from the start, so it does not jump about while the operator types.
        self.sweep_button.setText(f"Sweep {max_hosts} addresses")
        self.sweep_button.setMinimumWidth(self.sweep_button.sizeHint().width())
        self.cancel_button = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.sweep_button.clicked.connect(self._confirm)
        self.cancel_button.clicked.connect(self.reject)
        layout.addWidget(buttons)
        self.plan = plan_sweep(cidr, max_hosts)
        self.cidr_edit.textChanged.connect(self._update)
        self.port_spin.valueChanged.connect(self._update)
        self._update()
        # Wide enough that the longest refusal wraps onto two or three lines, not ten.
        self.setMinimumWidth(self.fontMetrics().averageCharWidth() * 70)

    def _update(self) -> None:
        self.plan = plan_sweep(self.cidr_edit.text(), self.max_hosts)
        port = self.port_spin.value()
        self.summary.setVisible(self.plan.problem is None)
        self.reason.setVisible(self.plan.problem is not None)
        self.reason.setText(self.plan.problem or "")
        if self.plan.problem is not None:
            self.summary.setText("")
            self.sweep_button.setText("Sweep")
        else:
            count = self.plan.hosts
            noun = "address" if count == 1 else "addresses"
            typed = self.cidr_edit.text().strip()
            assert self.plan.network is not None  # plan_sweep names a network exactly when it finds no problem
            # "198.18.1.77/24" is read as the whole 198.18.1.0/24: say so, rather than sweep a surprise.
            network = ipaddress.ip_network(self.plan.network)
            same = ipaddress.ip_address(typed.partition("/")[0]) == network.network_address
            means = "" if same else f" ({display_text(typed, 60)} means the network {self.plan.network})"
            self.summary.setText(f"{self.plan.network}: {count} {noun} will be contacted{means}.")
            self.sweep_button.setText(f"Sweep {count} {noun}")
        self.sweep_button.setEnabled(self.plan.problem is None)
        self.reminder.setText(
            f"FleetDesk will open a TCP connection to port {port} on every one of these addresses. Only sweep "
            "the factory's own device network: sweeping other networks can set off intrusion alarms and break "
            "site rules.")

    def _confirm(self) -> None:
        if self.plan.network is None:
            return
        self.confirmed.emit(self.plan.network, self.port_spin.value())
        self.accept()


# -- add a device ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewDevice:
    """A device the operator adds by hand."""

    host: str
    port: int
    username: str
    name: str | None


def host_problem(text: str) -> str | None:
    """Why `text` is not a host name or address, or None (the same rule as discovery's manual add)."""
    host = text.strip()
    if not host:
        return "Type the device's host name or address (e.g. line2-pi-07 or 192.168.10.21)."
    if not is_host(host):
        return (f"{display_text(host, 60)} is neither an address nor a host name: host names have only letters, "
                "digits, '-', '_' and '.'.")
    return None


class AddDeviceDialog(QDialog):
    """Adds one device by host name or address, with its SSH port, user and an optional name."""

    submitted = Signal(object)  # NewDevice

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("AddDeviceDialog")
        self.setWindowTitle("Add a device")
        self.setMinimumWidth(self.fontMetrics().averageCharWidth() * 72)
        layout = QVBoxLayout(self)
        layout.addWidget(plain_label("Add a device", self, "Heading"))
        form = QFormLayout()
        self.host_edit = QLineEdit(self)
        self.host_edit.setObjectName("HostEdit")
        self.host_edit.setPlaceholderText("line2-pi-07.local or 192.168.10.21")
        form.addRow(plain_label("Host name or address", self, wrap=False), self.host_edit)
        self.port_spin = QSpinBox(self)
        self.port_spin.setObjectName("PortSpin")
        self.port_spin.setRange(1, 65535)
        self.port_spin.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)  # five digits, not a row
        self.port_spin.setValue(22)
        form.addRow(plain_label("SSH port", self, wrap=False), self.port_spin)
        self.username_edit = QLineEdit("root", self)
        self.username_edit.setObjectName("UsernameEdit")
        form.addRow(plain_label("User name", self, wrap=False), self.username_edit)
        self.name_edit = QLineEdit(self)
        self.name_edit.setObjectName("NameEdit")
        self.name_edit.setPlaceholderText("optional, e.g. press 4 camera")
        form.addRow(plain_label("Name", self, wrap=False), self.name_edit)
        layout.addLayout(form)
        self.reason = plain_label("", self, "ErrorText")
        layout.addWidget(self.reason)
        buttons = QDialogButtonBox(self)
        self.add_button = buttons.addButton("Add device", QDialogButtonBox.ButtonRole.AcceptRole)
        self.add_button.setObjectName("AddButton")
        self.cancel_button = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.add_button.clicked.connect(self._submit)
        self.cancel_button.clicked.connect(self.reject)
        layout.addWidget(buttons)
        for edit in (self.host_edit, self.username_edit, self.name_edit):
            edit.textChanged.connect(self._validate)
        self._validate()

    def problem(self) -> str | None:
        problem = host_problem(self.host_edit.text())
        if problem:
            return problem
        user = self.username_edit.text().strip()
        if not user or any(c.isspace() for c in user):
            return "Type the device's login name (for example root), without spaces."
        return None

    def new_device(self) -> NewDevice:
        name = self.name_edit.text().strip()
        return NewDevice(self.host_edit.text().strip(), self.port_spin.value(), self.username_edit.text().strip(),
                         name or None)

    def _validate(self) -> None:
        problem = self.problem()
        self.reason.setText(problem or "")
        self.add_button.setEnabled(problem is None)

    def _submit(self) -> None:
        if self.problem() is not None:
            return
        self.submitted.emit(self.new_device())
        self.accept()
