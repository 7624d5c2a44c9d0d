"""`selftest`: proves the runtime on the device works: imports onnxruntime and numpy, runs a tiny model
carried inside the agent, and reports versions and the execution providers this build offers.
"""

from __future__ import annotations

import argparse
import base64
import platform
import time
from collections.abc import Callable
from typing import Any

from . import inference

# Y = X @ W + B with X float32 [1,3], W = [[1,2],[3,4],[5,6]], B = [0.5,-0.5]; opset 13, IR 7 so that old
# onnxruntime builds (JetPack's) open it too. The agent ships no onnx package, hence the bytes; a unit test
# (tests/unit/test_agent_bench.py) rebuilds them with onnx.helper and checks they are the same.
MODEL_B64 = (
    "CAcSEmZsZWV0ZGVzay1zZWxmdGVzdBoBMTqbAQoSCgFYCgFXEgJYVyIGTWF0TXVsCg8KAlhXCgFCEgFZIgNBZGQSEmZsZWV0ZGVza19z"
    "ZWxmdGVzdCojCAMIAhABQgFXShgAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAqEQgCEAFCAUJKCAAAAD8AAAC/WhMKAVgSDgoMCAESCAoC"
    "CAEKAggDYhMKAVkSDgoMCAESCAoCCAEKAggCQgQKABAN"
)
INPUT = [[1.0, 2.0, 3.0]]
EXPECTED = [[22.5, 27.5]]  # [1+6+15+0.5, 2+8+18-0.5]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """selftest takes no options of its own."""


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    try:
        ort, np = inference.import_runtime()
    except inference.RuntimeMissing as exc:
        emit({"type": "error", "code": "no-runtime", "message": str(exc), "fix": "run `fleetdesk provision DEVICE`"})
        return 2
    providers = list(ort.get_available_providers())
    started = time.monotonic()
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The CPU provider is in every build; the point is that the runtime itself works.
        session = ort.InferenceSession(base64.b64decode(MODEL_B64), options, providers=["CPUExecutionProvider"])
        output = session.run(["Y"], {"X": np.array(INPUT, dtype=np.float32)})[0]
    except Exception as exc:  # onnxruntime's own exception types
        emit({"type": "error", "code": "selftest-failed",
              "message": f"onnxruntime {ort.__version__} could not run the self-test model: {inference.one_line(exc)}",
              "fix": "re-provision the runtime with `fleetdesk provision DEVICE`; if it fails again, the wheel "
                     "does not suit this device"})
        return 2
    ms = (time.monotonic() - started) * 1000.0
    ok = bool(np.allclose(output, np.array(EXPECTED, dtype=np.float32), rtol=1e-6, atol=1e-6))
    result = {"type": "result", "command": "selftest", "python": platform.python_version(),
              "machine": platform.machine(), "onnxruntime": ort.__version__, "numpy": np.__version__,
              "providers": providers, "inference_ok": ok, "output": output.tolist(), "ms": round(ms, 3)}
    emit(result)
    if not ok:
        emit({"type": "error", "code": "selftest-failed",
              "message": f"the self-test model answered {output.tolist()}, expected {EXPECTED}",
              "fix": "this onnxruntime build computes wrong results on this device; install another wheel "
                     "(`fleetdesk runtime import-wheel`) and provision again"})
        return 2
    return 0
