"""The agent's `bench` (latency with synthetic inputs) and `selftest` (the runtime works, on a model the agent
carries as bytes), with real onnxruntime.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from fleetdesk.agent import bench, selftest
from tests.fixtures.models.build import save_cnn, save_mlp_external
from tests.fixtures.signed import signed_artifact

REPO = Path(__file__).resolve().parents[2]


def call(module: Any, root: Path, *argv: str) -> tuple[int, list[dict[str, Any]]]:
    """Run a command's run() as the agent's dispatch does, collecting its JSON lines (checked to encode)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(root))
    module.add_arguments(parser)
    lines: list[dict[str, Any]] = []
    status = module.run(parser.parse_args(list(argv)), lambda obj: lines.append(json.loads(json.dumps(obj))))
    return status, lines


def test_bench_of_an_artifact_by_sha_reports_latency_and_progress(tmp_path: Path) -> None:
    save_cnn(tmp_path / "small_cnn.onnx")
    # As the store lays an artifact out: the .onnx its signed manifest lists (bench loads no unlisted file).
    sha = signed_artifact(tmp_path, Ed25519PrivateKey.generate(), (tmp_path / "small_cnn.onnx").read_bytes(),
                          model="small_cnn.onnx")
    status, lines = call(bench, tmp_path, sha, "--runs", "40", "--warmup", "2",
                         "--providers", "CUDAExecutionProvider,CPUExecutionProvider")
    assert status == 0, lines
    *progress, result = lines
    assert result["type"] == "result" and result["command"] == "bench"
    assert result["artifact"] == sha and result["provider"] == "CPUExecutionProvider"
    assert result["skipped"][0]["provider"] == "CUDAExecutionProvider"
    assert result["runs"] == 40 and result["inputs"] == "synthetic"
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["mean_ms"] > 0
    assert all(p["type"] == "event" and p["event"] == "progress" and p["total"] == 40 for p in progress)
    done = [p["done"] for p in progress]
    assert done == sorted(done) and done[-1] == 40 and 1 < len(done) <= bench.PROGRESS_EVENTS


def test_bench_of_a_path_fills_the_dynamic_batch(tmp_path: Path) -> None:
    model = save_mlp_external(tmp_path / "mlp.onnx")
    status, lines = call(bench, tmp_path, str(model), "--runs", "3", "--warmup", "0", "--batch", "4")
    assert status == 0, lines
    assert lines[-1]["batch"] == 4 and lines[-1]["runs"] == 3
    assert len(lines[-1]["artifact"]) == 64  # a bare file is named by its sha256


def test_bench_of_a_folder_of_loose_model_files_times_its_only_onnx(tmp_path: Path) -> None:
    # How the laptop's `model bench` sends a model it has not imported yet: the files alone, no manifest.
    folder = tmp_path / "tmp" / "bench-1"
    folder.mkdir(parents=True)
    save_mlp_external(folder / "mlp.onnx")
    status, lines = call(bench, tmp_path, str(folder), "--runs", "3", "--warmup", "0")
    assert status == 0, lines
    assert lines[-1]["artifact"] == "bench-1" and lines[-1]["runs"] == 3
    (folder / "second.onnx").write_bytes((folder / "mlp.onnx").read_bytes())
    status, lines = call(bench, tmp_path, str(folder), "--runs", "1")
    assert status != 0 and "2 .onnx files" in lines[-1]["message"], lines


def test_bench_of_an_unknown_artifact_is_an_error_line(tmp_path: Path) -> None:
    status, lines = call(bench, tmp_path, "f" * 64)
    assert status == 2
    assert lines == [{"type": "error", "code": "not-found", "message": lines[0]["message"], "fix": lines[0]["fix"]}]
    assert "f" * 64 in lines[0]["message"] and "ROOT/artifacts" in lines[0]["fix"]


def selftest_model() -> onnx.ModelProto:
    """The model selftest.py carries as bytes, rebuilt: Y = X @ W + B."""
    w = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    b = np.array([0.5, -0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "fleetdesk_selftest",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7,
                             producer_name="fleetdesk-selftest", producer_version="1")


def test_the_embedded_selftest_model_is_the_one_onnx_builds_and_computes_x_w_plus_b() -> None:
    rebuilt = selftest_model()
    onnx.checker.check_model(rebuilt)
    embedded = base64.b64decode(selftest.MODEL_B64)
    assert embedded == rebuilt.SerializeToString()
    x = np.array(selftest.INPUT, dtype=np.float32)
    expected = x @ numpy_helper.to_array(rebuilt.graph.initializer[0]) + numpy_helper.to_array(
        rebuilt.graph.initializer[1])
    session = ort.InferenceSession(embedded, providers=["CPUExecutionProvider"])
    assert np.allclose(session.run(None, {"X": x})[0], expected)
    assert np.allclose(expected, selftest.EXPECTED)


def test_selftest_reports_the_runtime_and_a_correct_inference(tmp_path: Path) -> None:
    status, lines = call(selftest, tmp_path)
    assert status == 0, lines
    [result] = lines
    assert result["command"] == "selftest" and result["inference_ok"] is True
    assert result["output"] == [[22.5, 27.5]]
    assert result["onnxruntime"] == ort.__version__ and result["numpy"] == np.__version__
    assert result["providers"] == ort.get_available_providers() and "CPUExecutionProvider" in result["providers"]
    assert result["python"] == ".".join(map(str, sys.version_info[:3])) and result["machine"]
    assert result["ms"] >= 0


def test_selftest_without_onnxruntime_says_to_provision(tmp_path: Path) -> None:
    # A Python whose `import onnxruntime` fails, as the device's system python3 before provisioning.
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from fleetdesk.agent.__main__ import main\n"
        f"sys.exit(main(['--root', {str(tmp_path)!r}, 'selftest']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    [line] = [json.loads(text) for text in proc.stdout.splitlines()]
    assert line["type"] == "error" and line["code"] == "no-runtime"
    assert "onnxruntime" in line["message"] and sys.executable in line["message"]
    assert line["fix"] == "run `fleetdesk provision DEVICE`"
