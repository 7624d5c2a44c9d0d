"""The model server's shadow candidate and input drift, with the real `serve` process and real onnxruntime: the
active model answers every request, a share of them is mirrored to a staged candidate off the request path, and the
figures say whether the candidate agrees (a genuinely different network does not; the same weights re-saved do). A
candidate that is not verified, or that would leave too little memory, is refused with the reason. Inputs shifted by
two reference standard deviations show as drift, which clears when they return.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleetdesk.agent import serve
from fleetdesk.agent.candidate import CandidateFailed, CandidateProcess
from fleetdesk.agent.shadow import CANDIDATE_THREADS, Shadow
from fleetdesk.agent.shadowstats import reference_document
from tests.fixtures.models.build import small_cnn
from tests.fixtures.signed import signed_artifact
from tests.unit import test_agent_serve
from tests.unit.test_agent_serve import (
    PATIENCE_S,
    TEST_KEY,
    activate,
    agent_line,
    b64_tensor,
    cnn,
    direct,
    from_b64,
    images,
    make_artifact,
)

# The server tests' fixtures: a device ROOT, and `serve` processes stopped at the end of each test.
root = test_agent_serve.root
servers = test_agent_serve.servers

REQUESTS = 30


def cnn_resaved(folder: Path) -> None:
    """The same network and weights as `cnn`, saved again with another doc string: other bytes, other artifact."""
    model = small_cnn()
    model.doc_string = "re-saved"
    onnx.save_model(model, folder / "small_cnn.onnx")


def other_network(folder: Path) -> None:
    """Same input and output as `cnn`, another network: the mean of each colour, then a 3 -> 10 linear layer."""
    rng = np.random.default_rng(42)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)],
        "other", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(rng.standard_normal((10, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, folder / "other.onnx")


def wait_shadow(server: Any, predicate: Any) -> dict[str, Any]:
    deadline = time.monotonic() + PATIENCE_S
    shadow: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, shadow = server.request("GET", "/v1/shadow")
        if predicate(shadow):
            return shadow
        time.sleep(0.05)
    raise AssertionError(f"the shadow never reached the state; last: {shadow}")


def shadow_run(server: Any, active: Path, candidate: Path, share: float) -> dict[str, Any]:
    """Start a shadow of `candidate`, send REQUESTS requests, check each is the active model's answer, stop it
    once every mirrored request is accounted for; its final figures."""
    # Started as the laptop starts it: the agent's command, which asks the running server.
    started = agent_line(server.root, "shadow", "start", candidate.name, "--share", str(share))
    assert started["type"] == "result" and started["command"] == "shadow", started
    assert started["state"] == "running" and started["candidate"] == candidate.name
    assert started["active"] == active.name
    for i in range(REQUESTS):
        x = images(2, seed=100 + i)
        status, answer = server.infer({"image": b64_tensor(x)})
        assert status == 200, answer
        assert answer["model"] == active.name
        np.testing.assert_allclose(from_b64(answer["outputs"]["logits"]),
                                   direct(active / "small_cnn.onnx", {"image": x})[0], rtol=1e-5, atol=1e-6)
    settled = wait_shadow(server, lambda s: s["compared"] + s["failed"] == s["mirrored"])
    assert settled["offered"] == int(REQUESTS * share)
    assert settled["mirrored"] + settled["dropped"] == settled["offered"]
    assert settled["failed"] == 0, settled["last_failure"]
    _, health = server.request("GET", "/v1/health")
    assert health["model"] == active.name and health["shadow"]["state"] == "running"
    stopped = agent_line(server.root, "shadow", "stop")
    assert stopped["type"] == "result" and stopped["state"] == "stopped", stopped
    assert stopped["mirrored"] == settled["mirrored"] and stopped["compared"] == settled["compared"]
    return stopped


def test_a_different_network_disagrees_and_the_same_weights_agree_while_the_active_model_answers(
        root: Path, servers: Any) -> None:
    active = make_artifact(root, cnn)
    different = make_artifact(root, other_network)
    same = make_artifact(root, cnn_resaved)
    assert len({active.name, different.name, same.name}) == 3
    activate(root, active)
    server = servers(root, "--max-wait-ms", "1")

    bad = shadow_run(server, active, different, share=1.0)
    assert bad["compared"] > 0
    assert bad["top1_agreement"] is not None and bad["top1_agreement"] < 0.5
    assert bad["outputs"]["logits"]["cosine"]["p50"] < 0.9
    assert bad["outputs"]["logits"]["max_abs_diff"]["min"] > 0.01
    assert bad["active_ms"]["count"] == bad["candidate_ms"]["count"] == bad["compared"]

    good = shadow_run(server, active, same, share=0.5)
    assert good["compared"] > 0
    assert good["top1_agreement"] == 1.0
    assert good["outputs"]["logits"]["cosine"]["min"] > 0.9999
    assert good["outputs"]["logits"]["max_abs_diff"]["max"] < 1e-5
    assert sum(good["outputs"]["logits"]["cosine_histogram"]["counts"]) == good["compared"]

    # The final figures stay readable after the stop: in /v1/health, GET /v1/shadow and serve-stats.json.
    _, health = server.request("GET", "/v1/health")
    assert health["model"] == active.name and health["shadow"]["state"] == "stopped"
    assert health["shadow"]["candidate"] == same.name and health["shadow"]["top1_agreement"] == 1.0
    stats_path = root / "run" / "serve-stats.json"
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        written = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        if (written.get("shadow") or {}).get("state") == "stopped" and written["shadow"]["candidate"] == same.name:
            break
        time.sleep(0.1)
    assert written["shadow"]["state"] == "stopped" and written["shadow"]["compared"] == good["compared"]
    assert written["model"] == active.name
    status, none = server.request("DELETE", "/v1/shadow")
    assert status == 404 and none["code"] == "not-found"
    assert agent_line(root, "shadow", "status")["candidate"] == same.name
    serving = agent_line(root, "status")["serving"]
    assert serving["model"] == active.name and serving["shadow"]["state"] == "stopped"
    assert serving["shadow"]["top1_agreement"] == 1.0 and serving["drift"]["state"] == "off"


def test_an_unverified_candidate_is_refused_with_the_file_and_why_and_nothing_is_mirrored(
        root: Path, servers: Any) -> None:
    active = make_artifact(root, cnn)
    activate(root, active)
    server = servers(root, "--max-wait-ms", "1")

    # The manifest's "model" names a file its signed list leaves out: never loaded.
    cnn_bytes = (active / "small_cnn.onnx").read_bytes()
    unlisted = signed_artifact(root, TEST_KEY, cnn_bytes, model="small_cnn.onnx", more={"labels.txt": b"cat\n"},
                               files=[{"path": "labels.txt", "sha256": hashlib.sha256(b"cat\n").hexdigest()}])
    status, refused = server.request("POST", "/v1/shadow", {"artifact": unlisted})
    assert status == 422, refused
    assert refused["code"] == "bad-artifact" and refused["file"] == "small_cnn.onnx"
    assert "does not list it" in refused["error"] and refused["fix"]

    # A model file changed after signing: its hash does not match, the file is named.
    tampered = make_artifact(root, cnn_resaved)
    buffer = io.BytesIO()
    onnx.save_model(small_cnn(seed=9), buffer)
    (tampered / "small_cnn.onnx").write_bytes(buffer.getvalue())
    status, refused = server.request("POST", "/v1/shadow", {"artifact": tampered.name})
    assert status == 422 and refused["code"] == "bad-artifact" and refused["file"] == "small_cnn.onnx", refused

    # Not staged at all: the agent's command says so as an error line with the fix.
    line = agent_line(root, "shadow", "start", "0" * 64)
    assert line["type"] == "error" and line["code"] == "not-found" and "not staged" in line["message"], line
    assert "stage the artifact" in line["fix"]

    # Verified, but it would leave less than the margin asked for: refused for memory, the reason kept.
    same = make_artifact(root, cnn_resaved)
    status, refused = server.request("POST", "/v1/shadow", {"artifact": same.name, "margin_mb": 1e9})
    assert status == 507 and refused["code"] == "low-memory" and "under the margin" in refused["error"], refused
    _, kept = server.request("GET", "/v1/shadow")
    assert kept["state"] == "refused" and kept["candidate"] == same.name and kept["code"] == "low-memory"

    status, bad = server.request("POST", "/v1/shadow", {"artifact": same.name, "share": 1.5})
    assert status == 400 and '"share"' in bad["error"]

    assert server.infer({"image": b64_tensor(images(1, 3))})[0] == 200
    _, health = server.request("GET", "/v1/health")
    assert health["model"] == active.name and health["shadow"]["state"] == "refused"
    assert "mirrored" not in health["shadow"]


def test_a_new_active_model_ends_the_shadow_that_compared_with_the_old_one(root: Path, servers: Any) -> None:
    active = make_artifact(root, cnn)
    same = make_artifact(root, cnn_resaved)
    activate(root, active)
    server = servers(root, "--max-wait-ms", "1")
    assert agent_line(root, "shadow", "start", same.name)["state"] == "running"
    activate(root, same)  # the candidate becomes the active model
    health = server.wait_until(lambda h: h["model"] == same.name)
    health = server.wait_until(lambda h: (h["shadow"] or {}).get("state") == "stopped")
    assert health["shadow"]["candidate"] == same.name and health["shadow"]["active"] == active.name
    _, last = server.request("GET", "/v1/shadow")
    assert last["reason"] == f"the active model changed from {active.name} to {same.name}"


def test_a_shadow_nothing_stops_expires_by_itself_and_unloads_its_candidate(root: Path, servers: Any) -> None:
    """The laptop that started a shadow is gone (it never stops it): the server stops it once its expiry passed,
    says why, and the active model answers on, with no candidate beside it. A bad expiry is refused."""
    active = make_artifact(root, cnn)
    same = make_artifact(root, cnn_resaved)
    activate(root, active)
    server = servers(root, "--max-wait-ms", "1")
    started = agent_line(root, "shadow", "start", same.name, "--expires", "2")
    assert started["state"] == "running" and started["expires_s"] == 2.0, started
    status, answer = server.infer({"image": b64_tensor(images(1, seed=5))})
    assert status == 200 and answer["model"] == active.name
    health = server.wait_until(lambda h: (h["shadow"] or {}).get("state") == "stopped")
    _, last = server.request("GET", "/v1/shadow")
    assert last["reason"].startswith("expired: nothing stopped it within 2 s of its start"), last
    assert last["candidate"] == same.name and time.time() - last["started_at"] >= 2.0
    assert health["model"] == active.name
    status, answer = server.infer({"image": b64_tensor(images(1, seed=6))})
    assert status == 200 and answer["model"] == active.name
    line = agent_line(root, "shadow", "stop")
    assert line["type"] == "error" and line["code"] == "not-found", line  # nothing runs any more
    status, bad = server.request("POST", "/v1/shadow", {"artifact": same.name, "expires_s": 0})
    assert status == 400 and "expires_s" in bad["error"]


def test_the_shadow_command_names_a_missing_server_and_the_fix(root: Path) -> None:
    line = agent_line(root, "shadow", "status")
    assert line["type"] == "error" and line["code"] == "no-server", line
    assert "fleetdesk-agent serve" in line["fix"]


def test_a_full_queue_drops_the_mirrored_request_and_counts_it(root: Path) -> None:
    artifact = make_artifact(root, cnn)
    model = CandidateProcess(artifact.name, str(artifact / "small_cnn.onnx"), ["CPUExecutionProvider"], 1)
    shadow = Shadow(model, active="active-sha", share=1.0, queue_size=2)
    x = images(1, seed=5)
    outputs = direct(artifact / "small_cnn.onnx", {"image": x})
    # Before its worker starts nothing leaves the queue: two fit, three are dropped.
    for _ in range(5):
        shadow.offer({"image": x}, outputs, 1.0)
    figures = shadow.stats.snapshot()
    assert (figures["offered"], figures["mirrored"], figures["dropped"]) == (5, 2, 3)
    shadow.start()
    shadow.stop()  # the queued ones are compared before the worker ends
    figures = shadow.stats.snapshot()
    assert figures["compared"] == 2 and figures["top1_agreement"] == 1.0
    shadow.offer({"image": x}, outputs, 1.0)  # stopped: nothing more is taken
    assert shadow.stats.snapshot()["offered"] == 5
    assert model.ended()  # the candidate's process ended with the shadow


def test_the_candidate_runs_in_its_own_process_at_the_lowest_priority_on_one_thread(root: Path) -> None:
    # Its own process shares no GIL with the request threads; at SCHED_IDLE the kernel runs it only on what the
    # requests leave; one onnxruntime thread, no pool of its own spinning beside the active model's
    # (benchmarks/shadow_latency.py measures what the callers see on the lab's devices).
    active, candidate = make_artifact(root, cnn), make_artifact(root, cnn_resaved)
    activate(root, active)
    app = serve.ModelServer(str(root), ["CPUExecutionProvider"], max_batch=1, threads=2)
    try:
        assert (app.refresh(force=True) or {}).get("event") == "model-loaded"
        assert app.served is not None
        assert app.served.model.session.get_session_options().intra_op_num_threads == 2  # the server's setting
        status, started = app.start_shadow(json.dumps({"artifact": candidate.name, "share": 1.0}).encode())
        assert status == 200, started
        shadow = app.shadow
        assert shadow is not None
        process = shadow.candidate
        assert process.threads == CANDIDATE_THREADS == 1
        assert process.pid != os.getpid() and os.sched_getscheduler(process.pid) == os.SCHED_IDLE
        assert process.priority == started["priority"] == "SCHED_IDLE"  # the shadow's figures say it too
        status, _ = app.infer(json.dumps({"inputs": {"image": b64_tensor(images(1, seed=9))}}).encode())
        assert status == 200
        deadline = time.monotonic() + PATIENCE_S
        while shadow.stats.snapshot()["compared"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        figures = shadow.stats.snapshot()
        assert figures["compared"] == 1 and figures["top1_agreement"] == 1.0, figures
        assert figures["candidate_ms"]["count"] == 1 and figures["candidate_ms"]["p95"] > 0, figures
    finally:
        app.stop_shadow()
        app.close()
    assert process.ended()


def test_a_candidate_process_that_dies_is_counted_as_failed_and_the_active_model_keeps_answering(root: Path) -> None:
    active, candidate = make_artifact(root, cnn), make_artifact(root, cnn_resaved)
    activate(root, active)
    app = serve.ModelServer(str(root), ["CPUExecutionProvider"], max_batch=1)
    try:
        assert (app.refresh(force=True) or {}).get("event") == "model-loaded"
        status, started = app.start_shadow(json.dumps({"artifact": candidate.name, "share": 1.0}).encode())
        assert status == 200, started
        shadow = app.shadow
        assert shadow is not None
        os.kill(shadow.candidate.pid, signal.SIGKILL)
        body = json.dumps({"inputs": {"image": b64_tensor(images(1, seed=10))}}).encode()
        status, answer = app.infer(body)
        assert status == 200 and answer["model"] == active.name
        deadline = time.monotonic() + PATIENCE_S
        while shadow.stats.snapshot()["failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        figures = shadow.stats.snapshot()
        assert (figures["failed"], figures["compared"]) == (1, 0), figures
        assert "the candidate's process ended" in figures["last_failure"], figures
        assert app.infer(body)[0] == 200
    finally:
        app.stop_shadow()
        app.close()


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def test_a_server_killed_by_sigkill_leaves_no_candidate_process(root: Path, servers: Any) -> None:
    # Nothing in the server runs at a SIGKILL (or a power cut of its process): the candidate sees its stdin end.
    active, candidate = make_artifact(root, cnn), make_artifact(root, cnn_resaved)
    activate(root, active)
    server = servers(root)
    status, started = server.request("POST", "/v1/shadow", {"artifact": candidate.name, "share": 1.0})
    assert status == 200, started
    (child,) = children_of(server.proc.pid)
    assert Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[2] == b"fleetdesk.agent.candidate"
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + PATIENCE_S
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        if Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z"):
            break  # ended, only not reaped yet (by init, or by this test's process when it is the subreaper)
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z"


def test_a_candidate_that_onnxruntime_cannot_open_is_refused_with_the_reason_and_leaves_no_process(
        root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(CandidateFailed) as caught:
        CandidateProcess("f" * 64, str(broken), ["CPUExecutionProvider"], 1)
    assert "broken.onnx" in str(caught.value) and "process ended" not in str(caught.value), caught.value


def drift_of(server: Any) -> dict[str, Any]:
    _, health = server.request("GET", "/v1/health")
    drift: dict[str, Any] = health["drift"]
    return drift


def send_until(server: Any, mean: float, predicate: Any, limit: int = 300) -> dict[str, Any]:
    """Send requests whose pixels are N(mean, 1) until the health's image drift satisfies `predicate`."""
    drift: dict[str, Any] = {}
    for i in range(limit):
        x = (images(1, seed=1000 + i) + mean).astype(np.float32)
        assert server.infer({"image": b64_tensor(x)})[0] == 200
        drift = drift_of(server)
        if predicate(drift["inputs"]["image"]):
            return drift
    raise AssertionError(f"the drift never reached the state after {limit} requests; last: {drift}")


def test_inputs_shifted_by_two_reference_stds_show_as_drift_and_it_clears_when_they_return(
        root: Path, servers: Any) -> None:
    # The artifact carries reference statistics of N(0, 1) images, listed and signed like its model.
    reference = json.dumps(reference_document({"image": images(64, seed=0)})).encode()
    buffer = io.BytesIO()
    onnx.save_model(small_cnn(), buffer)
    sha = signed_artifact(root, TEST_KEY, buffer.getvalue(), model="small_cnn.onnx",
                          more={"reference.json": reference}, extra={"input_reference": "reference.json"})
    activate(root, root / "artifacts" / sha)
    server = servers(root, "--max-wait-ms", "1", "--drift-window", "8", "--drift-interval-ms", "0")
    assert drift_of(server)["state"] == "watching"

    calm = send_until(server, 0.0, lambda d: d["requests"] == 8)["inputs"]["image"]
    assert calm["mean_shift_std"] < 0.3 and calm["psi"] < 0.25
    shifted = send_until(server, 2.0, lambda d: d["mean_shift_std"] > 1.7)["inputs"]["image"]
    assert shifted["mean_shift_std"] < 2.3 and shifted["psi"] > 1.0
    _, stats = server.request("GET", "/v1/stats")
    channels = stats["drift"]["inputs"]["image"]["channels"]
    assert len(channels) == 3 and all(c["mean_shift_std"] > 0 for c in channels)
    written = json.loads((root / "run" / "serve-stats.json").read_text())
    assert written["drift"]["state"] == "watching" and "channels" not in written["drift"]["inputs"]["image"]
    send_until(server, 0.0, lambda d: d["mean_shift_std"] < 0.3 and d["psi"] < 0.25)

    # An artifact without reference statistics: no drift figures, and the reason says what is missing.
    plain = make_artifact(root, cnn)
    activate(root, plain)
    server.wait_until(lambda h: h["model"] == plain.name)
    off = drift_of(server)
    assert off["state"] == "off" and "input_reference" in off["reason"]

    # Reference statistics the signed file list leaves out are never used.
    model_bytes = buffer.getvalue()
    unsigned = signed_artifact(root, TEST_KEY, model_bytes, model="small_cnn.onnx", more={"reference.json": reference},
                               extra={"input_reference": "reference.json"},
                               files=[{"path": "small_cnn.onnx", "sha256": hashlib.sha256(model_bytes).hexdigest()}])
    activate(root, root / "artifacts" / unsigned)
    server.wait_until(lambda h: h["model"] == unsigned)
    off = drift_of(server)
    assert off["state"] == "off" and "not in its signed file list" in off["reason"], off
