"""The Models view: every imported model version, its card, its variants per profile side by side, and a
plot of latency per variant. It holds no I/O: it shows `ModelRecord`s and emits what the operator asks.

Figures come from the record's `OptimizationReport` (fleetdesk.models.report): size as a share of the
FP32 model, accuracy against FP32 on the samples, latency on this laptop and, where measured, on devices.
How each figure reads, and the latency plot, are in variant_figures.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.artifacts.records import ModelRecord, VerifyResult
from fleetdesk.models.report import BASELINE, CHOSEN

from .activities import human_bytes
from .fleet_model import plain
from .overview import colours
from .text import tooltip_text
from .variant_figures import NONE, RECIPE_TEXT, LatencyPlot, status_colour, variant_cells

REF_ROLE = Qt.ItemDataRole.UserRole
SORT_ROLE = Qt.ItemDataRole.UserRole + 1

MODEL_COLUMNS = ("Model", "Imported", "Size", "Samples")
VARIANT_COLUMNS = ("Profile", "Recipe", "Status", "Size", "% FP32", "Max error", "Cosine", "Top-1",
                   "Local ms", "× FP32", "Device ms", "Reason")
V_PROFILE, V_RECIPE, V_STATUS, V_SIZE, V_SHARE, V_ERROR, V_COSINE, V_TOP1, V_LOCAL, V_RATIO, V_DEVICE, V_REASON = \
    range(len(VARIANT_COLUMNS))

RECIPE_TIP = {BASELINE: "the model as imported (FP32)", "graph": "onnxruntime offline graph optimization",
              "int8-dynamic": "INT8 dynamic quantization (weights INT8, activations quantized at run time)",
              "int8-static": "INT8 static QDQ quantization, calibrated on the samples",
              "fp16": "FP16 conversion (for GPU profiles)"}


# -- text of the figures --------------------------------------------------------------------------------------

def when_text(iso: str) -> str:
    """An ISO 8601 UTC time in this computer's local time, to the minute."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def shape_of(spec: Mapping[str, Any]) -> str:
    shape = spec.get("shape")
    dims = "?" if shape is None else "×".join(str(d) for d in shape) or "scalar"
    return f"{plain(str(spec.get('name', '')))} {spec.get('dtype', '')}[{dims}]"


class _Item(QTreeWidgetItem):
    """A row that sorts by the number behind a cell (SORT_ROLE) when it has one, else by its text."""

    def __lt__(self, other: QTreeWidgetItem) -> bool:
        tree = self.treeWidget()
        column = tree.sortColumn() if tree is not None else 0
        mine, theirs = self.data(column, SORT_ROLE), other.data(column, SORT_ROLE)
        if mine is not None and theirs is not None:
            return (mine, self.text(0)) < (theirs, other.text(0))
        if mine is None and theirs is not None:  # empty cells ("—", "not measured") sort after every figure
            return False
        if theirs is None and mine is not None:
            return True
        return self.text(column).casefold() < other.text(column).casefold()


class ModelsView(QWidget):
    """See the module docstring. `set_records` / `add_record` / `remove_record` keep it current;
    the signals say what the operator asked for (the window turns them into bridge calls)."""

    import_requested = Signal()
    verify_requested = Signal(str)  # ref ("name@version"), or "" for every model
    export_requested = Signal(str)  # ref
    remove_requested = Signal(str)  # ref
    export_key_requested = Signal()
    selection_changed = Signal(str)  # ref, "" for none

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ModelsView")
        self._records: dict[str, ModelRecord] = {}
        self._sized = False  # True once the operator's column widths are restored: then they are kept

        # -- the buttons -----------------------------------------------------------------------------------
        self.import_button = QPushButton("Import…", self)
        self.import_button.setToolTip(tooltip_text(
            "Import an .onnx model and optimize it for the fleet's profiles (Ctrl+O)"))
        self.verify_button = QPushButton("Verify", self)
        self.verify_button.setToolTip(tooltip_text(
            "Check every byte and the signature of the selected model's artifacts"))
        self.export_button = QPushButton("Export…", self)
        self.export_button.setToolTip(tooltip_text("Write the selected model's artifacts to a .tar file"))
        self.remove_button = QPushButton("Remove", self)
        self.remove_button.setToolTip(tooltip_text(
            "Delete the selected model version and its artifacts from the store"))
        self.key_button = QPushButton("Public key…", self)
        self.key_button.setToolTip(tooltip_text(
            "Export the fleet's public signing key: what devices verify artifacts with"))
        self.import_button.clicked.connect(self.import_requested)
        self.verify_button.clicked.connect(lambda: self.verify_requested.emit(self.selected_ref()))
        self.export_button.clicked.connect(lambda: self.export_requested.emit(self.selected_ref()))
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self.selected_ref()))
        self.key_button.clicked.connect(self.export_key_requested)
        buttons = QHBoxLayout()
        for button in (self.import_button, self.verify_button, self.export_button, self.remove_button,
                       self.key_button):
            # The theme's min-width would make five buttons set the whole window's minimum width.
            button.setStyleSheet("min-width: 0px; padding-left: 10px; padding-right: 10px;")
        for button in (self.import_button, self.verify_button, self.export_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.key_button)

        # -- the models, left --------------------------------------------------------------------------------
        self.hint = QLabel("No models yet. Drop .onnx files anywhere on the window, or use "
                           "File ▸ Import model… (Ctrl+O).", self)
        self.hint.setObjectName("EmptyHint")
        self.hint.setWordWrap(True)
        self.model_list = QTreeWidget(self)
        self.model_list.setObjectName("ModelList")
        self.model_list.setHeaderLabels(list(MODEL_COLUMNS))
        self.model_list.setRootIsDecorated(False)
        self.model_list.setAlternatingRowColors(True)
        self.model_list.setSortingEnabled(True)
        self.model_list.sortByColumn(1, Qt.SortOrder.DescendingOrder)  # the newest first
        self.model_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.model_list.itemSelectionChanged.connect(self._selected)
        self.model_list.setMinimumWidth(170)
        list_header = self.model_list.header()
        list_header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        list_header.setStretchLastSection(True)
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.model_list, 1)
        left_layout.addWidget(self.hint)

        # -- the selected model, right -------------------------------------------------------------------
        self.title = QLabel("", self)
        self.title.setObjectName("Heading")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.synthetic_badge = QLabel("⚠ accuracy checked on synthetic samples only", self)
        self.synthetic_badge.setObjectName("SyntheticBadge")
        self.synthetic_badge.setToolTip(tooltip_text(
            "No sample folder was given on import: inputs were generated from the "
            "declared shapes. Re-import with real samples to trust the accuracy "
            "figures for your data."))
        self.synthetic_badge.setStyleSheet(f"color: {colours()['warning']}; font-weight: 600;")
        self.synthetic_badge.hide()
        heading = QHBoxLayout()
        heading.addWidget(self.title)
        heading.addWidget(self.synthetic_badge)
        heading.addStretch(1)
        self.card_labels: dict[str, QLabel] = {}
        card = QFormLayout()
        card.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        card.setHorizontalSpacing(10)
        card.setVerticalSpacing(2)
        for key, label in (("io", "Inputs → outputs"), ("format", "Model"), ("operators", "Operators"),
                           ("samples", "Accuracy checked on")):
            value = QLabel("", self)
            value.setTextFormat(Qt.TextFormat.PlainText)
            value.setWordWrap(True)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.card_labels[key] = value
            card.addRow(label + ":", value)
        self.verify_label = QLabel("", self)
        self.verify_label.setObjectName("VerifyResult")
        self.verify_label.setTextFormat(Qt.TextFormat.PlainText)
        self.verify_label.setWordWrap(True)
        self.verify_label.hide()

        self.variants = QTreeWidget(self)
        self.variants.setObjectName("VariantsTable")
        self.variants.setHeaderLabels(list(VARIANT_COLUMNS))
        self.variants.setRootIsDecorated(False)
        self.variants.setAlternatingRowColors(True)
        self.variants.setSortingEnabled(True)
        self.variants.sortByColumn(V_PROFILE, Qt.SortOrder.AscendingOrder)
        self.variants.setUniformRowHeights(True)
        self.variants.setMinimumHeight(140)  # the header and at least four variants
        header = self.variants.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setSectionsMovable(True)
        for column in (V_SIZE, V_SHARE, V_ERROR, V_COSINE, V_TOP1, V_LOCAL, V_RATIO):
            self.variants.headerItem().setTextAlignment(column, Qt.AlignmentFlag.AlignRight |
                                                        Qt.AlignmentFlag.AlignVCenter)
        self.variants.currentItemChanged.connect(self._explain)
        self.reason_label = QLabel("", self)
        self.reason_label.setObjectName("VariantReason")
        self.reason_label.setTextFormat(Qt.TextFormat.PlainText)
        self.reason_label.setWordWrap(True)
        self.plot = LatencyPlot(self)

        details = QWidget(self)
        details_layout = QVBoxLayout(details)
        details_layout.setContentsMargins(0, 0, 0, 0)
        details_layout.addLayout(heading)
        details_layout.addLayout(card)
        details_layout.addWidget(self.verify_label)
        details_layout.addWidget(self.variants, 1)
        details_layout.addWidget(self.reason_label)
        # On a small screen the card, the table and the reason scroll rather than squeeze into each other.
        scroller = QScrollArea(self)
        scroller.setObjectName("ModelDetails")
        scroller.setWidgetResizable(True)
        scroller.setFrameShape(QFrame.Shape.NoFrame)
        scroller.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroller.setWidget(details)
        self.right_splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.right_splitter.setObjectName("ModelsRightSplitter")
        self.right_splitter.addWidget(scroller)
        self.right_splitter.addWidget(self.plot)
        self.right_splitter.setStretchFactor(0, 3)
        self.right_splitter.setStretchFactor(1, 2)
        self.right_splitter.setChildrenCollapsible(False)
        self.right_splitter.setSizes([420, 280])
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("ModelsSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.right_splitter)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([230, 1050])
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.splitter, 1)
        self._show(None)

    # -- what is shown ---------------------------------------------------------------------------------------

    def records(self) -> list[ModelRecord]:
        return list(self._records.values())

    def record(self, ref: str) -> ModelRecord | None:
        return self._records.get(ref)

    def set_records(self, records: Iterable[ModelRecord], where: Mapping[str, str] | None = None) -> None:
        """Show exactly these records, keeping the selection when its record is still there. `where`: ref -> where
        the files are of a model imported on another laptop ("on the shared store", "not available: ...")."""
        chosen = self.selected_ref()
        self._records = {}
        self.model_list.clear()
        for record in records:
            self._add_row(record, (where or {}).get(record.ref, ""))
        self._fit_list()
        if chosen in self._records:
            self.select(chosen)
        else:
            self._selected()

    def add_record(self, record: ModelRecord) -> None:
        """Show a new (or replaced) record and select it."""
        self.remove_record(record.ref)
        self._add_row(record)
        self._fit_list()
        self.select(record.ref)

    def remove_record(self, ref: str) -> None:
        if self._records.pop(ref, None) is None:
            return
        for row in range(self.model_list.topLevelItemCount()):
            item = self.model_list.topLevelItem(row)
            assert item is not None  # row is below topLevelItemCount()
            if item.data(0, REF_ROLE) == ref:
                self.model_list.takeTopLevelItem(row)
                break
        self._refresh_hint()

    def _add_row(self, record: ModelRecord, elsewhere: str = "") -> None:
        self._records[record.ref] = record
        size = int(record.card.get("size_bytes", 0))
        synthetic = record.report is not None and record.report.synthetic
        name = plain(record.ref) + (f" ({plain(elsewhere)})" if elsewhere else "")
        item = _Item([name, when_text(record.imported_at), human_bytes(size),
                      "⚠ synthetic" if synthetic else ("operator's" if record.report is not None else NONE)])
        item.setData(0, REF_ROLE, record.ref)
        item.setData(1, SORT_ROLE, record.imported_at)
        item.setData(2, SORT_ROLE, size)
        item.setToolTip(0, tooltip_text(plain(str(record.card.get("path", ""))) + (
            f"\nImported on another laptop: its signed files are {plain(elsewhere)}; they are fetched and verified "
            "when a deploy or rollout needs them" if elsewhere else "")))
        item.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if synthetic:
            item.setForeground(3, QColor(colours()["warning"]))
            item.setToolTip(3, tooltip_text(
                "Accuracy was checked on inputs generated from the declared shapes, not on your data"))
        else:
            item.setToolTip(3, tooltip_text("Accuracy was checked on the sample inputs given on import"))
        self.model_list.addTopLevelItem(item)
        self._refresh_hint()

    def _fit_list(self) -> None:
        for column in range(len(MODEL_COLUMNS) - 1):
            self.model_list.resizeColumnToContents(column)

    def _refresh_hint(self) -> None:
        self.hint.setVisible(not self._records)

    def select(self, ref: str) -> None:
        for row in range(self.model_list.topLevelItemCount()):
            item = self.model_list.topLevelItem(row)
            assert item is not None  # row is below topLevelItemCount()
            if item.data(0, REF_ROLE) == ref:
                self.model_list.setCurrentItem(item)
                item.setSelected(True)
                return

    def selected_ref(self) -> str:
        items = self.model_list.selectedItems()
        return str(items[0].data(0, REF_ROLE)) if items else ""

    def selected(self) -> ModelRecord | None:
        return self._records.get(self.selected_ref())

    def _selected(self) -> None:
        record = self.selected()
        self._show(record)
        self.selection_changed.emit(record.ref if record is not None else "")

    def _show(self, record: ModelRecord | None) -> None:
        for button in (self.verify_button, self.export_button, self.remove_button):
            button.setEnabled(record is not None)
        self.verify_label.hide()
        self.variants.clear()
        if record is None:
            self.title.setText("No model selected" if self._records else "")
            self.synthetic_badge.hide()
            for label in self.card_labels.values():
                label.setText("")
            self.reason_label.setText("")
            self.plot.show_results(())
            return
        card = record.card
        report = record.report
        self.title.setText(record.ref)
        self.synthetic_badge.setVisible(report is not None and report.synthetic)
        inputs = ", ".join(shape_of(s) for s in card.get("inputs", ()))
        outputs = ", ".join(shape_of(s) for s in card.get("outputs", ()))
        self.card_labels["io"].setText(f"{inputs} → {outputs}")
        opset = dict(card.get("opset", {}))
        others = "".join(f", {d} {v}" for d, v in sorted(opset.items()) if d != "ai.onnx")
        self.card_labels["format"].setText(
            f"opset {opset.get('ai.onnx', '?')}{others}, IR {card.get('ir_version', '?')}; "
            f"{int(card.get('parameter_count', 0)):,} parameters, {human_bytes(int(card.get('size_bytes', 0)))}; "
            f"SHA-256 {record.source_sha256[:16]}…")
        self.card_labels["format"].setToolTip(tooltip_text(
            f"Source SHA-256 {record.source_sha256}\n"
            f"Imported from {plain(str(card.get('path', '')))}"))
        operators = dict(card.get("operators", {}))
        ranked = sorted(operators.items(), key=lambda kv: (-int(kv[1]), kv[0]))
        self.card_labels["operators"].setText(", ".join(f"{plain(op)} ×{n}" for op, n in ranked[:12])
                                              + (f" and {len(ranked) - 12} more" if len(ranked) > 12 else ""))
        self.card_labels["operators"].setToolTip(tooltip_text("\n".join(f"{plain(op)} ×{n}" for op, n in ranked)))
        if report is None:
            self.card_labels["samples"].setText("not optimized yet")
        else:
            where = "synthetic inputs from the declared shapes" if report.synthetic else plain(report.samples_source)
            tol = report.tolerance
            self.card_labels["samples"].setText(
                f"{report.samples} {where}; tolerance: max error ≤ {tol.max_abs_error:g} or cosine ≥ "
                f"{tol.min_cosine:g}, top-1 ≥ {tol.min_top1_agreement * 100:.0f} %")
            self.card_labels["samples"].setToolTip(tooltip_text(
                f"Optimized in {report.seconds:.1f} s" if report.seconds else ""))
        self._fill_variants(record)
        self.plot.show_results(report.profiles if report is not None else ())

    def _fill_variants(self, record: ModelRecord) -> None:
        report = record.report
        if report is None:
            return
        self.variants.setSortingEnabled(False)
        bold = QFont(self.variants.font())
        bold.setBold(True)
        for result in report.profiles:
            for variant in result.variants:
                texts, numbers = variant_cells(result, variant)
                item = _Item(texts)
                for column, number in enumerate(numbers):
                    if number is not None:
                        item.setData(column, SORT_ROLE, number)
                for column in (V_SIZE, V_SHARE, V_ERROR, V_COSINE, V_TOP1, V_LOCAL, V_RATIO):
                    item.setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setForeground(V_STATUS, QColor(status_colour(variant.status)))
                if variant.status == CHOSEN:
                    for column in range(len(VARIANT_COLUMNS)):
                        item.setFont(column, bold)
                item.setToolTip(V_REASON, tooltip_text(plain(variant.reason)))
                item.setToolTip(V_STATUS, tooltip_text(plain(variant.reason)))
                item.setToolTip(V_DEVICE, tooltip_text(
                    "Agent bench p50 on each device of this profile" if variant.device_latency_ms
                    else "No online device of this profile with a runtime was timed"))
                item.setToolTip(V_RECIPE, tooltip_text(
                    RECIPE_TIP.get(variant.recipe, plain(variant.recipe))
                    + (f"\nSHA-256 {variant.sha256}" if variant.sha256 else "")))
                self.variants.addTopLevelItem(item)
        self.variants.setSortingEnabled(True)
        self._explain()
        if not self._sized:
            for column in range(len(VARIANT_COLUMNS) - 1):
                self.variants.resizeColumnToContents(column)

    def _explain(self, *_args: object) -> None:
        """Under the table, in full: why the current row's variant has its status, else what each profile got."""
        item = self.variants.currentItem()
        if item is not None:
            self.reason_label.setText(f"{item.text(V_PROFILE)}, {item.text(V_RECIPE)} ({item.text(V_STATUS)}): "
                                      f"{item.text(V_REASON)}")
            return
        record = self.selected()
        report = record.report if record is not None else None
        if report is None:
            self.reason_label.setText("")
            return
        lines = []
        for result in report.profiles:
            chosen = result.variant(result.chosen)
            why = plain(chosen.reason) if chosen is not None else ""
            lines.append(f"{plain(result.profile)} gets {RECIPE_TEXT.get(result.chosen, plain(result.chosen))}"
                         + (f": {why}" if why else ""))
        self.reason_label.setText("\n".join(lines))

    def show_verify(self, results: Sequence[VerifyResult]) -> None:
        """Say, one line per artifact, whether it is intact and signed by this fleet's key."""
        bad = [r for r in results if not r.ok]
        lines = [f"{'✔' if r.ok else '✘'} {plain(r.ref)} ({r.artifact[:12]}): "
                 + ("intact, signature good" if r.ok else "; ".join(plain(p) for p in r.problems)) for r in results]
        heading = (f"Verified {len(results)} artifact(s): all intact and signed by this fleet's key" if not bad
                   else f"{len(bad)} of {len(results)} artifact(s) FAILED verification")
        self.verify_label.setText("\n".join([heading, *lines]))
        self.verify_label.setStyleSheet(f"color: {colours()['error' if bad else 'ok']};")
        self.verify_label.show()

    def variant_rows(self) -> list[list[str]]:
        """The variants table's cells as shown, top to bottom (what a test or a report reads)."""
        rows = []
        for r in range(self.variants.topLevelItemCount()):
            item = self.variants.topLevelItem(r)
            assert item is not None  # r is below topLevelItemCount()
            rows.append([item.text(c) for c in range(len(VARIANT_COLUMNS))])
        return rows

    # -- layout -------------------------------------------------------------------------------------------------

    def remembered_layout(self) -> dict[str, object]:
        return {"models/splitter": self.splitter.saveState(),
                "models/right_splitter": self.right_splitter.saveState(),
                "models/list_header": self.model_list.header().saveState(),
                "models/variants_header": self.variants.header().saveState()}

    def restore_layout(self, stored: QSettings) -> None:
        for key, restore in (("models/splitter", self.splitter.restoreState),
                             ("models/right_splitter", self.right_splitter.restoreState),
                             ("models/list_header", self.model_list.header().restoreState),
                             ("models/variants_header", self.variants.header().restoreState)):
            value = stored.value(key)
            if isinstance(value, QByteArray) and restore(value) and key == "models/variants_header":
                self._sized = True

    def refresh_theme(self) -> None:
        self.synthetic_badge.setStyleSheet(f"color: {colours()['warning']}; font-weight: 600;")
        self.plot.refresh_theme()
        self._show(self.selected())
