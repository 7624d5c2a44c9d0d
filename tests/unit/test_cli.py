"""The command line: bad lab input is one clear line on stderr, exit status 2, nothing touched."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fleetdesk.cli import main


@pytest.mark.parametrize(
    ("spec", "words"),
    [("rpi3:1", "unknown profile 'rpi3'"), ("rpi4:x", "cannot read 'rpi4:x'"), ("", "empty")],
)
def test_lab_up_with_a_bad_spec_prints_one_line_and_exits_2(
    spec: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lab", "up", "--devices", spec]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and words in lines[0]


def test_lab_up_json_error_is_a_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "up", "--devices", "rpi3:1", "--json"]) == 2
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert data["error"] == "LabSpecError"
    assert "rpi3" in data["message"] and data["fix"]


def test_unknown_fault_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "fault", "rpi4-01", "explode"]) == 2
    _, err = capsys.readouterr()
    assert "unknown fault 'explode'" in err and "rekey" in err


def test_the_parser_every_command_builds_loads_no_model_or_report_library() -> None:
    """Building the command line (what `fleetdesk --version` and every command do first) loads neither onnx,
    onnxruntime, numpy nor ReportLab: they cost every command about 0.9 s when the packages' __init__ imported all
    their modules. A fresh interpreter, so nothing an earlier test imported counts."""
    heavy = ("onnx", "onnxruntime", "numpy", "ml_dtypes", "reportlab", "PySide6")
    code = ("import sys\nfrom fleetdesk.cli import build_parser\nbuild_parser()\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "", proc.stdout


def test_version_names_the_pyproject_version_and_the_commit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    with (Path(__file__).resolve().parents[2] / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    out = capsys.readouterr().out
    assert out.startswith(f"fleetdesk {version} (commit ") and "unknown" not in out
