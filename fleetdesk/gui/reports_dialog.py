"""File ▸ Reports… (Ctrl+P): which report, over which period and devices, in which format and where; a preview of
its first page; writing it with progress and Cancel; "Open folder" once it is written.

It does no I/O: `preview_requested` and `write_requested` carry a ReportRequest to the window, which gathers and
renders through the bridge off the loop and hands back `show_preview`, `show_written` or `show_problem`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from PySide6.QtCore import QDateTime, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDateTimeEdit,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.reports.document import Report
from fleetdesk.reports.export import ReportRequest
from fleetdesk.reports.output import WrittenReport
from fleetdesk.reports.selection import Filters

from .report_preview import preview_document
from .text import tooltip_text, visible_text
from .window_part import qsettings

KIND_NAMES = {"fleet": "Fleet status", "rollout": "Rollout", "health": "Health", "models": "Models",
              "audit": "Audit trail"}
# "format paper": what the format menu offers (the paper matters to PDF only).
FORMAT_NAMES = {"pdf a4": "PDF (A4)", "pdf letter": "PDF (Letter)", "html a4": "HTML (one page)",
                "csv a4": "CSV (a folder of tables)", "json a4": "JSON"}
ALL_DEVICES = "All devices"


class ReportsDialog(QDialog):
    preview_requested = Signal(object)  # ReportRequest
    write_requested = Signal(object)  # ReportRequest
    cancel_requested = Signal()

    def __init__(self, groups: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ReportsDialog")
        self.setWindowTitle("Reports")
        self.kind = QComboBox(self)
        for kind, name in KIND_NAMES.items():
            self.kind.addItem(name, kind)
        self.rollout = QSpinBox(self)
        self.rollout.setRange(1, 2**31 - 1)
        self.rollout.setPrefix("rollout ")
        now = QDateTime.currentDateTime()
        self.since = QDateTimeEdit(now.addDays(-7), self)
        self.until = QDateTimeEdit(now, self)
        for edit in (self.since, self.until):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd HH:mm")
        self.whole = QCheckBox("Everything recorded", self)
        self.whole.setToolTip(tooltip_text("No period: the report's own default (health: the last 7 days)"))
        self.group = QComboBox(self)
        self.group.addItem(ALL_DEVICES, "")
        for name in groups:
            self.group.addItem(visible_text(name), name)
        self.format = QComboBox(self)
        for choice, name in FORMAT_NAMES.items():
            self.format.addItem(name, choice)
        self.path = QLineEdit(self)
        self.path.setObjectName("ReportPath")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        where = QHBoxLayout()
        where.addWidget(self.path, 1)
        where.addWidget(browse)

        form = QFormLayout()
        form.addRow("Report", self.kind)
        form.addRow("Rollout", self.rollout)
        form.addRow("From", self.since)
        form.addRow("To", self.until)
        form.addRow("", self.whole)
        form.addRow("Devices", self.group)
        form.addRow("Format", self.format)
        form.addRow("Save as", where)

        self.preview = QTextBrowser(self)
        self.preview.setObjectName("ReportPreview")
        self.preview.setOpenLinks(False)
        self.preview.setMinimumWidth(520)
        self.status = QLabel("", self)
        self.status.setObjectName("ReportStatus")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)

        self.preview_button = QPushButton("Preview", self)
        self.write_button = QPushButton("Write report", self)
        self.write_button.setDefault(True)
        self.write_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.open_button = QPushButton("Open folder", self)
        self.open_button.setEnabled(False)
        close = QPushButton("Close", self)
        buttons = QHBoxLayout()
        for button in (self.preview_button, self.write_button, self.cancel_button, self.open_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(close)

        left = QVBoxLayout()
        left.addLayout(form)
        left.addStretch(1)
        top = QHBoxLayout()
        top.addLayout(left)
        top.addWidget(self.preview, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)

        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.format.currentIndexChanged.connect(self._suggest_path)
        self.whole.toggled.connect(self._whole_toggled)
        self.preview_button.clicked.connect(self._preview)
        self.write_button.clicked.connect(self._write)
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        self.open_button.clicked.connect(self._open_folder)
        close.clicked.connect(self.reject)
        self._written: WrittenReport | None = None
        self._kind_changed()
        self.resize(1100, 640)

    # -- what the operator chose ---------------------------------------------------------------------------------

    def request(self) -> ReportRequest:
        kind = str(self.kind.currentData())
        fmt, paper = str(self.format.currentData()).split()
        since = until = None
        if not self.whole.isChecked():
            since = _utc(self.since.dateTime())
            until = _utc(self.until.dateTime())
        filters = Filters(group=str(self.group.currentData()) or None, since=since, until=until)
        return ReportRequest(kind, filters, str(fmt), Path(self.path.text().strip()).expanduser(), str(paper),
                             self.rollout.value() if kind == "rollout" else None)

    def _whole_toggled(self, on: bool) -> None:
        self.since.setEnabled(not on)
        self.until.setEnabled(not on)

    def _kind_changed(self) -> None:
        self.rollout.setEnabled(self.kind.currentData() == "rollout")
        self._suggest_path()

    def _suggest_path(self) -> None:
        """A file name that says what the report is, in the folder last written to (remembered)."""
        folder = Path(str(qsettings().value("reports/folder", str(Path.home()))))
        fmt = str(self.format.currentData()).split()[0]
        suffix = "" if fmt == "csv" else f".{fmt}"
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        self.path.setText(str(folder / f"fleetdesk-{self.kind.currentData()}-{today}{suffix}"))

    def _browse(self) -> None:
        chosen, _ = QFileDialog.getSaveFileName(self, "Save the report as", self.path.text())
        if chosen:
            self.path.setText(chosen)

    def _preview(self) -> None:
        self.status.setText("gathering the report…")
        self.preview_requested.emit(self.request())

    def _write(self) -> None:
        self._written = None
        self.open_button.setEnabled(False)
        self.write_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("writing the report…")
        self.write_requested.emit(self.request())

    def _open_folder(self) -> None:
        if self._written is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._written.path.parent)))

    # -- what came back ------------------------------------------------------------------------------------------

    def show_progress(self, text: str) -> None:
        self.status.setText(text)

    def show_preview(self, report: Report) -> None:
        preview_document(report, self.preview.document())
        self.status.setText(f"preview of the first page: {report.title}, {report.scope}")

    def show_written(self, report: Report, written: WrittenReport) -> None:
        self._written = written
        qsettings().setValue("reports/folder", str(written.path.parent))
        self.write_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.open_button.setEnabled(True)
        preview_document(report, self.preview.document())
        self.status.setText(f"wrote {written.path} ({written.bytes:,} bytes), signed in {written.signature.name} "
                            f"by fleet key {written.key}")

    def show_problem(self, text: str) -> None:
        self.write_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.status.setText(text)


def _utc(moment: QDateTime) -> datetime:
    return datetime.fromtimestamp(moment.toSecsSinceEpoch(), UTC)
