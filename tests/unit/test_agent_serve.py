"""The agent's model server (`fleetdesk-agent serve`), run as a real process on 127.0.0.1 with real
onnxruntime: answers, micro-batching, the cache, bad requests, model changes, statistics and stopping.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from fleetdesk.agent import inference, serve
from fleetdesk.agent.batching import MicroBatcher, ResultCache
from fleetdesk.agent.servestats import STATS_FILE_KEYS, percentile
from fleetdesk.agent.state import sha256_file
from fleetdesk.agent.verified import VerifiedArtifacts
from tests.fixtures.models.build import save_cnn, save_mlp_external
from tests.fixtures.signed import public_pem, signed_artifact

REPO = Path(__file__).resolve().parents[2]
# How long a test waits for something the server does by itself (start, a model switch) before failing.
PATIENCE_S = 30.0

def agent_argv(root: Path, command: str, *args: str) -> list[str]:
    """`fleetdesk-agent --root ROOT COMMAND ARGS` as the device runs it (python -m fleetdesk_agent)."""
    return [sys.executable, "-m", "fleetdesk.agent", "--root", str(root), command, *args]


# --- models and artifacts -----------------------------------------------------------------------------------


# The fleet key of these tests' devices: the server loads only artifacts it signed (ROOT/keys/fleet.pub).
TEST_KEY = Ed25519PrivateKey.generate()


def make_artifact(root: Path, build: Any, manifest_model: str | None = None, model_key: bool = True) -> Path:
    """ROOT/artifacts/<id> holding the files `build(folder)` writes, every one listed in a manifest signed by
    TEST_KEY as the store signs them; the manifest's "model" names `manifest_model` (default: the only .onnx)."""
    with tempfile.TemporaryDirectory() as scratch:
        build(Path(scratch))
        files = {p.relative_to(scratch).as_posix(): p.read_bytes() for p in sorted(Path(scratch).rglob("*"))
                 if p.is_file()}
    model = manifest_model or next(name for name in files if name.endswith(".onnx"))
    payload = files.pop(model)
    sha = signed_artifact(root, TEST_KEY, payload, model=model, more=files, model_key=model_key)
    return root / "artifacts" / sha


def activate(root: Path, artifact: Path) -> None:
    """Point ROOT/current at an artifact by renaming a new link over it, as activation does."""
    link = root / "current"
    temporary = root / "current.new"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(artifact)
    os.replace(temporary, link)


def cnn(folder: Path) -> None:
    save_cnn(folder / "small_cnn.onnx")


def mlp(folder: Path) -> None:
    (folder / "mlp").mkdir(exist_ok=True)
    save_mlp_external(folder / "mlp" / "mlp.onnx")


def reshape_model(folder: Path) -> None:
    """X float [n, 4] -> Reshape to [-1, 3]: valid requests with 4*n not divisible by 3 fail inside onnxruntime."""
    shape = helper.make_tensor("target", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 3])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, folder / "reshape.onnx")


def direct(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def b64_tensor(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "data_b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()}


def from_b64(tensor: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(tensor["data_b64"]), dtype=tensor["dtype"]).reshape(tensor["shape"])


def images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 32, 32)).astype(np.float32)


# --- the server process -------------------------------------------------------------------------------------


class Server:
    """One `serve` process; its JSON lines are collected as they come."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.proc = subprocess.Popen(agent_argv(root, "serve", "--port", "0", *args), cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        serving = self.wait_for(lambda line: line.get("event") == "serving" or line.get("type") == "error")
        assert serving.get("event") == "serving", serving
        self.serving = serving
        self.port = serving["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.append(json.loads(text))

    def wait_for(self, predicate: Any) -> dict[str, Any]:
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        stderr = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"no such line from serve; lines: {self.lines}; stderr: {stderr}")

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def infer(self, inputs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.request("POST", "/v1/infer", {"inputs": inputs})

    def wait_until(self, predicate: Any) -> dict[str, Any]:
        deadline = time.monotonic() + PATIENCE_S
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, health = self.request("GET", "/v1/health")
            if predicate(health):
                return health
            time.sleep(0.1)
        raise AssertionError(f"the server never reached the state; last health: {health}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=PATIENCE_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def servers() -> Iterator[Any]:
    started: list[Server] = []

    def start(root: Path, *args: str) -> Server:
        server = Server(root, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


# --- answers ------------------------------------------------------------------------------------------------


def test_infer_round_trip_equals_a_direct_onnxruntime_session(root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    server = servers(root, "--max-wait-ms", "1")
    assert server.serving["ready"] is True and server.serving["model"] == artifact.name
    assert server.serving["provider"] == "CPUExecutionProvider"

    x = images(2, seed=1)
    status, answer = server.infer({"image": b64_tensor(x)})
    assert status == 200, answer
    assert answer["model"] == artifact.name and answer["cached"] is False and answer["batch"] == 2
    assert np.allclose(from_b64(answer["outputs"]["logits"]), direct(artifact / "small_cnn.onnx", {"image": x})[0],
                       rtol=1e-5, atol=1e-6)

    # The nested-list form answers the same.
    status, listed = server.infer({"image": {"dtype": "float32", "shape": [2, 3, 32, 32], "data": x.tolist()}})
    assert status == 200, listed
    assert np.allclose(from_b64(listed["outputs"]["logits"]), from_b64(answer["outputs"]["logits"]), atol=1e-6)

    status, described = server.request("GET", "/v1/model")
    assert status == 200
    assert described["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert described["outputs"][0]["name"] == "logits" and described["outputs"][0]["dtype"] == "float32"


def test_a_manifest_names_the_model_and_external_data_beside_it_loads(root: Path, servers: Any) -> None:
    artifact = make_artifact(root, mlp, manifest_model="mlp/mlp.onnx")
    (artifact / "decoy.onnx").write_bytes(b"not the model")  # not listed in the signed manifest: never a candidate
    activate(root, artifact)
    server = servers(root)
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    status, answer = server.infer({"features": b64_tensor(x)})
    assert status == 200, answer
    expected = direct(artifact / "mlp" / "mlp.onnx", {"features": x})[0]
    assert np.allclose(from_b64(answer["outputs"]["scores"]), expected, rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_micro_batched_and_each_gets_its_own_rows(root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    server = servers(root, "--max-batch", "8", "--max-wait-ms", "50")
    inputs = [images(1, seed=100 + i) for i in range(16)]
    answers: list[Any] = [None] * 16
    gate = threading.Barrier(16)

    def call(i: int) -> None:
        gate.wait()
        answers[i] = server.infer({"image": b64_tensor(inputs[i])})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE_S)

    session = ort.InferenceSession(str(artifact / "small_cnn.onnx"), providers=["CPUExecutionProvider"])
    for i, (status, answer) in enumerate(answers):
        assert status == 200, answer
        mine = from_b64(answer["outputs"]["logits"])
        assert mine.shape == (1, 10)
        assert np.allclose(mine, session.run(None, {"image": inputs[i]})[0], rtol=1e-5, atol=1e-6), i
    assert max(answer["batch"] for _, answer in answers) > 1
    _, stats = server.request("GET", "/v1/stats")
    assert stats["requests"] == 16 and stats["errors"] == 0
    assert stats["runs"] < 16 and stats["batch_mean"] > 1, stats


def test_batching_off_runs_request_by_request(root: Path, servers: Any) -> None:
    activate(root, make_artifact(root, cnn))
    server = servers(root, "--max-batch", "1")
    for seed in range(3):
        status, answer = server.infer({"image": b64_tensor(images(1, seed))})
        assert status == 200 and answer["batch"] == 1
    _, stats = server.request("GET", "/v1/stats")
    assert stats["runs"] == 3 and stats["batch_mean"] == 1.0 and stats["batching"] is False


def test_the_cache_answers_repeated_inputs_and_evicts_the_least_recently_used(root: Path, servers: Any) -> None:
    activate(root, make_artifact(root, cnn))
    server = servers(root, "--cache-size", "2", "--max-wait-ms", "0")
    a, b, c = (b64_tensor(images(1, seed)) for seed in (1, 2, 3))
    first = server.infer({"image": a})[1]
    again = server.infer({"image": a})[1]
    assert first["cached"] is False and again["cached"] is True
    assert again["outputs"] == first["outputs"]
    assert server.infer({"image": b})[1]["cached"] is False
    assert server.infer({"image": a})[1]["cached"] is True  # a is now the most recently used
    assert server.infer({"image": c})[1]["cached"] is False  # evicts b
    assert server.infer({"image": b})[1]["cached"] is False
    _, stats = server.request("GET", "/v1/stats")
    assert stats["cache_hits"] == 2 and stats["cache_size"] == 2 and stats["requests"] == 6


# --- bad requests -------------------------------------------------------------------------------------------


def test_each_bad_request_gets_its_status_and_message_and_the_server_stays_up(root: Path, servers: Any) -> None:
    activate(root, make_artifact(root, cnn))
    server = servers(root, "--max-wait-ms", "0")
    good = images(1, seed=7)
    short = base64.b64encode(good.tobytes()[:100]).decode()
    cases: list[tuple[Any, int, list[str]]] = [
        (b"{not json", 400, ["not JSON"]),
        ({"inputs": []}, 400, ['"inputs"']),
        ({"inputs": {"imgae": b64_tensor(good)}}, 400, ["unknown input 'imgae'", "image float32 [batch,3,32,32]"]),
        ({"inputs": {}}, 400, ["missing input 'image'"]),
        ({"inputs": {"image": b64_tensor(good.astype(np.float64))}}, 400,
         ["input 'image'", "expects dtype float32", '"float64"']),
        ({"inputs": {"image": b64_tensor(good[0])}}, 400, ["input 'image'", "rank 4", "[3, 32, 32]"]),
        ({"inputs": {"image": b64_tensor(images(1, 0)[:, :, :16])}}, 400, ["input 'image'", "axis 2 must be 32"]),
        ({"inputs": {"image": {"dtype": "float32", "shape": [1, 3, 32, 32], "data_b64": short}}}, 400,
         ["needs 12288 bytes", "holds 100"]),
        ({"inputs": {"image": {"dtype": "float32", "shape": [1, 3, 32, 32], "data_b64": "!!not base64!!"}}}, 400,
         ["not valid base64"]),
        ({"inputs": {"image": {"dtype": "float32", "shape": [1, 3, 32, 32], "data": [[1.0, 2.0]]}}}, 400,
         ['"data" has shape [1, 2]', "[1, 3, 32, 32]"]),
        ({"inputs": {"image": {"dtype": "float32", "shape": [1, "3", 32, 32], "data": []}}}, 400,
         ["non-negative integers"]),
        ({"inputs": {"image": {"dtype": "float32", "shape": [1, 3, 32, 32]}}}, 400, ['neither "data_b64" nor "data"']),
    ]
    for body, status, fragments in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, answer = server.request("POST", "/v1/infer", raw=raw)
        assert got == status, (body if isinstance(body, bytes) else list(body["inputs"]), answer)
        for fragment in fragments:
            assert fragment in answer["error"], (fragment, answer["error"])

    assert server.request("GET", "/v1/nothing")[0] == 404
    assert server.request("GET", "/v1/infer")[0] == 405

    status, answer = server.infer({"image": b64_tensor(good)})
    assert status == 200 and answer["outputs"]["logits"]["shape"] == [1, 10]
    assert server.proc.poll() is None
    _, stats = server.request("GET", "/v1/stats")
    assert stats["errors"] == len(cases) and stats["requests"] == len(cases) + 1


def test_an_onnxruntime_failure_at_run_time_is_a_500_with_its_message(root: Path, servers: Any) -> None:
    activate(root, make_artifact(root, reshape_model))
    server = servers(root, "--max-wait-ms", "0")
    status, answer = server.infer({"x": b64_tensor(np.ones((1, 4), np.float32))})  # 4 values into [-1, 3]
    assert status == 500
    assert "onnxruntime failed" in answer["error"] and "reshape" in answer["error"].lower()
    status, answer = server.infer({"x": b64_tensor(np.arange(12, dtype=np.float32).reshape(3, 4))})
    assert status == 200 and answer["outputs"]["y"]["shape"] == [4, 3]


def test_an_oversize_body_is_refused_without_being_read(root: Path, servers: Any) -> None:
    activate(root, make_artifact(root, cnn))
    server = servers(root, "--max-body-mb", "1")
    # Headers announce 10 GB and nothing follows: a server that read the body would never answer.
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert "--max-body-mb" in json.loads(body)["error"]

    # A body just over the limit, sent whole, gets the same answer.
    status, answer = server.request("POST", "/v1/infer", raw=b" " * (1024 * 1024 + 1))
    assert status == 413 and "1048577 bytes" in answer["error"]

    status, _ = server.infer({"image": b64_tensor(images(1, 3))})
    assert status == 200


# --- which model ------------------------------------------------------------------------------------------


def test_no_model_answers_503_then_an_activation_is_served_without_restart(root: Path, servers: Any) -> None:
    server = servers(root)
    assert server.serving["ready"] is False
    status, health = server.request("GET", "/v1/health")
    assert status == 503 and health["ready"] is False and health["model"] is None
    assert "no active model" in health["reason"]
    status, answer = server.infer({"image": b64_tensor(images(1, 0))})
    assert status == 503 and "no model is ready" in answer["error"]

    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    health = server.wait_until(lambda h: h["ready"])
    assert health["model"] == artifact.name and health["provider"] == "CPUExecutionProvider"
    status, answer = server.infer({"image": b64_tensor(images(1, 0))})
    assert status == 200 and answer["model"] == artifact.name

    # A model that cannot load leaves the server up and not ready, with the error in health and stats.
    broken = make_artifact(root, lambda folder: (folder / "m.onnx").write_bytes(b"\x08garbage"))
    activate(root, broken)
    health = server.wait_until(lambda h: not h["ready"])
    assert broken.name in health["reason"] and "failed to load" in health["reason"]
    _, stats = server.request("GET", "/v1/stats")
    assert stats["ready"] is False and "failed to load" in stats["reason"] and stats["model"] is None
    assert server.infer({"image": b64_tensor(images(1, 0))})[0] == 503
    assert server.wait_for(lambda line: line.get("event") == "model-failed")["model"] == broken.name

    activate(root, artifact)  # and back
    assert server.wait_until(lambda h: h["ready"])["model"] == artifact.name


def test_sighup_reloads_the_model(root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    # --model serves one artifact (by its id) and never watches ROOT/current: only SIGHUP makes it load again.
    server = servers(root, "--model", artifact.name)
    assert server.serving["ready"] is True and server.serving["model"] == artifact.name

    def loads() -> int:
        return sum(1 for line in list(server.lines) if line.get("event") == "model-loaded")

    before = loads()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(lambda _line: loads() > before)
    assert server.wait_until(lambda h: h["ready"])["model"] == artifact.name
    assert server.infer({"image": b64_tensor(images(1, 0))})[0] == 200

    # --model takes signed artifacts only: a bare .onnx file is refused, and says why.
    (root / "loose.onnx").write_bytes((artifact / "small_cnn.onnx").read_bytes())
    loose = servers(root, "--model", str(root / "loose.onnx"))
    assert loose.serving["ready"] is False and "not an artifact" in loose.serving["reason"]


def test_providers_fall_back_in_order_and_say_why(root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    server = servers(root, "--providers", "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider")
    assert server.serving["provider"] == "CPUExecutionProvider"
    skipped = {s["provider"]: s["reason"] for s in server.serving["skipped"]}
    assert set(skipped) == {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
    assert all("not in this onnxruntime build" in reason for reason in skipped.values())

    # No usable provider at all: up, not ready, and the reason names the one asked for.
    other = servers(root, "--providers", "CUDAExecutionProvider")
    status, health = other.request("GET", "/v1/health")
    assert status == 503 and "CUDAExecutionProvider" in health["reason"]


def test_open_session_reports_a_provider_that_fails_to_open_the_model(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(inference.ModelLoadError) as failed:
        inference.open_session(str(tmp_path / "bad.onnx"), ["CPUExecutionProvider"])
    assert "CPUExecutionProvider: session failed" in str(failed.value)


# --- only what the fleet key signed, at every load -----------------------------------------------------------


def agent_line(root: Path, *args: str) -> dict[str, Any]:
    """The last JSON line of one agent command run as the device runs it."""
    done = subprocess.run(agent_argv(root, *args), cwd=REPO, capture_output=True, text=True, timeout=PATIENCE_S)
    line: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return line


def test_a_model_overwritten_after_activation_is_refused_at_sighup_and_the_verified_one_keeps_serving(
        root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    server = servers(root, "--max-batch", "1")
    x = b64_tensor(images(2, seed=4))
    status, signed = server.infer({"image": x})
    assert status == 200 and signed["model"] == artifact.name

    # Unsigned bytes where the signed model was: a valid model that onnxruntime would happily serve.
    good = (artifact / "small_cnn.onnx").read_bytes()
    reshape_model(root)
    (artifact / "small_cnn.onnx").write_bytes((root / "reshape.onnx").read_bytes())
    server.proc.send_signal(signal.SIGHUP)
    event = server.wait_for(lambda line: line.get("event") == "model-refused")
    assert (event["model"], event["file"], event["serving"]) == (artifact.name, "small_cnn.onnx", artifact.name)
    assert "SHA-256" in event["reason"] and "the manifest says" in event["reason"] and event["fix"]

    status, health = server.request("GET", "/v1/health")
    assert status == 200 and health["ready"] is True and health["model"] == artifact.name
    assert health["refused"]["artifact"] == artifact.name and health["refused"]["file"] == "small_cnn.onnx"
    assert health["refused"]["code"] == "bad-artifact" and "push the artifact again" in health["refused"]["fix"]
    status, answer = server.infer({"image": x})  # the signed model, from memory: same answer, same inputs
    assert status == 200 and answer["outputs"] == signed["outputs"]

    # status and telemetry on the device say the same: which artifact, which file, why.
    refused = agent_line(root, "status")["serving"]["refused"]
    assert (refused["artifact"], refused["file"]) == (artifact.name, "small_cnn.onnx")
    sample = agent_line(root, "telemetry", "--count", "1", "--interval", "0.1")
    assert sample["inference"]["model"] == artifact.name
    assert sample["inference"]["refused"]["file"] == "small_cnn.onnx"

    # Put right (pushed again), it verifies and loads by itself, and the refusal is gone.
    (artifact / "small_cnn.onnx").write_bytes(good)
    health = server.wait_until(lambda h: h["refused"] is None)
    assert health["ready"] is True and health["model"] == artifact.name


def test_a_server_started_on_an_overwritten_model_serves_nothing_and_names_the_file(
        root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    (artifact / "small_cnn.onnx").write_bytes(b"\x08 not the signed bytes")
    server = servers(root)  # as after a reboot: nothing verified in memory to fall back on
    assert server.serving["ready"] is False and "small_cnn.onnx" in server.serving["reason"]
    status, health = server.request("GET", "/v1/health")
    assert status == 503 and health["model"] is None
    assert health["refused"]["file"] == "small_cnn.onnx" and "refused" in health["reason"]
    assert server.infer({"image": b64_tensor(images(1, 0))})[0] == 503
    _, stats = server.request("GET", "/v1/stats")
    assert stats["model"] is None and stats["refused"]["file"] == "small_cnn.onnx"

    # Another fleet key on the device: the signature fails, and the refusal names the manifest.
    (artifact / "small_cnn.onnx").write_bytes(b"")
    (root / "keys" / "fleet.pub").write_bytes(public_pem(Ed25519PrivateKey.generate()))
    health = server.wait_until(lambda h: (h["refused"] or {}).get("code") == "bad-signature")
    assert health["refused"]["file"] == "manifest.json" and "signature does not match" in health["refused"]["reason"]


def test_a_file_the_signed_manifest_does_not_list_is_never_loaded(root: Path, servers: Any) -> None:
    # No "model" key: the only .onnx the manifest lists is served, not an unlisted one beside it.
    artifact = make_artifact(root, cnn, model_key=False)
    assert "model" not in json.loads((artifact / "manifest.json").read_text())
    reshape_model(artifact)  # reshape.onnx, unlisted
    activate(root, artifact)
    server = servers(root)
    assert server.serving["ready"] is True and server.serving["model"] == artifact.name
    _, described = server.request("GET", "/v1/model")
    assert [i["name"] for i in described["inputs"]] == ["image"]  # small_cnn.onnx, not reshape.onnx's "x"

    # A "model" key that names a file the signed list leaves out: refused, naming that file.
    cnn_bytes = (artifact / "small_cnn.onnx").read_bytes()
    unlisted = signed_artifact(root, TEST_KEY, cnn_bytes, model="small_cnn.onnx", more={"labels.txt": b"cat\n"},
                               files=[{"path": "labels.txt", "sha256": hashlib.sha256(b"cat\n").hexdigest()}])
    activate(root, root / "artifacts" / unlisted)
    health = server.wait_until(lambda h: (h["refused"] or {}).get("artifact") == unlisted)
    assert health["refused"]["file"] == "small_cnn.onnx" and "does not list it" in health["refused"]["reason"]
    assert health["model"] == artifact.name  # the verified model keeps serving

    # No "model" key and two listed .onnx files: nothing says which, so neither.
    def both(folder: Path) -> None:
        cnn(folder)
        reshape_model(folder)

    two = make_artifact(root, both, model_key=False)
    activate(root, two)
    health = server.wait_until(lambda h: (h["refused"] or {}).get("artifact") == two.name)
    assert health["refused"]["file"] == "manifest.json" and "lists 2 .onnx files" in health["refused"]["reason"]


def test_a_reload_of_unchanged_files_hashes_nothing(root: Path) -> None:
    artifact = make_artifact(root, mlp, manifest_model="mlp/mlp.onnx")
    activate(root, artifact)
    hashed: list[str] = []

    def counting(path: str) -> str:
        hashed.append(os.path.relpath(path, artifact))
        return sha256_file(path)

    app = serve.ModelServer(str(root), ["CPUExecutionProvider"], max_batch=1)
    app.verified = VerifiedArtifacts(str(root), hasher=counting)
    try:
        assert (app.refresh(force=True) or {}).get("event") == "model-loaded"
        assert sorted(hashed) == ["manifest.json", "mlp/mlp.onnx", "mlp/mlp.weights"]
        hashed.clear()
        # As SIGHUP does: loaded again, verified from the cache.
        assert (app.refresh(force=True) or {}).get("event") == "model-loaded"
        assert hashed == [] and app.verified.files_hashed == 3

        # A new version of one file, the same bytes: only it is hashed again. A new mtime_ns ...
        weights = artifact / "mlp" / "mlp.weights"
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        assert (app.refresh(force=True) or {}).get("event") == "model-loaded" and hashed == ["mlp/mlp.weights"]
        # ... or another inode with the same size and mtime_ns (a copy renamed over it).
        hashed.clear()
        stat = weights.stat()
        copy = weights.with_name("copy")
        copy.write_bytes(weights.read_bytes())
        os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(copy, weights)
        assert weights.stat().st_ino != stat.st_ino
        assert (app.refresh(force=True) or {}).get("event") == "model-loaded" and hashed == ["mlp/mlp.weights"]

        # Changed bytes are caught, and the model loaded before keeps serving.
        hashed.clear()
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        event = app.refresh(force=True)
        assert event is not None and event["event"] == "model-refused" and event["file"] == "mlp/mlp.weights"
        assert hashed == ["mlp/mlp.weights"] and app.served is not None and app.served.model.sha == artifact.name
        # A tick with nothing changed since tries again without hashing and without a second report.
        hashed.clear()
        assert app.refresh() is None and hashed == [] and app.refused is not None
    finally:
        app.close()


# --- statistics and stopping -------------------------------------------------------------------------------


def test_the_stats_file_has_the_agreed_form_and_sigterm_stops_cleanly(root: Path, servers: Any) -> None:
    artifact = make_artifact(root, cnn)
    activate(root, artifact)
    server = servers(root, "--max-wait-ms", "0", "--cache-size", "4")
    assert (root / "run" / "serve.pid").read_text().strip() == str(server.proc.pid)
    x = b64_tensor(images(1, 9))
    for _ in range(4):
        assert server.infer({"image": x})[0] == 200
    assert server.infer({"image": {"dtype": "int64", "shape": [1]}})[0] == 400

    stats_path = root / "run" / "serve-stats.json"

    def current() -> dict[str, Any]:
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            if stats_path.exists():
                data = json.loads(stats_path.read_text())
                if data["requests"] == 5:
                    return data
            time.sleep(0.1)
        raise AssertionError("serve-stats.json never counted the requests")

    data = current()
    assert tuple(data) == STATS_FILE_KEYS
    assert data["model"] == artifact.name and data["provider"] == "CPUExecutionProvider"
    assert data["errors"] == 1 and data["cache_hits"] == 3 and data["cache_size"] == 1
    assert data["batch_mean"] == 1.0 and data["rate_per_s"] > 0
    assert 0 < data["p50_ms"] <= data["p95_ms"] <= data["p99_ms"]
    assert abs(data["t"] - time.time()) < 60  # written by this server, not a stale file

    assert server.stop() == 0
    assert not (root / "run" / "serve.pid").exists()
    result = server.wait_for(lambda line: line.get("type") == "result")
    assert result == {"type": "result", "command": "serve", "requests": 5, "errors": 1, "cache_hits": 3,
                      "runs": 1}


# --- the parts, without HTTP -------------------------------------------------------------------------------


def test_the_batcher_fills_a_batch_and_never_mixes_shapes() -> None:
    runs: list[list[int]] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        runs.append(list(feeds["x"].shape))
        return [feeds["x"] * 2]

    # A long wait: each group runs as soon as it holds max_batch rows, so nothing depends on timing.
    batcher = MicroBatcher(run, lambda arrays: np.concatenate(arrays, axis=0), max_batch=2, max_wait_s=20.0)
    requests = [np.full((1, 3), 1.0), np.full((1, 5), 2.0), np.full((1, 3), 3.0), np.full((1, 5), 4.0)]
    answers: list[Any] = [None] * 4

    def call(i: int) -> None:
        answers[i] = batcher.submit({"x": requests[i]}, timeout=PATIENCE_S, expected=True)

    for _ in requests:
        batcher.expect()  # as the server does when it starts reading each request
    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE_S)
    batcher.close()
    assert sorted(runs) == [[2, 3], [2, 5]]
    for i, (outputs, rows) in enumerate(answers):
        assert rows == 2 and np.array_equal(outputs[0], requests[i] * 2)


def test_a_batch_waits_only_for_requests_on_their_way() -> None:
    runs: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        runs.append(feeds["x"].shape[0])
        return [feeds["x"]]

    # The wait is far longer than the submit timeout: a batch that waited for it would raise TimeoutError.
    batcher = MicroBatcher(run, lambda arrays: np.concatenate(arrays, axis=0), max_batch=8, max_wait_s=1000.0)
    assert batcher.submit({"x": np.zeros((1, 2))}, timeout=PATIENCE_S)[1] == 1  # nobody else announced

    batcher.expect()
    batcher.expect()
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(batcher.submit({"x": np.ones((1, 2))},
                                                                          timeout=PATIENCE_S, expected=True)))
    thread.start()
    batcher.forget()  # the other announced request was refused before it reached the batcher
    thread.join(timeout=PATIENCE_S)
    assert answer and answer[0][1] == 1 and runs == [1, 1]
    batcher.close()


def test_a_request_larger_than_the_batch_runs_alone_and_errors_reach_their_caller() -> None:
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if feeds["x"].shape[0] == 3:
            raise RuntimeError("three rows are not allowed")
        return [feeds["x"]]

    batcher = MicroBatcher(run, lambda arrays: np.concatenate(arrays, axis=0), max_batch=2, max_wait_s=0.0)
    outputs, rows = batcher.submit({"x": np.zeros((5, 1))}, timeout=PATIENCE_S)
    assert rows == 5 and outputs[0].shape == (5, 1)
    with pytest.raises(RuntimeError, match="three rows"):
        batcher.submit({"x": np.zeros((3, 1))}, timeout=PATIENCE_S)
    assert batcher.submit({"x": np.ones((1, 1))}, timeout=PATIENCE_S)[1] == 1  # the worker lives on
    batcher.close()


def test_result_cache_is_bounded_lru() -> None:
    cache = ResultCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    off = ResultCache(0)
    off.put("a", 1)
    assert off.get("a") is None and len(off) == 0


def test_input_key_covers_names_dtypes_shapes_and_bytes() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    key = inference.input_key("m", {"x": x})
    assert key == inference.input_key("m", {"x": x.copy()})
    assert key == inference.input_key("m", {"x": np.asfortranarray(x)})  # same values, other memory layout
    assert key != inference.input_key("n", {"x": x})
    assert key != inference.input_key("m", {"y": x})
    assert key != inference.input_key("m", {"x": x.reshape(3, 2)})
    assert key != inference.input_key("m", {"x": x.view(np.int32)})


def test_percentiles_match_numpy() -> None:
    values = sorted(np.random.default_rng(0).exponential(5.0, 999).tolist())
    for q in (0.5, 0.95, 0.99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
    assert percentile([], 0.5) is None
