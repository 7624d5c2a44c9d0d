"""The agentless reader: the sh loop really runs (here, with this machine's /proc and sysfs) and its frames
parse into the agent's sample shape; hostile or broken text is counted, never obeyed, never fatal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleetdesk.telemetry.agentless import BEGIN, END, AgentlessParser, agentless_command
from fleetdesk.telemetry.sample import Sample
from fleetdesk.telemetry.stream import stream_command


def _run_loop(command: str, shell: str = "sh") -> list[str]:
    proc = subprocess.run([shell, "-c", command], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _parse(lines: list[str], root: str = "/opt/fleetdesk") -> tuple[list[dict], AgentlessParser]:
    parser = AgentlessParser(root)
    samples = [s for s in (parser.feed(line) for line in lines) if s is not None]
    return samples, parser


def _meminfo_total_mb() -> int:
    text = Path("/proc/meminfo").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("MemTotal:"))) // 1024


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_the_loop_runs_in_posix_shells_and_its_frames_parse(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed here (Debian has both)")
    command = agentless_command(str(tmp_path), 0.1, count=3).replace("exec sh -c", f"exec {shell} -c", 1)
    samples, parser = _parse(_run_loop(command))
    assert len(samples) == 3 and parser.bad_lines == 0
    first, last = samples[0], samples[-1]
    assert "cpu" not in first  # one /proc/stat reading is no CPU figure yet
    assert 0 <= last["cpu"]["total"] <= 100
    assert last["mem"]["total_mb"] == _meminfo_total_mb()
    assert len(last["load"]) == 3
    assert last["disk"]["path"] == str(tmp_path) and last["disk"]["total_mb"] > 0
    assert last["seq"] == 3 and last["t"] >= first["t"]
    assert last["sources"]["cpu"] == "agentless:/proc/stat"
    assert set(last["sources"].values()) <= {"agentless:/proc/stat", "agentless:/proc/meminfo",
                                             "agentless:/proc/loadavg", "agentless:/sys/class/thermal",
                                             "agentless:df -Pk"}
    sample = Sample.from_json(last)
    assert sample.mem_total_mb == _meminfo_total_mb() and sample.cpu_pct == last["cpu"]["total"]


def test_a_missing_root_reports_the_disk_of_slash(tmp_path: Path) -> None:
    samples, _ = _parse(_run_loop(agentless_command(str(tmp_path / "not there"), 0.1, count=1)))
    assert samples[0]["disk"]["path"] == "/"


def test_a_root_with_shell_syntax_is_data_not_code(tmp_path: Path) -> None:
    evil = tmp_path / "x'; touch pwned; echo '$(touch pwned2)"
    evil.mkdir()
    samples, parser = _parse(_run_loop(f"cd {tmp_path} && " + agentless_command(str(evil), 0.1, count=1)))
    assert samples[0]["disk"]["path"] == str(evil) and parser.bad_lines == 0
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def _frame(*, date: str = "1763700000.250", stat: tuple[str, ...] = ("cpu  100 0 100 800 0 0 0 0 0 0",
                                                                    "cpu0 100 0 100 800 0 0 0 0 0 0"),
           thermal: tuple[str, ...] = (), df: tuple[str, ...] = ()) -> list[str]:
    lines = [BEGIN, "@date", "|" + date, "@stat", *("|" + s for s in stat),
             "@meminfo", "|MemTotal:        4000000 kB", "|MemAvailable:    1000000 kB",
             "|SwapTotal:        102396 kB", "|SwapFree:          51198 kB",
             "@loadavg", "|0.50 0.40 0.30 1/123 4567", "@thermal", *("|" + z for z in thermal),
             "@df", *("|" + d for d in df), END]
    return lines


def test_two_frames_give_cpu_memory_swap_load_from_the_agents_parsers() -> None:
    lines = _frame() + _frame(stat=("cpu  200 0 150 850 0 0 0 0 0 0", "cpu0 200 0 150 850 0 0 0 0 0 0"))
    samples, parser = _parse(lines)
    assert parser.bad_lines == 0
    # busy went 200 -> 350 of total 1000 -> 1200: 150 / 200 = 75 %.
    assert samples[1]["cpu"] == {"total": 75.0, "per_core": [75.0]}
    assert samples[1]["mem"] == {"total_mb": 3906, "used_mb": 2929, "available_mb": 976}
    assert samples[1]["swap"] == {"total_mb": 99, "used_mb": 49}
    assert samples[1]["load"] == [0.5, 0.4, 0.3] and samples[1]["t"] == 1763700000.25


def test_thermal_zones_are_named_as_the_agent_names_them() -> None:
    zones = ("0\t48312\tcpu-thermal", "1\t-256000\tcv0-thermal", "2\t51000\tcpu-thermal", "3\t\tgpu-thermal",
             "4\t40000\t", "5\t30500\tx\ty;$(reboot)")
    samples, parser = _parse(_frame(thermal=zones))
    # The powered-off zone (-256 °C) and the unreadable one are left out; a second "cpu-thermal" is "#2".
    assert samples[0]["temps"] == {"cpu-thermal": 48.312, "cpu-thermal#2": 51.0, "thermal_zone4": 40.0,
                                   "x\ty;$(reboot)": 30.5}
    assert parser.bad_lines == 0


def test_df_lines_with_spaces_in_names_parse_and_garbage_is_counted() -> None:
    df = ("/opt/fleet desk", "Filesystem     1024-blocks  Used Available Capacity Mounted on",
          "my disk (1)    33554432    1048577  32505855       4% /opt/fleet desk")
    samples, _ = _parse(_frame(df=df))
    assert samples[0]["disk"] == {"path": "/opt/fleet desk", "total_mb": 32768, "used_mb": 1025, "free_mb": 31743}
    samples, parser = _parse(_frame(df=("/", "Filesystem 1024-blocks", "what is this")))
    assert "disk" not in samples[0] and parser.bad_lines == 1


def test_broken_frames_are_dropped_and_the_next_one_parses() -> None:
    lines = ["stray text", *_frame()[:5], "unframed line", *_frame()[:3], *_frame(date="1763700001")]
    samples, parser = _parse(lines)
    # "stray text" outside a frame, "unframed line" inside one, a frame started before the last ended.
    assert parser.bad_lines == 3
    assert [s["t"] for s in samples] == [1763700001.0]


def test_a_date_without_nanoseconds_keeps_the_seconds_and_no_date_drops_the_frame() -> None:
    samples, _ = _parse(_frame(date="1763700000.%N"))
    assert samples[0]["t"] == 1763700000.0
    samples, parser = _parse(_frame(date="yesterday"))
    assert samples == [] and parser.bad_lines == 1


def _first_lines(command: str, cwd: Path, n: int) -> list[str]:
    """The first n lines of a command that runs without end, which is then killed."""
    proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True, cwd=cwd)
    try:
        assert proc.stdout is not None
        return [proc.stdout.readline() for _ in range(n)]
    finally:
        proc.kill()
        proc.wait()


def test_the_stream_command_prefers_the_agent_and_quotes_the_root(tmp_path: Path) -> None:
    root = tmp_path / "fleet root; $(touch pwned)"
    # No agent there: the agentless reader runs and says so first.
    assert _first_lines(stream_command(str(root), 0.1), tmp_path, 2) == ["@fleetdesk-mode agentless\n",
                                                                          BEGIN + "\n"]
    assert not (tmp_path / "pwned").exists()
    # An agent there (any executable): it runs with the interval and the sources, as separate words.
    agent = root / "bin" / "fleetdesk-agent"
    agent.parent.mkdir(parents=True)
    agent.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    agent.chmod(0o755)
    out = _run_loop(stream_command(str(root), 0.5, ("procfs", "thermal")))
    assert out == ["@fleetdesk-mode agent", "[telemetry]", "[--interval]", "[0.5]", "[--sources]",
                   "[procfs,thermal]"]
    # After the agent failed, the channel asks for the agentless reader even though the agent is there.
    assert _first_lines(stream_command(str(root), 0.1, agent=False), tmp_path, 1) == ["@fleetdesk-mode agentless\n"]
    assert not (tmp_path / "pwned").exists()


def test_interval_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        agentless_command("/", 0)
