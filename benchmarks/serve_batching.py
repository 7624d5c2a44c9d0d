"""Throughput of the agent's model server with dynamic micro-batching against without it, on the test CNN,
with N concurrent keep-alive clients for a fixed time each; prints requests/s, latency and the ratio.

    .venv/bin/python benchmarks/serve_batching.py [--seconds 10] [--clients 8] [--max-batch 8] [--max-wait-ms 5]

Runs the real `serve` process on 127.0.0.1 (a free port) with the laptop's onnxruntime; nothing else.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from tests.fixtures.models.build import save_cnn  # noqa: E402 - after the path is set
from tests.fixtures.signed import signed_artifact  # noqa: E402


def start_server(root: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-m", "fleetdesk.agent", "--root", str(root), "serve", *args]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for text in proc.stdout:
        line = json.loads(text)
        if line.get("event") == "serving":
            if not line["ready"]:
                sys.exit(f"the server is not ready: {line['reason']}")
            return proc, int(line["port"])
        if line.get("type") == "error":
            sys.exit(f"serve failed: {line}")
    sys.exit("serve exited before it listened")


def stop_server(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    results = [json.loads(text) for text in out.splitlines() if text.strip()]
    return next((line for line in results if line.get("type") == "result"), {})


def load(port: int, clients: int, seconds: float) -> dict[str, float]:
    """`clients` threads, one keep-alive connection each, sending distinct 1-image requests for `seconds`."""
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(64):
        image = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        bodies.append(json.dumps({"inputs": {"image": {"dtype": "float32", "shape": [1, 3, 32, 32],
                                                       "data_b64": base64.b64encode(image.tobytes()).decode()}}}))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        n = index
        while time.monotonic() < deadline[0]:
            body = bodies[n % len(bodies)]
            n += clients
            began = time.perf_counter()
            connection.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                latencies[index].append((time.perf_counter() - began) * 1000.0)
            else:
                failures[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    began = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    done = sorted(ms for per in latencies for ms in per)
    return {"requests": len(done), "failures": sum(failures), "rate_per_s": len(done) / elapsed,
            "p50_ms": float(np.percentile(done, 50)), "p95_ms": float(np.percentile(done, 95)),
            "p99_ms": float(np.percentile(done, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads in the server")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_cnn(root / "small_cnn.onnx")
        # The server loads only what the device's fleet key signed: a throwaway key, as the agent's tests do.
        sha = signed_artifact(root, Ed25519PrivateKey.generate(), (root / "small_cnn.onnx").read_bytes(),
                              model="small_cnn.onnx")
        (root / "current").symlink_to(root / "artifacts" / sha)
        extra = ["--threads", str(args.threads)] if args.threads else []
        for name, batch in (("batched", args.max_batch), ("unbatched", 1)):
            proc, port = start_server(root, "--port", "0", "--max-batch", str(batch),
                                      "--max-wait-ms", str(args.max_wait_ms), *extra)
            try:
                figures[name] = load(port, args.clients, args.seconds)
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.request("GET", "/v1/stats")
                stats = json.loads(connection.getresponse().read())
                connection.close()
                figures[name]["batch_mean"] = stats["batch_mean"]
                figures[name]["server_p95_ms"] = stats["p95_ms"]
            finally:
                stop_server(proc)
    ratio = figures["batched"]["rate_per_s"] / figures["unbatched"]["rate_per_s"]
    if args.json:
        print(json.dumps({"figures": figures, "throughput_ratio": ratio, "clients": args.clients,
                          "seconds": args.seconds, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}))
        return 0
    print(f"serve on the test CNN, {args.clients} concurrent clients, {args.seconds:.0f} s each")
    for name, label in (("batched", f"max-batch {args.max_batch}, max-wait {args.max_wait_ms} ms"),
                        ("unbatched", "max-batch 1")):
        f = figures[name]
        print(f"  {label:32s} {f['rate_per_s']:8.1f} req/s   p50 {f['p50_ms']:6.2f} ms   p95 {f['p95_ms']:6.2f} ms"
              f"   p99 {f['p99_ms']:6.2f} ms   batch mean {f['batch_mean']}   failures {f['failures']}")
    print(f"  throughput ratio batched/unbatched: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
