"""The Models view and the import dialog: figures shown as the report states them, sorting, remembered layout,
the dialog's defaults and validation; then a real import through the dialog into a signed store, and a cancel.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QApplication, QMessageBox

from fleetdesk.artifacts.records import ModelRecord, VerifyResult
from fleetdesk.artifacts.signing import KEYRING_ACCOUNT
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.config import Settings
from fleetdesk.gui.model_import import SYNTHETIC_NOTE, ImportDialog, default_name
from fleetdesk.gui.models_view import (
    V_DEVICE,
    V_ERROR,
    V_LOCAL,
    V_PROFILE,
    V_RATIO,
    V_RECIPE,
    V_SHARE,
    V_STATUS,
    V_TOP1,
    VARIANT_COLUMNS,
    ModelsView,
)
from fleetdesk.gui.theme import apply_theme
from fleetdesk.gui.variant_figures import NOT_MEASURED
from fleetdesk.models.report import Accuracy, OptimizationReport, ProfileResult, Tolerance, Variant
from fleetdesk.transport import credentials
from tests.fixtures.models.torch_models import export_cnn
from tests.gui_harness import GuiSession, gui_session, shown_text
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]

SHOTS = Path(os.environ.get("FLEETDESK_SHOTS6", "/tmp/shots6"))

CARD = {
    "path": "/models/line-camera.onnx", "name": "line-camera", "sha256": "ab" * 32, "file_sha256": "ab" * 32,
    "size_bytes": 4_000_000, "ir_version": 8, "opset": {"ai.onnx": 17},
    "producer": {"name": "pytorch", "version": "2.13.0"},
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 64, 64]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", 10]}],
    "operators": {"Conv": 4, "Relu": 4, "Gemm": 1, "GlobalAveragePool": 1}, "parameter_count": 1_000_000,
    "external_files": [],
}


def accuracy(error: float, cosine: float, top1: float | None = 1.0, synthetic: bool = True) -> Accuracy:
    return Accuracy(error, cosine, top1, 16, synthetic)


def report(synthetic: bool = True) -> OptimizationReport:
    base = Variant("fp32", "baseline", "the model as imported", size_bytes=4_000_000, local_latency_ms=2.0)
    ipc = ProfileResult("ipc-x86", ("graph", "int8-dynamic", "int8-static"), (
        base,
        Variant("graph", "accepted", "as accurate as FP32 and 10% faster; INT8 static is faster still",
                size_bytes=3_900_000, accuracy=accuracy(1e-6, 1.0), local_latency_ms=1.8),
        Variant("int8-dynamic", "rejected", "slower than FP32 on the measured target (3.10 ms against 2.00 ms)",
                size_bytes=1_050_000, accuracy=accuracy(0.02, 0.998, 0.9375), local_latency_ms=3.1),
        Variant("int8-static", "chosen", "fastest variant within the tolerance: 0.62× FP32's latency",
                size_bytes=1_100_000, accuracy=accuracy(0.004, 0.9995), local_latency_ms=1.24),
    ), "int8-static")
    orin = ProfileResult("jetson-orin-nano", ("graph", "fp16"), (
        Variant("fp32", "baseline", "the model as imported", size_bytes=4_000_000, local_latency_ms=2.0,
                device_latency_ms={"orin-01": 9.5}),
        Variant("graph", "chosen", "fastest variant within the tolerance", size_bytes=3_900_000,
                accuracy=accuracy(1e-6, 1.0), local_latency_ms=1.8, device_latency_ms={"orin-01": 8.0}),
        Variant("fp16", "failed", "onnxruntime could not convert the model to FP16: Cast node unsupported"),
    ), "graph")
    return OptimizationReport("ab" * 32, 16, synthetic, "generated from the declared input shapes"
                              if synthetic else "/data/samples", Tolerance(), (ipc, orin), seconds=12.5)


def record(name: str = "line-camera", version: str = "1", imported_at: str = "2026-11-21T12:00:00+00:00",
           size: int = 4_000_000, synthetic: bool = True) -> ModelRecord:
    return ModelRecord(name, version, "ab" * 32, imported_at, {**CARD, "size_bytes": size}, report(synthetic),
                       baseline="00" * 32, artifacts={"ipc-x86": "11" * 32, "jetson-orin-nano": "22" * 32})


def save_shot(widget: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(SHOTS / f"{name}.png"))  # type: ignore[attr-defined]


@pytest.fixture
def view(qtbot: object) -> ModelsView:
    apply_theme(QApplication.instance(), "light")  # as the window looks: the QSS's headings and hints
    widget = ModelsView()
    qtbot.addWidget(widget)  # type: ignore[attr-defined]
    widget.resize(1280, 720)
    widget.show()
    return widget


def row_of(view: ModelsView, profile: str, recipe: str) -> list[str]:
    rows = [r for r in view.variant_rows() if r[V_PROFILE] == profile and r[V_RECIPE].lower().startswith(recipe)]
    assert len(rows) == 1, view.variant_rows()
    return rows[0]


def test_a_record_shows_its_card_and_every_variant_with_its_figures(view: ModelsView) -> None:
    view.add_record(record())
    assert view.selected_ref() == "line-camera@1"
    assert view.title.text() == "line-camera@1"
    assert view.synthetic_badge.isVisibleTo(view)
    assert view.card_labels["io"].text() == "image float32[batch×3×64×64] → scores float32[batch×10]"
    assert view.card_labels["format"].text() == \
        "opset 17, IR 8; 1,000,000 parameters, 4.0 MB; SHA-256 abababababababab…"
    assert view.card_labels["operators"].text().startswith("Conv ×4, Relu ×4, ")
    assert view.card_labels["samples"].text().startswith("16 synthetic inputs from the declared shapes; tolerance")
    assert len(view.variant_rows()) == 7

    chosen = row_of(view, "ipc-x86", "int8 static")
    assert chosen[V_STATUS] == "chosen"
    assert chosen[V_SHARE] == "28 %"  # 1.1 MB of 4.0 MB
    assert chosen[V_ERROR] == "0.0040" and chosen[VARIANT_COLUMNS.index("Cosine")] == "0.9995"
    assert chosen[V_TOP1] == "100 %"
    assert (chosen[V_LOCAL], chosen[V_RATIO]) == ("1.24", "×0.62")
    assert chosen[V_DEVICE] == NOT_MEASURED
    slower = row_of(view, "ipc-x86", "int8 dynamic")
    assert (slower[V_STATUS], slower[V_RATIO], slower[V_TOP1]) == ("rejected", "×1.55", "94 %")
    assert slower[-1].startswith("slower than FP32")
    orin = row_of(view, "jetson-orin-nano", "graph")
    assert (orin[V_STATUS], orin[V_DEVICE]) == ("chosen", "orin-01 8.00")
    failed = row_of(view, "jetson-orin-nano", "fp16")
    assert (failed[V_STATUS], failed[V_LOCAL], failed[V_SHARE]) == ("failed", "—", "—")

    # The chosen rows are bold, the others not; the reason's full text is the cell's tooltip.
    items = [view.variants.topLevelItem(r) for r in range(view.variants.topLevelItemCount())]
    bold = {(i.text(V_PROFILE), i.text(V_RECIPE)) for i in items if i.font(V_PROFILE).bold()}
    assert bold == {("ipc-x86", "INT8 static"), ("jetson-orin-nano", "graph opt.")}
    rejected = next(i for i in items if i.text(V_STATUS) == "rejected")
    assert shown_text(rejected.toolTip(len(VARIANT_COLUMNS) - 1)) == \
        "slower than FP32 on the measured target (3.10 ms against 2.00 ms)"
    assert not QFont(rejected.font(0)).bold()


def test_the_plot_has_one_bar_per_timed_variant_and_a_fp32_line_per_profile(view: ModelsView) -> None:
    view.add_record(record())
    plot = view.plot
    assert plot.bar_count == 6  # 7 variants, the failed FP16 has no latency
    heights = {s: list(b.opts["height"]) for s, b in plot.bars.items()}
    assert heights == {"chosen": [1.24, 8.0], "accepted": [1.8], "baseline": [2.0, 9.5], "rejected": [3.1]}
    # One dashed FP32 line over each profile's bars, at the figure the choice was made on.
    assert [list(line.yData) for line in plot.fp32_lines] == [[2.0, 2.0], [9.5, 9.5]]
    top = [text for _x, text in plot.getAxis("top")._tickLevels[0]]
    assert top == ["ipc-x86", "jetson-orin-nano"]
    bottom = [text for _x, text in plot.getAxis("bottom")._tickLevels[0]]
    assert bottom == ["FP32", "graph opt.", "INT8 dyn.", "INT8 static", "FP32", "graph opt."]
    save_shot(view, "models-view-hand-built")


def test_columns_sort_by_their_figures_not_their_text(view: ModelsView) -> None:
    view.add_record(record())
    view.variants.sortByColumn(V_LOCAL, Qt.SortOrder.AscendingOrder)
    local = [r[V_LOCAL] for r in view.variant_rows()]
    assert local == ["1.24", "1.80", "1.80", "2.00", "2.00", "3.10", "—"]  # empty cells last
    view.variants.sortByColumn(V_STATUS, Qt.SortOrder.AscendingOrder)
    assert [r[V_STATUS] for r in view.variant_rows()][:2] == ["chosen", "chosen"]
    assert view.variant_rows()[-1][V_STATUS] == "failed"
    # Models sort by size as a number: 900 KB is smaller than 10.0 MB though "9" > "1".
    view.add_record(record("small", "1", size=900_000))
    view.add_record(record("big", "1", size=10_000_000))
    view.model_list.sortByColumn(2, Qt.SortOrder.AscendingOrder)
    order = [view.model_list.topLevelItem(r).text(0) for r in range(3)]
    assert order == ["small@1", "line-camera@1", "big@1"]


def test_records_replace_select_and_remove(view: ModelsView) -> None:
    view.set_records([record("a", "1", "2026-11-20T08:00:00+00:00"), record("b", "2", "2026-11-21T08:00:00+00:00",
                                                                          synthetic=False)])
    assert view.model_list.topLevelItem(0).text(0) == "b@2"  # the newest first
    assert view.model_list.topLevelItem(0).text(3) == "operator's"
    assert view.model_list.topLevelItem(1).text(3) == "⚠ synthetic"
    assert not view.hint.isVisibleTo(view)
    view.select("a@1")
    assert view.title.text() == "a@1" and view.verify_button.isEnabled()
    view.set_records([record("a", "1"), record("c", "1")])  # the selection survives a refresh
    assert view.selected_ref() == "a@1"
    view.remove_record("a@1")
    view.remove_record("c@1")
    assert view.records() == [] and view.hint.isVisibleTo(view)
    assert not view.remove_button.isEnabled()


def test_verify_results_are_shown_per_artifact(view: ModelsView) -> None:
    view.add_record(record())
    view.show_verify([VerifyResult("11" * 32, "line-camera@1 int8-static", True),
                      VerifyResult("22" * 32, "line-camera@1 graph", False,
                                   ("model.onnx: SHA-256 differs from the manifest",))])
    text = view.verify_label.text()
    assert text.splitlines()[0] == "1 of 2 artifact(s) FAILED verification"
    assert "✔ line-camera@1 int8-static (111111111111): intact, signature good" in text
    assert "✘ line-camera@1 graph (222222222222): model.onnx: SHA-256 differs from the manifest" in text


def test_splitters_and_columns_are_remembered(qtbot: object, tmp_path: Path) -> None:
    stored = QSettings(str(tmp_path / "layout.ini"), QSettings.Format.IniFormat)
    first = ModelsView()
    qtbot.addWidget(first)  # type: ignore[attr-defined]
    first.resize(1200, 700)
    first.show()
    first.add_record(record())
    first.splitter.setSizes([300, 900])
    first.variants.header().resizeSection(V_REASON := len(VARIANT_COLUMNS) - 2, 211)
    sizes = first.splitter.sizes()
    for key, value in first.remembered_layout().items():
        stored.setValue(key, value)
    second = ModelsView()
    qtbot.addWidget(second)  # type: ignore[attr-defined]
    second.resize(1200, 700)
    second.show()
    second.restore_layout(stored)
    second.add_record(record())  # filling the table keeps the operator's widths
    assert second.splitter.sizes() == sizes
    assert second.variants.header().sectionSize(V_REASON) == 211


# -- the import dialog ---------------------------------------------------------------------------------------

def test_the_dialog_defaults_to_the_file_name_and_the_fleet_profiles(qtbot: object, tmp_path: Path) -> None:
    model = tmp_path / "Line Camera v2.onnx"
    model.write_bytes(b"\x08\x07")  # the dialog checks the path; the store checks the bytes
    dialog = ImportDialog(str(model), profiles=["ipc-x86", "rpi4", "jetson-orin-nano"], fleet_profiles=["rpi4"])
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    assert dialog.name_edit.text() == "Line-Camera-v2" == default_name(str(model))
    assert dialog.version_edit.text() == ""
    assert dialog.chosen_profiles() == ("rpi4",)
    assert dialog.samples_note.text() == SYNTHETIC_NOTE and not dialog.samples_note.isHidden()
    assert dialog.import_button.isEnabled()
    request = dialog.request()
    assert (request.name, request.version, request.samples, request.profiles) == ("Line-Camera-v2", None, None,
                                                                                   ("rpi4",))
    # No profile in the fleet yet: every known profile is checked.
    every = ImportDialog(str(model), profiles=["ipc-x86", "rpi4"], fleet_profiles=[])
    qtbot.addWidget(every)  # type: ignore[attr-defined]
    assert every.chosen_profiles() == ("ipc-x86", "rpi4")


def test_the_dialog_refuses_what_cannot_be_imported_and_says_why(qtbot: object, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07")
    dialog = ImportDialog("", profiles=["ipc-x86"], can_time_on_devices=False)
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    assert not dialog.import_button.isEnabled() and dialog.problem() == "Choose the .onnx file to import."
    assert not dialog.time_box.isChecked() and not dialog.time_box.isEnabled()
    dialog.path_edit.setText(str(tmp_path / "notes.txt"))
    assert "is not an ONNX model" in dialog.problem_label.text()
    dialog.path_edit.setText(str(model))
    assert dialog.name_edit.text() == "m" and dialog.import_button.isEnabled()
    dialog.name_edit.setText("bad name!")
    assert not dialog.import_button.isEnabled() and "may hold only" in dialog.problem()
    dialog.name_edit.setText("good")
    dialog.version_edit.setText("1 2")
    assert "version" in dialog.problem()
    dialog.version_edit.setText("1.2")
    dialog.samples_edit.setText(str(tmp_path / "missing"))
    assert "does not exist" in dialog.problem() and dialog.samples_note.isHidden()
    (tmp_path / "samples").mkdir()
    dialog.samples_edit.setText(str(tmp_path / "samples"))
    dialog.profile_boxes["ipc-x86"].setChecked(False)
    assert dialog.problem() == "Check at least one device profile to optimize for."
    dialog.profile_boxes["ipc-x86"].setChecked(True)
    with qtbot.waitSignal(dialog.submitted) as got:  # type: ignore[attr-defined]
        qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
    assert got.args[0].samples == str(tmp_path / "samples") and got.args[0].version == "1.2"
    # A name typed by hand is kept when the file changes.
    dialog2 = ImportDialog(str(model), profiles=["ipc-x86"])
    qtbot.addWidget(dialog2)  # type: ignore[attr-defined]
    qtbot.keyClicks(dialog2.name_edit, "-x")  # type: ignore[attr-defined]
    dialog2.path_edit.setText(str(tmp_path / "other.onnx"))
    assert dialog2.name_edit.text() == "m-x"


# -- a real import through the window: the dialog, the executor, the signed store --------------------------

@pytest.fixture
def store_session(tmp_path: Path, screens: Path, monkeypatch: pytest.MonkeyPatch,
                  keyring_daemon: KeyringDaemon) -> Iterator[GuiSession]:
    """The window over an empty inventory, its artifact store in a temp FLEETDESK_DATA_DIR, signing with a
    key whose passphrase lives in a private gnome-keyring."""
    monkeypatch.setenv("FLEETDESK_DATA_DIR", str(tmp_path / "data"))
    credentials.delete_secret(KEYRING_ACCOUNT)
    try:
        with gui_session(f"sqlite:///{tmp_path / 'fleet.db'}", screens) as session:
            yield session
    finally:
        gc.unfreeze()
        credentials.delete_secret(KEYRING_ACCOUNT)


def exported_cnn(folder: Path) -> Path:
    """The torch CNN as an .onnx file. Exporting imports torch into this test process (the app never does):
    its millions of objects would make each full garbage collection in the import's worker thread hold the
    GIL for 120-200 ms, a loop stall that comes from the test's own heap. They are moved out of the
    collector's sight (gc.freeze; thawed after the test)."""
    path = export_cnn(folder)
    gc.collect()
    gc.freeze()
    return path


def store_files(data: Path) -> list[str]:
    root = data / "artifacts"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock") \
        if root.is_dir() else []


def fill_import_dialog(session: GuiSession, model: Path, profiles: set[str]) -> ImportDialog:
    window = session.window
    session.call(lambda: window.import_action.trigger())  # Ctrl+O
    dialog = window.model_actions.import_dialog
    assert isinstance(dialog, ImportDialog) and dialog.isVisible() and not dialog.import_button.isEnabled()
    dialog.path_edit.setText(str(model))
    for name, box in dialog.profile_boxes.items():
        box.setChecked(name in profiles)
    assert dialog.problem() == ""
    return dialog


def test_a_model_imported_through_the_dialog_is_signed_stored_and_shown(store_session: GuiSession,
                                                                      tmp_path: Path, qtbot: object) -> None:
    session = store_session
    window = session.window
    model = exported_cnn(tmp_path / "models")
    dialog = fill_import_dialog(session, model, {"ipc-x86"})
    assert dialog.name_edit.text() == "cnn"
    session.call(lambda: qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton))  # type: ignore
    activity = window.bridge.activities.all()[-1]
    assert activity.title == "Import cnn.onnx"
    details: set[str] = set()
    activity.changed.connect(lambda: details.add(activity.detail))
    session.wait(lambda: not activity.running, "the import", timeout=240)
    assert activity.state == "succeeded", activity.summary
    assert any("step" in d and "elapsed" in d for d in details), details  # progress reached the activity view

    record = activity.result
    assert isinstance(record, ModelRecord) and record.ref == "cnn@1"
    stored = ArtifactStore.default(Settings.load()).model("cnn@1")
    assert stored.source_sha256 == record.source_sha256 and stored.artifacts == record.artifacts
    # The view selects the new record and shows every variant the report holds.
    assert window.tabs.currentWidget() is window.models_view
    view = window.models_view
    assert view.selected_ref() == "cnn@1" and view.synthetic_badge.isVisibleTo(view)
    report = record.report
    assert report is not None
    rows = view.variant_rows()
    assert len(rows) == sum(len(p.variants) for p in report.profiles)
    chosen = report.profile("ipc-x86")
    assert chosen is not None
    bold = [view.variants.topLevelItem(r) for r in range(len(rows))
            if view.variants.topLevelItem(r).font(0).bold()]
    assert [(i.text(V_PROFILE), i.text(V_STATUS)) for i in bold] == [("ipc-x86", "chosen")] \
        or chosen.chosen == "fp32"
    assert view.plot.bar_count == sum(1 for p in report.profiles for v in p.variants
                                      if v.measured_latency_ms is not None)
    session.screenshot(window, "models-view-real-import")
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.tabs.setCurrentWidget(view)
    window.grab().save(str(SHOTS / "main-window-models-real.png"))
    view.grab().save(str(SHOTS / "models-view-real.png"))

    # Verify from the view: every artifact intact and signed.
    session.call(lambda: view.verify_button.click())
    session.wait(lambda: view.verify_label.isVisibleTo(view), "the verify result")
    assert view.verify_label.text().startswith("Verified ") and "FAILED" not in view.verify_label.text()

    # A second window reads the same record back from the store.
    session.call(lambda: window.bridge.models.load_models())
    session.wait(lambda: not window.bridge.activities.running(), "the store read")
    assert [r.ref for r in view.records()] == ["cnn@1"]


def test_cancelling_an_import_mid_way_leaves_the_store_unchanged(store_session: GuiSession, tmp_path: Path,
                                                                 qtbot: object) -> None:
    session = store_session
    window = session.window
    data = tmp_path / "data"
    model = exported_cnn(tmp_path / "models")
    before = store_files(data)
    dialog = fill_import_dialog(session, model, {"ipc-x86", "rpi4", "jetson-orin-nano"})
    session.call(lambda: qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton))  # type: ignore
    activity = window.bridge.activities.all()[-1]
    # Cancel once the optimizer is busy (a variant being built or checked), as an operator would.
    session.wait(lambda: (activity.progress is not None and activity.progress > 0) or not activity.running,
                 "the import to get going", timeout=120)
    assert activity.running, activity.summary
    session.call(activity.cancel)
    session.wait(lambda: not activity.running, "the cancelled import to stop", timeout=120)
    assert activity.state == "cancelled"
    assert store_files(data) == before
    assert window.models_view.records() == []
    assert not [w for w in session.window.findChildren(QMessageBox) if w.isVisible()]

