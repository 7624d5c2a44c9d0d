"""`fleetdesk history` and `fleetdesk events` read the stored history of a SQLite inventory; durations parse;
device text is shown, never obeyed. (`fleetdesk telemetry` runs against the lab in tests/lab.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetdesk.cli import main
from fleetdesk.cli.telemetry import parse_duration
from fleetdesk.errors import ConfigError
from fleetdesk.inventory import open_inventory
from fleetdesk.inventory.telemetry_repo import HISTORY_METRICS, MinuteSummary, TelemetryRepo


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                               ("1.5d", 129600), ("1w", 604800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2 hours", "-1h", "h"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert "2h" in (caught.value.fix or "")


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with open_inventory(url) as inventory:
        device = inventory.add_device("198.18.1.10", name="press-7")
        repo = TelemetryRepo.of(inventory)
        avg = dict.fromkeys(HISTORY_METRICS)
        repo.write_minutes([MinuteSummary(device.id, now - timedelta(minutes=m), 60,
                                          {**avg, "cpu_pct": 10.0 + m}, {**avg, "cpu_pct": 50.0 + m})
                            for m in (1, 2, 300)])
        repo.log_event(device.id, "alert", "hot\x1b[2J\nfake line", metric="temp_c", value=91.0, bound=85.0)
        repo.log_event(None, "stream", "fleet-wide")
    return url


def test_history_lists_the_minutes_since_the_given_age(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", db, "history", "press-7", "--since", "1h", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "press-7"
    assert [(m["samples"], m["cpu_pct_avg"], m["cpu_pct_max"]) for m in data["minutes"]] == [(60, 12.0, 52.0),
                                                                                           (60, 11.0, 51.0)]
    assert main(["--db", db, "history", "press-7", "--since", "6h"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("MINUTE") and len(table) == 4 and "12/52" in table[2]


def test_history_of_an_unknown_device_is_an_error(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", db, "history", "nope"]) == 2
    assert "error:" in capsys.readouterr().err


def test_events_show_device_text_without_obeying_it(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", db, "events", "press-7"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J\\nfake line" in out and "temp_c 91.0, bound 85.0" in out
    assert len(out.strip().splitlines()) == 2  # the header and one event: the newline did not make a line
    assert main(["--db", db, "events", "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [(e["device"], e["kind"]) for e in events] == [(None, "stream"), ("press-7", "alert")]
    assert events[1]["message"] == "hot\x1b[2J\nfake line"
