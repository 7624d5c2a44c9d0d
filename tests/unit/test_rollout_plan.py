"""Rollout plans: waves split as Ansible's `serial` splits hosts, thresholds "reached" (>=) and "exceeded" (>) to
the device, every invalid value refused naming its field and the fix, a JSON round trip, and plans resolved
against a real SQLite inventory (sightings, probed profiles) and a real signed artifact store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetdesk.artifacts.records import ModelRecord
from fleetdesk.artifacts.signing import KEYRING_ACCOUNT, FleetSigningKey
from fleetdesk.artifacts.store import ArtifactStore
from fleetdesk.errors import PlanError
from fleetdesk.inventory import Inventory, ProbeFacts, Sighting, open_inventory
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.report import BASELINE, BASELINE_STATUS, CHOSEN, OptimizationReport, ProfileResult, Tolerance
from fleetdesk.models.report import Variant as ReportVariant
from fleetdesk.rollout.plan import PlannedDevice, ResolvedPlan, RolloutPlan, plan_text, resolve
from fleetdesk.rollout.policy import Gates, ShadowPolicy, Threshold, TransferPolicy, WavePolicy, split_waves
from fleetdesk.transport import credentials
from tests.fixtures.models.build import save_cnn
from tests.keyring_daemon import KeyringDaemon, keyring_daemon

__all__ = ["keyring_daemon"]

DEFAULT = [1, "10%", "50%", "100%"]

# -- waves -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "waves", "sizes"), [
    (1, DEFAULT, [1]),
    (2, DEFAULT, [1, 1]),  # 10% of 2 rounds down to 0: at least 1
    (3, DEFAULT, [1, 1, 1]),  # 50% of 3 is 1
    (10, DEFAULT, [1, 1, 5, 3]),  # "100%" takes what is left
    (20, DEFAULT, [1, 2, 10, 7]),
    (100, DEFAULT, [1, 10, 50, 39]),
    (20, ["30%"], [6, 6, 6, 2]),  # the Ansible docs' own example: 20 hosts, serial "30%"
    (5, [2], [2, 2, 1]),  # the last value repeats; the last wave takes the rest
    (20, [1, 5], [1, 5, 5, 5, 4]),
    (3, ["10%"], [1, 1, 1]),  # a share that rounds to 0 is 1 device
    (5, [1, "1%"], [1, 1, 1, 1, 1]),
    (4, [10], [4]),  # a wave never takes more than is left
    (7, ["100%"], [7]),
    (100, ["29%"], [29, 29, 29, 13]),  # decimal arithmetic: Ansible's float gives 28 here
    (6, ["5", " 50% "], [5, 1]),  # counts may be written as text
    (0, DEFAULT, []),
])
def test_split_waves_follows_ansible_serial(count: int, waves: list[int | str], sizes: list[int]) -> None:
    assert split_waves(count, waves) == sizes


@pytest.mark.parametrize("count", [1, 2, 3, 7, 19, 20, 21, 99, 100, 1000])
@pytest.mark.parametrize("waves", [DEFAULT, ["30%"], [2], [1, 5], [1, "10%"], ["1%"], ["100%"]])
def test_every_device_gets_exactly_one_wave_and_no_wave_is_empty(count: int, waves: list[int | str]) -> None:
    sizes = split_waves(count, waves)
    assert sum(sizes) == count and min(sizes) >= 1


@pytest.mark.parametrize(("waves", "field"), [
    ([], "waves"), ([0], "waves[0]"), (["0%"], "waves[0]"), ([1, "150%"], "waves[1]"), ([1, "abc"], "waves[1]"),
    ([True], "waves[0]"), ([-2], "waves[0]"), ([1.5], "waves[0]"), ([None], "waves[0]"), ("10%", "waves"),
])
def test_split_waves_refuses_what_is_not_a_wave(waves: Any, field: str) -> None:
    with pytest.raises(PlanError) as caught:
        split_waves(10, waves)
    assert caught.value.field == field and caught.value.fix and "serial" in caught.value.fix


# -- thresholds --------------------------------------------------------------------------------------------


def test_threshold_parse_and_text() -> None:
    assert Threshold.parse("2") == Threshold.parse(2) == Threshold.parse(2.0) == Threshold(2, False)
    assert Threshold.parse("10%") == Threshold.parse(" 10 % ") == Threshold(10, True)
    assert [str(Threshold.parse(t)) for t in ("2", "10%", "12.5%", 0, "100%")] == ["2", "10%", "12.5%", "0", "100%"]
    third = Threshold(100 / 3, True)
    assert Threshold.parse(str(third)) == third  # the text form loses nothing


@pytest.mark.parametrize(("text", "says"), [("abc", "not a threshold"), ("-1", "-1 is not a count"),
                                            ("150%", "150% is not a share"), ("2.5", "2.5 is not a count"),
                                            ("-5%", "-5% is not a share"), (True, "not a threshold"),
                                            ("nan", "not a threshold"), ("", "not a threshold")])
def test_threshold_parse_refuses_with_the_field_and_the_fix(text: Any, says: str) -> None:
    with pytest.raises(PlanError) as caught:
        Threshold.parse(text, name="errors")
    assert caught.value.field == "errors" and says in caught.value.message
    assert caught.value.fix is not None and '"10%"' in caught.value.fix


def test_errors_are_exceeded_not_reached() -> None:
    zero = Threshold.parse(0)
    assert not zero.exceeded(0, 20) and zero.exceeded(1, 20)  # errors=0 pauses on the first failure
    share = Threshold.parse("10%")
    # A wave of 20: 10% is 2 devices; the 3rd failure pauses.
    assert [share.exceeded(n, 20) for n in (0, 1, 2, 3)] == [False, False, False, True]
    assert share.tolerated(20) == 2
    # A wave of 15: 10% is 1.5 devices; 2 failures are more than that.
    assert [share.exceeded(n, 15) for n in (1, 2)] == [False, True] and share.tolerated(15) == 1
    # A canary of 1: 10% of 1 is 0.1, so its failure pauses.
    assert share.exceeded(1, 1) and share.tolerated(1) == 0
    count = Threshold.parse(2)
    assert [count.exceeded(n, 10) for n in (2, 3)] == [False, True]
    assert Threshold.parse("29%").tolerated(100) == 29  # exact decimal share, not 28.999...


def test_success_is_reached_and_rounds_up() -> None:
    whole = Threshold.parse("100%")
    assert not whole.reached(19, 20) and whole.reached(20, 20) and whole.devices(20) == 20
    most = Threshold.parse("90%")
    assert most.devices(15) == 14  # 13.5 devices: 14 must be done
    assert not most.reached(13, 15) and most.reached(14, 15)
    count = Threshold.parse(2)
    assert count.devices(1) == 1 and count.reached(1, 1)  # a count larger than the wave is the whole wave
    assert count.devices(10) == 2 and not count.reached(1, 10) and count.reached(2, 10)
    policy = WavePolicy(success="90%", errors="10%")
    assert policy.success_reached(14, 15) and not policy.success_reached(13, 15)
    assert policy.errors_exceeded(2, 15) and not policy.errors_exceeded(1, 15)


# -- validation and JSON ---------------------------------------------------------------------------------------


def full_plan() -> RolloutPlan:
    return RolloutPlan(
        model="mlp@2", devices=(3, 1), groups=("line A",), profiles=("rpi4",), waves=(1, "25%", 5),
        policy=WavePolicy(success="90%", errors=1, soak_s=30, approve=True),
        wave_policies=(WavePolicy(success=1, errors=0), None, WavePolicy(errors="10%", soak_s=120.5)),
        gates=Gates(serving=True, p95_ms_max=40.0, p95_ratio_max=None, error_rate_max=0.05, golden_min_cosine=0.98,
                    temperature_c_max=80, memory_free_pct_min=None),
        transfer=TransferPolicy(max_parallel=2, bandwidth_bytes_s=5_000_000, prestage=False, retries=0),
        unreachable="count", unreachable_wait_s=0, confirm_within_s=900, step_timeout_s=120, actor="op@line-a",
        shadow=ShadowPolicy(share=0.25, min_requests=50, min_agreement=0.97, p95_ratio_max=None, max_wait_s=90,
                            waves="canary", on_skip="pass"), takeover="auto")


def test_a_plan_survives_json_and_rebuilds_equal() -> None:
    plan = full_plan()
    data = json.loads(json.dumps(plan.to_dict()))
    assert RolloutPlan.from_dict(data) == plan
    assert data["policy"] == {"success": "90%", "errors": "1", "soak_s": 30.0, "approve": True}
    assert data["waves"] == [1, "25%", 5] and data["wave_policies"][1] is None
    assert RolloutPlan.from_dict({"model": "mlp"}) == RolloutPlan("mlp")
    # A plan stored before takeover existed is taken over when an operator asks, as every rollout was then.
    assert data["takeover"] == "auto" and RolloutPlan.from_dict({"model": "mlp"}).takeover == "ask"
    assert data["shadow"] == {"share": 0.25, "min_requests": 50, "min_agreement": 0.97, "p95_ratio_max": None,
                              "max_wait_s": 90.0, "waves": "canary", "on_skip": "pass"}
    for part in (plan.policy, plan.gates, plan.transfer, plan.shadow, Threshold.parse("10%")):
        assert type(part).from_dict(json.loads(json.dumps(part.to_dict()))) == part  # type: ignore[attr-defined]
    # Per-wave policies: an override, a gap (None) that falls back to the plan's, and waves past the list.
    assert plan.policy_for(0) == WavePolicy(success=1, errors=0)
    assert plan.policy_for(1) == plan.policy and plan.policy_for(7) == plan.policy
    assert plan.policy_for(2).soak_s == 120.5


def test_a_plan_written_by_hand_may_use_the_short_forms() -> None:
    plan = RolloutPlan.from_dict({"model": " mlp ", "devices": [1, 2], "waves": "30%",
                                  "policy": {"success": 3, "errors": "5%"}})
    assert plan.model == "mlp" and plan.devices == (1, 2) and plan.waves == ("30%",)
    assert plan.policy.success == Threshold(3, False) and plan.policy.errors == Threshold(5, True)
    assert WavePolicy.from_dict({"errors": {"value": 2, "percent": False}}).errors == Threshold(2, False)


BAD_PLANS: list[tuple[dict[str, Any], str | None, str]] = [
    ({"model": ""}, "model", "no model"),
    ({"devices": [1]}, "model", "no model"),
    ({"waves": []}, "waves", "no waves"),
    ({"waves": [0]}, "waves[0]", "not a number of devices"),
    ({"waves": [1, "0%"]}, "waves[1]", "not a share"),
    ({"waves": [1, "150%"]}, "waves[1]", "not a share"),
    ({"waves": [1, "ten%"]}, "waves[1]", "not a wave size"),
    ({"policy": {"errors": "150%"}}, "policy.errors", "150% is not a share"),
    ({"policy": {"errors": -1}}, "policy.errors", "-1 is not a count"),
    ({"policy": {"success": "abc"}}, "policy.success", "not a threshold"),
    ({"policy": {"success": 0}}, "policy.success", "no device done"),
    ({"policy": {"success": "0%"}}, "policy.success", "no device done"),
    ({"policy": {"soak_s": -1}}, "policy.soak_s", "below 0"),
    ({"policy": {"approve": "yes"}}, "policy.approve", "not true or false"),
    ({"policy": {"soak": 3}}, "policy", "unknown field soak"),
    ({"policy": 3}, "policy", "not an object"),
    ({"wave_policies": [None, {"soak_s": -1}]}, "wave_policies[1].soak_s", "below 0"),
    ({"wave_policies": {"soak_s": 1}}, "wave_policies", "not a list"),
    ({"unreachable": "ignore"}, "unreachable", "not an unreachable policy"),
    ({"unreachable_wait_s": -1}, "unreachable_wait_s", "below 0"),
    ({"confirm_within_s": 0}, "confirm_within_s", "not above 0"),
    ({"step_timeout_s": -5}, "step_timeout_s", "not above 0"),
    ({"step_timeout_s": "soon"}, "step_timeout_s", "not a number"),
    ({"transfer": {"max_parallel": 0}}, "transfer.max_parallel", "below 1"),
    ({"transfer": {"max_parallel": 1.5}}, "transfer.max_parallel", "not a whole number"),
    ({"transfer": {"bandwidth_bytes_s": 0}}, "transfer.bandwidth_bytes_s", "below 1"),
    ({"transfer": {"retries": -1}}, "transfer.retries", "below 0"),
    ({"transfer": {"prestage": 1}}, "transfer.prestage", "not true or false"),
    ({"gates": {"error_rate_max": 2}}, "gates.error_rate_max", "above 1"),
    ({"gates": {"golden_min_cosine": 1.5}}, "gates.golden_min_cosine", "above 1"),
    ({"gates": {"p95_ms_max": 0}}, "gates.p95_ms_max", "not above 0"),
    ({"gates": {"p95_ratio_max": -1}}, "gates.p95_ratio_max", "not above 0"),
    ({"gates": {"memory_free_pct_min": 101}}, "gates.memory_free_pct_min", "above 100"),
    ({"gates": {"temperature_c_max": float("inf")}}, "gates.temperature_c_max", "not a number"),
    ({"gates": {"serving": "yes"}}, "gates.serving", "not true or false"),
    ({"devices": [0]}, "devices[0]", "not a device id"),
    ({"devices": ["ipc-01"]}, "devices[0]", "not a device id"),
    ({"devices": 3}, "devices", "not a list"),
    ({"groups": [""]}, "groups[0]", "not a name"),
    ({"profiles": "rpi4"}, "profiles", "not a list"),
    ({"actor": 7}, "actor", "not a name"),
    ({"wavez": [1]}, None, "unknown field wavez"),
    ({"shadow": {"share": 0}}, "shadow.share", "not above 0"),
    ({"shadow": {"share": 1.5}}, "shadow.share", "above 1"),
    ({"shadow": {"min_requests": 0}}, "shadow.min_requests", "below 1"),
    ({"shadow": {"min_requests": 2.5}}, "shadow.min_requests", "not a whole number"),
    ({"shadow": {"min_agreement": 1.01}}, "shadow.min_agreement", "above 1"),
    ({"shadow": {"p95_ratio_max": 0}}, "shadow.p95_ratio_max", "not above 0"),
    ({"shadow": {"max_wait_s": 0}}, "shadow.max_wait_s", "not above 0"),
    ({"shadow": {"waves": "first"}}, "shadow.waves", "not a choice of waves"),
    ({"shadow": {"on_skip": "skip"}}, "shadow.on_skip", "not pass or fail"),
    ({"shadow": {"agree": 0.9}}, "shadow", "unknown field agree"),
    ({"shadow": 0.5}, "shadow", "not an object"),
    ({"takeover": "always"}, "takeover", "not a takeover policy"),
    # The agent reverts when no confirmation comes in time; a soak that long would revert every device.
    ({"policy": {"soak_s": 300}}, "confirm_within_s", "policy.soak_s (300 s)"),
    ({"wave_policies": [None, {"soak_s": 400}], "confirm_within_s": 350}, "confirm_within_s",
     "wave_policies[1].soak_s (400 s)"),
]


@pytest.mark.parametrize(("change", "field", "says"), BAD_PLANS)
def test_every_invalid_plan_is_refused_naming_the_field_and_the_fix(change: dict[str, Any], field: str | None,
                                                                     says: str) -> None:
    data = {"model": "mlp", **change} if "model" not in change and change != {"devices": [1]} else change
    with pytest.raises(PlanError) as caught:
        RolloutPlan.from_dict(data)
    error = caught.value
    assert error.field == field, str(error)
    assert says in error.message, error.message
    assert error.fix, "every PlanError says how to fix it"
    if field:
        assert str(error).startswith(f"{field}: ")
    assert error.to_dict()["field"] == field and error.step == "plan rollout"


def test_the_dataclasses_check_values_given_in_code_too() -> None:
    with pytest.raises(PlanError, match="soak_s"):
        WavePolicy(soak_s=-1)
    with pytest.raises(PlanError, match="errors"):
        WavePolicy(errors="101%")  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="max_parallel"):
        TransferPolicy(max_parallel=0)
    with pytest.raises(PlanError, match="unreachable"):
        RolloutPlan("mlp", unreachable="skip")
    with pytest.raises(PlanError, match=r"waves\[0\]"):
        RolloutPlan("mlp", waves=(0,))


# -- resolving against a real inventory and store -------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(keyring_daemon: KeyringDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSigningKey]:
    credentials.delete_secret(KEYRING_ACCOUNT)
    key = FleetSigningKey(tmp_path_factory.mktemp("keys"))
    key.public_pem()
    yield key
    credentials.delete_secret(KEYRING_ACCOUNT)


def _variant(recipe: str, status: str, folder: Path | None = None) -> ReportVariant:
    files = ("model.onnx",) if folder is not None else ()
    size = (folder / "model.onnx").stat().st_size if folder is not None else 0
    return ReportVariant(recipe, status, f"{recipe} {status}", files, str(folder or ""), size, "", None, 1.0, {},
                         {"onnxruntime": "test"})


@pytest.fixture
def stored(tmp_path: Path, signer: FleetSigningKey) -> tuple[ArtifactStore, ModelRecord]:
    """A signed store holding cnn@1: ipc-x86 chose int8-static, rpi4 fp16, jetson-orin-nano the model as
    imported; rpi5 is not in the report (it gets the baseline too)."""
    src, int8, fp16 = tmp_path / "src", tmp_path / "work" / "int8", tmp_path / "work" / "fp16"
    for folder in (src, int8, fp16):
        folder.mkdir(parents=True)
    card = inspect_model(save_cnn(src / "cnn.onnx", seed=0), name="cnn")
    save_cnn(int8 / "model.onnx", seed=1)
    save_cnn(fp16 / "model.onnx", seed=2)

    def result(profile: str, chosen: str, folder: Path | None) -> ProfileResult:
        if chosen == BASELINE:
            return ProfileResult(profile, ("graph",), (_variant(BASELINE, CHOSEN),), BASELINE)
        variants = (_variant(BASELINE, BASELINE_STATUS), _variant(chosen, CHOSEN, folder))
        return ProfileResult(profile, (chosen,), variants, chosen)

    report = OptimizationReport(card.sha256, 8, True, "generated from the declared input shapes", Tolerance(), (
        result("ipc-x86", "int8-static", int8), result("rpi4", "fp16", fp16),
        result("jetson-orin-nano", BASELINE, None)))
    store = ArtifactStore(tmp_path / "store", signer)
    record = store.add_model(card, report, name="cnn", source_folder=src)
    return store, record


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Inventory]:
    """Devices as discovery and the probe leave them: sighted over mDNS, probed, matched to a profile."""
    with open_inventory(f"sqlite:///{tmp_path / 'inventory.db'}") as inventory:
        fleet = [("ipc-02", "ipc-x86"), ("rpi4-02", "rpi4"), ("ipc-01", "ipc-x86"), ("orin-01", "jetson-orin-nano"),
                 ("rpi4-01", "rpi4"), ("rpi5-01", "rpi5"), ("ipc-03", "ipc-x86"), ("new-01", None)]
        for n, (name, profile) in enumerate(fleet, start=1):
            device = inventory.record_sighting(Sighting("mdns", (f"198.18.1.{n}",), host_name=f"{name}.local.",
                                                        instance_name=name, service_type="_ssh._tcp.local."))
            if profile is not None:
                arch = "aarch64" if profile in ("rpi4", "rpi5", "jetson-orin-nano") else "x86_64"
                inventory.save_probe(device.id, ProbeFacts(hostname=name, machine_id=f"m-{name}", arch=arch),
                                     profile=profile)
        ids = {d.name: d.id for d in inventory.devices()}
        inventory.add_to_group("line A", [ids["ipc-02"], ids["rpi4-01"]])
        inventory.add_to_group("line B", [ids["new-01"], ids["ipc-03"]])
        yield inventory


def ids(inventory: Inventory) -> dict[str, int]:
    return {d.name: d.id for d in inventory.devices()}


def test_resolve_picks_each_profiles_variant_dedupes_and_deals_waves_across_profiles(
        inventory: Inventory, stored: tuple[ArtifactStore, ModelRecord]) -> None:
    store, record = stored
    n = ids(inventory)
    plan = RolloutPlan("cnn", devices=(n["ipc-01"], n["orin-01"], n["rpi5-01"], n["ipc-01"]), groups=("line A",),
                       profiles=("rpi4",))
    resolved = resolve(plan, inventory, store)
    assert resolved.model_ref == "cnn@1" == record.ref
    # Sorted by name: ipc-01 ipc-02 orin-01 rpi4-01 rpi4-02 rpi5-01; dealt round-robin across the profiles
    # (ipc-x86, jetson-orin-nano, rpi4, rpi5): ipc-01 orin-01 rpi4-01 rpi5-01 ipc-02 rpi4-02; waves of 1, 1, 3, 1.
    assert [[name_of(inventory, i) for i in wave] for wave in resolved.waves] == [
        ["ipc-01"], ["orin-01"], ["rpi4-01", "rpi5-01", "ipc-02"], ["rpi4-02"]]
    assert [(d.name, d.wave) for d in resolved.devices] == [
        ("ipc-01", 0), ("orin-01", 1), ("ipc-02", 2), ("rpi4-01", 2), ("rpi5-01", 2), ("rpi4-02", 3)]
    chosen = {d.name: (d.profile, d.artifact, d.recipe) for d in resolved.devices}
    assert chosen["ipc-01"] == chosen["ipc-02"][:1] + chosen["ipc-01"][1:]
    assert chosen["ipc-01"] == ("ipc-x86", record.artifacts["ipc-x86"], "int8-static")
    assert chosen["rpi4-01"] == chosen["rpi4-02"] == ("rpi4", record.artifacts["rpi4"], "fp16")
    assert chosen["orin-01"] == ("jetson-orin-nano", record.baseline, "fp32")  # the report chose the original
    assert "rpi5" not in record.artifacts and chosen["rpi5-01"] == ("rpi5", record.baseline, "fp32")
    assert all(d.size_bytes == store.artifact(d.artifact).size_bytes > 0 for d in resolved.devices)
    assert "ipc-03" not in chosen and "new-01" not in chosen  # not targeted
    # Resolving again gives the same plan; and it survives the journal's JSON.
    assert resolve(plan, inventory, store) == resolved
    assert ResolvedPlan.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved
    assert resolved.device(n["rpi5-01"]).wave == 2
    assert resolved.policy_for(3) == plan.policy


def name_of(inventory: Inventory, device_id: int) -> str:
    return inventory.device(device_id).name


def test_a_whole_profile_and_the_canary_first_by_name(inventory: Inventory,
                                                       stored: tuple[ArtifactStore, ModelRecord]) -> None:
    store, _ = stored
    resolved = resolve(RolloutPlan("cnn@1", profiles=("ipc-x86",), waves=(1, "100%")), inventory, store)
    assert [[name_of(inventory, i) for i in w] for w in resolved.waves] == [["ipc-01"], ["ipc-02", "ipc-03"]]


def expect_plan_error(plan: RolloutPlan, inventory: Inventory, store: ArtifactStore, field: str) -> PlanError:
    with pytest.raises(PlanError) as caught:
        resolve(plan, inventory, store)
    assert caught.value.field == field and caught.value.fix
    return caught.value


def test_resolve_refuses_what_it_cannot_target(inventory: Inventory,
                                               stored: tuple[ArtifactStore, ModelRecord]) -> None:
    store, _ = stored
    n = ids(inventory)
    error = expect_plan_error(RolloutPlan("cnn"), inventory, store, "targets")
    assert "targets no device" in error.message
    error = expect_plan_error(RolloutPlan("cnn", devices=(n["ipc-01"], 9999)), inventory, store, "devices")
    assert "9999" in error.message and "fleetdesk devices" in (error.fix or "")
    error = expect_plan_error(RolloutPlan("cnn", groups=("line Z",)), inventory, store, "groups")
    assert "'line Z'" in error.message and "line A, line B" in (error.fix or "")
    error = expect_plan_error(RolloutPlan("cnn", profiles=("rpi4", "jetson-xavier-nx")), inventory, store, "profiles")
    assert "jetson-xavier-nx" in error.message and "ipc-x86, jetson-orin-nano, rpi4, rpi5" in (error.fix or "")
    # A device that was seen but never probed has no profile, so no variant can be chosen for it.
    error = expect_plan_error(RolloutPlan("cnn", groups=("line B",)), inventory, store, "targets")
    assert "new-01" in error.message and "ipc-03" not in error.message and "probe" in (error.fix or "")
    error = expect_plan_error(RolloutPlan("cnn@7", profiles=("rpi4",)), inventory, store, "model")
    assert "cnn@7" in error.message and "cnn@1" in (error.fix or "")


def test_resolve_refuses_a_record_whose_artifact_is_gone(inventory: Inventory,
                                                         stored: tuple[ArtifactStore, ModelRecord]) -> None:
    store, record = stored
    shutil.rmtree(store.objects / record.artifacts["rpi4"])
    error = expect_plan_error(RolloutPlan("cnn", profiles=("rpi4",)), inventory, store, "model")
    assert record.artifacts["rpi4"][:12] in error.message and "verify" in (error.fix or "")
    # Profiles whose artifacts are intact still resolve.
    assert resolve(RolloutPlan("cnn", profiles=("ipc-x86",)), inventory, store).devices


# -- the plan in words -------------------------------------------------------------------------------------


def test_plan_text_states_waves_variants_and_thresholds_in_words(inventory: Inventory,
                                                                 stored: tuple[ArtifactStore, ModelRecord]) -> None:
    store, record = stored
    plan = RolloutPlan("cnn", profiles=("ipc-x86", "rpi4", "jetson-orin-nano", "rpi5"),
                       policy=WavePolicy(errors="10%"),
                       wave_policies=(None, None, WavePolicy(success="50%", errors=1, soak_s=60, approve=True)))
    text = plan_text(resolve(plan, inventory, store))
    assert text.startswith("Rollout of cnn@1 to 7 devices in 4 waves")
    for name in ("ipc-01", "ipc-02", "ipc-03", "orin-01", "rpi4-01", "rpi4-02", "rpi5-01"):
        assert name in text
    assert f"rpi4: fp16, artifact {record.artifacts['rpi4'][:12]}" in text
    assert "wave 1 (canary), 1 device: ipc-01" in text
    # Waves of 1, 1, 3, 2 devices: the default success 100%, errors 10% (tolerates none in waves this small).
    assert "the next wave starts when at least 1 of 1 is done (success 100%, reached: >=)" in text
    assert "the first failure pauses the rollout (errors 10%, exceeded: >)" in text
    # Wave 3's own policy: 50% of 3 is 1.5, so 2 devices; errors 1 tolerates one failure.
    assert "at least 2 of 3 are done (success 50%" in text
    assert "failure number 2 pauses the rollout (errors 1: more than 1 of 3)" in text
    assert "wave 2, 1 device: " in text and text.count("(own thresholds)") == 1  # only wave 3 has its own
    assert ("  wave 3, 3 devices (own thresholds): rpi4-01, rpi5-01, ipc-02\n"
            "    the next wave starts when at least 2 of 3 are done (success 50%, reached: >=)\n"
            "    failure number 2 pauses the rollout (errors 1: more than 1 of 3)\n"
            "    gates re-measured for 60 s after activation\n"
            "    then the operator must approve the next wave\n") in text
    assert text.count("then the operator must approve") == 1  # only wave 3's policy asks for it
    assert "the rollout is done when at least 2 of 2 are done" in text
    assert "An unreachable device does not count: the wave waits up to 600 s for it." in text
    assert "p95 against the previous model on the same device: at most 1.5 x" in text
    assert "p95 latency: off" in text and "error rate during the soak: at most 1% of requests" in text
    assert "within 300 s of its activation goes back to its previous model by itself" in text


def test_plan_text_never_passes_control_characters_from_device_names() -> None:
    device = PlannedDevice(1, "cam\x1b[2J\nrm -rf", "rpi4", "ab" * 32, "fp16", 0, 1000)
    text = plan_text(ResolvedPlan(RolloutPlan("m", devices=(1,)), "m@1", (device,), ((1,),)))
    assert "\x1b" not in text and "cam\\x1b[2J\\nrm -rf" in text
    assert "wave 1, 1 device" in text  # a single wave is no canary


def test_a_resolved_plan_with_a_changed_planned_device_is_not_equal() -> None:
    device = PlannedDevice(1, "a", "rpi4", "ab" * 32, "fp16", 0)
    resolved = ResolvedPlan(RolloutPlan("m", devices=(1,)), "m@1", (device,), ((1,),))
    assert ResolvedPlan.from_dict(resolved.to_dict()) == resolved
    assert replace(resolved, devices=(replace(device, wave=1),)) != resolved


# -- the shadow step -----------------------------------------------------------------------------------------


def test_a_plan_stored_before_the_shadow_step_loads_without_one_and_null_means_none() -> None:
    stored = RolloutPlan("mlp").to_dict()
    del stored["shadow"]  # what rollouts.plan holds for a plan written before the shadow step existed
    assert RolloutPlan.from_dict(stored) == RolloutPlan("mlp") and RolloutPlan.from_dict(stored).shadow is None
    assert RolloutPlan.from_dict({"model": "mlp", "shadow": None}).shadow is None
    assert RolloutPlan.from_dict({"model": "mlp", "shadow": {}}).shadow == ShadowPolicy()
    with pytest.raises(PlanError, match="shadow") as caught:
        RolloutPlan("mlp", shadow={"share": 0.5})  # type: ignore[arg-type]
    assert caught.value.fix


def test_a_plan_mirrors_the_share_the_agent_mirrors_by_default() -> None:
    """One in four (benchmarks/shadow_latency.py: far cheaper for the requests answered meanwhile than every one)."""
    from fleetdesk.agent.shadow import DEFAULT_SHARE

    assert ShadowPolicy().share == DEFAULT_SHARE == 0.25


def test_the_shadow_policy_applies_to_every_wave_or_the_canarys_only() -> None:
    assert ShadowPolicy().applies_to(0) and ShadowPolicy().applies_to(3)
    canary = ShadowPolicy(waves="canary")
    assert canary.applies_to(0) and not canary.applies_to(1)
    assert ShadowPolicy(min_agreement=None, p95_ratio_max=None).to_dict()["min_agreement"] is None


def test_plan_text_tells_the_shadow_step(inventory: Inventory, stored: tuple[ArtifactStore, ModelRecord]) -> None:
    store, _ = stored
    plain = plan_text(resolve(RolloutPlan("cnn", profiles=("rpi4",)), inventory, store))
    assert "Shadow step (before activation):\n  none: each device activates" in plain
    plan = RolloutPlan("cnn", profiles=("ipc-x86", "rpi4"),
                       shadow=ShadowPolicy(share=0.5, min_requests=300, min_agreement=0.98, p95_ratio_max=1.2,
                                           max_wait_s=120, waves="canary", on_skip="pass"))
    text = plan_text(resolve(plan, inventory, store))
    assert ("the devices of wave 1 (the canary's) only: after staging, the candidate runs beside the active model "
            "on 0.5 of the live requests") in text
    assert "verdict after 300 compared requests, or after 120 s (fewer requests by then: failed)" in text
    assert "agreement" in text and "at least 0.98" in text
    assert "candidate p95 at most 1.2 x the active model's on the same requests" in text
    assert "the candidate is unloaded, the device keeps its model and counts as failed" in text
    assert "too little memory to load the candidate beside its model is activated without a shadow" in text
    failing = plan_text(resolve(replace(plan, shadow=ShadowPolicy(min_agreement=None)), inventory, store))
    assert "every device: after staging" in failing and "agreement: not judged" in failing
    assert "too little memory to load the candidate beside its model counts as failed" in failing
