"""Drag and drop onto the main window: model files dropped on the window, on device rows or on a group.

The overlay says what a drop would do; a drop imports each model, then opens the deployment to the targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, QPoint
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDragMoveEvent, QDropEvent

from fleetdesk.artifacts.records import ModelRecord

from .bridge_views import DeviceView
from .dropping import DeployDialog, DropOverlay, DropPlan, plan_drop
from .fleet_model import DEVICE_ID_ROLE
from .model_import import ImportDialog
from .side_panel import GROUP_ROLE, GroupTree
from .window_part import WindowPart


def dropped_paths(event: QDropEvent | QDragEnterEvent | QDragMoveEvent) -> list[str]:
    data = event.mimeData()
    if not data.hasUrls():
        return []
    return [url.toLocalFile() for url in data.urls()]


class DropTargets(WindowPart):
    """Mixed into MainWindow, which builds the widgets declared here; `open_import_dialog` is ModelActions'."""

    group_tree: GroupTree
    drop_overlay: DropOverlay
    _pending_imports: list[tuple[str, list[DeviceView], str]]  # dropped models (targets, group) awaiting a dialog
    _import_dialog: ImportDialog | None

    if TYPE_CHECKING:
        def open_import_dialog(self, path: str = "", targets: Sequence[DeviceView] = (),
                               group: str = "") -> ImportDialog: ...

    def _targets_at(self, watched: QObject, position: QPoint) -> tuple[list[DeviceView] | None, str]:
        """The devices a drop at `position` goes to (the row's selection, a group's members, or None), and the
        group when it was dropped on one."""
        if watched is self.fleet_table.viewport():
            index = self.fleet_table.indexAt(position)
            if not index.isValid():
                return None, ""
            device_id = self.fleet_filter.data(index.siblingAtColumn(0), DEVICE_ID_ROLE)
            selected = self.selected_ids()
            ids = selected if device_id in selected else [device_id]
            return [v for v in (self.fleet_model.view_of(i) for i in ids) if v is not None], ""
        if watched is self.group_tree.viewport():
            item = self.group_tree.itemAt(position)
            group = item.data(0, GROUP_ROLE) if item is not None else None
            if not group:
                return None, ""
            return [v for v in self.fleet_model.views() if group in v.device.groups], str(group)
        return None, ""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop) and isinstance(
                event, (QDragEnterEvent, QDragMoveEvent, QDropEvent)) and event.mimeData().hasUrls():
            plan = plan_drop(dropped_paths(event), *self._targets_at(watched, event.position().toPoint()))
            if kind == QEvent.Type.Drop:
                self.drop_overlay.hide()
                event.acceptProposedAction()
                self.handle_drop(plan)
            else:
                self.drop_overlay.show_plan(plan)
                # Accept even a refused plan, so the drop arrives and the operator is told why not.
                event.acceptProposedAction()
            return True
        if kind == QEvent.Type.DragLeave:
            self.drop_overlay.hide()
        return super().eventFilter(watched, event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            self.drop_overlay.show_plan(plan_drop(dropped_paths(event)))
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls():
            self.drop_overlay.show_plan(plan_drop(dropped_paths(event)))
            event.acceptProposedAction()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self.drop_overlay.hide()

    def dropEvent(self, event: QDropEvent) -> None:
        self.drop_overlay.hide()
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
            self.handle_drop(plan_drop(dropped_paths(event)))

    def handle_drop(self, plan: DropPlan) -> ImportDialog | None:
        """Open the import dialog for each dropped model in turn; dropped on devices, each successful import
        then opens the deployment for exactly those devices (dropped on a group: for the group)."""
        if not plan.accepted:
            self.statusBar().showMessage(plan.message, 15000)
            self.last_refusal = plan.message
            return None
        if plan.refused:
            self.statusBar().showMessage("Skipped: " + "; ".join(plan.refused), 15000)
        targets = [v for v in (self.fleet_model.view_of(i) for i in plan.targets) if v is not None]
        self._pending_imports.extend((path, targets, plan.group) for path in plan.models)
        if self._import_dialog is not None:
            return self._import_dialog  # the others open when this one is done
        path, first_targets, group = self._pending_imports.pop(0)
        return self.open_import_dialog(path, first_targets, group)

    def open_deploy_dialog(self, records: list[ModelRecord], targets: list[DeviceView]) -> DeployDialog:
        dialog = DeployDialog(records, targets, self)

        def confirmed(chosen: list[ModelRecord], ids: list[int]) -> None:
            for record in chosen:
                self.bridge.models.push_artifacts(record, ids, title=f"Deploy {record.ref}")

        dialog.confirmed.connect(confirmed)
        self._keep(dialog)
        return dialog
