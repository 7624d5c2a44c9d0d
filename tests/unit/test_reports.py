"""Offline reports (fleetdesk.reports) through the real command line on a real SQLite inventory, a real keyring and
the real fleet key: each report type in each format read back (PDF with poppler's pdftotext, CSV, JSON, HTML)
and compared with what the inventory holds; hostile device names verbatim where a reader sees them, escaped in
HTML, neutralised in CSV; the same data giving the same bytes; signatures that verify and refuse a changed byte;
no secret anywhere; bad input as one clear line."""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleetdesk.cli import main
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.audit import AuditFilter, AuditRepo
from tests.conftest import skip_or_fail
from tests.report_fleet import HOSTILE, LABEL_63, SECRET, ReportFleet, build_report_fleet

PERIOD = ["--since", "2026-11-30T00:00:00+00:00", "--until", "2026-12-01T00:00:00+00:00"]
KINDS = ("fleet", "rollout", "health", "models", "audit")
FORMATS = ("pdf", "html", "csv", "json")
PAGES = Path("/tmp/report-pages")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReportFleet]:
    home = tmp_path_factory.mktemp("reports-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLEETDESK_DATA_DIR", str(home / "data"))
        env.setenv("FLEETDESK_CONFIG_DIR", str(home / "config"))
        yield build_report_fleet(f"sqlite:///{home / 'fleet.db'}")


@pytest.fixture
def fleet(built: ReportFleet) -> ReportFleet:
    return built


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        skip_or_fail(f"{name} is not installed (Debian package poppler-utils; scripts/system-deps.sh installs it)")
    return str(found)


def report(fleet: ReportFleet, kind: str, fmt: str, out: Path, *extra: str, expect: int = 0) -> Path:
    args = [str(fleet.rollout_id)] if kind == "rollout" else []
    path = out / f"{kind}.{fmt}"
    code = main(["--db", fleet.url, "report", kind, *args, *extra, "--format", fmt, "-o", str(path)])
    assert code == expect
    return path


def pdf_text(path: Path, *options: str) -> str:
    done = subprocess.run([tool("pdftotext"), *options, str(path), "-"], capture_output=True, check=True,
                          timeout=60)
    return done.stdout.decode("utf-8")


def squeezed(text: str) -> str:
    """Text without its white space: a name a table cell wrapped over two lines still reads in order."""
    return "".join(text.split())


class VisibleText(HTMLParser):
    """What a browser shows: text outside <style>, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.tags: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if not self._style:
            self.parts.append(data)


def test_fleet_pdf_lists_every_device_as_the_inventory_holds_it(fleet: ReportFleet, tmp_path: Path) -> None:
    text = pdf_text(report(fleet, "fleet", "pdf", tmp_path), "-raw")
    flat = squeezed(text)
    inventory = open_inventory(fleet.url)
    try:
        devices = inventory.devices()
    finally:
        inventory.close()
    assert len(devices) == len(HOSTILE)
    for device in devices:
        assert squeezed(device.name) in flat, device.name
        assert device.address in text
    for fingerprint in fleet.host_keys.values():
        assert squeezed(fingerprint) in flat
    assert "Fleet status" in text
    assert squeezed("onnxruntime 1.20.1") in flat and squeezed("Linie B — Prüfung, line A") in flat
    assert "Devices 7" in text and "Rollouts in the period 1" in text
    assert "Signed by fleet key SHA256:" in text


def test_csv_reads_back_as_the_inventory_with_formulas_neutralised(fleet: ReportFleet, tmp_path: Path) -> None:
    folder = report(fleet, "fleet", "csv", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["alerts.csv", "devices.csv", "rollouts.csv", "summary.csv"]
    raw = (folder / "devices.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    by_name = {}
    for row in rows:
        name = row["name"]
        if name.startswith("'"):
            assert name[1] in "=+-@\t\r", name
            name = name[1:]
        by_name[name] = row
    assert set(by_name) == set(HOSTILE)
    assert by_name["=HYPERLINK(\"http://198.51.100.9/x\",\"ok\")"]["name"].startswith("'=")
    assert by_name["-2+3"]["name"] == "'-2+3" and by_name["@SUM(1)"]["name"] == "'@SUM(1)"
    assert by_name[HOSTILE[0]]["name"] == HOSTILE[0]  # not a formula: kept as is
    assert by_name[LABEL_63]["host_key"] == fleet.host_keys[LABEL_63]
    assert by_name[HOSTILE[2]]["groups"] == "Linie B — Prüfung, line A"
    assert by_name[HOSTILE[0]]["runtime"] == "onnxruntime 1.20.1"
    assert by_name[HOSTILE[1]]["artifact"] == "a1" * 6  # the rollout finished on it
    assert by_name[HOSTILE[2]]["artifact"] == "b2" * 6  # rolled back: it runs its previous model


def test_json_carries_the_same_data_under_a_versioned_schema(fleet: ReportFleet, tmp_path: Path) -> None:
    data = json.loads(report(fleet, "fleet", "json", tmp_path).read_text(encoding="utf-8"))
    assert data["schema"] == "fleetdesk-report" and data["schema_version"] == 1 and data["kind"] == "fleet"
    assert data["fleet_key"].startswith("SHA256:")
    devices = next(t for t in data["tables"] if t["name"] == "devices")
    assert sorted(r["name"] for r in devices["rows"]) == sorted(HOSTILE)  # verbatim: JSON is not a spreadsheet
    assert {c["title"] for c in data["charts"]} >= {"Devices by status", "Devices by profile"}
    folder = report(fleet, "fleet", "csv", tmp_path)
    rows = list(csv.reader(io.StringIO((folder / "devices.csv").read_text(encoding="utf-8-sig"), newline="")))
    assert rows[0] == [c["key"] for c in devices["columns"]]
    assert len(rows) - 1 == len(devices["rows"])


def test_html_shows_names_verbatim_escapes_them_and_needs_nothing_outside(fleet: ReportFleet, tmp_path: Path) -> None:
    for kind in KINDS:
        page = report(fleet, kind, "html", tmp_path, *(PERIOD if kind == "health" else ())).read_text("utf-8")
        parser = VisibleText()
        parser.feed(page)
        assert "script" not in parser.tags and "iframe" not in parser.tags and "img" not in parser.tags
        assert "<script>" not in page and "src=" not in page and "href=" not in page and "url(" not in page
        assert "Content-Security-Policy" in page
        if kind in ("fleet", "health"):
            visible = "".join(parser.parts)
            for name in HOSTILE:
                assert name in visible, (kind, name)
                if "<" in name:
                    assert html.escape(name) in page


def test_every_report_in_every_format_is_the_same_bytes_twice(fleet: ReportFleet, tmp_path: Path) -> None:
    for kind in KINDS:
        if kind == "audit":
            continue  # each `report` command adds an entry to the trail: see the test below
        for fmt in FORMATS:
            (tmp_path / "one").mkdir(exist_ok=True)
            (tmp_path / "two").mkdir(exist_ok=True)
            first = report(fleet, kind, fmt, tmp_path / "one", *(PERIOD if kind == "health" else ()))
            second = report(fleet, kind, fmt, tmp_path / "two", *(PERIOD if kind == "health" else ()))
            assert _contents(first) == _contents(second), (kind, fmt)
            assert Path(f"{first}.sig").read_bytes() == Path(f"{second}.sig").read_bytes(), (kind, fmt)


def test_the_audit_report_of_an_unchanged_trail_is_the_same_bytes_twice(fleet: ReportFleet, tmp_path: Path) -> None:
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.reports.gather import make_report
    from fleetdesk.reports.output import write_report
    from fleetdesk.reports.selection import Filters

    inventory = open_inventory(fleet.url)
    try:
        for fmt in FORMATS:
            for n in (1, 2):
                (tmp_path / str(n)).mkdir(exist_ok=True)
            written = [write_report(make_report("audit", inventory, Filters()), fmt, tmp_path / str(n) / f"a.{fmt}",
                                    FleetSigningKey.default()) for n in (1, 2)]
            assert _contents(written[0].path) == _contents(written[1].path), fmt
            assert written[0].signature.read_bytes() == written[1].signature.read_bytes()
    finally:
        inventory.close()


def _contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()} if path.is_dir() else {"": path.read_bytes()}


def test_no_secret_appears_in_any_report(fleet: ReportFleet, tmp_path: Path) -> None:
    for kind in KINDS:
        for fmt in FORMATS:
            path = report(fleet, kind, fmt, tmp_path, *(PERIOD if kind == "health" else ()))
            files = list(path.iterdir()) if path.is_dir() else [path]
            for file in [*files, Path(f"{path}.sig")]:
                assert SECRET.encode() not in file.read_bytes(), (kind, fmt, file.name)
            if fmt == "pdf":
                assert SECRET not in pdf_text(path)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_signature_verifies_with_the_public_key_and_refuses_a_flipped_byte(
        fleet: ReportFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pdf = report(fleet, "fleet", "pdf", tmp_path)
    signed = json.loads(Path(f"{pdf}.sig").read_text())
    assert signed["signed"]["key"].startswith("SHA256:") and signed["signed"]["since"] and signed["signed"]["until"]
    code, out, err = cli(capsys, "model", "export-key", str(tmp_path / "fleet.pem"))
    assert code == 0, err
    code, out, err = cli(capsys, "report", "verify", str(pdf), "--key", str(tmp_path / "fleet.pem"))
    assert code == 0 and "verifies" in out, err
    data = bytearray(pdf.read_bytes())
    data[len(data) // 2] ^= 0x01
    pdf.write_bytes(bytes(data))
    code, out, err = cli(capsys, "report", "verify", str(pdf), "--key", str(tmp_path / "fleet.pem"))
    assert code == 1 and "was changed after it was signed" in err and "Traceback" not in err
    code, out, _ = cli(capsys, "report", "verify", str(pdf), "--json")
    assert code == 1 and json.loads(out)["ok"] is False

    folder = report(fleet, "fleet", "csv", tmp_path)
    code, out, err = cli(capsys, "report", "verify", str(folder))
    assert code == 0, err
    with (folder / "devices.csv").open("ab") as f:
        f.write(b"evil,row\r\n")
    code, out, err = cli(capsys, "report", "verify", str(folder))
    assert code == 1 and "devices.csv was changed" in err
    folder = report(fleet, "fleet", "csv", tmp_path)
    (folder / "extra.csv").write_text("x\r\n")
    code, out, err = cli(capsys, "report", "verify", str(folder))
    assert code == 1 and "extra.csv" in err

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    other = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "other.pem").write_bytes(other)
    js = report(fleet, "fleet", "json", tmp_path)
    code, out, err = cli(capsys, "report", "verify", str(js), "--key", str(tmp_path / "other.pem"))
    assert code == 1 and "was signed by the fleet key" in err
    Path(f"{js}.sig").unlink()
    code, out, err = cli(capsys, "report", "verify", str(js))
    assert code == 1 and "has no signature" in err


def test_health_report_figures_match_the_history(fleet: ReportFleet, tmp_path: Path) -> None:
    data = json.loads(report(fleet, "health", "json", tmp_path, *PERIOD).read_text())
    rows = {r["device"]: r for r in next(t for t in data["tables"] if t["name"] == "devices")["rows"]}
    first = rows[HOSTILE[0]]
    assert first["minutes"] == 24 * 60 - 120 and first["longest_outage_min"] == 120
    assert first["availability_pct"] == round(100 * (1440 - 120) / 1440, 2)
    assert first["cpu_pct_max"] == round(10.0 + 59 / 6 + 1.0, 2) and first["temp_c_p50"] == 50.0
    assert first["latency_p95_ms_p95"] == 14.0 and first["latency_p95_ms_max"] == 15.0
    assert rows[HOSTILE[1]]["alerts"] == 1 and first["incidents"] == 1
    assert rows[HOSTILE[5]]["minutes"] == 0 and rows[HOSTILE[5]]["availability_pct"] == 0.0
    groups = {r["group"]: r for r in next(t for t in data["tables"] if t["name"] == "groups")["rows"]}
    assert groups["line A"]["devices"] == 3
    # Input drift: only the device that scored it, its last hour drifted (60 of 1440 minutes: over the p95).
    (drift,) = next(t for t in data["tables"] if t["name"] == "drift")["rows"]
    assert drift == {"device": HOSTILE[2], "drift_psi_p50": 0.02, "drift_psi_p95": 0.02, "drift_psi_max": 1.4,
                     "drift_shift_sd_p50": 0.1, "drift_shift_sd_p95": 0.1, "drift_shift_sd_max": 3.0}
    text = pdf_text(report(fleet, "health", "pdf", tmp_path, *PERIOD))
    assert "Health by device" in text and "Alerts and stream incidents" in text and "Input drift by device" in text
    assert "temperature 91 °C over 85 °C on <script>alert(1)</script>" in text


def test_rollout_report_shows_waves_devices_gates_and_operator_actions(fleet: ReportFleet, tmp_path: Path) -> None:
    data = json.loads(report(fleet, "rollout", "json", tmp_path).read_text())
    tables = {t["name"]: t["rows"] for t in data["tables"]}
    states = {r["device"]: r["state"] for r in tables["devices"]}
    assert states == {HOSTILE[0]: "done", HOSTILE[1]: "done", HOSTILE[2]: "rolled-back"}
    failed = [r for r in tables["gates"] if r["ok"] == "no"]
    assert failed == [{"device": HOSTILE[2], "gate": "p95_ratio", "value": 2.4, "bound": 1.5, "ok": "no",
                       "baseline": 10.0, "note": ""}]
    assert [w["devices"] for w in tables["waves"]] == [1, 2]
    assert [a["action"] for a in tables["actions"]] == ["rollout.approve"]
    facts = {f["label"]: f["value"] for f in data["facts"]}
    assert facts["Takeover"].startswith("automatic: a FleetDesk window on the same inventory takes it over")
    assert "from laptop-a:100 to laptop-b:200 (its lease ran out)" in facts["Taken over"], facts["Taken over"]
    assert [r["event"] for r in tables["timeline"] if r["device"] == "(rollout)"][:2] == ["create", "takeover"]
    text = pdf_text(report(fleet, "rollout", "pdf", tmp_path), "-raw")
    assert "Rollout" in text and "cnn@2" in text and "p95_ratio" in text and "rolled-back" in text
    assert "p95 ratio 2.4 over 1.5" in text


def test_audit_report_carries_the_verification(fleet: ReportFleet, tmp_path: Path) -> None:
    data = json.loads(report(fleet, "audit", "json", tmp_path, "--since", "2000-01-01").read_text())
    facts = {f["label"]: f["value"] for f in data["facts"]}
    assert facts["Trail verifies"] == "yes"
    actions = [r["action"] for r in data["tables"][0]["rows"]]
    assert "rollout.approve" in actions and "device.login" in actions
    assert SECRET not in json.dumps(data)
    inventory = open_inventory(fleet.url)
    try:
        exported = AuditRepo(inventory).entries(AuditFilter(action="report.export"), limit=None)
    finally:
        inventory.close()
    assert exported and exported[0].after["type"] in KINDS and exported[0].targets[0].startswith("file:")


def test_bad_input_is_one_clear_line(fleet: ReportFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "--db", fleet.url, "report", "rollout", "999", "--format", "pdf",
                         "-o", str(tmp_path / "r.pdf"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "999" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.pdf").exists()
    code, _, err = cli(capsys, "--db", fleet.url, "report", "health", "--since", "2026-12-02",
                       "--until", "2026-12-01", "--format", "pdf", "-o", str(tmp_path / "h.pdf"))
    assert code == 2 and "is empty" in err and not (tmp_path / "h.pdf").exists()
    code, _, err = cli(capsys, "--db", fleet.url, "report", "fleet", "--group", "no such group", "--format",
                       "json", "-o", str(tmp_path / "f.json"))
    assert code == 2 and "no such group" in err
    code, _, err = cli(capsys, "--db", fleet.url, "report", "fleet", "--format", "json",
                       "-o", str(tmp_path / "missing" / "f.json"))
    assert code == 2 and "does not exist" in err


def test_an_empty_fleet_gives_reports_that_say_there_is_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for kind in ("fleet", "health", "models"):
        code, _, err = cli(capsys, "--db", url, "report", kind, "--format", "pdf", "-o", str(tmp_path / kind))
        assert code == 0, err
        assert "There is nothing to report" in pdf_text(tmp_path / kind), kind


def test_a_viewer_may_report_on_the_fleet_but_not_on_the_audit_trail(
        fleet: ReportFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--db", fleet.url, "operator", "add", "vera", "--role", "viewer")
    assert code == 0 or "already" in err
    code, out, err = cli(capsys, "--db", fleet.url, "--operator", "vera", "report", "fleet", "--format", "json",
                         "-o", str(tmp_path / "f.json"), "--json")
    assert code == 0, err
    assert json.loads(out)["key"].startswith("SHA256:")
    code, out, err = cli(capsys, "--db", fleet.url, "--operator", "vera", "report", "audit", "--format", "json",
                         "-o", str(tmp_path / "a.json"))
    assert code == 2 and "vera" in err and not (tmp_path / "a.json").exists()


def test_long_tables_split_across_pages_with_their_header_repeated(tmp_path: Path) -> None:
    from fleetdesk.inventory import Sighting

    url = f"sqlite:///{tmp_path / 'big.db'}"
    inventory = open_inventory(url)
    try:
        inventory.record_sightings([Sighting("mdns", (f"198.18.{n // 250}.{n % 250 + 1}",),
                                             instance_name=f"cam-{n:03d}") for n in range(150)])
    finally:
        inventory.close()
    for paper, size in (("a4", "(A4)"), ("letter", "(letter)")):
        path = tmp_path / f"big-{paper}.pdf"
        assert main(["--db", url, "report", "fleet", "--format", "pdf", "--paper", paper, "-o", str(path)]) == 0
        info = subprocess.run([tool("pdfinfo"), str(path)], capture_output=True, text=True, check=True).stdout
        assert size in info
        pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
        assert pages >= 3
        with_rows = [pdf_text(path, "-f", str(p), "-l", str(p)) for p in range(2, pages + 1)]
        with_rows = [t for t in with_rows if "cam-" in t]
        assert len(with_rows) >= 2 and all("Host key" in t and "Last seen" in t for t in with_rows)
        names = squeezed(pdf_text(path, "-raw"))
        assert all(f"cam-{n:03d}" in names for n in range(150))


def test_a_page_of_each_report_renders(fleet: ReportFleet, tmp_path: Path) -> None:
    """One page of each PDF as PNG in /tmp/report-pages, to be looked at (not compared)."""
    PAGES.mkdir(exist_ok=True)
    for kind in KINDS:
        path = report(fleet, kind, "pdf", tmp_path, *(PERIOD if kind == "health" else ()))
        info = subprocess.run([tool("pdfinfo"), str(path)], capture_output=True, text=True, check=True).stdout
        last = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
        for page in sorted({1, min(2, last)}):
            subprocess.run([tool("pdftoppm"), "-png", "-r", "60", "-f", str(page), "-l", str(page), "-singlefile",
                            str(path), str(PAGES / f"{kind}-{page}")], check=True, timeout=60)
            assert (PAGES / f"{kind}-{page}.png").stat().st_size > 1000



def test_the_html_report_in_headless_chromium_runs_no_script_and_shows_the_names(fleet: ReportFleet,
                                                                                 tmp_path: Path) -> None:
    """The page as a real browser builds it (--dump-dom): no script element, the hostile names as text; and a
    screenshot in /tmp/report-pages to look at. The page names no resource, so the browser fetches nothing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        skip_or_fail("chromium is not installed (Debian package chromium; scripts/system-deps.sh installs it)")
    page = report(fleet, "fleet", "html", tmp_path)
    flags = [str(browser), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, timeout=120,
                         check=True).stdout.decode("utf-8")
    parser = VisibleText()
    parser.feed(dom)
    assert "script" not in parser.tags and "<script" not in dom.lower()
    visible = "".join(parser.parts)
    assert all(name in visible for name in HOSTILE)
    PAGES.mkdir(exist_ok=True)
    subprocess.run([*flags, "--window-size=1400,1100", f"--screenshot={PAGES / 'fleet-html.png'}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert (PAGES / "fleet-html.png").stat().st_size > 1000


@pytest.mark.parametrize(("cell", "written"), [
    ("=1+2", "'=1+2"), ("+49 170", "'+49 170"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("plain — ✓", "plain — ✓"), ("a=b", "a=b"), (-3, "-3"), (-2.5, "-2.5"), (None, ""), ("", "")])
def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_numbers_stay_numbers(cell: object,
                                                                                    written: str) -> None:
    from fleetdesk.reports.render_csv import csv_cell

    assert csv_cell(cell) == written  # type: ignore[arg-type]


def test_a_cancelled_export_writes_nothing_and_audits_nothing(fleet: ReportFleet, tmp_path: Path) -> None:
    from fleetdesk.access import Access
    from fleetdesk.artifacts.signing import FleetSigningKey
    from fleetdesk.errors import ReportCancelledError
    from fleetdesk.inventory import open_inventory
    from fleetdesk.reports.export import ReportRequest, export_report
    from fleetdesk.reports.selection import Filters

    target = tmp_path / "health.pdf"
    said: list[str] = []
    with open_inventory(fleet.url) as inventory:
        access = Access(inventory)
        before = access.audit.head()
        with pytest.raises(ReportCancelledError, match="nothing was written"):
            export_report(access, ReportRequest("health", Filters(), "pdf", target), FleetSigningKey.default(),
                          cancelled=lambda: True, progress=said.append)
        assert access.audit.head() == before  # not even an entry
    assert said == ["gathering the health report"]
    assert not target.exists() and not list(tmp_path.iterdir())


def test_alerts_count_only_raised_ones_and_one_not_cleared_stays_open(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from fleetdesk.inventory.telemetry_repo import ALERT_CLEARED, ALERT_RAISED, TelemetryRepo
    from fleetdesk.telemetry.alerts import AlertEvent

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    start = datetime(2026, 11, 30, 6, tzinfo=UTC)
    inventory = open_inventory(url)
    try:
        device = inventory.add_device("198.18.7.1")
        other = inventory.add_device("198.18.7.2")
        events = TelemetryRepo.of(inventory)
        for minutes, device_id, kind, value in ((0, device.id, "raised", 91.0), (10, device.id, "cleared", 60.0),
                                                (20, device.id, "raised", 92.0), (30, other.id, "raised", 95.0),
                                                (40, other.id, "cleared", 70.0)):
            alert = AlertEvent(device_id, "temp_c", value, 85.0, kind, (start + timedelta(minutes=minutes)).timestamp())
            events.log_event(device_id, ALERT_RAISED if kind == "raised" else ALERT_CLEARED, alert.message,
                             metric="temp_c", value=value, bound=85.0, at=start + timedelta(minutes=minutes))
    finally:
        inventory.close()
    path = tmp_path / "fleet.json"
    assert main(["--db", url, "report", "fleet", *PERIOD, "--format", "json", "-o", str(path)]) == 0
    data = json.loads(path.read_text())
    facts = {f["label"]: f["value"] for f in data["facts"]}
    assert facts["Alerts raised in the period"] == 3 and facts["Alerts open at the end of the period"] == 1
    assert facts["Devices with alerts in the period"] == 2
    alerts = next(t for t in data["tables"] if t["name"] == "alerts")["rows"]
    assert [r["value"] for r in alerts] == [91.0, 92.0, 95.0]
    assert any("a window closed while an alert is raised" in note for note in data["notes"])
    path = tmp_path / "health.json"
    assert main(["--db", url, "report", "health", *PERIOD, "--format", "json", "-o", str(path)]) == 0
    rows = next(t for t in json.loads(path.read_text())["tables"] if t["name"] == "devices")["rows"]
    assert sorted((r["alerts"], r["incidents"]) for r in rows) == [(1, 0), (2, 0)]


def test_a_device_name_in_cjk_renders_and_keeps_what_the_font_can_show(tmp_path: Path) -> None:
    """DejaVu Sans has no CJK glyphs (render_pdf's docstring says why none is shipped): the PDF still renders, its
    text holds every character the font has, in order, and the JSON carries the whole name."""
    from reportlab.pdfbase import pdfmetrics

    from fleetdesk.inventory import Sighting
    from fleetdesk.reports.render_pdf import FONT, register_fonts

    name = "検査ライン 3 カメラ — 東京工場 Ωμ №5"
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    inventory = open_inventory(url)
    try:
        inventory.record_sighting(Sighting("mdns", ("192.0.2.40",), instance_name=name))
    finally:
        inventory.close()
    register_fonts()
    glyphs = pdfmetrics.getFont(FONT).face.charToGlyph
    shown = "".join(c for c in name if ord(c) in glyphs)
    assert shown.split() == ["3", "—", "Ωμ", "№5"]  # the Latin, Greek and punctuation runs, no CJK
    for fmt in ("pdf", "json"):
        path = tmp_path / f"fleet.{fmt}"
        assert main(["--db", url, "report", "fleet", "--format", fmt, "-o", str(path)]) == 0
    assert " ".join(shown.split()) in " ".join(pdf_text(tmp_path / "fleet.pdf").split())
    rows = next(t for t in json.loads((tmp_path / "fleet.json").read_text())["tables"] if t["name"] == "devices")
    assert [r["name"] for r in rows["rows"]] == [name]


def test_every_paper_size_offered_has_a_page_size_in_the_pdf_renderer() -> None:
    from fleetdesk.reports.formats import PAPERS
    from fleetdesk.reports.render_pdf import PAGE_SIZES
    assert tuple(PAGE_SIZES) == PAPERS
