"""The operator's actions on devices in the main window: discovery, probe, trust, credentials, groups, removal.

Also telemetry streaming and the alert thresholds, which are remembered in QSettings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import QInputDialog, QTabWidget

from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.errors import FleetDeskError
from fleetdesk.telemetry.alerts import Threshold, thresholds_from_json, thresholds_to_json

from .alerts_dialog import ThresholdsDialog
from .bridge_views import DeviceView, FleetKeyRequest, Login, TrustRequest
from .dashboard import Dashboard
from .dialogs import AddDeviceDialog, NewDevice, SweepDialog
from .fleet_key_dialog import FleetKeyDialog
from .side_panel import DiscoveryPanel
from .sign_in_dialogs import Credentials, CredentialsDialog, TrustDialog
from .text import tooltip_text, visible_text
from .window_part import WindowPart

NOT_RECORDING = "Listening, but not recording: the inventory refuses writes"


class DeviceActions(WindowPart):
    """Mixed into MainWindow, which builds the widgets and actions declared here."""

    discovery_panel: DiscoveryPanel
    browse_action: QAction
    tabs: QTabWidget
    dashboard: Dashboard

    def set_browsing(self, on: bool) -> None:
        if on and not self.bridge.devices.browsing:
            self.bridge.devices.start_browsing(self.discovery_panel.chosen_interfaces())
        elif not on:
            self.bridge.devices.stop_browsing()
        self.browse_action.setChecked(on)

    def _browsing_changed(self, on: bool) -> None:
        self.discovery_panel.set_browsing(on)
        self.browse_action.setChecked(on)

    def _discovery_state(self, state: RecordingState) -> None:
        # "Listening" alone only while what is heard is stored. The panel is narrow (an inventory's path is long):
        # it says that nothing is recorded; its tooltip and the discovery activity say why, what is held and the fix.
        label = self.discovery_panel.state_label
        if state.error is None:
            self.discovery_panel.set_browsing(self.bridge.devices.browsing, visible_text(f"Listening; {state.text}"))
            label.setToolTip("")
            return
        self.discovery_panel.set_browsing(self.bridge.devices.browsing, NOT_RECORDING)
        fix = f"\nFix: {state.error.fix}" if state.error.fix else ""
        label.setToolTip(tooltip_text(state.text + fix))

    def _interfaces_changed(self, addresses: list[str]) -> None:
        self._qsettings().setValue("discovery/interfaces", addresses)

    def probe_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.bridge.devices.probe(ids)

    def provision_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.bridge.devices.provision(ids)

    def open_fleet_key_dialog(self, request: FleetKeyRequest) -> FleetKeyDialog:
        """Provisioning refused devices that trust another fleet key: on the operator's yes, provision them again
        with this laptop's key; otherwise they stay as they are."""
        dialog = FleetKeyDialog(request, self)
        dialog.replace_confirmed.connect(lambda ids: self.bridge.devices.provision(ids, replace_fleet_key=True))
        self._keep(dialog)
        return dialog

    def trust_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1:
            self.bridge.devices.request_trust(ids[0])

    def set_streaming(self, device_ids: Sequence[int], on: bool) -> None:
        """Start (or stop) telemetry for these devices, every trusted one if none; shows the dashboard."""
        try:
            if on:
                self.bridge.telemetry.start_streaming(device_ids)
                self.tabs.setCurrentWidget(self.dashboard)
            else:
                self.bridge.telemetry.stop_streaming(device_ids)
        except FleetDeskError as exc:
            self.statusBar().showMessage(str(exc), 15000)

    def open_thresholds_dialog(self) -> ThresholdsDialog:
        dialog = ThresholdsDialog(self.bridge.telemetry.alerts.thresholds, self)
        dialog.submitted.connect(self.set_thresholds)
        self._keep(dialog)
        return dialog

    def set_thresholds(self, thresholds: list[Threshold]) -> None:
        """Use and remember (QSettings) the operator's alert thresholds."""
        self.bridge.telemetry.set_thresholds(thresholds)
        self._qsettings().setValue("telemetry/thresholds", thresholds_to_json(thresholds))
        self.dashboard.thresholds_changed()

    def _restore_thresholds(self) -> None:
        stored = self._qsettings().value("telemetry/thresholds")
        if not isinstance(stored, str) or not stored:
            self.dashboard.thresholds_changed()
            return
        try:
            thresholds = thresholds_from_json(stored)
        except FleetDeskError as exc:
            self.statusBar().showMessage(f"Alert thresholds: {exc}; using the defaults", 15000)
            self.dashboard.thresholds_changed()
            return
        self.bridge.telemetry.set_thresholds(thresholds)
        self.dashboard.thresholds_changed()

    def open_trust_dialog(self, request: TrustRequest) -> TrustDialog:
        device = request.device
        dialog = TrustDialog(device.name, request.presented, request.pinned, device.address, self)
        dialog.trusted.connect(lambda fingerprint: self.bridge.devices.trust(device.id, fingerprint))
        self._keep(dialog)
        return dialog

    def open_credentials_dialog(self) -> None:
        views = self.selected_views()
        if not views:
            return
        self._credentials_task = asyncio.ensure_future(self._open_credentials(views))

    async def _open_credentials(self, views: list[DeviceView]) -> CredentialsDialog:
        status = await self.bridge.devices.keyring_status()  # may wait on D-Bus: off the loop
        first = views[0].device
        dialog = CredentialsDialog([v.device.name for v in views], first.username, status,
                                   first.identity_file or "", self)
        ids = [v.id for v in views]

        def submitted(credentials: Credentials) -> None:
            self.bridge.devices.set_login(ids, Login(credentials.username, credentials.key_file, credentials.password))

        dialog.submitted.connect(submitted)
        self._keep(dialog)
        return dialog

    def open_add_dialog(self) -> AddDeviceDialog:
        dialog = AddDeviceDialog(self)

        def submitted(new: NewDevice) -> None:
            self.bridge.devices.add_device(new.host, port=new.port, username=new.username, name=new.name,
                                   interfaces=self.discovery_panel.chosen_interfaces() or None)

        dialog.submitted.connect(submitted)
        self._keep(dialog)
        return dialog

    def open_sweep_dialog(self) -> SweepDialog:
        dialog = SweepDialog(parent=self)
        dialog.confirmed.connect(lambda cidr, port: self.bridge.devices.sweep(cidr, port))
        self._keep(dialog)
        return dialog

    def open_group_dialog(self) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Add to group")
        dialog.setLabelText(f"Put {len(ids)} device(s) in the group:")
        dialog.setComboBoxEditable(True)
        dialog.setComboBoxItems([g.name for g in self.bridge.devices.groups()] or ["line A"])
        dialog.textValueSelected.connect(lambda name: self.bridge.devices.change_group(ids, name))
        self._keep(dialog)

    def remove_from_current_group(self) -> None:
        ids, group = self.selected_ids(), self.fleet_filter.group
        if ids and group is not None:
            self.bridge.devices.change_group(ids, group, remove=True)

    def _devices_dropped_on_group(self, ids: list[int], group: str, move: bool) -> None:
        source = self.fleet_filter.group
        self.bridge.devices.change_group(ids, group)
        if move and source is not None and source != group:
            self.bridge.devices.change_group(ids, source, remove=True)

    def copy_ssh_command(self) -> str:
        ids = self.selected_ids()
        if len(ids) != 1:
            return ""
        command = self.bridge.devices.ssh_command(ids[0])
        QGuiApplication.clipboard().setText(command)
        self.statusBar().showMessage(f"Copied: {command}", 8000)
        return command

    def remove_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.bridge.devices.remove_devices(ids)
