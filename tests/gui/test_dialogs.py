"""The trust, credentials, sweep and add-device dialogs, driven as an operator drives them.

They are specified by what the operator sees and what each dialog emits: nothing is trusted or saved
without a click, Enter never trusts, device strings are shown as plain text.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QFontInfo, QGuiApplication
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QLabel, QLineEdit, QWidget
from pytestqt.qtbot import QtBot

from fleetdesk.gui.bridge_views import Login
from fleetdesk.gui.device_detail import visible_text
from fleetdesk.gui.dialogs import AddDeviceDialog, NewDevice, SweepDialog
from fleetdesk.gui.sign_in_dialogs import Credentials, CredentialsDialog, TrustDialog, display_text
from fleetdesk.gui.theme import apply_theme
from fleetdesk.inventory.records import HostKey
from fleetdesk.transport.credentials import KeyringStatus
from fleetdesk.transport.hostkey import PublicKey, parse_public_key
from tests.conftest import as_unprivileged

# Escape codes, a bell, a right-to-left override, a line break and markup, as an mDNS name may carry them.
HOSTILE = "\u202e\x1b[31mpi\x07\n<b>html</b>"
LONG = "line2-" + "x" * 249  # the longest DNS label plus some: 255 characters


def real_key() -> PublicKey:
    line = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return parse_public_key(line)


def pinned(key: PublicKey, device_id: int = 7) -> HostKey:
    return HostKey(device_id, key.key_type, key.line, key.fingerprint, "operator", datetime(2024, 11, 5, 8, 30))


USABLE = KeyringStatus("keyring.backends.SecretService.Keyring", True, "secrets are kept in the OS keyring")
BROKEN = KeyringStatus("keyring.backends.fail.Keyring", False,
                       "no OS keyring backend is available (keyring found only its 'fail' backend)",
                       "install and unlock gnome-keyring (or KWallet) and start a D-Bus session")


@pytest.fixture
def theme(qapp: QApplication, request: pytest.FixtureRequest) -> Iterator[str]:
    """The application styled as FleetDesk ships it (light unless asked); back to light afterwards, the default."""
    name = getattr(request, "param", "light")
    apply_theme(qapp, name)
    yield name
    apply_theme(qapp, "light")


def shown(qtbot: QtBot, dialog: QDialog) -> QDialog:
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    return dialog


def screenshot(dialog: QWidget, path: Path) -> None:
    """Save what the operator sees now: layouts that typing asked for are applied first."""
    QApplication.sendPostedEvents()
    QApplication.processEvents()
    assert dialog.grab().save(str(path))


def collect(signal: object) -> list[tuple[object, ...]]:
    seen: list[tuple[object, ...]] = []
    signal.connect(lambda *args: seen.append(args))  # type: ignore[attr-defined]
    return seen


def retype(qtbot: QtBot, edit: QLineEdit | QWidget, text: str) -> None:
    """Select what is in the field and type over it, as an operator does."""
    edit.setFocus()
    qtbot.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    if text:
        qtbot.keyClicks(edit, text)


# -- trust: a new key --------------------------------------------------------------------------------------


def test_new_key_shows_the_exact_fingerprint_large_and_monospace(qtbot: QtBot, theme: str, screens: Path) -> None:
    key = real_key()
    dialog = shown(qtbot, TrustDialog("line2-pi-07", key, address="198.18.0.11"))
    label = dialog.findChild(QLabel, "FingerprintLabel")
    assert label is dialog.fingerprint_label
    assert label.text() == key.fingerprint
    assert label.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert QFontInfo(label.font()).fixedPitch()
    # Larger than ordinary text even under the theme's blanket `QWidget { font-size: 10pt }`.
    assert label.font().pointSizeF() >= 1.4 * dialog.findChild(QLabel, "KeyType").font().pointSizeF()
    assert dialog.windowTitle() == "Trust line2-pi-07?"
    text = " ".join(w.text() for w in dialog.findChildren(QLabel))
    assert "never connected" in text
    assert "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub" in text
    assert "ED25519 host key presented by 198.18.0.11" in text
    assert dialog.trust_button.text() == "Trust this key"
    assert dialog.cancel_button.isDefault() and not dialog.trust_button.isDefault()
    assert dialog.findChild(QWidget, "KeyChangedWarning") is None
    screenshot(dialog, screens / "trust-new-key.png")


def test_enter_never_trusts_a_new_key_even_with_the_trust_button_focused(qtbot: QtBot) -> None:
    key = real_key()
    dialog = shown(qtbot, TrustDialog("line2-pi-07", key))
    trusted = collect(dialog.trusted)
    dialog.trust_button.setFocus()
    qtbot.keyClick(dialog.trust_button, Qt.Key.Key_Return)
    assert trusted == []
    assert dialog.result() == QDialog.DialogCode.Rejected and not dialog.isVisible()

    again = shown(qtbot, TrustDialog("line2-pi-07", key))
    trusted = collect(again.trusted)
    qtbot.keyClick(again, Qt.Key.Key_Enter)
    assert trusted == []
    assert again.result() == QDialog.DialogCode.Rejected


def test_clicking_trust_emits_exactly_the_presented_fingerprint(qtbot: QtBot) -> None:
    key = real_key()
    dialog = shown(qtbot, TrustDialog("line2-pi-07", key))
    trusted = collect(dialog.trusted)
    rejected = collect(dialog.rejected)
    qtbot.mouseClick(dialog.trust_button, Qt.MouseButton.LeftButton)
    assert trusted == [(key.fingerprint,)]
    assert rejected == []
    assert dialog.result() == QDialog.DialogCode.Accepted


def test_escape_rejects_without_trusting(qtbot: QtBot) -> None:
    dialog = shown(qtbot, TrustDialog("line2-pi-07", real_key()))
    trusted = collect(dialog.trusted)
    rejected = collect(dialog.rejected)
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    assert trusted == [] and rejected == [()]
    assert not dialog.isVisible()


def test_copy_puts_the_fingerprint_on_the_clipboard(qtbot: QtBot) -> None:
    key = real_key()
    dialog = shown(qtbot, TrustDialog("line2-pi-07", key))
    QGuiApplication.clipboard().clear()
    qtbot.mouseClick(dialog.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == key.fingerprint
    assert dialog.copy_button.text() == "Copied"


# -- trust: a changed key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("theme", ["light", "dark"], indirect=True)
def test_changed_key_warns_and_shows_old_and_new_side_by_side(qtbot: QtBot, theme: str, screens: Path) -> None:
    old, new = real_key(), real_key()
    dialog = shown(qtbot, TrustDialog("line2-pi-07 (198.18.0.11)", new, [pinned(old)], address="198.18.0.11"))
    warning = dialog.findChild(QWidget, "KeyChangedWarning")
    assert warning is not None and warning.isVisible()
    warning_text = " ".join(w.text() for w in warning.findChildren(QLabel))
    assert "CHANGED" in warning_text and "someone in the middle" in warning_text
    assert "Do not trust the new key unless you know why" in warning_text
    # The banner's edge is painted red in both themes.
    image = dialog.grab().toImage()
    edge = warning.mapTo(dialog, QPoint(1, warning.height() // 2))
    colour = QColor(image.pixel(edge * dialog.devicePixelRatioF()))
    assert colour.red() > 150 and colour.green() < 100 and colour.blue() < 100, colour.name()

    assert [label.text() for label in dialog.pinned_labels] == [old.fingerprint]
    assert dialog.fingerprint_label.text() == new.fingerprint
    headings = [w.text() for w in dialog.findChildren(QLabel, "ColumnHeading")]
    assert headings == ["Trusted until now", "Presented now"]
    old_x = dialog.pinned_labels[0].mapTo(dialog, QPoint(0, 0))
    new_x = dialog.fingerprint_label.mapTo(dialog, QPoint(0, 0))
    assert new_x.x() > old_x.x() + dialog.pinned_labels[0].width() // 2  # side by side, old on the left
    since = " ".join(w.text() for w in dialog.findChildren(QLabel, "PinnedSince"))
    assert since == "since 2024-11-05 08:30 UTC, trusted by the operator"
    assert dialog.windowTitle() == "The host key of line2-pi-07 (198.18.0.11) changed"
    assert dialog.sizeHint().width() < 1366
    screenshot(dialog, screens / f"trust-changed-key-{theme}.png")


def test_replacing_a_changed_key_needs_the_checkbox_first(qtbot: QtBot) -> None:
    old, new = real_key(), real_key()
    dialog = shown(qtbot, TrustDialog("line2-pi-07", new, [pinned(old)]))
    trusted = collect(dialog.trusted)
    assert dialog.trust_button.text() == "Replace the trusted key"
    assert not dialog.trust_button.isEnabled()
    qtbot.mouseClick(dialog.trust_button, Qt.MouseButton.LeftButton)
    assert trusted == [] and dialog.isVisible()

    box = dialog.checked_box
    assert box is not None and box.text() == "I checked the new fingerprint at the device"
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    assert dialog.trust_button.isEnabled()
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    assert not dialog.trust_button.isEnabled()
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.keyClick(dialog, Qt.Key.Key_Return)  # still never by Enter
    assert trusted == []
    dialog.open()
    qtbot.mouseClick(dialog.trust_button, Qt.MouseButton.LeftButton)
    assert trusted == [(new.fingerprint,)]


# -- credentials -------------------------------------------------------------------------------------------


def test_key_file_credentials_round_trip(qtbot: QtBot, tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519"
    key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    dialog = shown(qtbot, CredentialsDialog(["line2-pi-07"], "", USABLE, key_file=str(key_file)))
    submitted = collect(dialog.submitted)
    assert dialog.key_radio.isChecked()
    assert not dialog.save_button.isEnabled()
    assert "user name" in dialog.reason.text()
    qtbot.keyClicks(dialog.username_edit, "fleet")
    assert dialog.save_button.isEnabled() and dialog.reason.text() == ""
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert submitted == [(Credentials("fleet", str(key_file), None),)]
    assert dialog.result() == QDialog.DialogCode.Accepted


def test_password_credentials_round_trip_and_the_password_stays_out_of_repr(qtbot: QtBot) -> None:
    dialog = shown(qtbot, CredentialsDialog(["a", "b", "c", "d", "e"], "root", USABLE))
    submitted = collect(dialog.submitted)
    assert dialog.heading.text() == "Sign-in for 5 devices: a, b, c and 2 more"
    assert dialog.password_radio.isChecked() and dialog.password_edit.isEnabled()
    assert not dialog.key_file_edit.isEnabled()
    assert dialog.keyring_note is not None
    assert "OS keyring (keyring.backends.SecretService.Keyring)" in dialog.keyring_note.text()
    assert "never in FleetDesk's database" in dialog.keyring_note.text()
    assert dialog.reason.text() == "Type the password, or sign in with a key file."
    assert not dialog.save_button.isEnabled()
    qtbot.keyClicks(dialog.password_edit, "s3cret pw")
    assert dialog.password_edit.echoMode() == QLineEdit.EchoMode.Password
    qtbot.mouseClick(dialog.show_password, Qt.MouseButton.LeftButton)
    assert dialog.password_edit.echoMode() == QLineEdit.EchoMode.Normal and dialog.show_password.text() == "Hide"
    qtbot.mouseClick(dialog.show_password, Qt.MouseButton.LeftButton)
    assert dialog.password_edit.echoMode() == QLineEdit.EchoMode.Password
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert submitted == [(Credentials("root", None, "s3cret pw"),)]
    credentials = submitted[0][0]
    assert "s3cret" not in repr(credentials) and "s3cret" not in str(credentials)
    # The Login the window hands the bridge carries it on, and keeps it out of its repr too.
    login = Login(credentials.username, credentials.key_file, credentials.password)
    assert login.password == "s3cret pw"
    assert "s3cret" not in repr(login) and "s3cret" not in str(login) and "s3cret" not in f"{login!r}"


def test_unusable_keyring_disables_passwords_and_says_why_and_how_to_fix(qtbot: QtBot, theme: str,
                                                                          screens: Path, tmp_path: Path) -> None:
    dialog = shown(qtbot, CredentialsDialog(["line2-pi-07 (198.18.0.11)", "line2-pi-08 (198.18.0.12)"], "root",
                                            BROKEN))
    assert not dialog.password_radio.isEnabled()
    assert dialog.key_radio.isChecked()
    problem = dialog.findChild(QWidget, "KeyringProblem")
    assert problem is not None and problem.isVisible()
    text = " ".join(w.text() for w in problem.findChildren(QLabel))
    assert BROKEN.message in text and BROKEN.fix in text
    assert "Passwords cannot be stored" in text and "Key files still work" in text
    assert dialog.keyring_note is None
    screenshot(dialog, screens / "credentials-keyring-unusable.png")
    # Key files still work.
    key_file = tmp_path / "id_ed25519"
    key_file.write_text("key")
    submitted = collect(dialog.submitted)
    qtbot.keyClicks(dialog.key_file_edit, str(key_file))
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert submitted == [(Credentials("root", str(key_file), None),)]


def test_credentials_say_inline_why_they_cannot_be_saved(qtbot: QtBot, tmp_path: Path) -> None:
    dialog = shown(qtbot, CredentialsDialog(["line2-pi-07"], "root", USABLE, key_file=str(tmp_path / "missing")))
    assert dialog.reason.text() == f"There is no file at {tmp_path / 'missing'}: choose an existing private key file."
    assert not dialog.save_button.isEnabled()
    retype(qtbot, dialog.key_file_edit, str(tmp_path))
    assert "is a folder" in dialog.reason.text() and not dialog.save_button.isEnabled()
    public = tmp_path / "id_ed25519.pub"
    public.write_text("ssh-ed25519 AAAA")
    retype(qtbot, dialog.key_file_edit, str(public))
    assert "public half" in dialog.reason.text() and not dialog.save_button.isEnabled()
    retype(qtbot, dialog.key_file_edit, "")
    assert dialog.reason.text().startswith("Choose the private key file")
    retype(qtbot, dialog.username_edit, "")
    assert "user name" in dialog.reason.text()
    qtbot.keyClicks(dialog.username_edit, "pi user")
    assert "no spaces" in dialog.reason.text() and not dialog.save_button.isEnabled()
    qtbot.mouseClick(dialog.password_radio, Qt.MouseButton.LeftButton)
    retype(qtbot, dialog.username_edit, "pi")
    assert dialog.reason.text() == "Type the password, or sign in with a key file."
    assert not dialog.save_button.isEnabled()


def test_an_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519"
    key_file.write_text("key")
    key_file.chmod(0)
    said = as_unprivileged(f"from fleetdesk.gui.sign_in_dialogs import key_file_problem; "
                           f"print(key_file_problem({str(key_file)!r}))", tmp_path)
    assert "cannot be read by you" in said


def test_browse_opens_a_file_chooser_without_blocking_and_fills_the_path(qtbot: QtBot, tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519"
    key_file.write_text("key")
    dialog = shown(qtbot, CredentialsDialog(["line2-pi-07"], "root", BROKEN))
    qtbot.mouseClick(dialog.browse_button, Qt.MouseButton.LeftButton)
    chooser = dialog.file_dialog
    assert isinstance(chooser, QFileDialog) and chooser.isVisible()  # open(), so the click returned
    assert chooser.fileMode() == QFileDialog.FileMode.ExistingFile
    chooser.fileSelected.emit(str(key_file))  # what the chooser emits when the operator picks the file
    chooser.reject()
    assert dialog.key_file_edit.text() == str(key_file)
    assert dialog.save_button.isEnabled()


# -- sweep -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cidr", "count", "button"), [
    ("198.18.1.0/24", 254, "Sweep 254 addresses"),
    ("198.18.1.9/32", 1, "Sweep 1 address"),
    ("198.18.1.8/31", 2, "Sweep 2 addresses"),
    ("198.18.0.0/22", 1022, "Sweep 1022 addresses"),
    ("198.18.1.9", 1, "Sweep 1 address"),
])
def test_sweep_counts_the_addresses_it_will_touch(qtbot: QtBot, cidr: str, count: int, button: str) -> None:
    dialog = shown(qtbot, SweepDialog())
    qtbot.keyClicks(dialog.cidr_edit, cidr)
    noun = "address" if count == 1 else "addresses"
    network = cidr if "/" in cidr else f"{cidr}/32"
    assert dialog.summary.text() == f"{network}: {count} {noun} will be contacted."
    assert dialog.sweep_button.text() == button and dialog.sweep_button.isEnabled()


def test_sweep_refuses_more_than_the_limit_and_explains_bad_text(qtbot: QtBot) -> None:
    dialog = shown(qtbot, SweepDialog(max_hosts=256))
    assert not dialog.sweep_button.isEnabled()
    qtbot.keyClicks(dialog.cidr_edit, "198.18.0.0/22")
    assert dialog.reason.text().startswith("Refusing to sweep 1022 hosts in 198.18.0.0/22 (the limit is 256)")
    assert dialog.reason.isVisible() and not dialog.summary.isVisible()
    assert not dialog.sweep_button.isEnabled() and dialog.sweep_button.text() == "Sweep"
    retype(qtbot, dialog.cidr_edit, "198.18.1.0/33")
    assert dialog.reason.text().startswith("198.18.1.0/33 is not a network: '33' is not a valid netmask.")
    assert not dialog.sweep_button.isEnabled()
    retype(qtbot, dialog.cidr_edit, "line two")
    assert dialog.reason.text().startswith("line two is not a network: ")
    retype(qtbot, dialog.cidr_edit, "198.18.1.77/24")
    assert not dialog.reason.isVisible() and dialog.sweep_button.isEnabled()
    assert dialog.summary.text() == ("198.18.1.0/24: 254 addresses will be contacted "
                                     "(198.18.1.77/24 means the network 198.18.1.0/24).")


def test_sweep_confirms_network_and_port_and_reminds_what_it_will_touch(qtbot: QtBot, theme: str,
                                                                        screens: Path) -> None:
    dialog = shown(qtbot, SweepDialog())
    confirmed = collect(dialog.confirmed)
    assert dialog.port_spin.value() == 22
    assert "port 22 on every one of these addresses" in dialog.reminder.text()
    assert "factory's own device network" in dialog.reminder.text()
    qtbot.keyClicks(dialog.cidr_edit, "198.18.1.77/24")
    retype(qtbot, dialog.port_spin, "2222")
    assert "port 2222 on every one" in dialog.reminder.text()
    screenshot(dialog, screens / "sweep.png")
    qtbot.mouseClick(dialog.sweep_button, Qt.MouseButton.LeftButton)
    assert confirmed == [("198.18.1.0/24", 2222)]


# -- add a device ------------------------------------------------------------------------------------------


def test_add_device_round_trip_with_defaults_and_a_reason_for_bad_hosts(qtbot: QtBot) -> None:
    dialog = shown(qtbot, AddDeviceDialog())
    submitted = collect(dialog.submitted)
    assert dialog.port_spin.value() == 22 and dialog.username_edit.text() == "root"
    assert not dialog.add_button.isEnabled()
    qtbot.keyClicks(dialog.host_edit, "line2 pi")
    assert "is neither an address nor a host name" in dialog.reason.text()
    assert not dialog.add_button.isEnabled()
    retype(qtbot, dialog.host_edit, "line2-pi-07.local")
    assert dialog.reason.text() == "" and dialog.add_button.isEnabled()
    qtbot.mouseClick(dialog.add_button, Qt.MouseButton.LeftButton)
    assert submitted == [(NewDevice("line2-pi-07.local", 22, "root", None),)]

    named = shown(qtbot, AddDeviceDialog())
    submitted = collect(named.submitted)
    qtbot.keyClicks(named.host_edit, "198.18.0.11")
    retype(qtbot, named.port_spin, "2200")
    retype(qtbot, named.username_edit, "fleet")
    qtbot.keyClicks(named.name_edit, "press 4 camera")
    qtbot.mouseClick(named.add_button, Qt.MouseButton.LeftButton)
    assert submitted == [(NewDevice("198.18.0.11", 2200, "fleet", "press 4 camera"),)]


# -- device strings are data -------------------------------------------------------------------------------


def test_hostile_device_labels_are_shown_as_plain_visible_text(qtbot: QtBot) -> None:
    key = real_key()
    dialogs = [
        shown(qtbot, TrustDialog(HOSTILE, key, address="198.18.0.11")),
        shown(qtbot, TrustDialog(HOSTILE, key, [pinned(real_key())])),
        shown(qtbot, CredentialsDialog([HOSTILE, "line2-pi-08"], "root", USABLE)),
    ]
    for dialog in dialogs:
        labels = dialog.findChildren(QLabel)
        assert all(label.textFormat() == Qt.TextFormat.PlainText for label in labels)
        text = "\n".join(label.text() for label in labels)
        assert "<b>html</b>" in text  # shown literally, not as a bold "html"
        assert visible_text(HOSTILE) in text  # every control spelled out, as in the device pane
        assert visible_text("\u202e") != "\u202e"
        assert not any(c in text for c in "\u202e\x1b\x07")
        assert not any(c in dialog.windowTitle() for c in "\u202e\x1b\x07\n")


def test_a_255_character_name_is_elided_so_the_dialog_fits_a_laptop_screen(qtbot: QtBot) -> None:
    for dialog in (shown(qtbot, TrustDialog(LONG, real_key())),
                   shown(qtbot, TrustDialog(LONG, real_key(), [pinned(real_key())])),
                   shown(qtbot, CredentialsDialog([LONG], "root", USABLE))):
        heading = dialog.findChildren(QLabel)[0].text()
        assert "line2-xxx" in heading and "…" in heading and len(heading) < 120
        assert dialog.sizeHint().width() < 1366


def test_display_text_spells_out_controls_and_keeps_ordinary_text() -> None:
    assert display_text("line2-pi-07 (198.18.0.11)") == "line2-pi-07 (198.18.0.11)"
    assert display_text("Pressé 4 – 検査") == "Pressé 4 – 検査"
    assert display_text("a\u202eb\tc") == visible_text("a\u202eb\tc") != "a\u202eb\tc"
    long = display_text("a" * 100 + "z" * 155, limit=40)
    assert len(long) == 40 and long.startswith("a") and long.endswith("z") and "…" in long
    # Elision never cuts a spelled-out character in two.
    spelled = visible_text("\u202e")
    elided = display_text("\u202e" * 30, limit=40)
    head, _, tail = elided.partition("…")
    assert len(elided) <= 40 and head and tail
    assert head.replace(spelled, "") == "" and tail.replace(spelled, "") == ""
