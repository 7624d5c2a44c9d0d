"""Provisioning against the lab's offline devices: ipc-02 (x86_64) and rpi4-01 (aarch64 under qemu).

The lab namespaces have no route out, so every install here is proven offline. From scratch, then again with 0
bytes and nothing changed; a full disk fails one device and not the other; a link cut mid-push resumes next time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fleetdesk.artifacts.signing import FleetSigningKey
from fleetdesk.errors import DiskFullError
from fleetdesk.fleet import Fleet
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.lab.rootfs import LAB_USER
from fleetdesk.profiles import load_profiles
from fleetdesk.runtime.agentfiles import AgentTree, agent_tree, boot_hook_line, boot_hook_mark
from fleetdesk.runtime.provision import ProvisionOutcome, ProvisionProgress, provision
from fleetdesk.runtime.provision_scripts import BOOT_HOOK_PY
from fleetdesk.runtime.store import Runtime, RuntimeStore
from fleetdesk.runtime.wheelhouse import build_runtime
from fleetdesk.transport.shell import python_command
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.laptop import LabLaptop

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

X86, ARM = "ipc-02", "rpi4-01"  # the dev lab's devices lent to these tests; no other device is touched
ROOT = "/opt/fleetdesk"
PROFILES = load_profiles()


@dataclass
class Laptop(LabLaptop):
    """One operator's FleetDesk data: inventory, runtime store and signing key in one folder."""

    store: RuntimeStore
    key: FleetSigningKey
    runtimes: dict[str, Runtime]
    # The agent as it was when the module started: the working tree may be edited while these tests run.
    agent: AgentTree

    def provision(self, *names: str, runtime: str | None = None,
                  progress: Callable[[Fleet, ProvisionProgress], None] | None = None) -> dict[str, ProvisionOutcome]:
        async def work(fleet: Fleet) -> list[ProvisionOutcome]:
            report = (lambda event: progress(fleet, event)) if progress else None
            return await provision(fleet, fleet.select(list(names)), runtime, progress=report, store=self.store,
                                   signing_key=self.key, agent=self.agent)

        return {o.device: o for o in self.with_fleet(work)}


def wipe(lab: LabFleet, name: str) -> None:
    """Back to a device that never saw FleetDesk: stop the supervised server we started, remove ROOT."""
    script = (f"p={ROOT}/run/supervise.pid; if [ -s $p ]; then kill $(cat $p) 2>/dev/null; "
              f"i=0; while kill -0 $(cat $p 2>/dev/null || echo 0) 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; "
              f"i=$((i+1)); done; fi; rm -rf {ROOT} /etc/rc.local")
    result = lab.ssh(lab.device(name), script)
    assert result.exit_status == 0, result.stderr


def on_device(lab: LabFleet, name: str, command: str) -> str:
    result = lab.ssh(lab.device(name), command)
    assert result.exit_status == 0, f"{command}: {result.stderr}"
    return str(result.stdout)


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    data = tmp_path_factory.mktemp("provision-laptop")
    store = RuntimeStore(data / "runtimes")
    # Built while this laptop reaches the package index (pip's cache answers after the first time).
    runtimes = {profile: asyncio.run(build_runtime(PROFILES.get(profile), store))[0] for profile in ("ipc-x86", "rpi4")}
    laptop = Laptop(data, store, FleetSigningKey(data / "keys"), runtimes, agent_tree())

    async def enrol(fleet_: Fleet) -> None:
        for name in (X86, ARM):
            device = fleet_.inventory.add_device(fleet.device(name)["address"], name=name)
            await fleet_.set_login(device, identity_file=fleet.state["ssh_key"])
            fleet_.trust_from_known_hosts(device, fleet.state["known_hosts"])
        outcomes = await fleet_.probe(fleet_.select([X86, ARM]))
        assert [o.status for o in outcomes] == ["succeeded", "succeeded"], [o.error for o in outcomes]

    laptop.with_fleet(enrol)
    for name in (X86, ARM):
        wipe(fleet, name)
    yield laptop
    for name in (X86, ARM):
        wipe(fleet, name)


def supervisor_pid(lab: LabFleet, name: str) -> int:
    return int(on_device(lab, name, f"cat {ROOT}/run/supervise.pid"))


def test_provisioning_from_scratch_installs_offline_and_proves_it_then_again_sends_nothing(
        fleet: LabFleet, laptop: Laptop) -> None:
    for name in (X86, ARM):
        assert "default" not in on_device(fleet, name, "ip -4 route show")  # offline: no route out
    agent = laptop.agent
    first = laptop.provision(X86, ARM)

    for name, profile in ((X86, "ipc-x86"), (ARM, "rpi4")):
        outcome, runtime = first[name], laptop.runtimes[profile]
        assert outcome.status == "succeeded", outcome.error
        assert outcome.runtime_id == runtime.id and outcome.agent_version == agent.version
        assert outcome.bytes_sent >= runtime.size + agent.size
        assert f"installed runtime {runtime.id}" in outcome.changed
        assert "started the model server" in outcome.changed
        assert "installed the boot hook in /etc/rc.local" in outcome.changed and outcome.boot_hook == "/etc/rc.local"
        assert outcome.onnxruntime == runtime.version_of("onnxruntime")
        assert "CPUExecutionProvider" in outcome.providers and outcome.python == "3.11.2"
        # The layout of the shared contract, on the device itself.
        assert on_device(fleet, name, f"readlink {ROOT}/runtimes/current").strip() == runtime.id
        assert on_device(fleet, name, f"readlink {ROOT}/agent/current").strip() == agent.version
        assert on_device(fleet, name, f"cat {ROOT}/keys/fleet.pub") == laptop.key.public_pem().decode()
        installed = json.loads(on_device(fleet, name, f"cat {ROOT}/runtimes/{runtime.id}/installed.json"))
        assert installed["runtime"] == runtime.id
        pid = supervisor_pid(fleet, name)
        assert "fleetdesk-supervise" in on_device(fleet, name, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        # The venv's own onnxruntime, as the device's launcher runs it.
        version = on_device(fleet, name, f"{ROOT}/runtimes/current/venv/bin/python -c "
                                         "'import onnxruntime; print(onnxruntime.__version__)'").strip()
        assert version == runtime.version_of("onnxruntime")

    recorded = laptop.with_fleet(lambda f: _recorded(f))
    assert recorded[X86].runtime_id == laptop.runtimes["ipc-x86"].id
    assert recorded[ARM].providers == first[ARM].providers and recorded[ARM].onnxruntime == first[ARM].onnxruntime

    pids = {name: supervisor_pid(fleet, name) for name in (X86, ARM)}
    stamps = {name: on_device(fleet, name, f"stat -c %Y.%i {ROOT}/runtimes/*/installed.json {ROOT}/runtimes/*/venv")
              for name in (X86, ARM)}
    second = laptop.provision(X86, ARM)
    for name in (X86, ARM):
        assert second[name].status == "succeeded", second[name].error
        assert second[name].bytes_sent == 0
        assert second[name].changed == ()
        assert supervisor_pid(fleet, name) == pids[name]  # not restarted
        assert on_device(fleet, name, f"stat -c %Y.%i {ROOT}/runtimes/*/installed.json {ROOT}/runtimes/*/venv") \
            == stamps[name]  # no venv rebuilt


def serving(lab: LabFleet, name: str) -> dict[str, Any]:
    """The agent's own status line's `serving` part."""
    lines = [json.loads(line) for line in on_device(lab, name, f"{ROOT}/bin/fleetdesk-agent status").splitlines()]
    return dict(next(o for o in lines if o.get("command") == "status")["serving"])


def test_without_systemd_a_boot_hook_starts_the_model_server_again_after_a_reboot(
        fleet: LabFleet, laptop: Laptop) -> None:
    assert laptop.provision(X86)[X86].status == "succeeded"
    # The operator's own rc.local (Debian's shape: `sh -e`, `exit 0` last) keeps every line; ours goes before exit.
    on_device(fleet, X86, "rm -f /run/operator-ran; printf '#!/bin/sh -e\\ntouch /run/operator-ran\\nexit 0\\n' "
                          "> /etc/rc.local && chmod 700 /etc/rc.local")
    outcome = laptop.provision(X86)[X86]
    assert outcome.changed == ("installed the boot hook in /etc/rc.local",) and outcome.bytes_sent == 0
    text = on_device(fleet, X86, "cat /etc/rc.local")
    assert text.splitlines() == ["#!/bin/sh -e", "touch /run/operator-ran", boot_hook_line(ROOT), "exit 0"]
    assert on_device(fleet, X86, "stat -c %a /etc/rc.local").strip() == "755"
    again = laptop.provision(X86)[X86]
    assert again.changed == () and on_device(fleet, X86, "cat /etc/rc.local") == text

    before = supervisor_pid(fleet, X86)
    fleet.fault(X86, "reboot", "1")  # the lab's boot runs /etc/rc.local last, as sysvinit does
    deadline = time.monotonic() + 90
    while not (now := serving(fleet, X86)).get("running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now.get("running"), now
    after = supervisor_pid(fleet, X86)
    assert after != before and "fleetdesk-supervise" in on_device(fleet, X86, f"tr '\\0' ' ' < /proc/{after}/cmdline")
    assert on_device(fleet, X86, "ls /run/operator-ran").strip() == "/run/operator-ran"
    # Provisioning finds everything as it left it: nothing restarted, nothing sent.
    third = laptop.provision(X86)[X86]
    assert third.changed == () and third.bytes_sent == 0 and supervisor_pid(fleet, X86) == after


def test_a_user_without_root_or_cron_gets_no_boot_hook_and_is_told_why(fleet: LabFleet) -> None:
    # The hook script itself, run as the lab's unprivileged user: not root, and the lab's image has no cron.
    command = python_command(BOOT_HOOK_PY, boot_hook_line(ROOT), boot_hook_mark(ROOT))
    answer = json.loads(on_device(fleet, X86, f"runuser -u {LAB_USER} -- sh -c {shlex.quote(command)}"))
    assert answer == {"hook": None, "changed": False, "why": "not root (so not /etc/rc.local) and no crontab command"}


async def _recorded(fleet: Fleet) -> dict[str, Any]:
    runtimes = DeviceRuntimes(fleet.inventory)
    return {name: runtimes.get(fleet.inventory.device(name).id) for name in (X86, ARM)}


def test_a_runtime_for_another_platform_is_refused_before_anything_is_sent(laptop: Laptop) -> None:
    outcome = laptop.provision(ARM, runtime=laptop.runtimes["ipc-x86"].id)[ARM]
    assert outcome.status == "failed" and outcome.bytes_sent == 0
    assert outcome.error is not None and "is for x86_64, cp311, but rpi4 devices are aarch64" in outcome.error.message


def test_a_device_without_python3_gets_a_clear_error(fleet: LabFleet, laptop: Laptop) -> None:
    on_device(fleet, X86, "mv /usr/bin/python3 /usr/bin/python3.fleetdesk-test-away")
    try:
        outcome = laptop.provision(X86)[X86]
    finally:
        on_device(fleet, X86, "mv /usr/bin/python3.fleetdesk-test-away /usr/bin/python3")
    assert outcome.status == "failed" and outcome.bytes_sent == 0
    assert outcome.error is not None and outcome.error.step == "check python3"
    assert outcome.error.message == "has no python3, which the agent and the runtime need"
    assert "python3-venv" in (outcome.error.fix or "")


def test_a_full_disk_fails_that_device_with_the_space_it_needs_and_the_other_succeeds(
        fleet: LabFleet, laptop: Laptop) -> None:
    wipe(fleet, X86)
    fleet.fault(X86, "fill-disk")
    try:
        outcomes = laptop.provision(X86, ARM)
    finally:
        fleet.fault(X86, "free-disk")
    full = outcomes[X86]
    assert isinstance(full.error, DiskFullError), full.error
    assert full.error.step == "check disk" and full.bytes_sent == 0
    assert f"under {ROOT} for runtime {laptop.runtimes['ipc-x86'].id}" in full.error.message
    assert "free space on ipc-02" in (full.error.fix or "")
    assert outcomes[ARM].status == "succeeded" and outcomes[ARM].bytes_sent == 0


def test_a_link_cut_mid_push_fails_that_run_and_the_next_run_resumes_and_completes(
        fleet: LabFleet, laptop: Laptop) -> None:
    wipe(fleet, X86)
    runtime = laptop.runtimes["ipc-x86"]
    cut_at: list[int] = []

    def cut_midway(fleet_: Fleet, event: ProvisionProgress) -> None:
        if event.device == X86 and event.step == "push" and event.total and not cut_at \
                and event.done > event.total // 2:
            cut_at.append(event.done)
            fleet.fault(X86, "cut")
            # The cut link is noticed by SSH keepalives after about 90 s; drop the connection now instead.
            fleet_.pool.abort(fleet_.reach(fleet_.inventory.device(X86)).target)

    try:
        broken = laptop.provision(X86, progress=cut_midway)[X86]
    finally:
        fleet.fault(X86, "restore")
    assert cut_at, "the push never got halfway"
    assert broken.status in ("failed", "unreachable") and broken.error is not None
    assert 0 < broken.bytes_sent < runtime.size

    resumed = laptop.provision(X86)[X86]
    assert resumed.status == "succeeded", resumed.error
    assert f"installed runtime {runtime.id}" in resumed.changed
    # What the cut run had put on the device was kept: together the two runs sent the bundle about once.
    assert resumed.bytes_sent < runtime.size - cut_at[0] // 2
    assert broken.bytes_sent + resumed.bytes_sent < runtime.size + laptop.agent.size + 2 * 1024 * 1024
    leftovers = on_device(fleet, X86, f"find {ROOT} -name '*.fleetdesk-partial' | wc -l").strip()
    assert leftovers == "0"


def test_the_cli_provisions_with_json_and_reports_nothing_to_do(fleet: LabFleet, laptop: Laptop) -> None:
    # The CLI pushes the agent as the working tree holds it now: bring the devices to that first.
    laptop.agent = agent_tree()
    assert all(o.status == "succeeded" for o in laptop.provision(X86, ARM).values())
    env = dict(os.environ, FLEETDESK_DATA_DIR=str(laptop.data_dir))
    proc = subprocess.run([sys.executable, "-m", "fleetdesk", "provision", X86, ARM, "--json"], capture_output=True,
                          text=True, timeout=900, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["summary"] == {"succeeded": 2, "failed": 0, "unreachable": 0}
    assert [(o["device"], o["bytes_sent"], o["changed"]) for o in data["outcomes"]] == [(X86, 0, []), (ARM, 0, [])]
    assert f"{X86}: check: runtime" in proc.stderr  # progress on stderr
    text = subprocess.run([sys.executable, "-m", "fleetdesk", "provision", "--all"], capture_output=True, text=True,
                          timeout=900, env=env, check=False)
    assert text.returncode == 0 and "2 succeeded, 0 failed, 0 unreachable" in text.stdout
    trail = subprocess.run([sys.executable, "-m", "fleetdesk", "audit", "list", "--action", "device.provision",
                            "--json"], capture_output=True, text=True, timeout=120, env=env, check=False)
    provisioned = [(e["outcome"], sorted(e["targets"])) for e in json.loads(trail.stdout)]
    # One entry per provisioning (the two commands above, newest first), naming both devices.
    assert [(outcome, len(targets)) for outcome, targets in provisioned[:2]] == [("ok", 2), ("ok", 2)], provisioned
    assert f"{shlex.quote(X86)}: ok in" in text.stdout and "nothing changed" in text.stdout
