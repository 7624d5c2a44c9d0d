"""Files dropped on the window: which are models, which devices they go to, and why a drop is refused.

`plan_drop` is the rule (pure, tested directly); `DropOverlay` says it while the drag is over the
window. A model dropped on devices or a group is imported, then the rollout wizard (rollout_wizard.py) opens for
exactly those targets; its "Push only…" is the plain push. `DeployDialog` confirms such a plain push of imported
models (kept for callers that want no waves).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.artifacts.records import ModelRecord

from .activities import human_bytes
from .bridge_views import DeviceView
from .fleet_model import plain

MODEL_SUFFIX = ".onnx"
DEPLOYABLE = ("online",)


@dataclass(frozen=True)
class DropPlan:
    """What a drop will do: import `models`, then (with `targets`) open the rollout wizard for them."""

    models: tuple[str, ...]
    refused: tuple[str, ...]  # one reason per file that is not taken
    targets: tuple[int, ...] = ()
    blocked: tuple[str, ...] = ()  # one reason per chosen device that cannot take a model now
    onto_devices: bool = False
    group: str = ""  # dropped on a group: the rollout targets the group, `targets` are its members now

    @property
    def accepted(self) -> bool:
        return bool(self.models) and not self.blocked

    @property
    def message(self) -> str:
        """One or two lines for the overlay and the status bar."""
        if not self.models:
            return "Cannot drop here: " + (self.refused[0] if self.refused else "nothing to import")
        if self.blocked:
            return "Cannot deploy here: " + "; ".join(self.blocked[:2]) + (" …" if len(self.blocked) > 2 else "")
        names = ", ".join(os.path.basename(p) for p in self.models[:2]) + (" …" if len(self.models) > 2 else "")
        if self.group:
            text = f"Drop to deploy {names} to group “{plain(self.group)}” ({len(self.targets)} device(s))"
        elif self.onto_devices:
            text = f"Drop to deploy {names} to {len(self.targets)} device(s)"
        else:
            text = f"Drop to import {names} into Models"
        if self.refused:
            text += f"\n(skipping {len(self.refused)} file(s): {self.refused[0]})"
        return text


def file_problem(path: str) -> str | None:
    """Why `path` cannot be imported as a model; None when it can be tried."""
    name = plain(os.path.basename(path.rstrip("/")) or path)
    if not path:
        return "that is not a file on this computer"
    if os.path.isdir(path):
        return f"{name} is a folder; drop the .onnx file inside it"
    if not path.lower().endswith(MODEL_SUFFIX):
        return f"{name} is not an ONNX model (only .onnx files can be imported)"
    if not os.path.isfile(path):
        return f"{name} is not a readable file"
    return None


def plan_drop(paths: Sequence[str], targets: Sequence[DeviceView] | None = None, group: str = "") -> DropPlan:
    """The drop's plan: models to import and, dropped on devices (or on `group`, whose members `targets` are),
    whether every one of them can take it."""
    models: list[str] = []
    refused: list[str] = []
    for path in paths:
        problem = file_problem(path)
        if problem is None:
            models.append(path)
        else:
            refused.append(problem)
    if targets is None:
        return DropPlan(tuple(models), tuple(refused))
    blocked = []
    for view in targets:
        if view.status not in DEPLOYABLE:
            why = {
                "offline": "is offline",
                "untrusted": "is not trusted yet (use Trust… first)",
                "unreachable": "did not answer over SSH",
                "busy": "is busy with another operation",
            }[view.status]
            blocked.append(f"{plain(view.device.name)} {why}")
    if not targets:
        blocked.append("no device is chosen")
    return DropPlan(tuple(models), tuple(refused), tuple(v.id for v in targets), tuple(blocked), onto_devices=True,
                    group=group)


class DropOverlay(QFrame):
    """A translucent banner over the window while files are dragged over it, saying what a drop does.

    It floats over `anchor` (the window's central area) as a child of `parent`, outside every layout: a child of a
    QSplitter would become one of its panes and squeeze the others for as long as the drag lasts.
    """

    def __init__(self, parent: QWidget, anchor: QWidget | None = None) -> None:
        super().__init__(parent)
        self._anchor = anchor
        self.setObjectName("DropOverlay")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        layout = QVBoxLayout(self)
        self.label = QLabel("", self)
        self.label.setObjectName("DropHint")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        layout.addWidget(self.label)
        self.hide()

    def show_plan(self, plan: DropPlan) -> None:
        self.label.setText(plan.message)
        # The theme draws a refusal in red (QLabel#DropHint[refused="true"]); a changed property needs a re-polish.
        self.label.setProperty("refused", not plan.accepted)
        self.label.style().unpolish(self.label)
        self.label.style().polish(self.label)
        parent = self.parentWidget()
        assert parent is not None
        area = parent.rect() if self._anchor is None else self._anchor.geometry()
        width = min(area.width() - 40, 620)
        layout = self.layout()
        assert layout is not None  # set in __init__
        margins = layout.contentsMargins()
        text_height = self.label.heightForWidth(width - margins.left() - margins.right() - 8)
        height = max(72, text_height + margins.top() + margins.bottom() + 16)
        # At the bottom, over the activity list: the rows a model is dropped on stay in sight.
        self.setGeometry(area.left() + (area.width() - width) // 2, area.bottom() - height - 16, width, height)
        self.raise_()
        self.show()


def variant_for(record: ModelRecord, profile: str | None) -> str:
    """Which variant a device of `profile` gets from `record`, in words: the profile's chosen one, else FP32."""
    report = record.report
    result = report.profile(profile) if report is not None and profile else None
    if result is None or profile not in record.artifacts:
        return "FP32 as imported (no variant was made for " + (f"profile {plain(profile)})" if profile
                                                                 else "a device with no profile)")
    chosen = result.variant(result.chosen)
    size = f", {human_bytes(chosen.size_bytes)}" if chosen is not None and chosen.size_bytes else ""
    return f"{result.chosen}{size}"


class DeployDialog(QDialog):
    """Confirms pushing models to exactly the devices they were dropped on: each device gets the signed artifact
    chosen for its profile. Staged waves come with rollouts."""

    confirmed = Signal(list, list)  # list[ModelRecord], list[int] device ids

    def __init__(self, records: Sequence[ModelRecord], targets: Sequence[DeviceView],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("DeployDialog")
        self.setWindowTitle("Deploy models")
        self._records = list(records)
        self._targets = [v.id for v in targets]
        layout = QVBoxLayout(self)
        heading = QLabel(f"Deploy {', '.join(plain(r.ref) for r in records)} to {len(targets)} device(s)", self)
        heading.setObjectName("Heading")
        heading.setTextFormat(Qt.TextFormat.PlainText)
        heading.setWordWrap(True)
        layout.addWidget(heading)
        self.plan = QTreeWidget(self)
        self.plan.setObjectName("DeployPlan")
        self.plan.setHeaderLabels(["Device", "Profile", "Model", "Variant"])
        self.plan.setRootIsDecorated(False)
        for view in targets:
            for record in records:
                self.plan.addTopLevelItem(QTreeWidgetItem([
                    plain(view.device.name), plain(view.device.profile or "unknown"), plain(record.ref),
                    variant_for(record, view.device.profile)]))
        for column in range(4):
            self.plan.resizeColumnToContents(column)
        layout.addWidget(self.plan)
        plan = QLabel("Plan: all targets at once. Each device receives the signed artifact (manifest, signature, "
                      "model files) in its artifact folder and FleetDesk checks every file's SHA-256 there before "
                      "calling it done; an interrupted push resumes where it stopped.", self)
        plan.setObjectName("EmptyHint")
        plan.setWordWrap(True)
        layout.addWidget(plan)
        buttons = QDialogButtonBox(self)
        self.push_button = QPushButton(f"Push to {len(targets)} device(s)", self)
        buttons.addButton(self.push_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._confirm)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _confirm(self) -> None:
        self.confirmed.emit(self._records, self._targets)
        self.accept()
