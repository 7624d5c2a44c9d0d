"""The main window's model and rollout actions: import, verify, export and remove models; the rollout wizard.

Also the offer to recover rollouts a crash left running. `ModelActions` is the window's `model_actions`.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QFileDialog, QMessageBox

from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.inventory.rollouts import RolloutRow
from fleetdesk.rollout.plan import RolloutPlan

from .activities import Activity
from .bridge_rollouts import WINDOW_CLOSED
from .bridge_views import DeviceView
from .fleet_model import plain
from .model_import import ImportDialog, ImportRequest
from .rollout_wizard import RolloutWizard
from .window_fleet import FleetPane
from .window_part import Window, WindowPart


class ModelActions(WindowPart):
    """What the operator does to models and rollouts: each action becomes a call on the bridge's models or
    rollouts part."""

    def __init__(self, window: Window, fleet_pane: FleetPane) -> None:
        super().__init__(window)
        self._fleet_pane = fleet_pane
        self._pending_imports: list[tuple[str, list[DeviceView], str]] = []  # dropped models awaiting a dialog
        self.import_dialog: ImportDialog | None = None  # the import dialog open now
        self._wizard: RolloutWizard | None = None
        self.recovery_box: QMessageBox | None = None  # the last offer to recover rollouts left unfinished

    def open_import_dialog(self, path: str = "", targets: Sequence[DeviceView] = (), group: str = "") -> ImportDialog:
        """The import dialog for `path` (empty: the operator browses); with `targets` (the members of `group` when
        the model was dropped on one), the deployment to them opens once the import succeeded. Dropped models
        beyond the first wait for this dialog to finish."""
        target_list = list(targets)
        ids = [v.id for v in target_list]
        models = self.bridge.models
        fleet_profiles = models.fleet_profiles(ids) or (models.fleet_profiles() if not ids else [])
        dialog = ImportDialog(path, profiles=models.profile_names(), fleet_profiles=fleet_profiles,
                              can_time_on_devices=bool(models.bench_devices(models.profile_names())),
                              parent=self.widget)
        if group:
            dialog.setWindowTitle(f"Import model, then deploy to group “{plain(group)}”")
        elif target_list:
            names = ", ".join(plain(v.device.name) for v in target_list[:4]) + (" …" if len(target_list) > 4 else "")
            dialog.setWindowTitle(f"Import model, then deploy to {names}")

        def submitted(request: ImportRequest) -> None:
            self.import_model(request, target_list, group)

        dialog.submitted.connect(submitted)
        dialog.finished.connect(self._next_import)
        self.import_dialog = dialog
        self.window.keep(dialog)
        return dialog

    def import_dropped(self, dropped: Sequence[tuple[str, list[DeviceView], str]]) -> ImportDialog | None:
        """Models dropped on the window (each with its targets and group): the first one's import dialog opens
        now, unless one is open (returned); the others open in turn as each dialog finishes."""
        self._pending_imports.extend(dropped)
        if self.import_dialog is not None:
            return self.import_dialog  # the others open when this one is done
        path, first_targets, group = self._pending_imports.pop(0)
        return self.open_import_dialog(path, first_targets, group)

    def _next_import(self, *_args: object) -> None:
        self.import_dialog = None
        if self._pending_imports:
            path, targets, group = self._pending_imports.pop(0)
            # After this dialog has gone (finished fires inside its close).
            QTimer.singleShot(0, lambda: self.open_import_dialog(path, targets, group))

    def import_model(self, request: ImportRequest, targets: Sequence[DeviceView] = (), group: str = "") -> Activity:
        """Run the import as an activity; on success the Models view selects the new record (and, for a drop on
        devices or a group, the deployment opens); on failure the operator reads the problem and the fix."""
        target_list = list(targets)

        def imported(record: ModelRecord) -> None:
            # The view already shows and selects it (models.model_imported); a drop on devices goes on to deploy,
            # a drop on a group to deploy to the group (the plan names it; its members are resolved at start).
            # Built on a pass of its own: the import's end already updated the Models view in this one.
            if group:
                QTimer.singleShot(0, lambda: self.window.closing or self.open_rollout_wizard(record.ref, group=group))
            elif target_list:
                ids = [v.id for v in target_list]
                QTimer.singleShot(0, lambda: self.window.closing or self.open_rollout_wizard(record.ref, ids))
            else:
                self.window.tabs.setCurrentWidget(self.window.models_view)

        activity = self.bridge.models.import_model(request.path, name=request.name, version=request.version,
                                                   samples=request.samples, profiles=request.profiles,
                                                   time_on_devices=request.time_on_devices, then=imported)
        activity.changed.connect(lambda: self._import_changed(activity))
        return activity

    def _import_changed(self, activity: Activity) -> None:
        if activity.state == "failed" and activity.error is not None and not getattr(activity, "_told", False):
            activity._told = True  # type: ignore[attr-defined]
            error = activity.error
            box = QMessageBox(QMessageBox.Icon.Warning, activity.title, f"The model was not imported: {error.message}",
                              QMessageBox.StandardButton.Ok, self.widget)
            box.setObjectName("ImportFailed")
            box.setTextFormat(Qt.TextFormat.PlainText)
            if error.fix:
                box.setInformativeText(f"Fix: {error.fix}")
            self.window.keep(box)

    def verify_model(self, ref: str) -> Activity:
        return self.bridge.models.verify_models(ref, then=self.window.models_view.show_verify)

    def open_export_dialog(self, ref: str) -> QFileDialog | None:
        if not ref:
            return None
        dialog = QFileDialog(self.widget, f"Export {ref}")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setNameFilter("Tar archives (*.tar)")
        dialog.setDefaultSuffix("tar")
        dialog.selectFile(ref.replace("@", "-") + ".tar")
        dialog.fileSelected.connect(lambda dest: self.bridge.models.export_model(ref, dest))
        self.window.keep(dialog)
        return dialog

    def open_export_key_dialog(self) -> QFileDialog:
        dialog = QFileDialog(self.widget, "Export the fleet's public signing key")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setNameFilter("PEM public keys (*.pub *.pem)")
        dialog.selectFile("fleet.pub")
        dialog.fileSelected.connect(self.bridge.models.export_public_key)
        self.window.keep(dialog)
        return dialog

    def confirm_remove_model(self, ref: str) -> QMessageBox | None:
        if not ref:
            return None
        box = QMessageBox(QMessageBox.Icon.Question, f"Remove {ref}",
                          f"Remove {ref} and its artifacts from the store on this computer?",
                          QMessageBox.StandardButton.Cancel, self.widget)
        box.setObjectName("ConfirmRemoveModel")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setInformativeText("Devices that already have it keep their copy. This cannot be undone; export it "
                               "first to keep a copy.")
        remove = box.addButton("Remove", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.buttonClicked.connect(lambda button: self.bridge.models.remove_model(ref) if button is remove else None)
        self.window.keep(box)
        return box

    # -- rollouts -------------------------------------------------------------------------------------------------

    def open_rollout_wizard(self, model: str = "", device_ids: Sequence[int] = (), group: str = ""
                            ) -> RolloutWizard | None:
        """The rollout wizard (non-modal) for `model` (default: the newest) and the chosen targets (default: the
        selected devices, else the group shown)."""
        records = self.window.models_view.records()
        if not records:
            self.window.statusBar().showMessage("No model to roll out yet: import one first (Ctrl+O).", 10000)
            return None
        if not device_ids and not group:
            device_ids = self._fleet_pane.selected_ids()
            if not device_ids and self.window.fleet_filter.group is not None:
                group = self.window.fleet_filter.group
        devices = [v.device for v in self.window.fleet_model.views()]
        wizard = RolloutWizard(records, devices, self.bridge.devices.groups(), self.bridge.models.artifact_store(),
                               model=model, device_ids=device_ids, group=group, parent=self.widget)
        wizard.start_requested.connect(
            lambda plan, run: self.start_rollout(plan, run, [d.device_id for d in wizard.resolved.devices]
                                                 if wizard.resolved is not None else []))
        wizard.push_requested.connect(
            lambda record, ids: self.bridge.models.push_artifacts(record, ids, title=f"Deploy {record.ref}"))
        wizard.finished.connect(lambda _r: setattr(self, "_wizard", None))
        self._wizard = wizard
        # Shown once it is built and planned, in steps of the loop of their own (rollout_wizard's docstring):
        # building it, planning and laying it out in one pass would hold the loop.
        wizard.ready.connect(lambda: self.window.keep(wizard) if not self.window.closing else wizard.deleteLater())
        return wizard

    def start_rollout(self, plan: RolloutPlan, run: bool = True, device_ids: Sequence[int] = ()) -> Activity:
        self.window.tabs.setCurrentWidget(self.window.rollouts_view)
        return self.bridge.rollouts.start_rollout(plan, device_ids, run=run)

    def rollout_action(self, action: str, rollout_id: int, options: object = None) -> Activity:
        return self.bridge.rollouts.rollout_action(action, rollout_id, options if isinstance(options, dict) else None)

    def on_rollout_started(self, rollout_id: int) -> None:
        self.window.rollouts_view.select(rollout_id)

    def on_rollout_detail(self, detail: object) -> None:
        self.window.rollouts_view.show_detail(detail)  # type: ignore[arg-type]

    def offer_recovery(self, rows: list[RolloutRow]) -> QMessageBox | None:
        """Rollouts a crash left running (no process drives them), and those paused because their window closed
        while driving them: offer to continue them (recover the first, resume the second)."""
        crashed = [r for r in rows if r.status == "running" and not self.bridge.rollouts.rollout_running_here(r.id)]
        closed = [r for r in rows if r.status == "paused" and r.paused_reason == WINDOW_CLOSED]
        left = crashed + closed
        if not left:
            return None
        names = ", ".join(f"{r.id} ({r.model_ref})" for r in left[:5]) + (" …" if len(left) > 5 else "")
        one = len(left) == 1
        if crashed and closed:
            why = "left unfinished when FleetDesk stopped"
        elif closed:
            why = "paused when FleetDesk's window closed"
        else:
            why = "still running when FleetDesk stopped"
        box = QMessageBox(QMessageBox.Icon.Question, "Rollouts left unfinished",
                          f"{'Rollout' if one else 'Rollouts'} {names} {'was' if one else 'were'} {why}.",
                          QMessageBox.StandardButton.NoButton, self.widget)
        box.setObjectName("RecoverRollouts")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setInformativeText("Recover and continue asks each device that may have switched which model it really "
                               "runs, writes that to the journal and goes on without re-sending what a device "
                               "already has. Later leaves them as they are (Rollouts ▸ Recover rollouts left "
                               "running, or Resume in the Rollouts tab).")
        recover = box.addButton("Recover and continue", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Later", QMessageBox.ButtonRole.RejectRole)

        def chosen(button: object) -> None:
            if button is not recover:
                return
            if crashed:
                self.bridge.rollouts.recover_rollouts()
            for row in closed:
                self.bridge.rollouts.rollout_action("resume", row.id)

        box.buttonClicked.connect(chosen)
        self.recovery_box = box
        self.window.keep(box)
        return box
