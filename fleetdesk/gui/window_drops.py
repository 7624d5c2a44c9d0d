"""Drag and drop onto the main window: model files dropped on the window, on device rows or on a group.

The overlay says what a drop would do; a drop imports each model, then opens the deployment to the targets.
`DropTargets` is the window's `drops`: it filters the drag events of the fleet table's and the group tree's
viewports, and MainWindow hands it the window's own.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPoint
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDragMoveEvent, QDropEvent

from fleetdesk.artifacts.records import ModelRecord

from .bridge_views import DeviceView
from .dropping import DeployDialog, DropPlan, plan_drop
from .fleet_model import DEVICE_ID_ROLE
from .model_import import ImportDialog
from .side_panel import GROUP_ROLE
from .window_fleet import FleetPane
from .window_models import ModelActions
from .window_part import Window, WindowPart


def dropped_paths(event: QDropEvent | QDragEnterEvent | QDragMoveEvent) -> list[str]:
    data = event.mimeData()
    if not data.hasUrls():
        return []
    return [url.toLocalFile() for url in data.urls()]


class DropTargets(WindowPart):
    """Files dragged over the window, the fleet table or the group tree; the model actions import what lands."""

    def __init__(self, window: Window, fleet_pane: FleetPane, model_actions: ModelActions) -> None:
        super().__init__(window)
        self._fleet_pane = fleet_pane
        self._model_actions = model_actions
        self.last_refusal = ""  # what the last refused drop said
        # Files dragged from a file manager onto rows go to those devices (the view itself only drags rows out);
        # files dropped on a group: deploy to its members.
        window.fleet_table.viewport().installEventFilter(self)
        window.group_tree.viewport().installEventFilter(self)

    def _targets_at(self, watched: QObject, position: QPoint) -> tuple[list[DeviceView] | None, str]:
        """The devices a drop at `position` goes to (the row's selection, a group's members, or None), and the
        group when it was dropped on one."""
        if watched is self.window.fleet_table.viewport():
            index = self.window.fleet_table.indexAt(position)
            if not index.isValid():
                return None, ""
            device_id = self.window.fleet_filter.data(index.siblingAtColumn(0), DEVICE_ID_ROLE)
            selected = self._fleet_pane.selected_ids()
            ids = selected if device_id in selected else [device_id]
            return [v for v in (self.window.fleet_model.view_of(i) for i in ids) if v is not None], ""
        if watched is self.window.group_tree.viewport():
            item = self.window.group_tree.itemAt(position)
            group = item.data(0, GROUP_ROLE) if item is not None else None
            if not group:
                return None, ""
            return [v for v in self.window.fleet_model.views() if group in v.device.groups], str(group)
        return None, ""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop) and isinstance(
                event, (QDragEnterEvent, QDragMoveEvent, QDropEvent)) and event.mimeData().hasUrls():
            plan = plan_drop(dropped_paths(event), *self._targets_at(watched, event.position().toPoint()))
            if kind == QEvent.Type.Drop:
                self.window.drop_overlay.hide()
                event.acceptProposedAction()
                self.handle_drop(plan)
            else:
                self.window.drop_overlay.show_plan(plan)
                # Accept even a refused plan, so the drop arrives and the operator is told why not.
                event.acceptProposedAction()
            return True
        if kind == QEvent.Type.DragLeave:
            self.window.drop_overlay.hide()
        return super().eventFilter(watched, event)

    # The window's own drag events (MainWindow's overrides hand them here).

    def drag_enter(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            self.window.drop_overlay.show_plan(plan_drop(dropped_paths(event)))
            event.acceptProposedAction()

    def drag_move(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls():
            self.window.drop_overlay.show_plan(plan_drop(dropped_paths(event)))
            event.acceptProposedAction()

    def drag_leave(self, _event: QDragLeaveEvent) -> None:
        self.window.drop_overlay.hide()

    def drop(self, event: QDropEvent) -> None:
        self.window.drop_overlay.hide()
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
            self.handle_drop(plan_drop(dropped_paths(event)))

    def handle_drop(self, plan: DropPlan) -> ImportDialog | None:
        """Open the import dialog for each dropped model in turn; dropped on devices, each successful import
        then opens the deployment for exactly those devices (dropped on a group: for the group)."""
        if not plan.accepted:
            self.window.statusBar().showMessage(plan.message, 15000)
            self.last_refusal = plan.message
            return None
        if plan.refused:
            self.window.statusBar().showMessage("Skipped: " + "; ".join(plan.refused), 15000)
        targets = [v for v in (self.window.fleet_model.view_of(i) for i in plan.targets) if v is not None]
        return self._model_actions.import_dropped([(path, targets, plan.group) for path in plan.models])

    def open_deploy_dialog(self, records: list[ModelRecord], targets: list[DeviceView]) -> DeployDialog:
        dialog = DeployDialog(records, targets, self.widget)

        def confirmed(chosen: list[ModelRecord], ids: list[int]) -> None:
            for record in chosen:
                self.bridge.models.push_artifacts(record, ids, title=f"Deploy {record.ref}")

        dialog.confirmed.connect(confirmed)
        self.window.keep(dialog)
        return dialog
