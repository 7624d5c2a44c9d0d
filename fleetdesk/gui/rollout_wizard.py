"""The rollout wizard: what to roll out, to which devices, in which waves, with which thresholds and health gates.

One non-modal dialog with a section per part of the plan (fleetdesk.rollout.plan.RolloutPlan) and the plan in
words on the right (`plan_text(resolve(...))`, exactly what `fleetdesk rollout plan` prints). Every edit builds
the plan again: a PlanError names its field, the section that holds the field says what is wrong and the fix,
and Start stays disabled until the plan resolves. Resolving reads the window's copy of the inventory (the
bridge's devices and groups, no SQL on the loop) and the artifact store's records.

Opening it takes four turns of the loop, each started by the one before on a timer, so that the loop runs
between them (a zero-delay QTimer.singleShot is a posted event, which Qt delivers in the same pass as the next
one, before any timer): the constructor builds the sections of the first screen; OPEN_STEP_MS later the rest of
them (`_build_rest`); then the first plan (`_first_plan`), after which `ready` fires and the opener shows the
dialog. Until then nothing can be started.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import FleetDeskError, PlanError
from fleetdesk.inventory.records import Device, Group
from fleetdesk.models.report import BASELINE
from fleetdesk.rollout.plan import (
    ResolvedPlan,
    RolloutPlan,
    database_loss_text,
    plan_text,
    resolve,
    takeover_text,
)
from fleetdesk.rollout.policy import (
    DATABASE_LOSS_POLICIES,
    TAKEOVER_POLICIES,
    Gates,
    ShadowPolicy,
    TransferPolicy,
    WavePolicy,
    split_waves,
)

from .activities import human_bytes
from .fields import number_spin
from .fleet_model import plain
from .overview import colours
from .text import tooltip_text
from .wave_policy_table import CommonPolicy, WavePolicyTable

DEFAULT_WAVES = "1, 10%, 50%, 100%"
# The threshold semantics, as fleetdesk/rollout/policy.py's docstring states them.
THRESHOLD_SEMANTICS = ("Success is REACHED (>=): the next wave starts when at least that many devices of the wave "
                       "are done; a share is rounded up. Errors are EXCEEDED (>): the rollout pauses when MORE "
                       "than that many devices of the wave failed; 0 pauses on the first failure.")
SECTIONS = ("model", "targets", "waves", "thresholds", "soak", "gates", "shadow", "transfer", "unreachable",
            "takeover")
# The choices of "If its driver or the database goes away", in the operator's words; what each means in full is the
# plan module's text (takeover_text, database_loss_text), shown as the item's tooltip and in the plan preview.
TAKEOVER_CHOICES = {"ask": "An operator takes it over", "auto": "A FleetDesk window takes it over by itself"}
DATABASE_LOSS_CHOICES = {"pause": "It stays paused for an operator to resume", "resume": "It resumes by itself"}
OPEN_STEP_MS = 1  # see the module docstring: a timer, not a posted event, between the steps of opening
MB = 1_000_000
ID_ROLE = Qt.ItemDataRole.UserRole + 21
NONE = "—"


def parse_waves(text: str) -> tuple[int | str, ...]:
    """"1, 10%, 50%, 100%" as RolloutPlan.waves; counts become ints, shares stay "10%" (checked by the plan)."""
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    if not text.strip() or any(not p for p in parts):
        raise PlanError("write the waves separated by commas", field="waves",
                        fix=f"e.g. {DEFAULT_WAVES}: a canary, then 10%, 50% and the rest")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def section_of(field: str | None) -> str:
    """The wizard section that holds a PlanError's field ("policy.soak_s" -> "soak")."""
    name = (field or "").split("[")[0]
    head, _, tail = name.partition(".")
    if head in ("devices", "groups", "profiles", "targets"):
        return "targets"
    if head == "wave_policies":
        return "waves"  # the per-wave table lives in the waves section
    if head == "policy":
        return "soak" if tail in ("soak_s", "approve") else "thresholds"
    if head in ("confirm_within_s", "step_timeout_s"):
        return "soak"
    if head.startswith("unreachable"):
        return "unreachable"
    if head in ("takeover", "on_database_loss"):
        return "takeover"
    if head == "transfer":
        return "transfer"
    return head if head in SECTIONS else "model"


@dataclass(frozen=True)
class InventorySnapshot:
    """What `resolve` reads of an Inventory, from the window's copy (no database access)."""

    all_devices: tuple[Device, ...]
    all_groups: tuple[Group, ...]

    def devices(self) -> list[Device]:
        return list(self.all_devices)

    def groups(self) -> list[Group]:
        return list(self.all_groups)


def variant_figures(record: ModelRecord, profile: str) -> tuple[str, str, str, str]:
    """(variant, size against FP32, accuracy, latency) of the variant a device of `profile` gets."""
    report = record.report
    result = report.profile(profile) if report is not None else None
    if result is None or profile not in record.artifacts:
        base = result.variant(BASELINE) if result is not None else None
        latency = base.measured_latency_ms if base is not None else None
        return ("FP32 as imported", "100 %", "the original",
                f"{latency:.2f} ms" if latency is not None else NONE)
    chosen = result.variant(result.chosen)
    base = result.variant(BASELINE)
    if chosen is None:
        return (result.chosen, NONE, NONE, NONE)
    size = (f"{chosen.size_bytes / base.size_bytes * 100:.0f} % ({human_bytes(chosen.size_bytes)})"
            if base is not None and base.size_bytes and chosen.size_bytes else
            human_bytes(chosen.size_bytes) if chosen.size_bytes else NONE)
    accuracy = (f"cosine {chosen.accuracy.cosine:.4f}" + (f", top-1 {chosen.accuracy.top1_agreement * 100:.0f} %"
                                                          if chosen.accuracy.top1_agreement is not None else "")
                if chosen.accuracy is not None else "the original" if chosen.recipe == BASELINE else NONE)
    latency = chosen.measured_latency_ms
    where = "device" if chosen.device_latency_ms else "laptop"
    base_ms = base.measured_latency_ms if base is not None else None
    ratio = f", ×{latency / base_ms:.2f} FP32" if latency is not None and base_ms else ""
    return (chosen.recipe, size, accuracy, f"{latency:.2f} ms ({where}{ratio})" if latency is not None else NONE)


class RolloutWizard(QDialog):
    """See the module docstring. `start_requested(plan, run)`: create the rollout (and drive it with run=True);
    `push_requested(record, device_ids)`: the plain push, no waves and no gates; `ready`: it can be shown."""

    start_requested = Signal(object, bool)  # RolloutPlan, run now
    ready = Signal()  # built and planned: the opener shows it now (the module docstring)
    push_requested = Signal(object, list)  # ModelRecord, list[int]

    def __init__(self, records: Sequence[ModelRecord], devices: Sequence[Device], groups: Sequence[Group],
                 store: ArtifactStore, *, model: str = "", device_ids: Sequence[int] = (), group: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("RolloutWizard")
        self.setWindowTitle("Roll out a model")
        self._records = {r.ref: r for r in records}
        self._snapshot = InventorySnapshot(tuple(sorted(devices, key=lambda d: d.name.casefold())), tuple(groups))
        self._store = store
        self.resolved: ResolvedPlan | None = None
        self.error: PlanError | None = None
        self.errors: dict[str, QLabel] = {}
        self._invalid: list[QWidget] = []

        # Containers first, children made inside them: reparenting a built subtree re-polishes it (slow with the
        # theme's style sheet).
        outer = QVBoxLayout(self)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        outer.addWidget(splitter, 1)
        scroll = QScrollArea(splitter)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(540)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        form = QWidget()
        scroll.setWidget(form)
        self._form = form
        column = QVBoxLayout(form)
        self._column = column
        right = QWidget(splitter)
        splitter.addWidget(scroll)
        splitter.addWidget(right)

        # -- model -------------------------------------------------------------------------------------------
        box, layout = self._section("model", "Model")
        self.model_combo = QComboBox(box)
        for ref in sorted(self._records, key=lambda r: self._records[r].imported_at, reverse=True):
            self.model_combo.addItem(plain(ref), ref)
        if model and self.model_combo.findData(model) >= 0:
            self.model_combo.setCurrentIndex(self.model_combo.findData(model))
        layout.addWidget(self.model_combo)
        column.addWidget(box)

        # -- targets -----------------------------------------------------------------------------------------
        box, layout = self._section("targets", "Targets")
        lists = QHBoxLayout()
        self.device_list = self._checklist(box, [(f"{plain(d.name)}  ({plain(d.profile or 'not probed')})", d.id)
                                                 for d in self._snapshot.all_devices], set(device_ids))
        self.group_list = self._checklist(box, [(f"{plain(g.name)}  ({len(g.device_ids)})", g.name)
                                                for g in groups], {group} if group else set())
        profiles = sorted({d.profile for d in devices if d.profile})
        self.profile_list = self._checklist(box, [(plain(p), p) for p in profiles], set())
        for title, widget in (("Devices", self.device_list), ("Groups", self.group_list),
                              ("Every device of profile", self.profile_list)):
            part = QVBoxLayout()
            part.addWidget(QLabel(title, box))
            part.addWidget(widget)
            lists.addLayout(part, 2 if widget is self.device_list else 1)
        layout.addLayout(lists)
        self.variants = QTreeWidget(box)
        self.variants.setObjectName("RolloutVariants")
        self.variants.setHeaderLabels(["Profile", "Devices", "Variant", "Size (of FP32)", "Accuracy", "Latency"])
        self.variants.setRootIsDecorated(False)
        self.variants.setMaximumHeight(110)
        self.variants.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.variants.setWordWrap(False)
        layout.addWidget(QLabel("Variant per profile (from the import's report):", box))
        layout.addWidget(self.variants)
        column.addWidget(box)

        # -- waves -------------------------------------------------------------------------------------------
        box, layout = self._section("waves", "Waves")
        self.waves_edit = QLineEdit(DEFAULT_WAVES, box)
        self.waves_edit.setObjectName("WavesEdit")
        self.waves_edit.setToolTip(tooltip_text(
            "As Ansible's serial: counts or shares of ALL the targeted devices, rounded "
            "down, at least 1; the last value repeats until every device has a wave"))
        self.wave_sizes = QLabel("", box)
        self.wave_sizes.setObjectName("WaveSizes")
        self.wave_sizes.setWordWrap(True)
        layout.addWidget(self.waves_edit)
        layout.addWidget(self.wave_sizes)
        self.wave_table = WavePolicyTable(self._common_policy, box)
        layout.addWidget(QLabel("Per wave (unchecked: the common thresholds, soak and approval below):", box))
        layout.addWidget(self.wave_table)
        column.addWidget(box)

        # -- thresholds --------------------------------------------------------------------------------------
        box, layout = self._section("thresholds", "Thresholds (every wave not overridden in Waves)")
        grid = QFormLayout()
        self.success_edit = QLineEdit("100%", box)
        self.success_edit.setToolTip(tooltip_text('a count of devices such as 2, or a share of the wave such as "90%"'))
        self.errors_edit = QLineEdit("0", box)
        self.errors_edit.setToolTip(tooltip_text('a count of devices such as 1, or a share of the wave such as "10%"'))
        grid.addRow("Success (reached, ≥)", self.success_edit)
        grid.addRow("Errors (exceeded, >)", self.errors_edit)
        layout.addLayout(grid)
        semantics = QLabel(THRESHOLD_SEMANTICS, box)
        semantics.setObjectName("EmptyHint")
        semantics.setWordWrap(True)
        layout.addWidget(semantics)
        column.addWidget(box)

        # -- soak and approval ------------------------------------------------------------------------------
        box, layout = self._section("soak", "Soak and approval")
        grid = QFormLayout()
        self.soak_spin = self._seconds(box, 0, 86_400, 0)
        self.confirm_spin = self._seconds(box, 1, 86_400, 300)
        self.confirm_spin.setToolTip(tooltip_text(
            "A device that hears no confirmation this long after its activation goes "
            "back to its previous model by itself: longer than the soak"))
        self.approve_box = QCheckBox("The operator approves each next wave", box)
        grid.addRow("Soak after activation", self.soak_spin)
        self.step_timeout_spin = self._seconds(box, 10, 86_400, int(RolloutPlan.step_timeout_s))
        self.step_timeout_spin.setToolTip(tooltip_text(
            "Any single step on a device (a transfer, an activation, a gate "
            "measurement) that takes longer fails"))
        grid.addRow("Unconfirmed device reverts after", self.confirm_spin)
        grid.addRow("Any step on a device times out after", self.step_timeout_spin)
        grid.addRow(self.approve_box)
        layout.addLayout(grid)
        column.addWidget(box)

        # -- the plan in words, and the buttons ---------------------------------------------------------------
        self.preview = QPlainTextEdit(right)
        self.preview.setObjectName("PlanPreview")
        self.preview.setReadOnly(True)
        self.preview.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        mono.setPointSizeF(max(8.0, self.font().pointSizeF() - 1))
        self.preview.setFont(mono)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        plan_label = QLabel("Plan (what `fleetdesk rollout plan` prints)", right)
        plan_label.setObjectName("Heading")
        right_layout.addWidget(plan_label)
        right_layout.addWidget(self.preview, 1)
        self.problem = QLabel("", right)
        self.problem.setObjectName("PlanProblem")
        self.problem.setWordWrap(True)
        self.problem.setTextFormat(Qt.TextFormat.PlainText)
        self.problem.setStyleSheet(f"color: {colours()['error']};")
        right_layout.addWidget(self.problem)

        splitter.setStretchFactor(1, 1)
        splitter.setSizes([600, 720])

        self.start_button = QPushButton("Start rollout", self)
        self.start_button.setObjectName("StartRollout")
        self.start_button.setDefault(True)
        self.start_button.setToolTip(tooltip_text("Create the rollout and start its first wave now"))
        self.plan_button = QPushButton("Save as planned", self)
        self.plan_button.setToolTip(tooltip_text(
            "Create the rollout without touching any device; start it from the Rollouts tab"))
        self.push_button = QPushButton("Push only…", self)
        self.push_button.setToolTip(tooltip_text(
            "Copy the artifact to every target at once, verified, without activating it: "
            "no waves and no gates"))
        cancel = QPushButton("Cancel", self)
        self.start_button.clicked.connect(lambda: self._start(True))
        self.plan_button.clicked.connect(lambda: self._start(False))
        self.push_button.clicked.connect(self._push)
        cancel.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.push_button)
        buttons.addStretch(1)
        for button in (cancel, self.plan_button, self.start_button):
            buttons.addWidget(button)

        outer.addLayout(buttons)
        self.resize(1320, 860)

        # The sections below the first screen, and the first plan, come in the next steps (the module docstring):
        # until then nothing can be started.
        for button in (self.start_button, self.plan_button, self.push_button):
            button.setEnabled(False)
        QTimer.singleShot(OPEN_STEP_MS, self, self._build_rest)

    def _build_rest(self) -> None:
        """Opening's second step: the sections from the health gates down, and every edit re-planning."""
        column = self._column
        # -- gates -------------------------------------------------------------------------------------------
        box, layout = self._section("gates", "Health gates")
        grid = QFormLayout()
        self.serving_box = QCheckBox("Model loaded and serving", box)
        self.serving_box.setChecked(True)
        grid.addRow(self.serving_box)
        defaults = Gates()
        self.gate_rows: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        for name, text, suffix, low, high, decimals, value in (
                ("p95_ms_max", "p95 latency at most", " ms", 0.01, 100_000, 2, 50.0),
                ("p95_ratio_max", "p95 against the previous model at most", " ×", 0.01, 100, 2, defaults.p95_ratio_max),
                ("error_rate_max", "Error rate at most", " %", 0, 100, 2, (defaults.error_rate_max or 0) * 100),
                ("golden_min_cosine", "Golden outputs: cosine at least", "", 0, 1, 4, defaults.golden_min_cosine),
                ("temperature_c_max", "Temperature at most", " °C", 1, 150, 0, defaults.temperature_c_max),
                ("memory_free_pct_min", "Free memory at least", " %", 0, 100, 0, defaults.memory_free_pct_min)):
            check = QCheckBox(text, box)
            check.setChecked(getattr(defaults, name) is not None)
            spin = number_spin(box, low, high, decimals, suffix, float(value or 0))
            check.toggled.connect(spin.setEnabled)
            spin.setEnabled(check.isChecked())
            self.gate_rows[name] = (check, spin)
            grid.addRow(check, spin)
        layout.addLayout(grid)
        column.addWidget(box)

        # -- shadow ------------------------------------------------------------------------------------------
        box, layout = self._section("shadow", "Shadow before activation")
        shadow = ShadowPolicy()
        self.shadow_box = QCheckBox("Judge the candidate on live requests before it answers any", box)
        self.shadow_box.setObjectName("ShadowStep")
        self.shadow_box.setToolTip(tooltip_text(
            "After staging, the device's model server loads the candidate beside its model and mirrors a share "
            "of its live requests to it, off the request path; the candidate is activated only if it agrees with "
            "the active model and is fast enough. Inputs and outputs never leave the device"))
        grid = QFormLayout()
        grid.addRow(self.shadow_box)
        self.shadow_share_spin = number_spin(box, 1, 100, 0, " %", shadow.share * 100)
        self.shadow_min_spin = QSpinBox(box)
        self.shadow_min_spin.setRange(1, 1_000_000)
        self.shadow_min_spin.setValue(shadow.min_requests)
        self.shadow_min_spin.setSuffix(" requests")
        self.shadow_wait_spin = self._seconds(box, 1, 86_400, int(shadow.max_wait_s))
        self.shadow_judged: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        for name, text, low, high, decimals, suffix, value in (
                ("min_agreement", "Agreement with the active model at least", 0, 1, 3, "", shadow.min_agreement),
                ("p95_ratio_max", "Candidate p95 against the active model's at most", 0.01, 100, 2, " ×",
                 shadow.p95_ratio_max)):
            check = QCheckBox(text, box)
            check.setChecked(value is not None)
            spin = number_spin(box, low, high, decimals, suffix, float(value or 0))
            self.shadow_judged[name] = (check, spin)
        self.shadow_waves_combo = QComboBox(box)
        self.shadow_waves_combo.addItem("Every device", "all")
        self.shadow_waves_combo.addItem("The canary wave's devices only", "canary")
        self.shadow_skip_combo = QComboBox(box)
        self.shadow_skip_combo.addItem("Fails the device (it keeps its model)", "fail")
        self.shadow_skip_combo.addItem("Activates without a shadow", "pass")
        self.shadow_skip_combo.setToolTip(tooltip_text(
            "A device whose free memory (less the profile's margin) cannot hold the candidate beside its model "
            "skips the shadow step"))
        self._shadow_fields: list[QWidget] = [
            self.shadow_share_spin, self.shadow_min_spin, self.shadow_wait_spin, self.shadow_waves_combo,
            self.shadow_skip_combo, *(w for pair in self.shadow_judged.values() for w in pair)]
        grid.addRow("Share of live requests mirrored", self.shadow_share_spin)
        grid.addRow("Verdict after", self.shadow_min_spin)
        grid.addRow("Or fail after", self.shadow_wait_spin)
        for check, spin in self.shadow_judged.values():
            grid.addRow(check, spin)
        grid.addRow("Shadowed", self.shadow_waves_combo)
        grid.addRow("Too little memory for the candidate", self.shadow_skip_combo)
        layout.addLayout(grid)
        column.addWidget(box)
        self.shadow_box.toggled.connect(self._enable_shadow)
        for check, spin in self.shadow_judged.values():
            check.toggled.connect(lambda _on, c=check, sp=spin: sp.setEnabled(c.isEnabled() and c.isChecked()))
        self._enable_shadow(False)

        # -- transfer ----------------------------------------------------------------------------------------
        box, layout = self._section("transfer", "Transfer")
        grid = QFormLayout()
        self.parallel_spin = QSpinBox(box)
        self.parallel_spin.setRange(1, 256)
        self.parallel_spin.setValue(TransferPolicy().max_parallel)
        self.bandwidth_spin = QDoubleSpinBox(box)
        self.bandwidth_spin.setRange(0, 10_000)
        self.bandwidth_spin.setDecimals(1)
        self.bandwidth_spin.setSuffix(" MB/s")
        self.bandwidth_spin.setSpecialValueText("no cap")
        self.prestage_box = QCheckBox("Pre-stage the whole wave before any device activates", box)
        self.prestage_box.setToolTip(tooltip_text(
            "Copy the artifact to every device of a wave, verified, before any of them "
            "activates it"))
        self.prestage_box.setChecked(True)
        self.retries_spin = QSpinBox(box)
        self.retries_spin.setRange(0, 20)
        self.retries_spin.setValue(TransferPolicy().retries)
        self.retries_spin.setToolTip(tooltip_text(
            "A transfer that fails is tried again this many times, waiting longer each "
            "time, before the device counts as failed (or unreachable)"))
        grid.addRow("Transfers at once", self.parallel_spin)
        grid.addRow("Bandwidth cap per transfer", self.bandwidth_spin)
        grid.addRow("Retries per transfer", self.retries_spin)
        grid.addRow(self.prestage_box)
        layout.addLayout(grid)
        column.addWidget(box)

        # -- unreachable -------------------------------------------------------------------------------------
        box, layout = self._section("unreachable", "Unreachable devices")
        grid = QFormLayout()
        self.unreachable_combo = QComboBox(box)
        self.unreachable_combo.addItem("Wait for them (not counted as failed)", "wait")
        self.unreachable_combo.addItem("Count them as failed", "count")
        self.unreachable_wait_spin = self._seconds(box, 0, 86_400, 600)
        self.unreachable_combo.currentIndexChanged.connect(
            lambda _i: self.unreachable_wait_spin.setEnabled(self.unreachable_combo.currentData() == "wait"))
        grid.addRow("Policy", self.unreachable_combo)
        grid.addRow("Wait at most", self.unreachable_wait_spin)
        layout.addLayout(grid)
        column.addWidget(box)

        # -- the driving laptop or the database going away -----------------------------------------------------
        box, layout = self._section("takeover", "If its driver or the database goes away")
        grid = QFormLayout()
        self.takeover_combo = self._choices(box, TAKEOVER_POLICIES, TAKEOVER_CHOICES, takeover_text,
                                            RolloutPlan.takeover)
        self.takeover_combo.setObjectName("TakeoverPolicy")
        self.database_loss_combo = self._choices(box, DATABASE_LOSS_POLICIES, DATABASE_LOSS_CHOICES,
                                                 database_loss_text, RolloutPlan.on_database_loss)
        self.database_loss_combo.setObjectName("DatabaseLossPolicy")
        grid.addRow("The FleetDesk driving it stops", self.takeover_combo)
        grid.addRow("The database was unreachable", self.database_loss_combo)
        layout.addLayout(grid)
        column.addWidget(box)
        column.addStretch(1)

        # -- every edit re-plans ------------------------------------------------------------------------------
        for edit in (self.waves_edit, self.success_edit, self.errors_edit):
            edit.textChanged.connect(self.refresh)
        for combo in (self.model_combo, self.unreachable_combo, self.shadow_waves_combo, self.shadow_skip_combo,
                      self.takeover_combo, self.database_loss_combo):
            combo.currentIndexChanged.connect(self.refresh)
        # QSpinBox and QDoubleSpinBox each declare their own valueChanged (int, float): two loops.
        for int_spin in (self.soak_spin, self.confirm_spin, self.step_timeout_spin, self.parallel_spin,
                         self.retries_spin, self.unreachable_wait_spin, self.shadow_min_spin, self.shadow_wait_spin):
            int_spin.valueChanged.connect(self.refresh)
        for float_spin in (self.bandwidth_spin, self.shadow_share_spin, *(s for _c, s in self.gate_rows.values()),
                           *(s for _c, s in self.shadow_judged.values())):
            float_spin.valueChanged.connect(self.refresh)
        for check in (self.approve_box, self.serving_box, self.prestage_box, self.shadow_box,
                      *(c for c, _s in self.gate_rows.values()), *(c for c, _s in self.shadow_judged.values())):
            check.toggled.connect(self.refresh)
        for widget in (self.device_list, self.group_list, self.profile_list):
            widget.itemChanged.connect(self.refresh)
        self.wave_table.edited.connect(self.refresh)
        QTimer.singleShot(OPEN_STEP_MS, self, self._first_plan)

    def _first_plan(self) -> None:
        """Opening's third step: the plan as the fields say it; then the wizard is `ready` to be shown."""
        self.refresh()
        self.ready.emit()

    # -- building ---------------------------------------------------------------------------------------------

    def _section(self, key: str, title: str) -> tuple[QGroupBox, QVBoxLayout]:
        box = QGroupBox(title, self._form)
        box.setObjectName(f"Section_{key}")
        layout = QVBoxLayout(box)
        error = QLabel("", box)
        error.setObjectName("SectionError")
        error.setWordWrap(True)
        error.setTextFormat(Qt.TextFormat.PlainText)
        error.setStyleSheet(f"color: {colours()['error']};")
        error.hide()
        layout.addWidget(error)
        self.errors[key] = error
        return box, layout

    @staticmethod
    def _choices(parent: QWidget, policies: Sequence[str], labels: dict[str, str], describe: Callable[[str], str],
                 default: str) -> QComboBox:
        """A combo box of a plan's policies: each item says it in `labels`' words, with `describe(policy)` as its
        tooltip; the combo's own tooltip follows the chosen one. Filled with its signals blocked: nothing re-plans."""
        combo = QComboBox(parent)
        combo.blockSignals(True)
        for i, policy in enumerate(policies):
            combo.addItem(labels.get(policy, policy), policy)
            combo.setItemData(i, tooltip_text(describe(policy)), Qt.ItemDataRole.ToolTipRole)
        combo.setCurrentIndex(max(0, combo.findData(default)))
        combo.blockSignals(False)
        combo.setToolTip(tooltip_text(describe(combo.currentData())))
        combo.currentIndexChanged.connect(lambda _i: combo.setToolTip(tooltip_text(describe(combo.currentData()))))
        return combo

    @staticmethod
    def _checklist(parent: QWidget, entries: Sequence[tuple[str, object]], checked: Collection[object]) -> QListWidget:
        widget = QListWidget(parent)
        widget.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        widget.setMaximumHeight(120)
        for text, key in entries:
            item = QListWidgetItem(text, widget)
            item.setData(ID_ROLE, key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if key in checked else Qt.CheckState.Unchecked)
        return widget

    def _enable_shadow(self, on: bool) -> None:
        for widget in self._shadow_fields:
            widget.setEnabled(on)
        for check, spin in self.shadow_judged.values():
            spin.setEnabled(on and check.isChecked())

    def _shadow(self) -> ShadowPolicy | None:
        """The shadow step as the fields say it (None when it is off); PlanError names the field."""
        if not self.shadow_box.isChecked():
            return None
        judged = {name: spin.value() if check.isChecked() else None
                  for name, (check, spin) in self.shadow_judged.items()}
        try:
            return ShadowPolicy(share=self.shadow_share_spin.value() / 100, min_requests=self.shadow_min_spin.value(),
                                max_wait_s=float(self.shadow_wait_spin.value()),
                                waves=self.shadow_waves_combo.currentData(),
                                on_skip=self.shadow_skip_combo.currentData(), **judged)
        except PlanError as exc:
            raise PlanError(exc.message.removeprefix(f"{exc.field}: "), field=f"shadow.{exc.field}",
                            fix=exc.fix) from None

    @staticmethod
    def _seconds(parent: QWidget, low: int, high: int, value: int) -> QSpinBox:
        spin = QSpinBox(parent)
        spin.setRange(low, high)
        spin.setSuffix(" s")
        spin.setValue(value)
        return spin

    @staticmethod
    def _checked(widget: QListWidget) -> list[Any]:
        """The keys of the checked entries: device ids or group or profile names, as `_checklist` stored them."""
        return [widget.item(i).data(ID_ROLE) for i in range(widget.count())
                if widget.item(i).checkState() == Qt.CheckState.Checked]

    # -- the plan ---------------------------------------------------------------------------------------------

    def record(self) -> ModelRecord | None:
        return self._records.get(self.model_combo.currentData() or "")

    def target_devices(self) -> list[Device]:
        """The devices the targets stand for now (each once), for the live wave sizes."""
        chosen: dict[int, Device] = {}
        everyone = {d.id: d for d in self._snapshot.all_devices}
        for device_id in self._checked(self.device_list):
            chosen[device_id] = everyone[device_id]
        groups = {g.name: g for g in self._snapshot.all_groups}
        for name in self._checked(self.group_list):
            chosen.update((i, everyone[i]) for i in groups[name].device_ids if i in everyone)
        profiles = set(self._checked(self.profile_list))
        chosen.update((d.id, d) for d in everyone.values() if d.profile in profiles)
        return list(chosen.values())

    def plan(self) -> RolloutPlan:
        """The plan as the fields say it; PlanError (naming the field) when a value is not valid."""
        gates = {name: (spin.value() / 100 if name == "error_rate_max" else spin.value()) if check.isChecked()
                 else None for name, (check, spin) in self.gate_rows.items()}
        bandwidth = self.bandwidth_spin.value()
        try:
            policy = WavePolicy.from_text(self.success_edit.text(), self.errors_edit.text(),
                                          soak_s=float(self.soak_spin.value()), approve=self.approve_box.isChecked())
        except PlanError as exc:
            raise PlanError(exc.message.removeprefix(f"{exc.field}: "), field=f"policy.{exc.field}",
                            fix=exc.fix) from None
        waves = parse_waves(self.waves_edit.text())
        split_waves(1, waves)  # a bad waves entry is the error to show, before any override of a stale row
        return RolloutPlan(
            model=self.model_combo.currentData() or "",
            devices=tuple(self._checked(self.device_list)), groups=tuple(self._checked(self.group_list)),
            profiles=tuple(self._checked(self.profile_list)), waves=waves,
            policy=policy, wave_policies=self.wave_table.policies(),
            gates=Gates(serving=self.serving_box.isChecked(), **gates),
            transfer=TransferPolicy(max_parallel=self.parallel_spin.value(),
                                    bandwidth_bytes_s=int(bandwidth * MB) if bandwidth > 0 else None,
                                    prestage=self.prestage_box.isChecked(), retries=self.retries_spin.value()),
            shadow=self._shadow(),
            unreachable=self.unreachable_combo.currentData(),
            unreachable_wait_s=float(self.unreachable_wait_spin.value()),
            confirm_within_s=float(self.confirm_spin.value()),
            step_timeout_s=float(self.step_timeout_spin.value()),
            takeover=self.takeover_combo.currentData(), on_database_loss=self.database_loss_combo.currentData())

    def _common_policy(self) -> CommonPolicy:
        """The common thresholds, soak and approval as typed: what a wave without an override shows."""
        return CommonPolicy(self.success_edit.text().strip(), self.errors_edit.text().strip(),
                            f"{self.soak_spin.value()}", self.approve_box.isChecked())

    def refresh(self, *_args: object) -> None:
        """Build and resolve the plan again; show the wave sizes, the variants, the plan or what to fix."""
        for widget in self._invalid:
            widget.setStyleSheet("")
        self._invalid = []
        self.wave_table.unmark()
        for label in self.errors.values():
            label.hide()
        self._show_variants()
        self._show_wave_sizes()
        self.resolved, self.error = None, None
        try:
            self.resolved = resolve(self.plan(), self._snapshot, self._store)
        except PlanError as exc:
            self.error = exc
        except FleetDeskError as exc:  # the store could not be read
            self.error = PlanError(exc.message, field="model", fix=exc.fix)
        if self.error is not None:
            error = self.error
            message = error.message.removeprefix(f"{error.field}: ") if error.field else error.message
            text = message + (f" — fix: {error.fix}" if error.fix else "")
            label = self.errors[section_of(error.field)]
            label.setText(text)
            label.show()
            self.problem.setText(f"Not ready: {error.field or 'plan'}: {text}")
            self.preview.setPlainText("")
            self._mark(error.field)
        else:
            assert self.resolved is not None
            self.problem.setText("")
            self.preview.setPlainText(plan_text(self.resolved))
        ready = self.resolved is not None
        self.start_button.setEnabled(ready)
        self.plan_button.setEnabled(ready)
        self.push_button.setEnabled(ready)

    def _mark(self, field: str | None) -> None:
        if self.wave_table.mark(field):
            return
        name = (field or "").split("[")[0]
        widget = {"waves": self.waves_edit, "policy.success": self.success_edit, "policy.errors": self.errors_edit,
                  "confirm_within_s": self.confirm_spin, "policy.soak_s": self.soak_spin,
                  "step_timeout_s": self.step_timeout_spin, "transfer.retries": self.retries_spin}.get(name)
        if widget is not None:
            widget.setStyleSheet(f"border: 1px solid {colours()['error']};")
            self._invalid.append(widget)

    def _show_wave_sizes(self) -> None:
        count = len(self.target_devices())
        try:
            specs = parse_waves(self.waves_edit.text())
            sizes = split_waves(count, specs)
        except PlanError:
            self.wave_sizes.setText("")
            return  # the table keeps its rows while the text is not a list of waves
        self.wave_table.show_waves(sizes, specs)
        if not sizes:
            self.wave_sizes.setText("No device chosen yet: the waves are sized when targets are chosen.")
            return
        shown = ", ".join(map(str, sizes))
        canary = " (a canary first)" if sizes[0] == 1 and len(sizes) > 1 else ""
        self.wave_sizes.setText(f"{count} device{'s' if count != 1 else ''} → {len(sizes)} wave"
                                f"{'s' if len(sizes) != 1 else ''} of {shown}{canary}")

    def _show_variants(self) -> None:
        self.variants.clear()
        record = self.record()
        if record is None:
            return
        by_profile: dict[str, int] = {}
        for device in self.target_devices():
            by_profile[device.profile or "not probed"] = by_profile.get(device.profile or "not probed", 0) + 1
        for profile, count in sorted(by_profile.items()):
            figures = variant_figures(record, profile) if profile != "not probed" else (NONE,) * 4
            self.variants.addTopLevelItem(QTreeWidgetItem([plain(profile), str(count), *figures]))

    # -- the buttons --------------------------------------------------------------------------------------------

    def _start(self, run: bool) -> None:
        self.refresh()
        if self.resolved is None:
            return
        self.start_requested.emit(self.resolved.plan, run)
        self.accept()

    def _push(self) -> None:
        self.refresh()
        record = self.record()
        if self.resolved is None or record is None:
            return
        self.push_requested.emit(record, [d.device_id for d in self.resolved.devices])
        self.accept()
