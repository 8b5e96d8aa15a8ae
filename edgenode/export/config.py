"""ExportConfig: everything ``export_model`` needs, validated on construction.

A bad value fails here, before any file is read, with a message that names the value and the fix; the CLI
passes its strings through unchanged (``precisions="fp32,fp16"``, ``steps="auto"`` or ``"4"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgenode.calibration.table import CALIBRATION_METHODS, DEFAULT_TRT_VERSION, trt_version_code
from edgenode.errors import UsageError, is_whole_number
from edgenode.export.golden import GOLDEN_COUNT
from edgenode.export.int8 import INT8_TARGET_CHOICES
from edgenode.export.metadata import PRECISIONS
from edgenode.export.onnx_export import DEFAULT_OPSET, check_opset
from edgenode.export.steps import REFERENCE_TOL, SWEEP_STEPS, SweepCriteria
from edgenode.export.tensorrt import EngineConfig
from edgenode.export.unroll import AUTO, check_method, check_steps

FORMATS = ("onnx", "engine")


def _parse_precisions(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(p).strip().lower() for p in items if str(p).strip()]
    if not items:
        raise UsageError("--precision is empty", f"pass one or more of {', '.join(PRECISIONS)}, e.g. --precision fp32,int8")
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown:
        raise UsageError(f"--precision {unknown[0]!r} is not known", f"choose from {', '.join(PRECISIONS)}; several comma-separated")
    return tuple(p for p in PRECISIONS if p in items)  # canonical order, duplicates dropped


def _parse_steps(value: int | str | None) -> int | str | None:
    if value is None or value == AUTO:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"--steps {value!r} is neither a whole number nor 'auto'", "pass e.g. --steps 4 or --steps auto") from None
    return check_steps(value)


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how; see ``edgenode export --help`` for each field's meaning."""

    checkpoint: str
    out: str
    precisions: tuple[str, ...] | str = ("fp32",)
    steps: int | str | None = None  # None: the trained discretisation (fixed-step checkpoint) or "auto"
    method: str | None = None  # None: the trained fixed-step method, else classic rk4
    format: str = "onnx"
    data: str | None = None  # None: the data folder recorded in the checkpoint's training config
    manifest: str | None = None  # None: manifest.json beside the checkpoint
    int8_target: str = "both"
    calibration_per_class: int = 4
    calibration_seed: int = 0
    calibration_method: str = "minmax"
    opset: int = DEFAULT_OPSET
    check_ode: bool = True
    mirror_average: bool = False  # classify each picture with its mirror image in the graph (twice the work)
    sweep_candidates: tuple[int, ...] = SWEEP_STEPS
    sweep_criteria: SweepCriteria = field(default_factory=SweepCriteria)
    reference_tol: float = REFERENCE_TOL
    max_fp32_abs_error: float = 1e-4
    golden_count: int = GOLDEN_COUNT
    engine: EngineConfig = field(default_factory=EngineConfig)
    trt_cache_version: str = DEFAULT_TRT_VERSION

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        if not str(self.checkpoint).strip():
            raise UsageError("no checkpoint given", "pass the best.pt that `edgenode train` wrote")
        if not str(self.out).strip():
            raise UsageError("no output folder given", "pass --out DIR")
        set_("precisions", _parse_precisions(self.precisions))
        set_("steps", _parse_steps(self.steps))
        if self.method is not None:
            check_method(self.method)
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r} is not known", f"choose one of {', '.join(FORMATS)}")
        if self.int8_target not in INT8_TARGET_CHOICES:
            raise UsageError(f"--int8-target {self.int8_target!r} is not known", f"choose one of {', '.join(INT8_TARGET_CHOICES)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(f"--calibration-method {self.calibration_method!r} is not known",
                             f"choose one of {', '.join(CALIBRATION_METHODS)}")
        for name, named in (("calibration_per_class", "--calibration-per-class {!r}"), ("golden_count", "golden_count={!r}")):
            value = getattr(self, name)  # golden_count is an argument of the Python API only
            if not is_whole_number(value):
                raise UsageError(f"{named.format(value)} must be a positive whole number", "pass 1 or more")
        if isinstance(self.calibration_seed, bool) or not isinstance(self.calibration_seed, int):
            raise UsageError(f"--calibration-seed {self.calibration_seed!r} must be a whole number")
        if not self.wants_int8:  # options of the INT8 files only: without them they would be silently ignored
            unread = [f"--{name.replace('_', '-').replace('trt-', 'tensorrt-')} {getattr(self, name)}"
                      for name in INT8_ONLY_OPTIONS if getattr(self, name) != _DEFAULTS[name]]
            if unread:
                raise UsageError(f"{', '.join(unread)}: {'it sets' if len(unread) == 1 else 'they set'} the INT8 files, "
                                 f"and --precision {','.join(self.precisions)} writes none", "add int8 to --precision, or drop them")
        if self.format == "engine" and self.wants_int8 and self.int8_target == "ort":
            raise UsageError("--format engine with --int8-target ort: TensorRT cannot run the asymmetric uint8 (U8S8) file",
                             "use --int8-target tensorrt or both")
        check_opset(self.opset)
        if not isinstance(self.mirror_average, bool):
            raise UsageError(f"--mirror-average must be true or false, got {self.mirror_average!r}",
                             "pass mirror_average=True or False (on the command line: --mirror-average or nothing)")
        set_("sweep_candidates", tuple(check_steps(n) for n in self.sweep_candidates))
        if not self.sweep_candidates:
            raise UsageError("the step sweep needs at least one candidate N")
        if not self.reference_tol > 0 or not self.max_fp32_abs_error > 0:
            raise UsageError(f"tolerances must be positive (reference_tol={self.reference_tol}, max_fp32_abs_error={self.max_fp32_abs_error})")
        trt_version_code(self.trt_cache_version)

    @property
    def wants_int8(self) -> bool:
        return "int8" in self.precisions

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["precisions"] = list(self.precisions)
        record["sweep_candidates"] = list(self.sweep_candidates)
        return record


INT8_ONLY_OPTIONS = ("int8_target", "calibration_per_class", "calibration_seed", "calibration_method", "trt_cache_version")
_DEFAULTS = {f.name: f.default for f in fields(ExportConfig) if f.name in INT8_ONLY_OPTIONS}
