"""Figures for issue 6 "Variants per target": size, local latency and accuracy of each variant of a
small CNN and a transformer encoder block exported from PyTorch, and the time to import and optimize
a 100 MB model against onnxruntime's own quantize_dynamic + session load on the same file.

Run: .venv/bin/python benchmarks/model_variants.py [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetdesk.models.evaluate import LOCAL_TIMING, session
from fleetdesk.models.importer import inspect_model
from fleetdesk.models.optimize import optimize_model
from fleetdesk.models.report import BASELINE
from fleetdesk.models.samples import load_samples
from fleetdesk.profiles.loader import load_profiles
from tests.fixtures.models.torch_models import export_big_mlp, export_cnn, export_transformer

PROFILES = ("rpi4", "ipc-x86-nvidia")
BIG_PROFILE = "ipc-x86"


def variants_figures(work: Path) -> list[dict[str, Any]]:
    known = load_profiles().profiles
    profiles = [known[name] for name in PROFILES if name in known]
    rows = []
    models = (("cnn", export_cnn), ("transformer-64", export_transformer),
              ("transformer-256", functools.partial(export_transformer, width=256, name="encoder-256.onnx")))
    for name, export in models:
        card = inspect_model(export(work / "models"))
        report = optimize_model(card, load_samples(card, None, count=16), profiles, work / f"opt-{name}")
        for result in report.profiles:
            base = result.variant(BASELINE)
            for variant in result.variants:
                ratio = (variant.local_latency_ms / base.local_latency_ms
                         if variant.local_latency_ms and base.local_latency_ms else None)
                rows.append({
                    "model": name, "profile": result.profile, "recipe": variant.recipe, "status": variant.status,
                    "size_bytes": variant.size_bytes, "size_fraction": variant.size_bytes / base.size_bytes,
                    "local_ms": variant.local_latency_ms, "local_ratio": ratio,
                    "accuracy": variant.accuracy.to_dict() if variant.accuracy else None, "reason": variant.reason,
                })
    return rows


def big_model_figures(work: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = export_big_mlp(work / "big")
    profile = load_profiles().profiles[BIG_PROFILE]
    began = time.perf_counter()
    card = inspect_model(path)
    inspect_s = time.perf_counter() - began
    report = optimize_model(card, load_samples(card, None, count=16), [profile], work / "opt-big")
    ours = time.perf_counter() - began
    # The reference, measured in the same run on the same file: onnxruntime's own dynamic
    # quantization and one session load, the least any import-and-quantize tool must do.
    started = time.perf_counter()
    quantize_dynamic(str(path), str(work / "big-ref.onnx"), weight_type=QuantType.QInt8)
    session(work / "big-ref.onnx")
    reference = time.perf_counter() - started
    return {
        "model_bytes": card.size_bytes, "parameters": card.parameter_count, "profile": BIG_PROFILE,
        "recipe": list(profile.recipe), "inspect_s": inspect_s, "import_and_optimize_s": ours,
        "optimize_s": report.seconds,
        "reference_quantize_dynamic_and_load_s": reference, "ratio": ours / reference,
        "chosen": report.profiles[0].chosen,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleetdesk-bench-") as folder:
        work = Path(folder)
        rows = variants_figures(work)
        big = big_model_figures(work)
    if args.json:
        print(json.dumps({"local_timing": LOCAL_TIMING, "variants": rows, "big_model": big}, indent=2))
        return 0
    print(f"local timing: {LOCAL_TIMING}")
    for row in rows:
        accuracy = row["accuracy"]
        figures = (f"max abs {accuracy['max_abs_error']:.2g}, cosine {accuracy['cosine']:.5f}"
                   + (f", top-1 {accuracy['top1_agreement']:.0%}" if accuracy["top1_agreement"] is not None else "")
                   if accuracy else "-")
        latency = f"{row['local_ratio']:.2f}x FP32" if row["local_ratio"] is not None else "-"
        print(f"{row['model']:<12} {row['profile']:<15} {row['recipe']:<13} {row['status']:<9} "
              f"size {row['size_fraction']:6.1%}  latency {latency:<10} {figures}")
    print(f"import and optimize a {big['model_bytes'] / 1e6:.0f} MB model ({big['parameters'] / 1e6:.1f} M parameters, "
          f"profile {big['profile']}: {', '.join(big['recipe'])}): {big['import_and_optimize_s']:.1f} s "
          f"(inspect {big['inspect_s']:.1f} s, optimize {big['optimize_s']:.1f} s)")
    print(f"chosen for {big['profile']}: {big['chosen']}")
    print(f"reference in the same run, onnxruntime quantize_dynamic + session load: "
          f"{big['reference_quantize_dynamic_and_load_s']:.1f} s; ratio {big['ratio']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
