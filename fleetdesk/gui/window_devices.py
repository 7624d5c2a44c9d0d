"""The operator's actions on devices in the main window: discovery, probe, trust, credentials, groups, removal.

Also telemetry streaming and the alert thresholds, which are remembered in QSettings. `DeviceActions` is the
window's `device_actions`; it acts on the fleet pane's selection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QInputDialog, QMessageBox

from fleetdesk.discovery.recorder import RecordingState
from fleetdesk.errors import FleetDeskError
from fleetdesk.telemetry.alerts import Threshold, thresholds_from_json, thresholds_to_json, with_new_defaults

from .alerts_dialog import ThresholdsDialog
from .bridge_views import DeviceView, FleetKeyRequest, Login, TrustRequest
from .dialogs import AddDeviceDialog, NewDevice, SweepDialog
from .fleet_key_dialog import FleetKeyDialog
from .sign_in_dialogs import Credentials, CredentialsDialog, TrustDialog
from .text import tooltip_text, visible_text
from .window_fleet import FleetPane
from .window_part import Window, WindowPart, qsettings

NOT_RECORDING = "Listening, but not recording: the inventory refuses writes"


class DeviceActions(WindowPart):
    """What the operator does to devices: each action becomes a call on the bridge's devices or telemetry part."""

    def __init__(self, window: Window, fleet_pane: FleetPane) -> None:
        super().__init__(window)
        self._fleet_pane = fleet_pane

    def set_browsing(self, on: bool) -> None:
        if on and not self.bridge.devices.browsing:
            self.bridge.devices.start_browsing(self.window.discovery_panel.chosen_interfaces())
        elif not on:
            self.bridge.devices.stop_browsing()
        self.window.browse_action.setChecked(on)

    def on_browsing_changed(self, on: bool) -> None:
        self.window.discovery_panel.set_browsing(on)
        self.window.browse_action.setChecked(on)

    def on_discovery_state(self, state: RecordingState) -> None:
        # "Listening" alone only while what is heard is stored. The panel is narrow (an inventory's path is long):
        # it says that nothing is recorded; its tooltip and the discovery activity say why, what is held and the fix.
        panel = self.window.discovery_panel
        label = panel.state_label
        if state.error is None:
            panel.set_browsing(self.bridge.devices.browsing, visible_text(f"Listening; {state.text}"))
            label.setToolTip("")
            return
        panel.set_browsing(self.bridge.devices.browsing, NOT_RECORDING)
        fix = f"\nFix: {state.error.fix}" if state.error.fix else ""
        label.setToolTip(tooltip_text(state.text + fix))

    def on_interfaces_changed(self, addresses: list[str]) -> None:
        qsettings().setValue("discovery/interfaces", addresses)

    def probe_selected(self) -> None:
        ids = self._fleet_pane.selected_ids()
        if ids:
            self.bridge.devices.probe(ids)

    def provision_selected(self) -> None:
        ids = self._fleet_pane.selected_ids()
        if ids:
            self.bridge.devices.provision(ids)

    def open_fleet_key_dialog(self, request: FleetKeyRequest) -> FleetKeyDialog:
        """Provisioning refused devices that trust another fleet key: on the operator's yes, provision them again
        with this laptop's key; otherwise they stay as they are."""
        dialog = FleetKeyDialog(request, self.widget)
        dialog.replace_confirmed.connect(lambda ids: self.bridge.devices.provision(ids, replace_fleet_key=True))
        self.window.keep(dialog)
        return dialog

    def trust_selected(self) -> None:
        ids = self._fleet_pane.selected_ids()
        if len(ids) == 1:
            self.bridge.devices.request_trust(ids[0])

    def set_streaming(self, device_ids: Sequence[int], on: bool) -> None:
        """Start (or stop) telemetry for these devices, every trusted one if none; shows the dashboard."""
        try:
            if on:
                self.bridge.telemetry.start_streaming(device_ids)
                self.window.tabs.setCurrentWidget(self.window.dashboard)
            else:
                self.bridge.telemetry.stop_streaming(device_ids)
        except FleetDeskError as exc:
            self.window.statusBar().showMessage(str(exc), 15000)

    def open_thresholds_dialog(self) -> ThresholdsDialog:
        dialog = ThresholdsDialog(self.bridge.telemetry.alerts.thresholds, self.widget)
        dialog.submitted.connect(self.set_thresholds)
        self.window.keep(dialog)
        return dialog

    def set_thresholds(self, thresholds: list[Threshold]) -> None:
        """Use and remember (QSettings) the operator's alert thresholds."""
        self.bridge.telemetry.set_thresholds(thresholds)
        qsettings().setValue("telemetry/thresholds", thresholds_to_json(thresholds))
        self.window.dashboard.thresholds_changed()

    def restore_thresholds(self) -> None:
        """Use the alert thresholds remembered in QSettings (the defaults when none, or unreadable)."""
        stored = qsettings().value("telemetry/thresholds")
        if not isinstance(stored, str) or not stored:
            self.window.dashboard.thresholds_changed()
            return
        try:
            thresholds = with_new_defaults(thresholds_from_json(stored))
        except FleetDeskError as exc:
            self.window.statusBar().showMessage(f"Alert thresholds: {exc}; using the defaults", 15000)
            self.window.dashboard.thresholds_changed()
            return
        self.bridge.telemetry.set_thresholds(thresholds)
        self.window.dashboard.thresholds_changed()

    def open_trust_dialog(self, request: TrustRequest) -> TrustDialog:
        device = request.device
        dialog = TrustDialog(device.name, request.presented, request.pinned, device.address, self.widget)
        dialog.trusted.connect(lambda fingerprint: self.bridge.devices.trust(device.id, fingerprint))
        self.window.keep(dialog)
        return dialog

    def open_credentials_dialog(self) -> None:
        views = self._fleet_pane.selected_views()
        if not views:
            return
        self._credentials_task = asyncio.ensure_future(self._open_credentials(views))

    async def _open_credentials(self, views: list[DeviceView]) -> CredentialsDialog:
        status = await self.bridge.devices.keyring_status()  # may wait on D-Bus: off the loop
        first = views[0].device
        dialog = CredentialsDialog([v.device.name for v in views], first.username, status,
                                   first.identity_file or "", self.widget)
        ids = [v.id for v in views]

        def submitted(credentials: Credentials) -> None:
            self.bridge.devices.set_login(ids, Login(credentials.username, credentials.key_file, credentials.password))

        dialog.submitted.connect(submitted)
        self.window.keep(dialog)
        return dialog

    def open_add_dialog(self) -> AddDeviceDialog:
        dialog = AddDeviceDialog(self.widget)

        def submitted(new: NewDevice) -> None:
            self.bridge.devices.add_device(new.host, port=new.port, username=new.username, name=new.name,
                                           interfaces=self.window.discovery_panel.chosen_interfaces() or None)

        dialog.submitted.connect(submitted)
        self.window.keep(dialog)
        return dialog

    def open_sweep_dialog(self) -> SweepDialog:
        dialog = SweepDialog(parent=self.widget)
        dialog.confirmed.connect(lambda cidr, port: self.bridge.devices.sweep(cidr, port))
        self.window.keep(dialog)
        return dialog

    def open_group_dialog(self) -> QInputDialog | None:
        ids = self._fleet_pane.selected_ids()
        if not ids:
            return None
        dialog = QInputDialog(self.widget)
        dialog.setWindowTitle("Add to group")
        dialog.setLabelText(f"Put {len(ids)} device(s) in the group:")
        dialog.setComboBoxEditable(True)
        dialog.setComboBoxItems([g.name for g in self.bridge.devices.groups()] or ["line A"])
        dialog.textValueSelected.connect(lambda name: self.bridge.devices.change_group(ids, name))
        self.window.keep(dialog)
        return dialog

    def open_group_rename_dialog(self, group: str) -> QInputDialog:
        """Rename a group, as the window shows it now (bridge.devices.rename_group)."""
        dialog = QInputDialog(self.widget)
        dialog.setObjectName("GroupRenameDialog")
        dialog.setWindowTitle("Rename group")
        dialog.setLabelText(f"New name for the group {visible_text(group)}:")
        dialog.setTextValue(group)
        dialog.textValueSelected.connect(lambda name: self.bridge.devices.rename_group(group, name))
        self.window.keep(dialog)
        return dialog

    def confirm_group_delete(self, group: str) -> QMessageBox:
        """Delete a group (its devices stay) once the operator confirms."""
        box = QMessageBox(QMessageBox.Icon.Question, "Delete group",
                          f"Delete the group {visible_text(group)}? Its devices stay in the inventory.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self.widget)
        box.setTextFormat(Qt.TextFormat.PlainText)
        yes = box.button(QMessageBox.StandardButton.Yes)
        box.buttonClicked.connect(lambda button: self.bridge.devices.delete_group(group) if button is yes else None)
        self.window.keep(box)
        return box

    def open_rename_dialog(self) -> QInputDialog | None:
        views = self._fleet_pane.selected_views()
        if len(views) != 1:
            return None
        device = views[0].device
        dialog = QInputDialog(self.widget)
        dialog.setObjectName("RenameDialog")
        dialog.setWindowTitle("Rename device")
        dialog.setLabelText(f"New name for {visible_text(device.name)}:")
        dialog.setTextValue(device.name)
        dialog.textValueSelected.connect(lambda name: self.bridge.devices.rename(device.id, name))
        self.window.keep(dialog)
        return dialog

    def remove_from_current_group(self) -> None:
        ids, group = self._fleet_pane.selected_ids(), self.window.fleet_filter.group
        if ids and group is not None:
            self.bridge.devices.change_group(ids, group, remove=True)

    def on_devices_dropped_on_group(self, ids: list[int], group: str, move: bool) -> None:
        source = self.window.fleet_filter.group
        self.bridge.devices.change_group(ids, group)
        if move and source is not None and source != group:
            self.bridge.devices.change_group(ids, source, remove=True)

    def copy_ssh_command(self) -> str:
        ids = self._fleet_pane.selected_ids()
        if len(ids) != 1:
            return ""
        command = self.bridge.devices.ssh_command(ids[0])
        QGuiApplication.clipboard().setText(command)
        self.window.statusBar().showMessage(f"Copied: {command}", 8000)
        return command

    def remove_selected(self) -> None:
        ids = self._fleet_pane.selected_ids()
        if ids:
            self.bridge.devices.remove_devices(ids)
