"""The agent's command line, run as the device runs it (a subprocess speaking JSON lines) against a temporary
FleetDesk root and a fake /proc and /sys written by the lab's sensor model, with the lab's stand-in tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetdesk.lab.sensors import SensorModel, write_sensors
from fleetdesk.lab.standins import PROC_DIR, PROC_FILES, SENSORS_DIR, standin_files
from tests.fixtures.signed import signed_artifact

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "dev root 'q' \"d\" $(touch PWNED) ;x"


def agent(root: Path, *args: str, sysroot: Path | None = None, env: dict[str, str] | None = None,
          timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    argv = [sys.executable, "-m", "fleetdesk.agent", "--root", str(root)]
    if sysroot is not None:
        argv += ["--sysroot", str(sysroot)]
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or dict(os.environ))
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, lines, proc.stderr


def one(root: Path, *args: str, **kw: Any) -> dict[str, Any]:
    code, lines, err = agent(root, *args, **kw)
    assert len(lines) == 1, (lines, err)
    assert code == (2 if lines[0]["type"] == "error" else 0), (code, lines, err)
    return lines[0]


# --- a fake device: the lab's sensor model writes /sys and /proc below a sysroot ------------------------------

def hardware(profile: str) -> dict[str, Any]:
    data = tomllib.loads((REPO / "device_profiles" / f"{profile}.toml").read_text())
    return {"name": f"{profile}-01", "profile": profile, "arch": data["arch"], **data["lab"]}


class FakeDevice:
    """A sysroot kept moving by a thread (the lab sensor model stepped every 50 ms); it records every value
    it wrote, so a test can check that what the agent reports is exactly something the device showed."""

    def __init__(self, sysroot: Path, profile: str, throttled: int | None = None) -> None:
        self.sysroot, self.throttled = sysroot, throttled
        self.model = SensorModel(hardware(profile), seed=7)
        self.seen: dict[str, set[str]] = {}
        self.bin = sysroot / "tools"
        self.bin.mkdir(parents=True)
        tools = {"jetson": ["tegrastats"], "nvidia": ["nvidia-smi"], "raspberrypi": ["vcgencmd"]}
        for rel, source in standin_files(tools.get(self.model.hw.gpu, [])).items():
            target = self.bin / Path(rel).name
            shutil.copy(source, target)
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self._write()
        (sysroot / "proc").mkdir(exist_ok=True)
        for name in PROC_FILES:
            (sysroot / "proc" / name).symlink_to(sysroot / PROC_DIR / name)
        (sysroot / "proc" / "loadavg").write_text("0.52 0.40 0.31 1/123 4567\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _write(self) -> None:
        if self.throttled is not None:
            self.model.throttled = self.throttled  # as the firmware would report it
        write_sensors(self.sysroot, self.model)
        # What is on disk now (rendering again would draw new noise from the model).
        for path in [*self.sysroot.glob("sys/**/*"), *(self.sysroot / SENSORS_DIR).iterdir()]:
            if path.is_file():
                rel = str(path.relative_to(self.sysroot))
                self.seen.setdefault(rel, set()).add(path.read_text().strip())

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.model.step(0.5)
            self._write()

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}:/usr/bin:/bin", "FLEETDESK_LAB_ROOT": str(self.sysroot)}

    def __enter__(self) -> FakeDevice:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / HOSTILE
    folder.mkdir()
    return folder


def meminfo_kb(sysroot: Path, key: str) -> int:
    for line in (sysroot / "proc" / "meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_telemetry_on_a_jetson_reads_tegrastats_from_one_long_lived_process(tmp_path: Path, root: Path) -> None:
    with FakeDevice(tmp_path / "orin", "jetson-orin-nano") as dev:
        code, lines, err = agent(root, "telemetry", "--interval", "0.4", "--count", "2",
                                 "--sources", "procfs,thermal,tegrastats", sysroot=dev.sysroot, env=dev.env())
    assert code == 0, err
    assert [(s["type"], s["seq"]) for s in lines] == [("sample", 1), ("sample", 2)]
    for s in lines:
        assert s["mem"]["total_mb"] == meminfo_kb(dev.sysroot, "MemTotal") // 1024
        assert s["swap"]["total_mb"] == meminfo_kb(dev.sysroot, "SwapTotal") // 1024
        assert len(s["cpu"]["per_core"]) == 6 and 0 <= s["cpu"]["total"] <= 100
        assert s["load"] == [0.52, 0.4, 0.31]
        # Every temperature is one the zone files held (cv* zones read -256 C, powered off: left out).
        assert set(s["temps"]) == {"cpu-thermal", "gpu-thermal", "soc0-thermal", "soc1-thermal", "soc2-thermal",
                                   "tj-thermal"}
        for i, zone in enumerate(hardware("jetson-orin-nano")["thermal_zones"]):
            if zone in s["temps"]:
                assert str(round(s["temps"][zone] * 1000)) in dev.seen[f"sys/class/thermal/thermal_zone{i}/temp"]
        assert str(s["gpu"]["util_pct"]) in dev.seen[f"{SENSORS_DIR}/gpu_util_pct"]
        assert set(s["power"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
        assert str(round(s["power"]["VDD_IN"] * 1000)) in dev.seen[f"{SENSORS_DIR}/rail_VDD_IN_mw"]
        assert s["sources"]["gpu"] == "tegrastats" and s["sources"]["temps"] == "/sys/class/thermal"
    assert lines[1]["t"] > lines[0]["t"]


def test_telemetry_on_an_nvidia_pc_reads_nvidia_smi(tmp_path: Path, root: Path) -> None:
    with FakeDevice(tmp_path / "gpc", "ipc-x86-nvidia") as dev:
        code, lines, err = agent(root, "telemetry", "--interval", "0.4", "--count", "2",
                                 sysroot=dev.sysroot, env=dev.env())  # sources detected
    assert code == 0, err
    for s in lines:
        g = s["gpu"]
        assert s["sources"]["gpu"] == "nvidia-smi"
        assert g["mem_total_mb"] == 12282
        assert str(g["mem_used_mb"]) in dev.seen[f"{SENSORS_DIR}/gpu_mem_used_mib"]
        assert str(g["util_pct"]) in dev.seen[f"{SENSORS_DIR}/gpu_util_pct"]
        assert any(abs(g["power_w"] - int(mw) / 1000) < 0.006 for mw in dev.seen[f"{SENSORS_DIR}/gpu_power_mw"])
        assert set(s["temps"]) == {"acpitz", "x86_pkg_temp"}


def test_telemetry_on_a_pi_decodes_throttling_from_sysfs_or_vcgencmd(tmp_path: Path, root: Path) -> None:
    with FakeDevice(tmp_path / "pi", "rpi4", throttled=0x50005) as dev:
        code, lines, err = agent(root, "telemetry", "--interval", "0.3", "--count", "1",
                                 "--sources", "procfs,thermal,vcgencmd", sysroot=dev.sysroot, env=dev.env())
    assert code == 0, err
    s = lines[0]
    assert s["throttled"] == {"raw": "0x50005", "now": ["under-voltage", "throttled"],
                              "since_boot": ["under-voltage", "throttled"]}
    assert s["sources"]["throttled"] == "/sys/devices/platform/soc/soc:firmware/get_throttled"
    # An older kernel without the sysfs attribute: vcgencmd answers instead; without thermal, its temperature.
    os.unlink(dev.sysroot / "sys/devices/platform/soc/soc:firmware/get_throttled")
    code, lines, err = agent(root, "telemetry", "--interval", "0.1", "--count", "1",
                             "--sources", "procfs,vcgencmd", sysroot=dev.sysroot, env=dev.env())
    assert code == 0, err
    s = lines[0]
    assert s["sources"]["throttled"] == "vcgencmd" and s["throttled"]["raw"] == "0x50005"
    zone0 = int((dev.sysroot / "sys/class/thermal/thermal_zone0/temp").read_text())
    assert s["sources"]["temps"] == "vcgencmd" and s["temps"] == {"soc": (zone0 + 50) // 100 / 10}  # tenths


def standin_children(sysroot: Path) -> list[int]:
    """Processes still running a stand-in tool copied under this sysroot."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(sysroot / "tools").encode() in cmdline:
            found.append(int(pid))
    return found


def test_sigterm_and_a_closed_pipe_end_telemetry_quietly_and_stop_the_tool(tmp_path: Path, root: Path) -> None:
    with FakeDevice(tmp_path / "orin", "jetson-orin-nano") as dev:
        argv = [sys.executable, "-m", "fleetdesk.agent", "--root", str(root), "--sysroot", str(dev.sysroot),
                "telemetry", "--interval", "0.2"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=dev.env())
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "sample" and standin_children(dev.sysroot)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and err == b""
        assert standin_children(dev.sysroot) == []
        # The reader goes away (the SSH channel closes): status 0, no traceback.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=dev.env())
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
        deadline = time.monotonic() + 10
        while standin_children(dev.sysroot) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert standin_children(dev.sysroot) == []


@pytest.mark.parametrize(("args", "words"), [
    (["frobnicate"], "invalid choice"),
    (["telemetry", "--interval", "soon"], "invalid float value"),
    (["telemetry", "--interval", "0"], "out of range"),
    (["telemetry", "--sources", "procfs,smoke-detector"], "unknown telemetry source smoke-detector"),
    (["telemetry", "--bogus"], "unrecognized arguments"),
    ([], "required"),
    (["activate", "../../../etc"], "is not an artifact id"),
    (["activate", "$(touch PWNED)"], "is not an artifact id"),
    (["confirm", "A" * 64], "is not an artifact id"),
])
def test_bad_arguments_are_an_error_line(root: Path, args: list[str], words: str) -> None:
    line = one(root, *args)
    assert line["type"] == "error" and line["code"] == "bad-arguments"
    assert words in line["message"] and line["fix"]
    assert not (REPO / "PWNED").exists() and not (root / "PWNED").exists()


# --- activate / confirm / rollback / watchdog --------------------------------------------------------------

# Activation takes signed artifacts only: the tests sign with a throwaway fleet key (never the operator's).
TEST_KEY = Ed25519PrivateKey.generate()


def artifact(root: Path, payload: bytes, extra: dict[str, Any] | None = None,
             files: list[dict[str, str]] | None = None, more: dict[str, bytes] | None = None) -> str:
    """A signed artifact under ROOT/artifacts/<id>/ by the test key, which becomes ROOT/keys/fleet.pub."""
    return signed_artifact(root, TEST_KEY, payload, extra=extra, files=files, more=more)


def current(root: Path, name: str = "current") -> str | None:
    link = root / name
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_activate_confirm_rollback(root: Path) -> None:
    a, b = artifact(root, b"model A"), artifact(root, b"model B")
    assert one(root, "activate", a) == {
        "type": "result", "command": "activate", "active": a, "previous": None, "changed": True, "pending": None,
        "verified": {"manifest": True, "files_checked": 1, "signature": "valid"}, "serve_reloaded": None,
        "serving": None}  # no model server runs: nothing to wait for
    assert os.readlink(root / "current") == f"artifacts/{a}"  # relative: the root can move
    res = one(root, "activate", b, "--confirm-within", "60")
    assert (res["active"], res["previous"], res["pending"]["sha"]) == (b, a, b)
    assert (current(root), current(root, "previous")) == (b, a)
    st = one(root, "status")
    assert st["pending"]["sha"] == b and 0 < st["pending"]["seconds_left"] <= 60
    err = one(root, "activate", a)
    assert (err["code"], "waiting for its confirmation" in err["message"]) == ("pending", True)
    err = one(root, "confirm", a)
    assert err["code"] == "not-pending"
    assert one(root, "confirm", b)["changed"] is True
    assert one(root, "confirm", b)["changed"] is False  # a retried confirm is harmless
    st = one(root, "status")
    assert (st["active"], st["previous"], st["pending"], st["last_revert"]) == (b, a, None, None)
    res = one(root, "rollback")
    assert (res["active"], res["from"]) == (a, b) and (current(root), current(root, "previous")) == (a, b)
    events = [e["event"] for e in json.loads((root / "state.json").read_text())["history"]]
    assert events == ["activated", "confirmed", "rolled-back"]


def session_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[3])  # proc(5): state ppid pgrp session


def test_an_unconfirmed_activation_is_reverted_by_the_detached_watchdog(root: Path) -> None:
    a, b = artifact(root, b"model A"), artifact(root, b"model B")
    one(root, "activate", a)
    res = one(root, "activate", b, "--confirm-within", "2")
    pid = res["pending"]["watchdog_pid"]
    # The activate process has exited; its watchdog lives on in a session of its own.
    assert session_of(pid) != session_of(os.getpid())
    assert wait_for(lambda: one(root, "status")["last_revert"] is not None)
    st = one(root, "status")
    assert st["last_revert"]["sha"] == b and st["last_revert"]["to"] == a
    assert st["last_revert"]["reason"] == "not confirmed within 2 s"
    assert (st["active"], st["previous"], st["pending"]) == (a, None, None)
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text())
    err = one(root, "confirm", b)
    assert err["code"] == "deadline-passed" and "not confirmed within 2 s" in err["message"]
    log = (root / "log" / "watchdog.log").read_text()
    assert json.loads(log.splitlines()[-1])["event"] == "reverted"


def test_an_expired_activation_whose_watchdog_died_is_settled_by_the_next_command(root: Path) -> None:
    a, b = artifact(root, b"model A"), artifact(root, b"model B")
    one(root, "activate", a)
    pid = one(root, "activate", b, "--confirm-within", "1")["pending"]["watchdog_pid"]
    os.kill(pid, signal.SIGKILL)  # as a reboot would
    time.sleep(1.2)
    st = one(root, "status")
    assert st["active"] == a and st["last_revert"]["reason"] == "not confirmed within 1 s (found by status)"


def test_artifacts_that_are_missing_damaged_or_escape_are_refused(root: Path) -> None:
    a = artifact(root, b"model A")
    err = one(root, "activate", "0" * 64)
    assert err["code"] == "not-found" and "0" * 64 in err["message"]
    (root / "artifacts" / a / "model.onnx").write_bytes(b"model A, damaged")
    err = one(root, "activate", a)
    assert err["code"] == "bad-artifact" and "'model.onnx'" in err["message"]
    outside = artifact(root, b"x", files=[{"path": "../../state.json", "sha256": "0" * 64}])  # signed, even
    err = one(root, "activate", outside)
    assert err["code"] == "bad-artifact" and "outside the artifact" in err["message"]
    assert current(root) is None and not (root / "state.json").exists()
    assert one(root, "rollback")["code"] == "no-previous"


def test_a_switch_signals_the_model_server_and_never_a_stranger(root: Path, tmp_path: Path) -> None:
    a, b = artifact(root, b"model A"), artifact(root, b"model B")
    marker = tmp_path / "hup"
    code = ("import signal, sys, time\n"
            f"signal.signal(signal.SIGHUP, lambda *a: open({str(marker)!r}, 'a').write('hup\\n'))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    server = subprocess.Popen([sys.executable, "-c", code, "serve"], stdout=subprocess.PIPE)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        (root / "run").mkdir(exist_ok=True)
        (root / "run" / "serve.pid").write_text(f"{server.pid}\n")
        assert one(root, "activate", a)["serve_reloaded"] == server.pid
        assert wait_for(lambda: marker.exists()) and server.poll() is None
        (root / "run" / "serve.pid").write_text(f"{stranger.pid}\n")  # stale: the pid now names another program
        assert one(root, "activate", b)["serve_reloaded"] is None
        assert stranger.poll() is None
        assert one(root, "status")["serve"] == {"pid": stranger.pid, "alive": True,
                                                "since": (root / "run" / "serve.pid").stat().st_mtime}
    finally:
        server.kill()
        stranger.kill()
        server.wait()
        stranger.wait()


def test_statistics_left_by_a_server_killed_before_this_one_started_name_no_model(root: Path) -> None:
    """A server killed -9 leaves serve-stats.json behind, fresh for a while and naming its model; the server the
    supervisor starts next writes its pid file before it loads anything, and until its own first write the agent
    must not say the model is loaded (the rollout's serving gate relies on it)."""
    a = artifact(root, b"model A")
    one(root, "activate", a)
    run = root / "run"
    run.mkdir(exist_ok=True)
    stats = {"t": round(time.time(), 3), "model": a, "requests": 0, "provider": "CPUExecutionProvider"}
    (run / "serve-stats.json").write_text(json.dumps(stats))
    time.sleep(0.2)
    restarted = subprocess.Popen(["sleep", "60"])  # stands in for the new server, still loading
    try:
        (run / "serve.pid").write_text(f"{restarted.pid}\n")
        serving = one(root, "status")["serving"]
        assert (serving["running"], serving["model"], serving["pid"]) == (True, None, restarted.pid)
        assert serving["stats_age_s"] is not None and serving["stats_age_s"] < 10  # fresh, but not this server's
        (run / "serve-stats.json").write_text(json.dumps(dict(stats, t=round(time.time(), 3))))  # its first write
        assert one(root, "status")["serving"]["model"] == a
    finally:
        restarted.kill()
        restarted.wait()


def test_status_reports_agent_runtime_keys_and_disk(root: Path) -> None:
    st = one(root, "status")
    assert (st["agent_version"], st["protocol"], st["active"], st["runtime"], st["keys"]) == ("dev", 1, None, None,
                                                                                            False)
    assert st["root"] == str(root) and st["disk_free_mb"] > 0 and st["python"].count(".") == 2
    (root / "agent" / "0.5.0").mkdir(parents=True)
    (root / "agent" / "current").symlink_to("0.5.0")
    (root / "runtimes" / "rt-abc").mkdir(parents=True)
    (root / "runtimes" / "rt-abc" / "installed.json").write_text('{"onnxruntime": "1.31.1"}')
    (root / "runtimes" / "current").symlink_to("rt-abc")
    (root / "keys").mkdir()
    (root / "keys" / "fleet.pub").write_text("ssh-ed25519 AAAA fleet\n")
    st = one(root, "status")
    assert st["agent_version"] == "0.5.0"
    assert st["runtime"] == {"id": "rt-abc", "installed": {"onnxruntime": "1.31.1"}}
    assert st["keys"] is True and st["serve"] is None


def test_a_missing_command_module_is_an_error_line(tmp_path: Path) -> None:
    tree = tmp_path / "pushed"
    shutil.copytree(REPO / "fleetdesk" / "agent", tree / "fleetdesk_agent",
                    ignore=shutil.ignore_patterns("__pycache__", "bench.py"))
    proc = subprocess.run([sys.executable, "-m", "fleetdesk_agent", "--root", str(tmp_path / "r"), "bench", "x"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)},
                          timeout=60)
    line = json.loads(proc.stdout)
    assert proc.returncode == 2 and line["code"] == "missing-module" and "bench" in line["message"]


HOSTILE_ZONES = ('cpu"thermal\n{"type":"error"}', "zone-é-\u2603")


def test_hostile_sensor_names_stay_data_on_one_line(tmp_path: Path, root: Path) -> None:
    sysroot = tmp_path / "sys"
    for i, name in enumerate(HOSTILE_ZONES):
        zone = sysroot / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(name)
        (zone / "temp").write_text("41000\n")
    code, lines, err = agent(root, "telemetry", "--interval", "0.1", "--count", "1", "--sources", "thermal",
                             sysroot=sysroot)
    assert code == 0 and len(lines) == 1, err
    assert lines[0]["temps"] == dict.fromkeys(HOSTILE_ZONES, 41.0)


def python38() -> str | None:
    """A Python 3.8 interpreter on this machine (the oldest the agent supports), if there is one."""
    found = [shutil.which("python3.8"), *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.8*/bin/python3.8"))]
    for candidate in filter(None, found):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=30, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
            return candidate
    return None


def test_the_pushed_tree_runs_on_python_3_8(tmp_path: Path) -> None:
    interpreter = python38()
    if interpreter is None:
        pytest.skip("no Python 3.8 here; vermin checks the sources for 3.8 in `make test`")
    tree, root = tmp_path / "pushed", tmp_path / "root"
    shutil.copytree(REPO / "fleetdesk" / "agent", tree / "fleetdesk_agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tree)}

    def run(*args: str) -> list[dict[str, Any]]:
        proc = subprocess.run([interpreter, "-m", "fleetdesk_agent", "--root", str(root), *args], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    root.mkdir()
    a = artifact(root, b"model A")
    assert run("status")[0]["python"].startswith("3.8.")
    assert [s["seq"] for s in run("telemetry", "--interval", "0.2", "--count", "2")] == [1, 2]
    assert run("activate", a, "--confirm-within", "30")[0]["pending"]["sha"] == a
    assert run("confirm", a)[0]["changed"] is True


# --- verify, check, bench current, and activate waiting for the model server ------------------------------

def cnn_bytes(tmp_path: Path, seed: int) -> bytes:
    from tests.fixtures.models.build import save_cnn

    return save_cnn(tmp_path / f"cnn-{seed}.onnx", seed=seed).read_bytes()


def golden_for(tmp_path: Path, model: bytes, count: int = 4) -> bytes:
    """golden.npz as the store makes it (fleetdesk.artifacts.store.write_golden) from `model` on generated samples."""
    from fleetdesk.artifacts.store import write_golden
    from fleetdesk.models.importer import inspect_model
    from fleetdesk.models.samples import generate_samples

    path = tmp_path / f"ref-{hashlib.sha256(model).hexdigest()[:8]}.onnx"
    path.write_bytes(model)
    feeds = generate_samples(inspect_model(path), count=count).feeds
    return write_golden(path, feeds, tmp_path / "golden.npz").read_bytes()


def test_verify_checks_signature_and_hashes_without_switching(root: Path, tmp_path: Path) -> None:
    a = artifact(root, cnn_bytes(tmp_path, 0))
    assert one(root, "verify", a) == {"type": "result", "command": "verify", "artifact": a, "manifest": True,
                                      "files_checked": 1, "signature": "valid"}
    assert current(root) is None and not (root / "state.json").exists()  # nothing switched, nothing written
    (root / "artifacts" / a / "model.onnx").write_bytes(b"tampered")
    err = one(root, "verify", a)
    assert err["code"] == "bad-artifact" and "'model.onnx'" in err["message"] and err["fix"]
    b = artifact(root, b"model B")
    (root / "artifacts" / b / "manifest.json.sig").unlink()
    assert one(root, "verify", b)["code"] == "bad-signature"
    assert one(root, "verify", "../" + b[3:])["code"] == "bad-arguments"


def test_status_lists_artifacts_pending_deadline_and_server(root: Path) -> None:
    a, b = artifact(root, b"model A"), artifact(root, b"model B")
    (root / "artifacts" / "not-an-artifact").mkdir()
    one(root, "activate", a)
    before = time.time()
    one(root, "activate", b, "--confirm-within", "60")
    st = one(root, "status")
    assert st["artifacts"] == sorted([a, b])
    assert (st["active"], st["previous"], st["pending"]["sha"]) == (b, a, b)
    assert before + 59 <= st["pending"]["deadline"] <= time.time() + 60
    assert st["serving"] == {"running": False, "pid": None, "model": None, "provider": None, "stats_age_s": None,
                             "refused": None, "shadow": None, "drift": None}
    one(root, "rollback")


def test_check_compares_with_the_golden_outputs_the_artifact_carries(root: Path, tmp_path: Path) -> None:
    model = cnn_bytes(tmp_path, 0)
    golden = golden_for(tmp_path, model)
    same = artifact(root, model, extra={"golden": "golden.npz"}, more={"golden.npz": golden})
    other = artifact(root, cnn_bytes(tmp_path, 1), extra={"golden": "golden.npz"}, more={"golden.npz": golden})
    bare = artifact(root, model)
    res = one(root, "check", same)
    assert res["command"] == "check" and res["samples"] == 4 and res["provider"] == "CPUExecutionProvider"
    assert res["min_cosine"] > 0.9999 and res["max_abs_diff"] < 1e-4
    assert one(root, "check", other)["min_cosine"] < 0.99  # other weights: the gate would catch it
    err = one(root, "check", bare)
    assert err["code"] == "no-golden" and "golden" in err["fix"]
    assert one(root, "check", "current")["code"] == "not-found"
    one(root, "activate", same)
    assert one(root, "check", "current")["min_cosine"] == res["min_cosine"]
    code, lines, err_text = agent(root, "bench", "current", "--runs", "3", "--warmup", "0")
    assert code == 0, err_text
    assert lines[-1]["command"] == "bench" and lines[-1]["artifact"] == same and lines[-1]["p95_ms"] > 0


def test_check_asks_the_running_server_when_it_has_that_model_loaded(root: Path, tmp_path: Path) -> None:
    model = cnn_bytes(tmp_path, 0)
    golden = golden_for(tmp_path, model)
    same = artifact(root, model, extra={"golden": "golden.npz"}, more={"golden.npz": golden})
    other = artifact(root, cnn_bytes(tmp_path, 1), extra={"golden": "golden.npz"}, more={"golden.npz": golden})
    alone = one(root, "check", same)
    assert alone["via"] == "process"
    one(root, "activate", same)
    server = start_server(root)
    try:
        assert wait_for(lambda: one(root, "status")["serving"]["model"] == same)
        address = json.loads((root / "run" / "serve-address.json").read_text())
        assert address["pid"] == server.pid and address["host"] == "127.0.0.1"
        served = one(root, "check", "current")
        assert served["via"] == "server"
        # The same comparison as the agent's own process makes: only where it ran differs.
        assert {k: v for k, v in served.items() if k != "via"} == {k: v for k, v in alone.items() if k != "via"}
        # Not the model it has loaded: the agent loads that one itself.
        assert one(root, "check", other)["via"] == "process"
        # The server's own failure reaches the operator as the same error line (damaged golden outputs).
        (root / "artifacts" / same / "golden.npz").write_bytes(b"not an npz")
        err = one(root, "check", same)
        assert err["code"] == "bad-artifact" and "cannot be read" in err["message"] and err["fix"]
    finally:
        server.terminate()
        server.wait(30)
    assert not (root / "run" / "serve-address.json").exists()  # a stopped server is not asked
    assert one(root, "check", other)["via"] == "process"


def start_server(root: Path) -> subprocess.Popen[bytes]:
    """`fleetdesk-agent serve` with its JSON lines in ROOT/log/serve.log, as the device's supervisor runs it."""
    (root / "log").mkdir(exist_ok=True)
    with open(root / "log" / "serve.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "fleetdesk.agent", "--root", str(root), "serve", "--port",
                                   "0"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    assert wait_for(lambda: (root / "run" / "serve-stats.json").exists(), 60)
    return server


def test_activate_waits_for_the_server_and_goes_back_when_it_cannot_load(root: Path, tmp_path: Path) -> None:
    a = artifact(root, cnn_bytes(tmp_path, 0))
    broken = artifact(root, b"this is not an ONNX model")  # signed and whole: only loading it fails
    server = start_server(root)
    try:
        res = one(root, "activate", a, "--confirm-within", "120")
        assert res["serve_reloaded"] == server.pid and res["serving"]["loaded"] is True
        assert one(root, "status")["serving"]["model"] == a  # loaded when activate answered, not later
        one(root, "confirm", a)
        err = one(root, "activate", broken, "--confirm-within", "120")
        assert err["code"] == "model-load-failed" and f"went back to {a}" in err["message"]
        assert f"model {broken} failed to load" in err["message"]  # the server's own reason, from its log
        st = one(root, "status")
        assert (st["active"], st["pending"]) == (a, None)
        assert st["last_revert"]["sha"] == broken and st["last_revert"]["to"] == a
        assert st["last_revert"]["reason"].startswith("the model server could not load it: ")
        assert wait_for(lambda: one(root, "status")["serving"]["model"] == a)  # serving the old model again
        # Without a deadline too: back to a, and `previous` back to what it was.
        err = one(root, "activate", broken)
        assert err["code"] == "model-load-failed"
        assert (current(root), current(root, "previous")) == (a, None)
        # A rollback waits for the server too: when it answers, the model it went back to is loaded.
        c = artifact(root, cnn_bytes(tmp_path, 1))
        assert one(root, "activate", c)["serving"]["loaded"] is True
        res = one(root, "rollback")
        assert (res["active"], res["serving"]["loaded"]) == (a, True)
        assert one(root, "status")["serving"]["model"] == a
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(30)
