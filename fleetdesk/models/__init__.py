"""Models: ONNX import and validation, per-target optimization variants, benchmarks."""
