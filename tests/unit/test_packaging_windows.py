"""What of the Windows installer can be checked on Linux (it cannot be built here: no Windows, no Inno Setup):
its icon is drawn and readable at every size Windows asks for, and the Inno Setup script, the PyInstaller spec
and the build script agree on the programs' names, the defines and where the operator's data lives.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

CHECKOUT = Path(__file__).resolve().parents[2]
PACKAGING = CHECKOUT / "packaging"
ISS = (PACKAGING / "windows" / "fleetdesk.iss").read_text("utf-8")
BUILD_PS1 = (PACKAGING / "windows" / "build.ps1").read_text("utf-8")
SPEC = (PACKAGING / "fleetdesk.spec").read_text("utf-8")


def test_the_windows_icon_holds_every_size_drawn_from_the_svg(tmp_path: Path) -> None:
    ico = tmp_path / "fleetdesk.ico"
    subprocess.run([sys.executable, str(PACKAGING / "render_icon.py"), "--ico",
                    str(CHECKOUT / "resources" / "icons" / "fleetdesk.svg"), str(ico)],
                   env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, check=True, timeout=120)
    with Image.open(ico) as image:
        assert image.format == "ICO"
        sizes = sorted(image.info["sizes"])
        assert sizes == [(s, s) for s in (16, 24, 32, 48, 64, 128, 256)]
        for size in sizes:
            image.size = size  # type: ignore[misc]  # Pillow's way to pick one of an ICO's images
            frame = image.convert("RGBA")
            assert frame.size == size
            alpha = frame.getchannel("A")
            assert alpha.getextrema()[1] == 255, f"the {size} icon is empty"
            colours = {colour[:3] for _, colour in frame.getcolors(1 << 16) or () if colour[3] == 255}  # type: ignore[index]
            assert len(colours) > 1, f"the {size} icon is one flat colour"


def test_the_installer_starts_the_programs_the_spec_freezes() -> None:
    programs = {entry: name for entry, name in re.findall(r'program\("(entry_\w+)", "([\w-]+)", console=', SPEC)}
    assert programs == {"entry_cli": "fleetdesk", "entry_gui": "fleetdesk-gui"}
    # The Start menu and the desktop icon open the window program, not the console one.
    shortcuts = [line for line in ISS.splitlines() if line.startswith("Name: \"{auto")]
    assert shortcuts and all('Filename: "{app}\\fleetdesk-gui.exe"' in line for line in shortcuts)
    assert re.search(r'program\("entry_gui", "fleetdesk-gui", console=False\)', SPEC), "the window opens a console"
    assert 'ICON = os.environ.get("FLEETDESK_ICON")' in SPEC and "$env:FLEETDESK_ICON" in BUILD_PS1


def test_every_define_the_script_requires_is_passed_by_the_build() -> None:
    required = set(re.findall(r"#ifndef (\w+)\s*\n\s*#error", ISS))
    assert required == {"AppVersion", "BundleDir", "IconFile"}
    passed = set(re.findall(r'"/D(\w+)=', BUILD_PS1))
    assert required <= passed, f"build.ps1 does not pass {required - passed}"
    used = set(re.findall(r"\{#(\w+)\}", ISS))
    assert used <= required | {"OutputDir", "SignTool"}, f"undefined: {used - required - {'OutputDir', 'SignTool'}}"


def test_a_per_user_install_that_keeps_the_operators_data() -> None:
    setup = dict(line.split("=", 1) for line in ISS.split("[Setup]")[1].split("\n[")[0].splitlines()
                 if "=" in line and not line.startswith(";"))
    assert setup["PrivilegesRequired"] == "lowest"  # no administrator needed: %LOCALAPPDATA%\Programs
    assert setup["DefaultDirName"] == "{autopf}\\FleetDesk"
    assert re.fullmatch(r"\{\{[0-9A-F-]{36}\}", setup["AppId"]), "a fixed AppId is what makes upgrades upgrades"
    # Nothing the installer removes is the operator's: the data lives in %LOCALAPPDATA%\fleetdesk (platformdirs),
    # and the uninstaller deletes only under {app}.
    deleted = re.findall(r'^Type: \w+; Name: "([^"]+)"', ISS, flags=re.MULTILINE)
    assert deleted and all(name.startswith("{app}\\") for name in deleted)
    assert "{localappdata}" not in ISS and "{userappdata}" not in ISS
