"""The metadata every deployed artifact carries, in ONNX ``metadata_props`` and in a JSON sidecar.

An artifact must be usable without the checkpoint it came from: class names, input size and normalisation
travel with it, and the hashes tie it to its source checkpoint and split manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgenode import __version__
from edgenode.checkpoint import InputSpec
from edgenode.errors import ArtifactError

ARTIFACT_FORMAT = "edgenode-artifact/1"
ARTIFACT_FORMAT_ALIGNED = "edgenode-artifact/2"  # as CHECKPOINT_FORMAT_ALIGNED: older readers refuse, not misread
ARTIFACT_FORMATS = (ARTIFACT_FORMAT, ARTIFACT_FORMAT_ALIGNED)
PRECISIONS = ("fp32", "fp16", "int8")
INT8_TARGETS = ("ort", "tensorrt")
FULL_RECORD_KEY = "edgenode_metadata"


@dataclass(frozen=True)
class ArtifactMetadata:
    classes: list[str]
    input: InputSpec
    model: dict[str, Any]  # ModelConfig.to_dict() of the deployed graph (solver = the unrolled fixed-step one)
    source_solver: dict[str, Any]  # the solver the checkpoint was trained with
    precision: str  # fp32 | fp16 | int8
    steps: int
    source_checkpoint_sha256: str
    manifest_sha256: str
    int8_target: str | None = None  # int8 only: "ort" (U8S8, fast on x86 ORT) or "tensorrt" (symmetric S8S8)
    kind: str = "onnx"  # onnx | engine
    edgenode_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)  # calibration, tolerances, TensorRT version and GPU …

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"unknown precision {self.precision!r} in artifact metadata")
        if self.int8_target is not None and self.int8_target not in INT8_TARGETS:
            raise ArtifactError(f"unknown INT8 target {self.int8_target!r} in artifact metadata")

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["input"] = self.input.to_dict()
        record["format"] = ARTIFACT_FORMAT_ALIGNED if self.input.align is not None else ARTIFACT_FORMAT
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str | None = None) -> "ArtifactMetadata":
        """The metadata of ``record``; ``source`` (the file it was read from) begins every error about it."""
        where = f"{source}: " if source else ""
        fix = "re-export with `edgenode export`"
        record = dict(record)
        if record.pop("format", None) not in ARTIFACT_FORMATS:
            raise ArtifactError(f"{where}not edgenode artifact metadata (missing or unknown 'format')", fix)
        record.pop("sha256", None)
        record.pop("file", None)
        try:
            record["input"] = InputSpec.from_dict(record["input"])
            return cls(**record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}incomplete artifact metadata ({exc})", fix) from None
        except ArtifactError as exc:  # an unknown precision or INT8 target
            raise ArtifactError(f"{where}{exc.message}", exc.hint or fix) from None

    def to_onnx_props(self) -> dict[str, str]:
        """Readable keys for any ONNX viewer, plus the full record as JSON for a lossless round trip."""
        return {
            "classes": json.dumps(self.classes, ensure_ascii=False),
            "input_size": str(self.input.image_size),
            "mean": json.dumps(list(self.input.mean)),
            "std": json.dumps(list(self.input.std)),
            **({"align": json.dumps(self.input.align.to_dict())} if self.input.align is not None else {}),
            "steps": str(self.steps),
            "solver": json.dumps(self._deployed_solver()),
            "precision": self.precision,
            **({"int8_target": self.int8_target} if self.int8_target else {}),  # the two INT8 files are for different runtimes
            **({"mirror_average": "true"} if self.model.get("mirror_average") else {}),  # two views: twice the work
            "source_checkpoint_sha256": self.source_checkpoint_sha256,
            "manifest_sha256": self.manifest_sha256,
            "edgenode_version": self.edgenode_version,
            FULL_RECORD_KEY: json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False),
        }

    def _deployed_solver(self) -> dict[str, Any]:
        """The graph's solver as a viewer should read it: a fixed-step unroll has no tolerances to show."""
        solver = dict(self.model.get("solver", {}))
        from edgenode.ode.solvers import FIXED_STEP_METHODS

        if solver.get("n_steps") and solver.get("method") in FIXED_STEP_METHODS:
            return {"method": solver["method"], "n_steps": solver["n_steps"]}
        return solver

    @classmethod
    def from_onnx_props(cls, props: dict[str, str], source: str = "ONNX file") -> "ArtifactMetadata":
        if FULL_RECORD_KEY not in props:
            raise ArtifactError(f"{source}: carries no edgenode metadata", "export it with `edgenode export`")
        return cls.from_dict(json.loads(props[FULL_RECORD_KEY]), source)
