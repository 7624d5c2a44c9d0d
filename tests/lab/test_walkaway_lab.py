"""The device keeps its promise with no laptop: an activation that nobody confirms is undone by the device itself,
across a reboot inside its confirmation window (x86, and arm64 under qemu), and when a logout kills the watchdog
(logind's KillUserProcesses=yes). Devices: ipc-02 (x86_64) and rpi4-01 (aarch64 under qemu), provisioned with this
module's signing key.

Nothing here holds a connection while the device is on its own, and what the test watches it watches from outside
with plain shell commands over short SSH sessions (`readlink` of ROOT/current, `cat` of the server's statistics
file): never an agent command, which would settle an expired activation itself. The agent's `status` is asked only
afterwards, to read what it says happened.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.device_ops import DeviceOps
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import Laptop, device_shell, new_laptop, provision_devices, small_model

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

X86, ARM = "ipc-02", "rpi4-01"  # lent to this module; no other device is touched
PROFILE_OF = {X86: "ipc-x86", ARM: "rpi4"}
ROOT = "/opt/fleetdesk"
AGENT = f"{ROOT}/bin/fleetdesk-agent"
WITHIN_S = 20  # the confirmation window the issue names
OWNERS = ("model server", "watchdog", "boot")  # what may revert it with no laptop: never an agent command
# Long enough for an arm64 device under qemu on a loaded 2-core host: boot, the server's start, its model load.
SETTLE_BOUND_S = 240.0


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    """Both devices provisioned (runtime, agent, boot hook, this laptop's key) and holding both models."""
    laptop = new_laptop(tmp_path_factory.mktemp("walkaway-laptop"), load_profiles())
    work = tmp_path_factory.mktemp("walkaway-models")
    for seed, name in ((61, "kept"), (62, "unconfirmed")):
        small_model(laptop, work, name, seed, sorted(set(PROFILE_OF.values())))
    provision_devices(fleet, laptop, list(PROFILE_OF), PROFILE_OF)

    async def stage(fleet_: Any) -> None:
        ops = DeviceOps(fleet_, laptop.store)
        for name in PROFILE_OF:
            for artifact in laptop.models.values():
                await ops.stage(fleet_.inventory.device(name), artifact)

    laptop.with_fleet(stage)
    yield laptop


def agent(fleet: LabFleet, name: str, *args: str) -> dict[str, Any]:
    """One agent command over its own SSH session (closed when it answers); its result line."""
    out = device_shell(fleet, name, " ".join([AGENT, *args]))
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return next(line for line in lines if line.get("type") == "result")


def from_outside(fleet: LabFleet, name: str) -> tuple[str | None, str | None, float] | None:
    """(what ROOT/current points at, what the model server last said it has loaded, when it said so) read with
    readlink and cat, or None while the device does not answer. Neither can settle anything."""
    argv = ["ssh", "-i", fleet.state["ssh_key"], "-o", f"UserKnownHostsFile={fleet.state['known_hosts']}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{fleet.device(name)['address']}",
            f"echo \"$(readlink {ROOT}/current)\"; cat {ROOT}/run/serve-stats.json 2>/dev/null | tr -d '\\n'; echo"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return None
    link, _, stats = proc.stdout.partition("\n")
    try:
        written = json.loads(stats)
    except ValueError:
        written = {}
    return link.strip().rsplit("/", 1)[-1] or None, written.get("model"), float(written.get("t") or 0)


def wait_until_served(fleet: LabFleet, name: str, sha: str, *, after: float) -> None:
    """Poll from outside until `sha` is current, and the running server, in a statistics write after `after`,
    says it has `sha` loaded (a file left from before a reboot is older than that)."""
    end = time.monotonic() + SETTLE_BOUND_S
    seen = None
    while time.monotonic() < end:
        seen = from_outside(fleet, name)
        if seen is not None and seen[:2] == (sha, sha) and seen[2] > after:
            return
        time.sleep(1.0)
    raise AssertionError(f"{name} did not serve {sha} within {SETTLE_BOUND_S:g} s after {after}; saw {seen}")


def start_from(fleet: LabFleet, laptop: Laptop, name: str) -> str:
    """The kept model active, confirmed and loaded; returns it."""
    kept = laptop.models["kept@1"]
    agent(fleet, name, "activate", kept, "--wait-load", "180")
    wait_until_served(fleet, name, kept, after=time.time())
    return kept


def activate_unconfirmed(fleet: LabFleet, laptop: Laptop, name: str) -> dict[str, Any]:
    unconfirmed = laptop.models["unconfirmed@1"]
    # --wait-load 0: the answer comes at once, so the window is spent on the device, not waiting for its load.
    answer = agent(fleet, name, "activate", unconfirmed, "--confirm-within", str(WITHIN_S), "--wait-load", "0")
    assert answer["changed"] is True and answer["pending"]["sha"] == unconfirmed, answer
    return dict(answer["pending"])


def check_reverted_by_itself(fleet: LabFleet, laptop: Laptop, name: str, pending: dict[str, Any],
                             owners: tuple[str, ...]) -> dict[str, Any]:
    kept, unconfirmed = laptop.models["kept@1"], laptop.models["unconfirmed@1"]
    wait_until_served(fleet, name, kept, after=pending["deadline"])
    status = agent(fleet, name, "status")  # asked afterwards: what happened, by what, when
    revert = status["last_revert"]
    assert (revert["sha"], revert["to"]) == (unconfirmed, kept), revert
    assert revert["reason"] == f"not confirmed within {WITHIN_S} s" and revert["by"] in owners, revert
    assert revert["at"] >= pending["deadline"], revert
    assert (status["active"], status["pending"]) == (kept, None)
    return dict(revert)


def supervisor(fleet: LabFleet, name: str) -> str:
    return device_shell(fleet, name, f"cat {ROOT}/run/supervise.pid").strip()


@pytest.mark.parametrize("name", [X86, ARM])
def test_a_device_rebooted_inside_its_window_reverts_by_itself_with_no_laptop(fleet: LabFleet, laptop: Laptop,
                                                                             name: str) -> None:
    start_from(fleet, laptop, name)
    before = supervisor(fleet, name)
    pending = activate_unconfirmed(fleet, laptop, name)
    went_down = time.time()
    fleet.fault(name, "reboot", "1")  # every process of the device ends, the watchdog too; boot runs rc.local
    assert went_down < pending["deadline"], "the reboot began after the deadline"
    revert = check_reverted_by_itself(fleet, laptop, name, pending, OWNERS)
    assert supervisor(fleet, name) != before  # it really restarted: a new supervised server
    print(f"\n{name}: reverted by {revert['by']} {revert['at'] - pending['deadline']:.1f} s after the deadline")


def test_a_logout_that_kills_the_watchdog_leaves_the_deadline_to_the_model_server(fleet: LabFleet,
                                                                                   laptop: Laptop) -> None:
    start_from(fleet, laptop, X86)
    pending = activate_unconfirmed(fleet, laptop, X86)
    # logind with KillUserProcesses=yes ends every process of the session that ran `activate`, its watchdog too.
    device_shell(fleet, X86, f"kill -KILL {int(pending['watchdog_pid'])}")
    revert = check_reverted_by_itself(fleet, laptop, X86, pending, ("model server",))
    # The server looks once a second; the bound allows a loaded host, and is far inside the laptop's own waits.
    assert revert["at"] <= pending["deadline"] + 15, revert
