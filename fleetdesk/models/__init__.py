"""Models: ONNX import and validation (card.py, importer.py), per-target optimization variants (optimize.py,
quantize.py, evaluate.py), samples (samples.py), benchmarks and what the installed onnxruntime runs
(runtime_support.py). Import each name from its module: this package loads none of them, so a module that needs
only a plain record (report.py, for the artifact store and the command line) does not bring in onnx and numpy."""
