"""Models: ONNX import and validation, per-target optimization variants, benchmarks."""

from fleetdesk.models.card import (
    CorruptModelError,
    EmptyModelError,
    ExternalDataError,
    ExternalDataMissingError,
    ExternalDataOutsideError,
    ExternalFile,
    IrVersionTooNewError,
    ModelCard,
    ModelCheckError,
    ModelError,
    ModelNotFoundError,
    ModelRuntimeError,
    ModelTooLargeError,
    NotAModelFileError,
    NotOnnxError,
    OpsetTooNewError,
    TensorSpec,
    TruncatedModelError,
)
from fleetdesk.models.importer import DEFAULT_MAX_BYTES, inspect_model
from fleetdesk.models.runtime_support import RuntimeSupport, onnxruntime_support

# optimize
# isort: split
from fleetdesk.models.card import OptimizationCancelled, SamplesError, VariantBuildError
from fleetdesk.models.evaluate import compare, run_outputs, time_local
from fleetdesk.models.optimize import optimize_model
from fleetdesk.models.samples import SampleSet, load_samples

__all__ = [
    "DEFAULT_MAX_BYTES",
    "CorruptModelError",
    "EmptyModelError",
    "ExternalDataError",
    "ExternalDataMissingError",
    "ExternalDataOutsideError",
    "ExternalFile",
    "IrVersionTooNewError",
    "ModelCard",
    "ModelCheckError",
    "ModelError",
    "ModelNotFoundError",
    "ModelRuntimeError",
    "ModelTooLargeError",
    "NotAModelFileError",
    "NotOnnxError",
    "OpsetTooNewError",
    "RuntimeSupport",
    "TensorSpec",
    "TruncatedModelError",
    "inspect_model",
    "onnxruntime_support",
]

# optimize
__all__ += [
    "OptimizationCancelled",
    "SampleSet",
    "SamplesError",
    "VariantBuildError",
    "compare",
    "load_samples",
    "optimize_model",
    "run_outputs",
    "time_local",
]
