"""Writing a report: render it in the chosen format, sign it with the fleet key, and put the files in place
atomically (a temporary file or folder renamed over the target), the report first, then `PATH.sig`.

A CSV report is a folder PATH holding one file per table; the other formats are the one file PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.artifacts.store_records import canonical_json, key_fingerprint
from fleetdesk.errors import ReportError
from fleetdesk.reports.document import Report
from fleetdesk.reports.formats import FORMATS, PAPERS
from fleetdesk.reports.render_csv import render_csv
from fleetdesk.reports.render_html import render_html
from fleetdesk.reports.render_json import render_json
from fleetdesk.reports.render_pdf import render_pdf
from fleetdesk.reports.signature import signature_file, signature_path, statement


@dataclass(frozen=True)
class WrittenReport:
    path: Path
    signature: Path
    format: str
    files: tuple[str, ...]
    bytes: int
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "signature": str(self.signature), "format": self.format,
                "files": list(self.files), "bytes": self.bytes, "key": self.key}


def render(report: Report, fmt: str, paper: str = "a4") -> dict[str, bytes]:
    """The report's files (name -> bytes); a single-file format names its one file after nothing ("")."""
    if fmt not in FORMATS:
        raise ReportError(f"there is no report format {fmt!r}", fix=f"choose one of {', '.join(FORMATS)}")
    if paper not in PAPERS:
        raise ReportError(f"there is no paper size {paper!r}", fix=f"choose one of {', '.join(PAPERS)}")
    if fmt == "csv":
        return render_csv(report)
    return {"": {"pdf": lambda: render_pdf(report, paper), "html": lambda: render_html(report),
                 "json": lambda: render_json(report)}[fmt]()}


def write_report(report: Report, fmt: str, path: Path, key: FleetSigningKey, *, paper: str = "a4") -> WrittenReport:
    """Render, sign and write the report at `path` (with `path`.sig)."""
    path = Path(path)
    fingerprint = key_fingerprint(key.public_pem())
    files = render(report.signed_by(fingerprint), fmt, paper)
    named = {(name or path.name): data for name, data in files.items()}
    signed = statement(report, named, fingerprint)
    signature = signature_file(signed, key.sign(canonical_json(signed)))
    try:
        if fmt == "csv":
            _write_folder(path, named)
        else:
            _write_file(path, named[path.name])
        _write_file(signature_path(path), signature)
    except OSError as exc:
        raise ReportError(f"cannot write the report {path}: {exc.strerror or exc}",
                          fix="choose a folder you can write to, with free space") from None
    return WrittenReport(path, signature_path(path), fmt, tuple(sorted(named)), sum(map(len, named.values())),
                         fingerprint)


def _write_file(path: Path, data: bytes) -> None:
    if path.is_dir():
        raise ReportError(f"{path} is a folder", fix="give the report a file name (-o FILE)")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _write_folder(path: Path, files: Mapping[str, bytes]) -> None:
    """A CSV report's folder, made whole beside the target and renamed into place; an earlier CSV report there
    is replaced, anything else is refused."""
    if path.exists() and not (path.is_dir() and all(p.suffix == ".csv" for p in path.iterdir())):
        raise ReportError(f"{path} exists and is not a CSV report's folder",
                          fix="give a new folder name (-o FOLDER); a CSV report is one file per table")
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    old = None
    try:
        for name, data in files.items():
            with open(temp / name, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temp, 0o755)  # noqa: S103 - a report is for reading by others; mkdtemp made it 0o700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
