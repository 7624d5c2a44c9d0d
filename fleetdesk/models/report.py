"""What optimizing a model found: every variant tried for every profile, its figures, and which was chosen.

These are plain frozen dataclasses with a JSON round trip (`to_dict` / `from_dict`): the optimizer
(`fleetdesk.models.optimize`) makes them, the artifact store keeps them in the model's record, the
CLI prints them with `--json`, and the GUI's Models view shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# What a variant was made by: the model as imported, or one step of a profile's recipe.
BASELINE = "fp32"
RECIPES = ("graph", "int8-dynamic", "int8-static", "fp16")

# A variant's place in a profile's result.
CHOSEN = "chosen"  # the variant this profile's devices get
BASELINE_STATUS = "baseline"  # the imported model, what every other variant is checked against
ACCEPTED = "accepted"  # accurate enough and not slower, but another variant won
REJECTED = "rejected"  # built, but less accurate than the tolerance or slower than FP32 on the measured target
FAILED = "failed"  # could not be built or run; `reason` says why
STATUSES = (CHOSEN, BASELINE_STATUS, ACCEPTED, REJECTED, FAILED)


@dataclass(frozen=True)
class Tolerance:
    """How close a variant's outputs must stay to the original's, on the samples.

    A variant passes when its max abs error is at most `max_abs_error` OR its cosine similarity is
    at least `min_cosine` (quantized models are judged by direction more than by exact values), AND,
    for classifiers, its top-1 agreement is at least `min_top1_agreement`.
    """

    max_abs_error: float = 1e-2
    min_cosine: float = 0.99
    min_top1_agreement: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_error": self.max_abs_error, "min_cosine": self.min_cosine,
                "min_top1_agreement": self.min_top1_agreement}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        return cls(float(data["max_abs_error"]), float(data["min_cosine"]), float(data["min_top1_agreement"]))


@dataclass(frozen=True)
class Accuracy:
    """A variant's outputs against the original's over the samples (worst output, worst sample)."""

    max_abs_error: float
    cosine: float  # the lowest cosine similarity of any output on any sample
    top1_agreement: float | None  # share of samples whose arg-max class agrees; None when not a classifier
    samples: int
    synthetic: bool  # True when the samples were generated from declared shapes, not the operator's data

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_error": self.max_abs_error, "cosine": self.cosine, "top1_agreement": self.top1_agreement,
                "samples": self.samples, "synthetic": self.synthetic}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accuracy:
        top1 = data.get("top1_agreement")
        return cls(float(data["max_abs_error"]), float(data["cosine"]), None if top1 is None else float(top1),
                   int(data["samples"]), bool(data["synthetic"]))


@dataclass(frozen=True)
class Variant:
    """One candidate for one profile (the baseline included)."""

    recipe: str  # BASELINE or one of RECIPES
    status: str  # one of STATUSES
    reason: str  # one sentence an operator reads: why chosen, rejected or failed
    files: tuple[str, ...] = ()  # file names relative to `folder`, the .onnx first, then external data
    folder: str = ""  # where the files are now (a work folder until the store takes them)
    size_bytes: int = 0  # all files together
    sha256: str = ""  # of the .onnx file with its external data, as ModelCard.sha256 is computed
    accuracy: Accuracy | None = None  # None for the baseline and for failed variants
    local_latency_ms: float | None = None  # median on this laptop's CPU, batch 1
    device_latency_ms: Mapping[str, float] = field(default_factory=dict, hash=False)  # device name -> agent bench p50
    tool_versions: Mapping[str, str] = field(default_factory=dict, hash=False)  # e.g. {"onnxruntime": "1.31.1"}

    @property
    def measured_latency_ms(self) -> float | None:
        """The figure the choice was made on: the slowest device's p50 when measured on devices, else local."""
        if self.device_latency_ms:
            return max(self.device_latency_ms.values())
        return self.local_latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "status": self.status, "reason": self.reason, "files": list(self.files),
                "folder": self.folder, "size_bytes": self.size_bytes, "sha256": self.sha256,
                "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
                "local_latency_ms": self.local_latency_ms, "device_latency_ms": dict(self.device_latency_ms),
                "tool_versions": dict(self.tool_versions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Variant:
        accuracy = data.get("accuracy")
        local = data.get("local_latency_ms")
        return cls(
            recipe=str(data["recipe"]), status=str(data["status"]), reason=str(data.get("reason", "")),
            files=tuple(str(f) for f in data.get("files", ())), folder=str(data.get("folder", "")),
            size_bytes=int(data.get("size_bytes", 0)), sha256=str(data.get("sha256", "")),
            accuracy=None if accuracy is None else Accuracy.from_dict(accuracy),
            local_latency_ms=None if local is None else float(local),
            device_latency_ms={str(k): float(v) for k, v in dict(data.get("device_latency_ms", {})).items()},
            tool_versions={str(k): str(v) for k, v in dict(data.get("tool_versions", {})).items()},
        )


@dataclass(frozen=True)
class ProfileResult:
    """Every variant tried for one device profile, the baseline first, and the one chosen."""

    profile: str
    recipe: tuple[str, ...]  # the profile's recipe as its TOML states it
    variants: tuple[Variant, ...]
    chosen: str  # the chosen variant's recipe; BASELINE when nothing beat the original

    def variant(self, recipe: str) -> Variant | None:
        return next((v for v in self.variants if v.recipe == recipe), None)

    @property
    def chosen_variant(self) -> Variant:
        found = self.variant(self.chosen)
        if found is None:
            raise KeyError(f"profile {self.profile}: no variant {self.chosen!r}")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "recipe": list(self.recipe),
                "variants": [v.to_dict() for v in self.variants], "chosen": self.chosen}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileResult:
        return cls(str(data["profile"]), tuple(str(r) for r in data.get("recipe", ())),
                   tuple(Variant.from_dict(v) for v in data.get("variants", ())), str(data["chosen"]))


@dataclass(frozen=True)
class OptimizationReport:
    """The whole result for one imported model."""

    model_sha256: str  # ModelCard.sha256 of the imported model
    samples: int
    synthetic: bool  # accuracy was checked on generated inputs only (the report must say so)
    samples_source: str  # the operator's folder, or "generated from the declared input shapes"
    tolerance: Tolerance
    profiles: tuple[ProfileResult, ...]
    seconds: float = 0.0  # wall time of the optimization

    def profile(self, name: str) -> ProfileResult | None:
        return next((p for p in self.profiles if p.profile == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"model_sha256": self.model_sha256, "samples": self.samples, "synthetic": self.synthetic,
                "samples_source": self.samples_source, "tolerance": self.tolerance.to_dict(),
                "profiles": [p.to_dict() for p in self.profiles], "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizationReport:
        return cls(str(data["model_sha256"]), int(data["samples"]), bool(data["synthetic"]),
                   str(data.get("samples_source", "")), Tolerance.from_dict(data["tolerance"]),
                   tuple(ProfileResult.from_dict(p) for p in data.get("profiles", ())), float(data.get("seconds", 0.0)))


@dataclass(frozen=True)
class Progress:
    """One step of a long import or optimization, for a progress bar and its label."""

    stage: str  # "validate", "samples", "build", "check", "time-local", "time-device", "store"
    message: str  # e.g. "rpi4: INT8 static quantization (calibrating on 16 samples)"
    done: int  # steps finished
    total: int  # steps in all (may grow once as the plan becomes known)
