"""The device serves only what the fleet key signed, at every load, on a real lab device (the first ipc-x86 one),
provisioned by FleetDesk with this module's signing key: a model overwritten on the device after its activation is
refused when the server reloads it (SIGHUP) and when it restarts; status, /v1/health and telemetry name the file and
why; the laptop's gate fails with that message and the sample makes it a device problem with its fix; staging the
artifact again repairs it and the server loads it by itself.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleetdesk.agent_client import AgentView
from fleetdesk.fleet import Fleet
from fleetdesk.profiles import load_profiles
from fleetdesk.rollout.device_ops import DeviceOps
from fleetdesk.rollout.gates import SERVING, evaluate
from fleetdesk.rollout.policy import Gates
from fleetdesk.telemetry.sample import Sample
from tests.keyring_daemon import KeyringDaemon, keyring_daemon
from tests.lab.conftest import Fleet as LabFleet
from tests.lab.rollout_fixtures import Laptop, device_shell, new_laptop, provision_devices, small_model

pytestmark = [pytest.mark.lab, pytest.mark.slow]
__all__ = ["keyring_daemon"]

ROOT = "/opt/fleetdesk"
PATIENCE_S = 90.0  # how long a poll waits for something the device does by itself (a server restart, a load)
GATES = Gates(p95_ms_max=None, p95_ratio_max=None, error_rate_max=None, temperature_c_max=None,
              memory_free_pct_min=None, golden_min_cosine=None)  # the serving gate alone


def first_x86(lab: LabFleet) -> str:
    """The device lent to this module: the first ipc-x86 one (its name ends in 01)."""
    return str(next(d["name"] for d in lab.devices if d["profile"] == "ipc-x86" and d["name"].endswith("01")))


@pytest.fixture(scope="module")
def laptop(fleet: LabFleet, keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Laptop]:
    data = tmp_path_factory.mktemp("verified-laptop")
    laptop = new_laptop(data, load_profiles())
    for name, seed in (("signed", 0), ("other", 1)):
        small_model(laptop, data / "models", name, seed, ("ipc-x86",))
    provision_devices(fleet, laptop, [first_x86(fleet)], {first_x86(fleet): "ipc-x86"})
    yield laptop


def poll(what: str, read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """`read()` until `done` says so, at most PATIENCE_S; the last value read names what never came."""
    deadline = time.monotonic() + PATIENCE_S
    value = read()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened; last: {value}")
        time.sleep(0.5)
        value = read()
    return value


def health(lab: LabFleet, name: str) -> dict[str, Any]:
    """GET /v1/health of the device's model server, asked on the device (it listens on its localhost only)."""
    code = ("import json, urllib.request, urllib.error\n"
            f"a = json.load(open('{ROOT}/run/serve-address.json'))\n"
            "try:\n"
            "    r = urllib.request.urlopen('http://%s:%d/v1/health' % (a['host'], a['port']), timeout=30)\n"
            "except urllib.error.HTTPError as e:\n"
            "    r = e\n"
            "print(json.dumps({'status': r.status if hasattr(r, 'status') else r.code, 'body': json.load(r)}))")
    return dict(json.loads(device_shell(lab, name, f"python3 -c {shlex.quote(code)}")))


def test_a_model_overwritten_on_the_device_is_never_served_and_every_side_says_which_file(
        fleet: LabFleet, laptop: Laptop) -> None:
    name = first_x86(fleet)
    signed, other = laptop.models["signed@1"], laptop.models["other@1"]
    folder = f"{ROOT}/artifacts/{signed}"

    def view() -> AgentView:
        async def work(fleet_: Fleet) -> AgentView:
            return await DeviceOps(fleet_, laptop.store).view(fleet_.inventory.device(name))
        seen: AgentView = laptop.with_fleet(work)
        return seen

    async def activate(fleet_: Fleet) -> Any:
        ops = DeviceOps(fleet_, laptop.store)
        device = fleet_.inventory.device(name)
        for artifact in (other, signed):
            await ops.stage(device, artifact)
        answer = await ops.activate(device, signed, 120)
        await ops.confirm(device, signed)
        return answer

    answer = laptop.with_fleet(activate)
    assert answer["active"] == signed and answer["serving"]["loaded"] is True
    before = view()
    assert before.serving_model == signed and before.refused is None

    # Another valid model's bytes where the signed model.onnx was (root writes through the seal), then SIGHUP.
    device_shell(fleet, name, f"cat {ROOT}/artifacts/{other}/model.onnx > {folder}/model.onnx && "
                              f"kill -HUP $(cat {ROOT}/run/serve.pid)")
    after = poll("the server's refusal in status", view, lambda v: v.refused is not None)
    refused = after.refused
    assert refused is not None
    print(f"\nrefused after SIGHUP: {refused}")
    assert (refused["artifact"], refused["file"], refused["code"]) == (signed, "model.onnx", "bad-artifact")
    assert "SHA-256" in refused["reason"] and "the manifest says" in refused["reason"] and refused["fix"]
    assert after.serving_model == signed  # the copy verified when it was loaded keeps answering
    answered = health(fleet, name)
    assert answered["status"] == 200 and answered["body"]["model"] == signed
    assert answered["body"]["refused"]["file"] == "model.onnx"
    # It is the signed model that answers: its golden outputs agree (the agent's check asks the server).
    check = json.loads(device_shell(fleet, name, f"{ROOT}/bin/fleetdesk-agent check current").splitlines()[-1])
    assert check["via"] == "server" and check["min_cosine"] > 0.999, check

    # The laptop: the serving gate fails naming the file and the fix; telemetry makes it a device problem.
    async def measure(fleet_: Fleet) -> Any:
        return await DeviceOps(fleet_, laptop.store).measure(fleet_.inventory.device(name), signed, GATES)

    sample = laptop.with_fleet(measure)
    assert sample.serving is False
    assert "(model.onnx)" in sample.notes[SERVING] and "push the artifact again" in sample.notes[SERVING]
    result = evaluate(GATES, None, [sample])
    assert not result.passed and "model.onnx" in result.reason, result.reason
    line = device_shell(fleet, name, f"{ROOT}/bin/fleetdesk-agent telemetry --count 1 --interval 0.5")
    problem = Sample.from_json(json.loads(line.splitlines()[-1])).refused
    assert problem is not None and "(model.onnx)" in problem and "push the artifact again" in problem

    # Restarted (as after a reboot or a crash) nothing verified is in memory: it serves nothing, and says why.
    killed = device_shell(fleet, name, f"pid=$(cat {ROOT}/run/serve.pid) && kill -9 $pid && echo $pid").strip()
    restarted = poll("a new server that refuses the model", view,
                     lambda v: str(v.status["serving"]["pid"]) != killed and v.status["serving"]["stats_age_s"]
                     is not None and v.status["serving"]["stats_age_s"] < 5 and v.refused is not None)
    assert restarted.serving_model is None and restarted.refused is not None
    assert restarted.refused["file"] == "model.onnx"
    answered = poll("the new server's health", lambda: health(fleet, name),
                    lambda h: h["body"].get("refused") is not None)
    assert answered["status"] == 503 and answered["body"]["model"] is None
    assert "model.onnx" in answered["body"]["reason"]

    # Staged again from the store: repaired, and the server loads it by itself (no signal, no activation).
    async def restage(fleet_: Fleet) -> Any:
        return await DeviceOps(fleet_, laptop.store).stage(fleet_.inventory.device(name), signed)

    staged = laptop.with_fleet(restage)
    assert staged.already_there is False and staged.bytes_sent > 0
    healed = poll("the repaired model served", view, lambda v: v.serving_model == signed and v.refused is None)
    assert healed.current == signed


@pytest.fixture(autouse=True)
def leaves_the_device_serving(fleet: LabFleet, laptop: Laptop) -> Iterator[None]:
    """Whatever the test did, the device ends with its signed model intact and served (re-staged if need be)."""
    yield
    name = first_x86(fleet)

    async def repair(fleet_: Fleet) -> AgentView:
        ops = DeviceOps(fleet_, laptop.store)
        device = fleet_.inventory.device(name)
        view = await ops.view(device)
        if view.current is not None and view.current in laptop.models.values():
            await ops.stage(device, view.current)
        return await ops.view(device)

    laptop.with_fleet(repair)
