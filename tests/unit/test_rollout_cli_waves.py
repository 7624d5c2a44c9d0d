"""`--wave-policy N:KEY=VAL[,KEY=VAL...]` on `fleetdesk rollout plan|start`: one wave's own thresholds, soak and
approval, the other keys and waves inheriting the common policy; and every mistake refused with the flag named
and the fix. Through the parser function, and through main() on a real SQLite inventory and a real signed store
(touching no device)."""

from __future__ import annotations

import pytest

from fleetdesk.cli.rollout import wave_policies_from_flags
from fleetdesk.errors import PlanError
from fleetdesk.rollout.plan import RolloutPlan
from fleetdesk.rollout.policy import WavePolicy
from tests.keyring_daemon import keyring_daemon
from tests.unit.test_rollout_cli import cli, fleet_with_model

__all__ = ["fleet_with_model", "keyring_daemon"]

COMMON = WavePolicy(success="90%", errors="1", soak_s=30, approve=False)


def test_each_named_wave_gets_the_common_policy_with_its_keys_changed() -> None:
    assert wave_policies_from_flags([], COMMON) == ()
    policies = wave_policies_from_flags(["1:soak=300,approve=yes", "3: errors = 5% , success=2 "], COMMON)
    assert policies == (WavePolicy(success="90%", errors="1", soak_s=300, approve=True), None,
                        WavePolicy(success="2", errors="5%", soak_s=30, approve=False))
    assert wave_policies_from_flags(["2:approve=no,soak=0s"], WavePolicy(approve=True)) == (
        None, WavePolicy(approve=False, soak_s=0))
    # The plan takes them as its overrides: wave 1 (0-based 0) soaks 300 s, wave 2 keeps the common policy.
    plan = RolloutPlan("m@1", devices=(1,), policy=COMMON, wave_policies=policies, confirm_within_s=900)
    assert plan.policy_for(0).soak_s == 300 and plan.policy_for(1) == COMMON and plan.policy_for(2).errors.percent


@pytest.mark.parametrize(("flags", "problem", "fix"), [
    (["2"], "'2': no KEY=VAL after the wave number", "write N:KEY=VAL"),
    (["0:soak=1"], "'0:soak=1': '0' is not a wave number (1 or more)", "1 = the canary's"),
    (["x:soak=1"], "'x:soak=1': 'x' is not a wave number", "write N:KEY=VAL"),
    (["1:soak"], "'1:soak': 'soak' is not KEY=VAL", "e.g. --wave-policy 1:soak=300,approve=yes"),
    (["1:soak=5,"], "'1:soak=5,': '' is not KEY=VAL", "write N:KEY=VAL"),
    (["1:wait=5"], "'1:wait=5': unknown key 'wait'", "the keys are success, errors, soak and approve"),
    (["1:errors=lots"], "'1:errors=lots': 'lots' is not a threshold", "a count of devices such as 2"),
    (["1:errors=150%"], "'1:errors=150%': 150% is not a share from 0% to 100%", 'a share of the wave such as "10%"'),
    (["1:success=0"], "'1:success=0': success 0 would start the next wave with no device done", "at least 1 device"),
    (["1:soak=long"], "'1:soak=long': soak 'long' is not a number of seconds", "e.g. soak=300"),
    (["1:soak=-5"], "'1:soak=-5': soak -5 is below 0", "soak time in seconds"),
    (["1:approve=maybe"], "'1:approve=maybe': approve 'maybe' is not yes or no", "approve=yes or approve=no"),
    (["1:soak=1,soak=2"], "'1:soak=1,soak=2': soak is given twice", "give soak once for wave 1"),
    (["2:soak=1", "2:errors=3"], "'2:errors=3': wave 2 is given twice", "one --wave-policy 2:KEY=VAL"),
])
def test_bad_flags_name_the_flag_the_value_and_the_fix(flags: list[str], problem: str, fix: str) -> None:
    with pytest.raises(PlanError) as caught:
        wave_policies_from_flags(flags, COMMON)
    assert caught.value.field == "--wave-policy"
    assert caught.value.message.startswith(f"--wave-policy: {problem}")
    assert fix in (caught.value.fix or "")


def test_plan_shows_and_serialises_the_overrides(capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    # Four devices in waves 1, 1, 2: the canary soaks 60 s and waits for approval; wave 3 tolerates 50% errors.
    args = ("rollout", "plan", "mlp@1", "--profile", "ipc-x86", "--waves", "1,1,100%", "--errors", "0",
            "--wave-policy", "1:soak=60,approve=yes", "--wave-policy", "3:errors=50%", "--retries", "5",
            "--step-timeout", "90")
    code, text, err = cli(capsys, *args)
    assert code == 0, err
    waves = text.split("  wave ")[1:]
    assert len(waves) == 3
    assert "gates re-measured for 60 s after activation" in waves[0]
    assert "then the operator must approve the next wave" in waves[0]
    assert "the first failure pauses the rollout (errors 0, exceeded: >)" in waves[1]
    assert "gates measured once after activation (no soak)" in waves[1]
    assert "failure number 2 pauses the rollout (errors 50%: more than 1 of 2)" in waves[2]
    assert "5 retries per transfer" in text and "every step on a device times out after 90 s" in text

    code, resolved, err = cli(capsys, *args, "--json")
    assert code == 0, err
    plan = resolved["plan"]
    assert plan["wave_policies"] == [{"success": "100%", "errors": "0", "soak_s": 60.0, "approve": True}, None,
                                     {"success": "100%", "errors": "50%", "soak_s": 0.0, "approve": False}]
    assert plan["policy"] == {"success": "100%", "errors": "0", "soak_s": 0.0, "approve": False}
    assert plan["transfer"]["retries"] == 5 and plan["step_timeout_s"] == 90
    assert RolloutPlan.from_dict(plan).policy_for(0).approve  # what the journal stores reads back the same


def test_bad_wave_policy_is_a_usage_error(capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    code, data, _ = cli(capsys, "rollout", "plan", "mlp@1", "--profile", "ipc-x86", "--wave-policy", "1:errors=lots",
                        "--json")
    assert code == 2 and data["field"] == "--wave-policy" and "'lots' is not a threshold" in data["message"]
    assert "a count of devices such as 2" in data["fix"]
    # A wave the rollout does not have: 4 devices in waves 1 and 100% make two waves.
    for action in ("plan", "start"):
        code, _, err = cli(capsys, "rollout", action, "mlp@1", "--profile", "ipc-x86", "--waves", "1,100%",
                           "--wave-policy", "3:soak=10")
        assert code == 2, err
        assert "--wave-policy: wave 3 given, but the rollout has 2 waves (of 1, 3 devices)" in err
        assert "give a wave from 1 to 2, or change --waves" in err
    code, rollouts, _ = cli(capsys, "rollout", "list", "--json")
    assert code == 0 and rollouts == []  # the refused start stored nothing
    # A wave's soak the devices would not wait for: the plan's own check, naming the wave's field.
    code, _, err = cli(capsys, "rollout", "plan", "mlp@1", "--profile", "ipc-x86", "--wave-policy", "2:soak=400")
    assert code == 2 and "wave_policies[1].soak_s (400 s)" in err and "confirm_within_s longer" in err
