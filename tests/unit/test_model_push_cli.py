"""`fleetdesk model push` through the real command line (main()), short of a device that takes the model: the
arguments, the usage errors that stop it before anything connects (exit 2), and a device that cannot be reached
failing alone with its message and fix (exit 1). The push itself, on real devices, is in
tests/lab/test_model_push_lab.py. Nothing here connects anywhere but to a closed port on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fleetdesk.cli import build_parser
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import ProbeFacts
from tests.keyring_daemon import keyring_daemon
from tests.unit.test_rollout_cli import cli, fleet_with_model

__all__ = ["fleet_with_model", "keyring_daemon"]


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago): a connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_push_takes_a_model_and_devices_a_group_or_all() -> None:
    parser = build_parser()
    args = parser.parse_args(["model", "push", "mlp@1", "line-a-1", "line-a-2", "--json"])
    assert (args.ref, args.devices, args.group, args.all, args.json) == ("mlp@1", ["line-a-1", "line-a-2"], None,
                                                                         False, True)
    args = parser.parse_args(["model", "push", "mlp", "--group", "line A"])
    assert (args.ref, args.devices, args.group, args.json) == ("mlp", [], "line A", False)
    with pytest.raises(SystemExit):  # no model named
        parser.parse_args(["model", "push"])


def test_an_unknown_model_or_device_or_no_device_stops_before_anything_connects(
        capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    code, error, err = cli(capsys, "model", "push", "nosuch@1", "line-a-1", "--json")
    assert code == 2 and error["error"] == "StoreEntryNotFoundError"
    assert "'nosuch@1'" in error["message"] and "mlp@1" in error["fix"]  # names the models there are
    assert "pushing" not in err

    code, out, err = cli(capsys, "model", "push", "mlp@1")
    assert (code, out) == (2, "")
    assert "no devices chosen" in err and "--group" in err

    code, out, err = cli(capsys, "model", "push", "mlp@1", "no-such-device")
    assert (code, out) == (2, "")
    assert "'no-such-device'" in err and "fleetdesk devices" in err


def test_a_device_that_cannot_be_reached_fails_alone_with_the_message_and_the_fix(
        capsys: pytest.CaptureFixture[str], fleet_with_model: str) -> None:
    port = closed_loopback_port()
    fleet = Fleet.open()
    try:
        device = fleet.inventory.add_device("127.0.0.1", name="bench-1", port=port)
        fleet.inventory.save_probe(device.id, ProbeFacts(arch="x86_64"), profile="ipc-x86")
    finally:
        asyncio.run(fleet.close())

    code, text, err = cli(capsys, "model", "push", "mlp@1", "bench-1")
    assert code == 1
    line, summary = text.strip().splitlines()
    assert line.startswith(f"bench-1: unreachable: 127.0.0.1:{port} ") and " — " in line  # message — fix
    assert summary == "0 succeeded, 0 failed, 1 unreachable"
    assert "pushing mlp@1 to 1 device(s)" in err

    code, result, _ = cli(capsys, "model", "push", "mlp@1", "bench-1", "--json")
    assert code == 1 and result["model"] == "mlp@1"
    assert result["summary"] == {"succeeded": 0, "failed": 0, "unreachable": 1}
    (outcome,) = result["outcomes"]
    assert (outcome["device"], outcome["artifact"], outcome["status"]) == ("bench-1", fleet_with_model, "unreachable")
    assert outcome["bytes_sent"] == 0 and outcome["bytes_total"] > 0
    assert outcome["error"]["message"] and outcome["error"]["fix"]
