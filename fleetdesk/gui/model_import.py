"""The import dialog: which .onnx file, under what name and version, checked on which samples, optimized for
which device profiles. It validates what the operator typed and emits an `ImportRequest`; the bridge runs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .dropping import file_problem
from .fleet_model import plain
from .text import tooltip_text

# What the store accepts as a name or version (fleetdesk/artifacts/store_records.py, check_name); the name clash is
# the store's to find, when it imports.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SYNTHETIC_NOTE = ("Without a samples folder, accuracy is checked on synthetic inputs generated from the "
                  "model's declared shapes, and the model is marked so.")


@dataclass(frozen=True)
class ImportRequest:
    """What the operator asked to import: `fleetdesk model import PATH --name --version --samples --profile`."""

    path: str
    name: str
    version: str | None  # None: the next version of this name
    samples: str | None  # a folder of .npy/.npz files; None: synthetic inputs
    profiles: tuple[str, ...]
    time_on_devices: bool  # also time each variant on an online device of its profile (agent bench)


def default_name(path: str) -> str:
    """The model's name from its file name: the stem, with characters a name may not hold made '-'."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")
    return name[:64].rstrip("-._") or "model"


class ImportDialog(QDialog):
    """See the module docstring. `profiles`: every known profile; `fleet_profiles`: those of the fleet's
    devices (checked by default; all are when the fleet has none)."""

    submitted = Signal(object)  # ImportRequest

    def __init__(self, path: str = "", *, profiles: Sequence[str], fleet_profiles: Sequence[str] = (),
                 can_time_on_devices: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ImportDialog")
        self.setWindowTitle("Import model")
        self.setMinimumWidth(560)
        layout = QVBoxLayout(self)
        heading = QLabel("Import an ONNX model", self)
        heading.setObjectName("Heading")
        layout.addWidget(heading)
        form = QFormLayout()

        self.path_edit = QLineEdit(path, self)
        self.path_edit.setPlaceholderText("/path/to/model.onnx")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse_model)
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(browse)
        form.addRow("Model file:", row)

        self.name_edit = QLineEdit(default_name(path) if path else "", self)
        self.name_edit.setPlaceholderText("the file's name")
        form.addRow("Name:", self.name_edit)
        self.version_edit = QLineEdit(self)
        self.version_edit.setPlaceholderText("blank: the next version of this name")
        form.addRow("Version:", self.version_edit)

        self.samples_edit = QLineEdit(self)
        self.samples_edit.setPlaceholderText("optional: a folder of .npy / .npz input files")
        samples_browse = QPushButton("Browse…", self)
        samples_browse.clicked.connect(self._browse_samples)
        row = QHBoxLayout()
        row.addWidget(self.samples_edit, 1)
        row.addWidget(samples_browse)
        form.addRow("Samples:", row)
        self.samples_note = QLabel(SYNTHETIC_NOTE, self)
        self.samples_note.setObjectName("EmptyHint")
        self.samples_note.setWordWrap(True)
        form.addRow("", self.samples_note)
        layout.addLayout(form)

        known = sorted(set(profiles) | set(fleet_profiles))
        wanted = set(fleet_profiles) or set(known)
        profiles_label = QLabel("Optimize for these device profiles" + (
            " (those of the fleet's devices are checked):" if fleet_profiles else
            " (no device has a profile yet: all are checked):"), self)
        profiles_label.setWordWrap(True)
        layout.addWidget(profiles_label)
        grid = QGridLayout()
        self.profile_boxes: dict[str, QCheckBox] = {}
        for n, name in enumerate(known):
            box = QCheckBox(plain(name), self)
            box.setChecked(name in wanted)
            box.toggled.connect(self._validate)
            self.profile_boxes[name] = box
            grid.addWidget(box, n // 3, n % 3)
        layout.addLayout(grid)

        self.time_box = QCheckBox("Also time each variant on an online device of its profile (agent bench)", self)
        self.time_box.setChecked(can_time_on_devices)
        self.time_box.setEnabled(can_time_on_devices)
        if not can_time_on_devices:
            self.time_box.setToolTip(tooltip_text(
                "No trusted online device with a runtime: variants are timed on this laptop"))
        layout.addWidget(self.time_box)

        self.problem_label = QLabel("", self)
        self.problem_label.setObjectName("ErrorText")
        self.problem_label.setTextFormat(Qt.TextFormat.PlainText)
        self.problem_label.setWordWrap(True)
        layout.addWidget(self.problem_label)
        buttons = QDialogButtonBox(self)
        self.import_button = QPushButton("Import", self)
        self.import_button.setDefault(True)
        buttons.addButton(self.import_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._submit)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

        self._named_by_hand = False
        self.name_edit.textEdited.connect(self._name_edited)
        for edit in (self.path_edit, self.name_edit, self.version_edit, self.samples_edit):
            edit.textChanged.connect(self._validate)
        self.path_edit.textChanged.connect(self._path_changed)
        self._validate()

    def _name_edited(self, _text: str) -> None:
        self._named_by_hand = True

    def _path_changed(self, path: str) -> None:
        if not self._named_by_hand and path.strip():
            self.name_edit.setText(default_name(path.strip()))

    def _browse_model(self) -> None:
        dialog = QFileDialog(self, "Choose an ONNX model")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.setNameFilter("ONNX models (*.onnx)")
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(self.path_edit.setText)
        dialog.open()

    def _browse_samples(self) -> None:
        dialog = QFileDialog(self, "Choose a folder of sample inputs")
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(self.samples_edit.setText)
        dialog.open()

    def problem(self) -> str:
        """Why the dialog cannot import what it holds now; "" when it can."""
        path = self.path_edit.text().strip()
        if not path:
            return "Choose the .onnx file to import."
        why = file_problem(path)
        if why is not None:
            return why[0].upper() + why[1:] + "."
        name = self.name_edit.text().strip()
        if not name:
            return "Give the model a name (letters, digits, '.', '_', '-')."
        if not NAME_PATTERN.match(name):
            return f"The name {name!r} may hold only 1-64 letters, digits, '.', '_' and '-', starting with a " \
                   "letter or digit (e.g. resnet50-line2)."
        version = self.version_edit.text().strip()
        if version and not NAME_PATTERN.match(version):
            return f"The version {version!r} may hold only letters, digits, '.', '_' and '-' (e.g. 3 or 1.2.0)."
        samples = self.samples_edit.text().strip()
        if samples and not os.path.isdir(samples):
            return f"The samples folder {plain(samples)} does not exist; choose a folder of .npy/.npz files or " \
                   "leave it blank."
        if not self.chosen_profiles():
            return "Check at least one device profile to optimize for."
        return ""

    def _validate(self, *_args: object) -> None:
        problem = self.problem()
        self.problem_label.setText(problem)
        self.problem_label.setVisible(bool(problem))
        self.import_button.setEnabled(not problem)
        self.samples_note.setVisible(not self.samples_edit.text().strip())

    def chosen_profiles(self) -> tuple[str, ...]:
        return tuple(name for name, box in self.profile_boxes.items() if box.isChecked())

    def request(self) -> ImportRequest:
        samples = self.samples_edit.text().strip()
        version = self.version_edit.text().strip()
        return ImportRequest(self.path_edit.text().strip(), self.name_edit.text().strip(), version or None,
                             samples or None, self.chosen_profiles(), self.time_box.isChecked())

    def _submit(self) -> None:
        if self.problem():
            self._validate()
            return
        self.submitted.emit(self.request())
        self.accept()
