"""Themes and icons: both themes load cleanly, every icon renders, and a sample window looks right in each.

The sample window carries every widget kind and objectName the QSS styles, so a parse error or a
Qt warning from either style sheet fails here (qt_log_level_fail = WARNING), and its screenshots
are written to the `screens` folder to be looked at.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QFile, QPoint, Qt
from PySide6.QtGui import QAction, QColor, QFontInfo, QIcon, QImage, QPalette, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QToolBar,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fleetdesk.gui.icons import ICON_NAMES, STATUSES, app_icon, icon, icon_path, status_icon
from fleetdesk.gui.theme import THEMES, apply_theme, current_theme, palette_for
from fleetdesk.resources import data_dir, data_file

STATUS_COLOURS = {
    "online": "#2e9d50",
    "offline": "#8a94a0",
    "untrusted": "#d08a00",
    "unreachable": "#c8372d",
    "busy": "#2f6fde",
}
LINE_COLOUR = {"light": "#4a5563", "dark": "#d5dbe3"}


@pytest.fixture
def app(qapp: QApplication) -> Iterator[QApplication]:
    """The test application, put back to the light theme afterwards so other tests see the default."""
    yield qapp
    apply_theme(qapp, "light")


def _opaque_colours(image: QImage) -> Counter[str]:
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    return Counter(
        image.pixelColor(x, y).name()
        for y in range(image.height())
        for x in range(image.width())
        if image.pixelColor(x, y).alpha() == 255
    )


# ---- themes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", THEMES)
def test_a_theme_sets_fusion_its_palette_and_its_style_sheet(app: QApplication, name: str) -> None:
    apply_theme(app, name)

    assert current_theme() == name
    assert app.styleSheet() == data_file("ui", f"themes/{name}.qss").read_text(encoding="utf-8")
    app.setStyleSheet("")  # with a sheet, app.style() is Qt's style sheet wrapper around Fusion
    assert app.style().name() == "fusion"
    apply_theme(app, name)
    window = app.palette().color(QPalette.ColorRole.Window)
    text = app.palette().color(QPalette.ColorRole.WindowText)
    if name == "dark":
        assert window.lightness() < 60 and text.lightness() > 200
    else:
        assert window.lightness() > 220 and text.lightness() < 60


def test_light_theme_does_not_follow_a_dark_os_palette(app: QApplication) -> None:
    # Fusion's own palette follows the OS colour scheme since Qt 6.5: the light theme spells its colours out.
    apply_theme(app, "dark")
    apply_theme(app, "light")
    assert app.palette().color(QPalette.ColorRole.Base) == QColor("#ffffff")
    assert palette_for("light").color(QPalette.ColorRole.Highlight) == QColor("#2f6fde")


def test_an_unknown_theme_is_refused_naming_the_known_ones(app: QApplication) -> None:
    apply_theme(app, "dark")
    before = app.styleSheet()

    with pytest.raises(ValueError, match="unknown theme 'solarized'; the known themes are light, dark"):
        apply_theme(app, "solarized")

    assert current_theme() == "dark"
    assert app.styleSheet() == before


# Qt style sheet properties (Qt 6 "Qt Style Sheets Reference", List of Properties) this project uses or may
# use; Qt ignores a misspelt property without a word, so this test is where a typo shows.
KNOWN_QSS_PROPERTIES = {
    "alternate-background-color", "background", "background-color", "background-image", "background-clip",
    "background-origin", "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-top-color", "border-right-color", "border-bottom-color", "border-left-color", "border-style",
    "border-width", "border-radius", "border-top-left-radius", "border-top-right-radius",
    "border-bottom-left-radius", "border-bottom-right-radius", "border-image", "bottom", "color", "font",
    "font-family", "font-size", "font-style", "font-weight", "gridline-color", "height", "icon-size", "image",
    "left", "margin", "margin-top", "margin-right", "margin-bottom", "margin-left", "max-height", "max-width",
    "min-height", "min-width", "outline", "padding", "padding-top", "padding-right", "padding-bottom",
    "padding-left", "placeholder-text-color", "right", "selection-background-color", "selection-color",
    "spacing", "subcontrol-origin", "subcontrol-position", "text-align", "top", "width",
}  # fmt: skip


def _rules(path: Path) -> dict[str, str]:
    text = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {" ".join(sel.split()): body for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text)}


@pytest.mark.parametrize("name", THEMES)
def test_style_sheets_use_only_real_properties(name: str) -> None:
    rules = _rules(data_file("ui", f"themes/{name}.qss"))
    assert rules
    bodies = [re.sub(r"url\([^)]*\)", "", body) for body in rules.values()]
    used = {prop.strip() for body in bodies for prop in re.findall(r"([\w-]+)\s*:", body)}
    assert used - KNOWN_QSS_PROPERTIES == set()


@pytest.mark.parametrize("name", THEMES)
def test_images_named_by_the_style_sheets_exist(app: QApplication, name: str) -> None:
    apply_theme(app, name)
    urls = re.findall(r"url\(([^)]+)\)", data_file("ui", f"themes/{name}.qss").read_text(encoding="utf-8"))
    assert urls
    for url in urls:
        assert QFile.exists(url), url


def test_dark_theme_styles_everything_the_light_one_does() -> None:
    light = _rules(data_file("ui", "themes/light.qss"))
    dark = _rules(data_file("ui", "themes/dark.qss"))
    assert set(light) == set(dark)


# ---- icons -----------------------------------------------------------------------------------


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", [16, 32])
def test_every_line_icon_renders_in_the_colour_of_its_theme(app: QApplication, theme: str, size: int) -> None:
    apply_theme(app, theme)
    for name in ICON_NAMES:
        pixmap = icon(name).pixmap(size, size)
        assert not pixmap.isNull(), name
        assert pixmap.width() == size and pixmap.height() == size, name
        colours = _opaque_colours(pixmap.toImage())
        # Strokes, not a blank or a blob: some fully drawn pixels, and most of the square left empty.
        assert 0 < sum(colours.values()) < size * size * 0.6, name
        assert colours.most_common(1)[0][0] == LINE_COLOUR[theme], name


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", [16, 32])
def test_every_status_has_its_own_coloured_badge(app: QApplication, theme: str, size: int) -> None:
    apply_theme(app, theme)
    for status in STATUSES:
        pixmap = status_icon(status).pixmap(size, size)
        assert not pixmap.isNull(), status
        colours = _opaque_colours(pixmap.toImage())
        assert colours.most_common(1)[0][0] == STATUS_COLOURS[status], status
        # In a selected row too: the badge is not tinted with the selection colour.
        selected = status_icon(status).pixmap(size, size, QIcon.Mode.Selected)
        assert _opaque_colours(selected.toImage()).most_common(1)[0][0] == STATUS_COLOURS[status], status


def test_the_application_icon_loads(app: QApplication) -> None:
    assert not app_icon().pixmap(32, 32).isNull()


def test_an_unknown_icon_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="no icon named 'radar'"):
        icon("radar")
    with pytest.raises(KeyError, match="no status icon for 'asleep'"):
        status_icon("asleep")


def test_icon_files_are_exactly_the_named_icons_and_dark_twins_only_change_colour() -> None:
    folder = data_dir("resources") / "icons"
    expected = {*ICON_NAMES, *(f"status-{s}" for s in STATUSES), "fleetdesk"}
    assert {p.stem for p in folder.glob("*.svg")} == expected
    assert {p.stem for p in (folder / "dark").glob("*.svg")} == set(ICON_NAMES)
    # Images the style sheets draw (spin and combo box arrows), found through the fdicons: search path.
    assert {p.stem for p in (folder / "qss").glob("*.svg")} == {"chevron-up", "chevron-down", "check", "radio-dot"}
    for name in ICON_NAMES:
        light = icon_path(name).read_text(encoding="utf-8")
        dark = icon_path(name, dark=True).read_text(encoding="utf-8")
        assert 'viewBox="0 0 24 24"' in light and 'stroke-width="2"' in light, name
        assert dark == light.replace(LINE_COLOUR["light"], LINE_COLOUR["dark"]), name


# ---- the sample window -------------------------------------------------------------------------


class SampleWindow(QMainWindow):
    """A stand-in for the operator's window with every styled widget kind and objectName on it."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("MainWindow")
        self.setWindowTitle("FleetDesk")
        self.setWindowIcon(app_icon())
        menu = self.menuBar()
        for title in ("&File", "&Devices", "&Groups", "&Models", "&View", "&Help"):
            menu.addMenu(title)

        toolbar = QToolBar("Main", self)
        toolbar.setObjectName("MainToolBar")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        toolbar.setMovable(False)
        self.actions_by_icon: dict[str, QAction] = {}
        for name, text in (
            ("discover", "Discover"), ("stop", "Stop"), (None, None), ("add-device", "Add device"),
            ("sweep", "Sweep…"), ("probe", "Probe"), ("trust", "Trust…"), ("credentials", "Credentials…"),
            (None, None), ("deploy", "Deploy…"), ("model", "Models"), ("refresh", "Refresh"),
        ):  # fmt: skip
            if name is None:
                toolbar.addSeparator()
                continue
            action = toolbar.addAction(icon(name), text)
            self.actions_by_icon[name] = action
        self.actions_by_icon["stop"].setEnabled(False)
        self.addToolBar(toolbar)

        groups = QDockWidget("Groups", self)
        groups.setObjectName("GroupsDock")
        tree = QTreeWidget(groups)
        tree.setHeaderHidden(True)
        tree.setMinimumWidth(200)
        for group, count in (("All devices", 6), ("Line 1 — packaging", 3), ("Line 2 — vision QA", 2), ("Spares", 1)):
            item = QTreeWidgetItem(tree, [f"{group}  ({count})"])
            item.setIcon(0, icon("group"))
        tree.setCurrentItem(tree.topLevelItem(1))
        groups.setWidget(tree)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, groups)
        self.resizeDocks([groups], [210], Qt.Orientation.Horizontal)

        central = QWidget(self)
        layout = QVBoxLayout(central)
        heading = QLabel("Fleet", central)
        heading.setObjectName("Heading")
        self.heading = heading
        self.filter_edit = QLineEdit(central)
        self.filter_edit.setPlaceholderText("Filter by name, address, profile…")
        layout.addWidget(heading)
        layout.addWidget(self.filter_edit)

        self.table = QTableWidget(0, 5, central)
        self.table.setObjectName("FleetTable")
        self.table.setHorizontalHeaderLabels(["Status", "Hostname", "Address", "Profile", "Active model"])
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        rows = [
            ("online", "line1-jetson-01", "198.18.0.11", "jetson-orin-nano", "yolo-v8n · 3f2a9c"),
            ("online", "line1-jetson-02", "198.18.0.12", "jetson-orin-nano", "yolo-v8n · 3f2a9c"),
            ("busy", "line1-pi-03", "198.18.0.13", "raspberry-pi-4", "deploying…"),
            ("untrusted", "line2-ipc-04", "198.18.0.14", "ipc-x86-nvidia", "—"),
            ("unreachable", "line2-pi-07", "198.18.0.17", "raspberry-pi-5", "resnet50 · 91bd04"),
            ("offline", "spare-ipc-09", "198.18.0.19", "ipc-x86", "—"),
        ]
        for row, (status, *cells) in enumerate(rows):
            self.table.insertRow(row)
            item = QTableWidgetItem(status_icon(status), status.capitalize())
            self.table.setItem(row, 0, item)
            for column, text in enumerate(cells, start=1):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.table.selectRow(1)
        empty = QLabel("Devices on this network appear here once discovery runs.", central)
        empty.setObjectName("EmptyHint")
        layout.addWidget(self.table, 1)
        layout.addWidget(empty)

        side = QTabWidget(self)
        side.setObjectName("SideTabs")
        side.addTab(self._trust_page(), "Trust")
        side.addTab(self._activity_page(), "Activity")
        side.addTab(QWidget(), "Device")

        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(central)
        splitter.addWidget(side)
        splitter.setSizes([640, 420])
        self.setCentralWidget(splitter)

        self.statusBar().addWidget(QLabel("Database: ~/.local/share/fleetdesk/inventory.sqlite3"), 1)
        self.statusBar().addPermanentWidget(QLabel("Devices online: 2 / 6"))
        self.statusBar().addPermanentWidget(QLabel("1 activity running"))
        self.resize(1200, 720)

    def _trust_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.warning = QFrame(page)
        self.warning.setObjectName("KeyChangedWarning")
        warning_layout = QVBoxLayout(self.warning)
        title = QLabel("<b>The host key of line2-ipc-04 has changed</b>", self.warning)
        body = QLabel(
            "Someone may be impersonating this device, or it was reinstalled. Check the new fingerprint "
            "on the device's console before trusting it.",
            self.warning,
        )
        body.setTextFormat(Qt.TextFormat.PlainText)
        body.setWordWrap(True)
        warning_layout.addWidget(title)
        warning_layout.addWidget(body)
        layout.addWidget(self.warning)

        layout.addWidget(QLabel("New key (ED25519):", page))
        self.fingerprint = QLabel("SHA256:n3Hq7C1l8u2o4mYw0rP9kD6tVx5bZcA1eF0gHjKsLq8", page)
        self.fingerprint.setObjectName("FingerprintLabel")
        self.fingerprint.setTextFormat(Qt.TextFormat.PlainText)
        self.fingerprint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.fingerprint)

        self.keyring = QFrame(page)
        self.keyring.setObjectName("KeyringProblem")
        keyring_layout = QVBoxLayout(self.keyring)
        keyring_text = QLabel(
            "No OS keyring is available, so passwords cannot be stored. Unlock or install a keyring "
            "(GNOME Keyring, KWallet), or use a key file.",
            self.keyring,
        )
        keyring_text.setWordWrap(True)
        keyring_layout.addWidget(keyring_text)
        layout.addWidget(self.keyring)

        self.error = QLabel("Could not reach 198.18.0.17:22 (connection timed out). Check its cable.", page)
        self.error.setObjectName("ErrorText")
        self.error.setWordWrap(True)
        layout.addWidget(self.error)

        box = QGroupBox("Sweep an address range", page)
        box_layout = QHBoxLayout(box)
        self.cidr_edit = QLineEdit("198.18.0.0/24", box)
        self.timeout_spin = QSpinBox(box)
        self.timeout_spin.setSuffix(" s")
        self.timeout_spin.setValue(3)
        box_layout.addWidget(QLabel("CIDR", box))
        box_layout.addWidget(self.cidr_edit, 1)
        box_layout.addWidget(QLabel("Timeout", box))
        box_layout.addWidget(self.timeout_spin)
        layout.addWidget(box)
        options = QHBoxLayout()
        self.interface_combo = QComboBox(page)
        self.interface_combo.addItems(["enp0s31f6 — 198.18.0.1/24", "wlp2s0 — 10.20.0.14/24"])
        options.addWidget(QLabel("Interface", page))
        options.addWidget(self.interface_combo, 1)
        self.remember = QCheckBox("Remember this choice", page)
        self.remember.setChecked(True)
        options.addWidget(self.remember)
        layout.addLayout(options)
        auth = QHBoxLayout()
        self.key_radio = QRadioButton("Key file", page)
        self.key_radio.setChecked(True)
        auth.addWidget(QLabel("Sign in with", page))
        auth.addWidget(self.key_radio)
        auth.addWidget(QRadioButton("Password", page))
        auth.addWidget(QCheckBox("Use sudo", page))
        auth.addStretch(1)
        layout.addLayout(auth)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.disabled_button = QPushButton("Re-probe", page)
        self.disabled_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel", page)
        self.trust_button = QPushButton("Trust new key", page)
        self.trust_button.setDefault(True)
        for button in (self.disabled_button, self.cancel_button, self.trust_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addStretch(1)
        return page

    def _activity_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(QLabel("Pushing yolo-v8n to line1-pi-03", page))
        self.progress = QProgressBar(page)
        self.progress.setValue(62)
        layout.addWidget(self.progress)
        layout.addStretch(1)
        return page


class DropOverlay(QWidget):
    """The shape of the drop target the main window shows while .onnx files are dragged over it."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("DropOverlay")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        layout = QVBoxLayout(self)
        self.hint = QLabel("Drop .onnx models to import them\nDrop on devices or a group to deploy there", self)
        self.hint.setObjectName("DropHint")
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.hint, 0, Qt.AlignmentFlag.AlignCenter)
        self.setGeometry(parent.rect())


def _show(qtbot, widget: QWidget) -> None:  # type: ignore[no-untyped-def]
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)


def _close(a: QColor, b: QColor, tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a.getRgb()[:3], b.getRgb()[:3], strict=True))


def _pixel(widget: QWidget, x: int, y: int) -> QColor:
    return widget.grab().toImage().pixelColor(x, y)


@pytest.mark.parametrize("name", THEMES)
def test_sample_window_is_styled_in_each_theme(app: QApplication, qtbot, screens: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    apply_theme(app, name)
    window = SampleWindow()
    _show(qtbot, window)
    window.cidr_edit.setFocus()
    qtbot.waitUntil(window.cidr_edit.hasFocus)

    window.grab().save(str(screens / f"theme-{name}.png"))

    default_size = QFontInfo(app.font()).pointSizeF()
    assert QFontInfo(window.heading.font()).pointSizeF() >= default_size * 1.3
    fingerprint = QFontInfo(window.fingerprint.font())
    assert fingerprint.fixedPitch()
    assert fingerprint.pointSizeF() >= default_size * 1.3
    error = window.error.palette().color(QPalette.ColorRole.WindowText)
    assert error.red() > error.green() + 80 and error.red() > error.blue() + 80

    # The changed-key banner is tinted red and the keyring banner amber, inside their borders.
    banner = _pixel(window.warning, window.warning.width() - 8, window.warning.height() // 2)
    assert banner.red() > banner.green() + 20 and banner.red() > banner.blue() + 20
    keyring = _pixel(window.keyring, window.keyring.width() - 8, window.keyring.height() // 2)
    assert keyring.red() > keyring.blue() + 20 and keyring.green() > keyring.blue() + 10

    # The focused field carries the accent-coloured focus ring; the one beside it does not.
    accent = palette_for(name).color(QPalette.ColorRole.Highlight)
    ring = _pixel(window.cidr_edit, 1, window.cidr_edit.height() // 2)
    assert abs(ring.blue() - accent.blue()) < 30 and abs(ring.red() - accent.red()) < 30
    other = _pixel(window.timeout_spin, 1, window.timeout_spin.height() // 2)
    assert abs(other.blue() - accent.blue()) > 30 or abs(other.red() - accent.red()) > 30

    # A checked box is filled with the accent, so it shows on the dark palette as on the light one.
    box = window.remember.grab().toImage()
    assert any(
        _close(box.pixelColor(x, box.height() // 2), accent) for x in range(box.width() // 3)
    ), "checked indicator not drawn in the accent colour"

    # The default button is filled with the accent; the window's background follows the theme.
    trust = _pixel(window.trust_button, window.trust_button.width() // 2, 3)
    assert trust.blue() > trust.red() + 60
    background = _pixel(window, window.width() - 3, window.height() // 2)
    assert (background.lightness() < 80) if name == "dark" else (background.lightness() > 200)


@pytest.mark.parametrize("name", THEMES)
def test_drop_overlay_tints_the_window_around_a_dashed_hint(
    app: QApplication, qtbot, screens: Path, name: str  # type: ignore[no-untyped-def]
) -> None:
    apply_theme(app, name)
    window = SampleWindow()
    _show(qtbot, window)
    plain = window.grab().toImage()
    overlay = DropOverlay(window)
    overlay.show()
    overlay.raise_()

    shot = window.grab()
    shot.save(str(screens / f"drop-{name}.png"))

    hint_font = QFontInfo(overlay.hint.font()).pointSizeF()
    assert hint_font >= QFontInfo(app.font()).pointSizeF() * 1.4
    # Outside the hint the window shows through, shifted towards blue.
    corner = QPoint(window.width() - 30, window.height() - 60)
    before, after = plain.pixelColor(corner), shot.toImage().pixelColor(corner)
    assert after != before
    assert after.blue() - after.red() > before.blue() - before.red()


@pytest.mark.parametrize("name", THEMES)
def test_context_menu_highlights_the_hovered_action(app: QApplication, qtbot, screens: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    apply_theme(app, name)
    window = SampleWindow()
    _show(qtbot, window)
    menu = QMenu(window)
    entries = [("probe", "Probe"), ("trust", "Trust host key…"), ("credentials", "Set credentials…"),
               ("group", "Add to group"), ("terminal", "Copy SSH command"), ("remove", "Remove from inventory")]
    actions = [menu.addAction(icon(key), text) for key, text in entries]
    menu.insertSeparator(actions[-1])
    actions[3].setEnabled(False)
    # Rendered without popping it up: a popup asks the offscreen platform for a keyboard grab, which it warns about.
    menu.adjustSize()
    menu.setActiveAction(actions[1])

    shot: QPixmap = menu.grab()
    shot.save(str(screens / f"menu-{name}.png"))

    geometry = menu.actionGeometry(actions[1])
    selected = shot.toImage().pixelColor(geometry.right() - 6, geometry.center().y())
    assert selected == palette_for(name).color(QPalette.ColorRole.Highlight)
    first = menu.actionGeometry(actions[0])
    plain = shot.toImage().pixelColor(first.right() - 6, first.center().y())
    assert plain != selected
