"""``run_bench(BenchConfig) -> BenchReport``: every artifact's speed, size, memory and accuracy, side by side.

One process, one machine, one thread count, rows measured one after another:

1. the **baseline**: the reference checkpoint in torch on the CPU with its training solver (e.g. dopri5) or
   ``baseline_solver``; every other row's speed-up is a ratio over it;
2. each **artifact**: ONNX files (one row per ONNX Runtime provider asked for and present), TensorRT engines
   (GPU only), other checkpoints (torch, their trained solver);
3. the **steps sweep** (``sweep_steps``): the reference unrolled into N RK4 steps in memory, as ONNX FP32
   and/or torch (:mod:`edgenode.bench.sweep`);
4. on a GPU only: the adaptive model and the unrolled model in torch CUDA, eager and ``torch.compile``
   (CUDA graphs), FP32/FP16/BF16 (:mod:`edgenode.bench.gpu`).

Per row: latency p50/p95 at each batch size (warm-up calls first), throughput at the largest, file size,
peak memory (:mod:`edgenode.bench.memory`), NFE and FLOPs per image (:mod:`edgenode.bench.flops`), the
fraction of the peak measured in the same run (:mod:`edgenode.bench.peak`) and, with data, label-free
accuracy on the manifest's split and top-1 agreement with the baseline.

Every artifact is opened (sidecar sha256, metadata, input size and alignment against the reference) before
the first row is timed: a tampered, foreign or mismatched file fails the bench (exit 1). A row that is optional
(a file found in a folder, a provider that ``--providers all`` found) is skipped with a note when its runtime
or provider is missing here, and a GPU row when it fails in any way; a file or provider named on the command line
that cannot run fails the bench, and so does a bench where no artifact row could run. ONNX Runtime itself is
needed as soon as any row runs an ONNX graph; without it, a bench of checkpoints loses only the CPU peak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edgenode.bench.flops import ModelFlops, config_flops
from edgenode.bench.machine import default_threads, load_average, machine_info, physical_cores
from edgenode.bench.memory import PeakMemory, cuda_peak_bytes
from edgenode.bench.peak import Peak, PeakConfig
from edgenode.bench.report import BenchReport, BenchRow, plural, write_report
from edgenode.bench.sweep import SWEEP_BACKENDS, sweep_points
from edgenode.bench.timing import measure
from edgenode.checkpoint import InputSpec
from edgenode.console import console
from edgenode.data.manifest import check_split_option, manifest_of_run
from edgenode.errors import ArtifactError, UsageError, first_line, reraise_interrupt
from edgenode.export.unroll import MAX_STEPS
from edgenode.ode.solvers import FIXED_STEP_METHODS, SolverConfig
from edgenode.runtime.providers import ONNXRUNTIME_MISSING, install_hint, onnxruntime_installed

if TYPE_CHECKING:
    from edgenode.metrics import ClassificationMetrics

PROVIDER_ORDER = ("cpu", "cuda", "tensorrt")
# The peak's n×n float32 matmul: BLAS reaches its peak rate well below n = 2048 (the GPU peak uses 4096), and
# at 8192 the three matrices already take 768 MiB and one call 1.1 TFLOP (seconds on a CPU). Beyond it the
# measurement only risks exhausting memory (n = 10^8 asks numpy for 71 PiB) or running for hours.
MAX_PEAK_MATMUL_SIZE = 8192


def parse_int_list(value: str | int | Sequence[int], option: str, example: str = "1,64") -> tuple[int, ...]:
    """``"1,64"`` (or a sequence) to positive ints, in the given order, duplicates dropped."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: list = [value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    out: list[int] = []
    for item in items:
        try:
            number = int(item) if not isinstance(item, bool) else -1
        except (TypeError, ValueError):
            raise UsageError(f"{option} {item!r} is not a whole number", f"pass e.g. {option} {example}") from None
        if number < 1 or (isinstance(item, float) and item != number):
            raise UsageError(f"{option} {item!r} must be a positive whole number", f"pass e.g. {option} {example}")
        if number not in out:
            out.append(number)
    return tuple(out)


def parse_providers(value: str | Sequence[str]) -> tuple[str, ...]:
    """``all`` (every provider present, CPU first) or a comma list of cpu|cuda|tensorrt."""
    items = [p.strip().lower() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    if not items or items == ["all"]:
        return ("all",)
    unknown = [p for p in items if p not in PROVIDER_ORDER]
    if unknown:
        raise UsageError(f"--providers {unknown[0]!r} is not known", f"choose all or some of {', '.join(PROVIDER_ORDER)}")
    return tuple(p for p in PROVIDER_ORDER if p in items)


@dataclass(frozen=True)
class BenchConfig:
    """What to bench and how; validated on construction (strings from the CLI are parsed here)."""

    artifacts: tuple[str, ...] = ()
    reference: str | None = None  # None: the first checkpoint among ``artifacts``
    data: str | None = None  # with data: accuracy and agreement on ``split``
    manifest: str | None = None  # None: manifest.json beside the reference
    split: str = "test"
    batch_sizes: tuple[int, ...] | str = (1, 64)
    warmup: int = 5
    repeats: int = 30
    threads: int | None = None  # None: OMP_NUM_THREADS where set, else physical cores
    providers: tuple[str, ...] | str = ("all",)
    baseline_solver: SolverConfig | None = None  # None: the reference's training solver
    sweep_steps: tuple[int, ...] | str = ()
    sweep_method: str | None = None  # None: the trained fixed-step method, else classic rk4
    sweep_backends: tuple[str, ...] | str = SWEEP_BACKENDS
    sweep_opset: int = 18
    peak: bool = True
    peak_matmul_size: int = 1024
    peak_depth: int = 4
    peak_warmup: int = 2
    peak_repeats: int = 5
    gpu: bool = True  # add the torch CUDA rows when torch sees a GPU
    gpu_steps: tuple[int, ...] | str = ()  # () : the artifacts' steps, else the sweep's, else 4
    gpu_compile: bool = True
    out: str | None = None
    quiet: bool = False

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        set_("artifacts", tuple(str(a) for a in self.artifacts))
        set_("batch_sizes", parse_int_list(self.batch_sizes, "--batch-sizes"))
        if not self.batch_sizes:
            raise UsageError("--batch-sizes is empty", "pass e.g. --batch-sizes 1,64")
        set_("sweep_steps", parse_int_list(self.sweep_steps, "--sweep-steps", "1,2,4,8") if self.sweep_steps else ())
        set_("gpu_steps", parse_int_list(self.gpu_steps, "--gpu-steps", "4") if self.gpu_steps else ())
        set_("providers", parse_providers(self.providers))
        backends = self.sweep_backends.split(",") if isinstance(self.sweep_backends, str) else self.sweep_backends
        backends = tuple(b.strip().lower() for b in backends if b.strip())
        if not backends or any(b not in SWEEP_BACKENDS for b in backends):
            raise UsageError(f"--sweep-backends {','.join(backends)!r} is not known", f"choose from {', '.join(SWEEP_BACKENDS)}")
        set_("sweep_backends", backends)
        if not self.artifacts and self.reference is None:
            raise UsageError("nothing to bench", "pass artifacts (.onnx, export folders, .pt) and/or --reference CHECKPOINT")
        check_split_option(self.split)
        for name, low in (("warmup", 0), ("repeats", 1), ("peak_warmup", 0), ("peak_repeats", 1),
                          ("peak_matmul_size", 1), ("peak_depth", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"--{name.replace('_', '-')} {value!r} must be a whole number >= {low}")
        if self.peak_matmul_size > MAX_PEAK_MATMUL_SIZE:
            raise UsageError(f"--peak-matmul-size {self.peak_matmul_size} is out of range: at most {MAX_PEAK_MATMUL_SIZE}",
                             "the peak rate is reached well below that; leave the default 1024")
        for option, steps in (("--sweep-steps", self.sweep_steps), ("--gpu-steps", self.gpu_steps)):
            too_many = [n for n in steps if n > MAX_STEPS]
            if too_many:
                raise UsageError(f"{option} {too_many[0]} is out of range: an unrolled model holds 1 to {MAX_STEPS} steps",
                                 f"pass e.g. {option} 1,2,4,8")
        if isinstance(self.sweep_opset, bool) or not isinstance(self.sweep_opset, int) or not 17 <= self.sweep_opset <= 20:
            raise UsageError(f"--opset {self.sweep_opset!r} is not supported", "use an opset from 17 to 20 (default 18)")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise UsageError(f"--threads {self.threads!r} must be a positive whole number", "or leave it out: OMP_NUM_THREADS where set, else physical cores")
        if self.sweep_method is not None and self.sweep_method not in FIXED_STEP_METHODS:
            raise UsageError(f"--sweep-method {self.sweep_method!r} is not a fixed-step method",
                             f"choose one of {', '.join(FIXED_STEP_METHODS)}")
        if self.baseline_solver is not None and not isinstance(self.baseline_solver, SolverConfig):
            raise UsageError("baseline_solver must be a SolverConfig (or None for the trained solver)")
        if self.manifest is not None and self.data is None:
            raise UsageError("--manifest is only used with --data", "pass --data DIR too, or drop --manifest")

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["baseline_solver"] = self.baseline_solver.to_dict() if self.baseline_solver else "trained"
        return {k: list(v) if isinstance(v, tuple) else v for k, v in record.items()}


# --- what a row runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowInfo:
    """What the bench needs to know about the thing a row runs, whatever its kind."""

    kind: str
    precision: str
    solver: SolverConfig
    model: dict[str, Any]  # ModelConfig dict (for the FLOP count)
    input: InputSpec
    classes: list[str]
    path: Path | None = None
    size_bytes: int | None = None
    device: str = "cpu"
    manifest_sha256: str | None = None

    @classmethod
    def from_artifact(cls, info, device: str = "cpu") -> "RowInfo":
        """From an :class:`edgenode.runtime.ArtifactInfo` (checkpoint, ONNX or engine)."""
        precision = info.precision + (f" ({info.int8_target})" if getattr(info, "int8_target", None) else "")
        return cls(info.kind, precision, info.solver, dict(info.model), info.input, list(info.classes),
                   Path(info.path), info.size_bytes, device, info.manifest_sha256)


@dataclass
class RowSpec:
    """A row to measure: ``load()`` builds the runner inside the row's memory measurement.

    ``optional`` rows (a provider that ``all`` found installed, a file found in a folder, a compiled GPU
    mode) are skipped with a note when they cannot run here, instead of failing the bench.
    """

    name: str
    group: str
    load: Callable[[], tuple[Any, RowInfo]]
    optional: bool = False


@dataclass
class _Inputs:
    """Normalised images for timing (``pool``) and, with data, the split to score (``x``, ``labels``)."""

    spec: InputSpec
    pool: np.ndarray  # float32 NCHW, at least max(batch_sizes) images
    pool_source: str
    x: np.ndarray | None = None
    labels: np.ndarray | None = None
    data: dict[str, Any] | None = None


def _batch(pool: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(pool[:n]) if len(pool) >= n else np.resize(pool, (n, *pool.shape[1:]))


def resolve_reference(config: BenchConfig) -> Path:
    """``--reference``, else the first checkpoint among the artifacts (it is then the baseline, not a row)."""
    from edgenode.runtime.artifact import detect_kind, expect_kind

    for item in config.artifacts:  # a missing artifact is named before anything else is said about it
        if not Path(item).exists():
            detect_kind(item)
    if config.reference is not None:
        expect_kind(config.reference, ("checkpoint",), "--reference")
        return Path(config.reference)
    for item in config.artifacts:
        path = Path(item)
        if path.is_file() and detect_kind(path) == "checkpoint":
            return path
    raise UsageError("no reference checkpoint for the baseline row",
                     "pass --reference best.pt (the checkpoint the artifacts were exported from)")


def expand_artifacts(items: Sequence[str], reference: Path) -> list[tuple[Path, str, bool]]:
    """(path, kind, came from a folder) for every artifact but the reference itself."""
    from edgenode.runtime.artifact import detect_kind, expand_artifacts as expand

    return [(path, detect_kind(path), from_folder) for path, from_folder in expand(items, exclude=[reference])]


def load_inputs(config: BenchConfig, ckpt, reference: Path) -> _Inputs:
    """Timing images (the split's, or seeded random pixels without data) and the scored split, normalised."""
    from edgenode.data import load_scored_split, normalize_array

    spec = ckpt.input_spec
    size, n_pool = spec.image_size, max(config.batch_sizes)
    if config.data is None:
        pixels = np.random.default_rng(0).integers(0, 256, (n_pool, size, size, 3), dtype=np.uint8)
        return _Inputs(spec, normalize_array(pixels, spec.mean, spec.std), "random pixels (seed 0): pass --data for real images")
    manifest_path, manifest = manifest_of_run(reference, ckpt.manifest_sha256, config.manifest)
    images, labels = load_scored_split(manifest, manifest_path, config.data, config.split, spec)
    x = normalize_array(images, spec.mean, spec.std)
    data = {"manifest": str(manifest_path), "manifest_sha256": manifest.sha256, "split": config.split, "images": int(len(labels))}
    return _Inputs(spec, _batch(x, n_pool), f"the first {n_pool} {config.split} images (repeated if fewer)", x,
                   np.asarray(labels, dtype=np.int64), data)


# --- artifacts are checked before anything is timed ----------------------------------------------------


def artifact_info(path: Path, kind: str) -> RowInfo:
    """What an artifact says it is, read and verified without running it (the sidecar's sha256 is checked)."""
    from edgenode.checkpoint import load_checkpoint
    from edgenode.runtime.artifact import checkpoint_info, engine_info, onnx_info

    if kind == "onnx":
        return RowInfo.from_artifact(onnx_info(path))
    if kind == "engine":
        return RowInfo.from_artifact(engine_info(path))
    return RowInfo.from_artifact(checkpoint_info(load_checkpoint(path)))


def refuse_unusable(entries: Sequence[tuple[Path, str, bool]], spec: InputSpec) -> None:
    """Open every artifact's metadata before the first row is timed, as ``parity`` does: a tampered, foreign
    or mismatched file (ArtifactError) fails the bench in seconds, naming every such file in one line, rather
    than being left out of a table that then looks complete. Only a runtime missing here skips a row."""
    refused: list[ArtifactError] = []
    for path, kind, _ in entries:
        try:
            check_input(artifact_info(path, kind), spec, path.name)
        except ArtifactError as exc:
            if exc.exit_code != 1:  # a wrong command line (exit 2) is reported as it is
                raise
            refused.append(exc)
    if len(refused) == 1:
        raise refused[0]
    if refused:
        hints = {exc.hint for exc in refused}
        shared = hints.pop() if len(hints) == 1 else None  # one fix for all: said once, at the end
        raise ArtifactError(f"{len(refused)} artifacts refused: " + "; ".join(exc.message if shared else str(exc) for exc in refused),
                            shared)


def refuse_unrunnable(entries: Sequence[tuple[Path, str, bool]], config: BenchConfig) -> None:
    """What the command line asks for and this machine cannot run fails now, not after the peak and the baseline
    have been timed (minutes): a ``--providers`` entry ONNX Runtime lacks, for a file named on the command line or
    when no requested provider is there at all, and an engine named on the command line without TensorRT. (A
    folder's rows on a missing runtime stay optional: skipped, with a note.)"""
    onnx_entries = [from_folder for _, kind, from_folder in entries if kind == "onnx"]
    if onnx_entries and config.providers != ("all",):
        from edgenode.runtime.onnx_runner import available_providers
        from edgenode.runtime.providers import ProviderUnavailableError, select_providers

        present = available_providers()
        missing: list[ProviderUnavailableError] = []
        for provider in config.providers:
            try:
                select_providers(provider, present)
            except ProviderUnavailableError as exc:
                missing.append(exc)
        if missing and (not all(onnx_entries) or len(missing) == len(config.providers)):
            raise ProviderUnavailableError(f"--providers: {missing[0].message}",
                                           f"{missing[0].hint}; or leave it out of --providers")
    engine = next((path for path, kind, from_folder in entries if kind == "engine" and not from_folder), None)
    if engine is not None:
        from edgenode.runtime.tensorrt_runner import import_tensorrt

        import_tensorrt(engine)


# --- row loaders -----------------------------------------------------------------------------------------


def _onnx_file_loader(path: Path, provider: str, threads: int):
    """An exported ONNX file on ``provider``, with the provider list and options ``infer`` gives it (TensorRT's
    caches and precision flag; ONNX Runtime's INT8 file never on TensorRT)."""
    def load():
        from edgenode.runtime.artifact import onnx_info
        from edgenode.runtime.onnx_runner import OnnxRuntimeRunner, available_providers
        from edgenode.runtime.predictor import ort_providers

        data = path.read_bytes()  # the bytes whose sha256 is verified are the bytes timed
        info = onnx_info(path, data)
        runner = OnnxRuntimeRunner(path, ort_providers(info, provider, available_providers()), explicit=True, threads=threads,
                                   model_bytes=data)
        return runner, dataclasses.replace(RowInfo.from_artifact(info), device="cpu" if provider == "cpu" else "cuda")

    return load


def _onnx_loader(source: Path | bytes, provider: str, threads: int, info_of: Callable[[], RowInfo]):
    def load():
        from edgenode.runtime.onnx_runner import OnnxRuntimeRunner, available_providers
        from edgenode.runtime.providers import select_providers

        info = info_of()
        providers = select_providers(provider, available_providers())
        runner = OnnxRuntimeRunner(source, providers, explicit=True, threads=threads)
        return runner, dataclasses.replace(info, device="cpu" if provider == "cpu" else "cuda")

    return load


def _predictor_loader(path: Path, provider: str, solver: SolverConfig | None = None):
    def load():
        from edgenode.runtime.predictor import load_predictor

        predictor = load_predictor(path, provider=provider, reference_solver=solver)
        device = "cuda" if predictor.provider in ("cuda", "tensorrt") else "cpu"
        return predictor.runner, RowInfo.from_artifact(predictor.metadata, device)

    return load


def _torch_loader(model, info: RowInfo):
    def load():
        from edgenode.runtime.torch_runner import TorchRunner

        return TorchRunner(model, "cpu"), info

    return load


def _cuda_loader(make_module: Callable[[], Any], dtype: str, compile_mode: str | None, info: RowInfo):
    def load():
        from edgenode.bench.gpu import CudaTorchRunner

        return CudaTorchRunner(make_module(), dtype, compile_mode), info

    return load


def _available_providers() -> list[str]:
    try:
        from edgenode.runtime.onnx_runner import available_providers
        from edgenode.runtime.providers import short_name

        return [short_name(p) for p in available_providers()]
    except ImportError:
        return []


def artifact_specs(entries, config: BenchConfig, threads: int) -> list[RowSpec]:
    """One row per ONNX file and provider, per engine (TensorRT) and per other checkpoint (torch CPU)."""
    present = _available_providers()
    wanted = [p for p in PROVIDER_ORDER if p in present] if config.providers == ("all",) else list(config.providers)
    specs = []
    for path, kind, from_folder in entries:
        if kind == "onnx":
            for provider in wanted:
                name = path.name if provider == "cpu" else f"{path.name} [{provider}]"
                optional = from_folder or (config.providers == ("all",) and provider != "cpu")
                specs.append(RowSpec(name, "artifact", _onnx_file_loader(path, provider, threads), optional))
        elif kind == "engine":
            specs.append(RowSpec(path.name, "artifact", _predictor_loader(path, "tensorrt"), optional=from_folder))
        else:
            specs.append(RowSpec(f"{path.name} (torch)", "artifact", _predictor_loader(path, "cpu")))
    if not wanted and any(kind == "onnx" for _, kind, _ in entries):
        raise UsageError("onnxruntime offers no provider to run the ONNX artifacts", install_hint("cpu"))
    return specs


def unroll_method(config: BenchConfig, ckpt) -> str:
    """The fixed-step method of the sweep and GPU rows: the user's, else the trained one, else classic rk4."""
    trained = ckpt.model_config.solver
    return config.sweep_method or ("rk4" if trained.is_adaptive else trained.method)


def sweep_specs(config: BenchConfig, ckpt, threads: int) -> list[RowSpec]:
    """Per N of the sweep: the unrolled reference as in-memory ONNX FP32 (ORT CPU) and/or torch CPU."""
    if not config.sweep_steps:
        return []
    model = ckpt.build_model()
    size = ckpt.input_spec.image_size
    method = unroll_method(config, ckpt)
    specs = []
    for point in sweep_points(model, config.sweep_steps, method, size, config.sweep_backends, config.sweep_opset):
        base = RowInfo("in-memory", "fp32", point.solver, point.model.config.to_dict(), ckpt.input_spec,
                       list(ckpt.classes), None, None, "cpu", ckpt.manifest_sha256)
        label = f"{method}×{point.steps}"
        if point.onnx_bytes is not None:
            info = dataclasses.replace(base, kind="in-memory onnx", size_bytes=len(point.onnx_bytes))
            specs.append(RowSpec(f"{label} onnx fp32 (sweep)", "sweep",
                                 _onnx_loader(point.onnx_bytes, "cpu", threads, lambda i=info: i)))
        if "torch" in config.sweep_backends:
            specs.append(RowSpec(f"{label} torch fp32 (sweep)", "sweep",
                                 _torch_loader(point.model, dataclasses.replace(base, kind="in-memory torch"))))
    return specs


def gpu_specs(config: BenchConfig, ckpt, baseline: SolverConfig, steps: Sequence[int]) -> list[RowSpec]:
    """Adaptive model in CUDA FP32, and the unrolled model per N × dtype × (eager, compiled). GPU only."""
    from edgenode.bench.gpu import DTYPES, UnrolledForward

    method = unroll_method(config, ckpt)
    base = RowInfo("in-memory torch", "fp32", baseline, ckpt.model_config.to_dict(), ckpt.input_spec,
                   list(ckpt.classes), None, None, "cuda", ckpt.manifest_sha256)
    specs = [RowSpec("adaptive torch cuda eager fp32", "gpu",
                     _cuda_loader(lambda: ckpt.build_model().with_solver(baseline), "fp32", None, base), optional=True)]
    for n in steps:
        solver = SolverConfig(method, n_steps=n)
        for dtype in DTYPES:
            info = dataclasses.replace(base, precision=dtype, solver=solver)
            make = lambda n=n: UnrolledForward(ckpt.build_model(), method, n)  # noqa: E731
            specs.append(RowSpec(f"{method}×{n} torch cuda eager {dtype}", "gpu", _cuda_loader(make, dtype, None, info), optional=True))
            if config.gpu_compile:
                specs.append(RowSpec(f"{method}×{n} torch cuda compiled+graphs {dtype}", "gpu",
                                     _cuda_loader(make, dtype, "reduce-overhead", info), optional=True))
    return specs


# --- measuring one row -----------------------------------------------------------------------------------


@dataclass
class _Session:
    """What every row of one bench shares: settings, inputs, the baseline's predictions, what was measured."""

    config: BenchConfig
    inputs: _Inputs
    batches: dict[int, np.ndarray]
    classes: list[str]
    reference_sha: str | None
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline_pred: np.ndarray | None = None
    on_row: Callable[[], None] | None = None  # called after each measured row (run_bench: write what is measured)

    def say(self, text: str) -> None:
        if not self.config.quiet:
            console.print(text, markup=False, soft_wrap=True)


def check_input(info: RowInfo, spec: InputSpec, name: str) -> None:
    """Refuse (ArtifactError) an artifact that cannot take the reference's images: timing it on them would
    time a model fed the wrong pictures, and its accuracy would mean nothing."""
    differ = info.input.mismatches(spec, normalisation=False)  # other mean/std: re-expressed by _normalised_for
    if differ:
        raise ArtifactError(f"{name}: does not take the reference's pictures: {'; '.join(differ)}",
                            "bench artifacts exported from the reference's run")


def _check_row(info: RowInfo, session: _Session, name: str) -> tuple[list[str], bool]:
    """Refuse an artifact that cannot take the reference's images; (notes, can it be scored on the split)."""
    check_input(info, session.inputs.spec, name)
    notes, comparable = [], True
    if list(info.classes) != list(session.classes):
        notes.append(f"its {len(info.classes)} classes are not the reference's {len(session.classes)}: no accuracy or agreement")
        comparable = False
    if info.manifest_sha256 and session.reference_sha and info.manifest_sha256 != session.reference_sha:
        notes.append("exported from another split than the reference's; scored on the reference's split")
    if info.model.get("mirror_average"):
        notes.append("mirror-averaged: each picture runs as itself and mirrored (2× the FLOPs but the final classifier "
                     "layer); its agreement is with the plain baseline")
    return notes, comparable


def _normalised_for(x: np.ndarray, src: InputSpec, dst: InputSpec) -> np.ndarray:
    """``x`` normalised with ``src`` re-expressed with ``dst``'s mean/std (identity when they agree)."""
    if np.allclose(src.mean, dst.mean, atol=1e-7) and np.allclose(src.std, dst.std, atol=1e-7):
        return x
    shape = (1, 3, 1, 1)
    pixels = x * np.asarray(src.std, np.float32).reshape(shape) + np.asarray(src.mean, np.float32).reshape(shape)
    return ((pixels - np.asarray(dst.mean, np.float32).reshape(shape)) / np.asarray(dst.std, np.float32).reshape(shape)).astype(np.float32)


def measure_row(spec: RowSpec, session: _Session) -> tuple[BenchRow, np.ndarray | None]:
    """Load, warm up and time one row at every batch size; score it on the split when there is one."""
    config, inputs = session.config, session.inputs
    torch_cuda = spec.group == "gpu"  # torch's allocator sees these rows' device memory (not ORT's or TensorRT's)
    with PeakMemory() as mem:
        if torch_cuda:
            cuda_peak_bytes(reset=True)
        runner, info = spec.load()
        try:
            notes, comparable = _check_row(info, session, spec.name)
            xs = {b: _normalised_for(x, inputs.spec, info.input) for b, x in session.batches.items()}
            for b in config.batch_sizes:  # the first call of each shape: allocations, kernel choice, compilation
                runner.infer(xs[b])
        except BaseException:
            runner.close()
            raise
    row = BenchRow(spec.name, spec.group, info.kind, runner.describe(), info.device, info.precision,
                   info.solver.describe(), None if info.solver.is_adaptive else info.solver.n_steps,
                   str(info.path) if info.path else None, info.size_bytes, memory=mem.usage,
                   cuda_peak_bytes=cuda_peak_bytes() if torch_cuda else None, notes=notes)
    pred = None
    try:
        for b in config.batch_sizes:

            def call(x=xs[b]) -> float:
                runner.infer(x)
                return runner.last_inference_ms

            row.timings[b] = measure(call, b, max(0, config.warmup - 1), config.repeats)
            nfe = info.solver.fixed_nfe if not info.solver.is_adaptive else getattr(runner, "nfe", None)
            if nfe:
                row.nfe[b] = int(nfe)
        if inputs.x is not None and comparable:
            chunk = max(config.batch_sizes)
            x = _normalised_for(inputs.x, inputs.spec, info.input)
            logits = np.concatenate([runner.infer(x[i : i + chunk]) for i in range(0, len(x), chunk)])
            pred, row.accuracy, row.agreement = score_logits(logits, inputs.labels, len(info.classes), session.baseline_pred)
    finally:
        runner.close()
    model_flops = config_flops(info.model, info.input.image_size)
    for b in config.batch_sizes:
        row.flops_per_image[b] = model_flops.for_solver(info.solver, row.nfe.get(b))
    return row, pred


def score_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int, baseline_pred: np.ndarray | None
                 ) -> tuple[np.ndarray, ClassificationMetrics, float | None]:
    """(predictions, label-free accuracy, agreement with the baseline's predictions or None) of a row's logits.

    An inf/NaN row is no answer: it is scored wrong (as a class other than its label) and disagreeing, as parity
    scores it; its argmax would otherwise be class 0, right for one picture in ``num_classes``."""
    import torch

    from edgenode.metrics import ClassificationMetrics

    finite = np.isfinite(logits).all(axis=1)
    pred = np.where(finite, logits.argmax(axis=1), (labels + 1) % num_classes)
    accuracy = ClassificationMetrics.from_predictions(torch.from_numpy(pred), torch.from_numpy(labels), num_classes)
    agreement = float(((pred == baseline_pred) & finite).mean()) if baseline_pred is not None else None
    return pred, accuracy, agreement


def _finish(rows: list[BenchRow], peak: Peak | None, batch_sizes: tuple[int, ...]) -> None:
    """Speed-ups over the baseline and fractions of the peak of each row's device/dtype."""
    baseline = next(r for r in rows if r.group == "baseline")
    for row in rows:
        for b in batch_sizes:
            base, mine = baseline.p50_ms(b), row.p50_ms(b)
            if base and mine:
                row.speedup[b] = base / mine
            flops, ips = row.flops_per_image.get(b), row.throughput_ips(b)
            dtype = row.precision if row.device == "cuda" and row.precision in ("fp32", "fp16", "bf16") else "fp32"
            rate = peak.flops_per_s(row.device, dtype) if peak else None
            if rate:
                row.peak_key = f"{row.device}/{dtype}"
            row.fraction_of_peak[b] = flops * ips / rate if flops and ips and rate else None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def run_specs(specs: list[RowSpec], session: _Session) -> list[str]:
    """Measure ``specs`` in order into ``session.rows``; optional rows whose runtime is missing here (or, for
    GPU rows, fails here) become notes, returned as well. A damaged, foreign or mismatched artifact
    (ArtifactError) is never skipped: it ends the bench (exit 1)."""
    from edgenode.runtime.providers import ProviderUnavailableError

    b1, bn = min(session.config.batch_sizes), max(session.config.batch_sizes)
    skipped: list[str] = []
    for spec in specs:
        try:
            row, pred = measure_row(spec, session)
        except ProviderUnavailableError as exc:
            if not spec.optional:
                raise
            skipped.append(f"skipped {spec.name}: {exc}")
            session.notes.append(skipped[-1])
            session.say(skipped[-1])
            continue
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - a compiled GPU mode failing (Triton, driver) must not lose the others
            reraise_interrupt(exc)  # torch.compile wraps Ctrl-C in its own error too
            if not (spec.optional and spec.group == "gpu"):
                raise
            skipped.append(f"skipped {spec.name}: {_one_line(exc)}")
            session.notes.append(skipped[-1])
            session.say(skipped[-1])
            continue
        if spec.group == "baseline":
            session.baseline_pred = pred
        session.rows.append(row)
        if session.on_row is not None:
            session.on_row()
        session.say(f"✓ {row.name}: p50 {row.p50_ms(b1):.3g} ms at batch {b1}, {row.throughput_ips(bn):.4g} img/s at batch {bn}"
                    + (f", NFE {row.nfe[b1]}" if b1 in row.nfe else "")
                    + (f", accuracy {row.accuracy.accuracy:.3f}" if row.accuracy else ""))
    return skipped


def require_artifact_rows(entries: Sequence, session: _Session, skipped: Sequence[str]) -> None:
    """Artifacts were asked for but none could run here: a table of the baseline alone is not a bench of them."""
    if entries and not any(r.group == "artifact" for r in session.rows):
        raise ArtifactError("no artifact could be benched on this machine: " + "; ".join(skipped),
                            "install the runtime they need, or bench the .onnx files")


def run_bench(config: BenchConfig) -> BenchReport:
    """Measure every row (module docstring) and write bench.json/.md/.png to ``config.out`` when given."""
    import torch

    from edgenode.checkpoint import load_checkpoint

    reference = resolve_reference(config)
    ckpt = load_checkpoint(reference)
    entries = expand_artifacts(config.artifacts, reference)
    refuse_unusable(entries, ckpt.input_spec)
    refuse_unrunnable(entries, config)
    threads = config.threads or default_threads()
    inputs = load_inputs(config, ckpt, reference)
    batches = {b: _batch(inputs.pool, b) for b in config.batch_sizes}
    flops: ModelFlops = config_flops(ckpt.model_config, ckpt.input_spec.image_size)
    baseline_solver = config.baseline_solver or ckpt.model_config.solver
    session = _Session(config, inputs, batches, list(ckpt.classes), ckpt.manifest_sha256)
    notes = session.notes
    notes.append(f"timing inputs: {inputs.pool_source}")
    load_at_start = load_average()
    if load_at_start is not None and load_at_start > physical_cores():
        notes.append(f"the machine was busy when the bench started (1-minute load average {load_at_start} on "
                     f"{physical_cores()} cores): other processes compete for the cores, so times and ratios are "
                     "unreliable (a runtime's threads wait for a busy core, each runtime differently); bench on an idle "
                     "machine" + (", or with --threads 1" if threads > 1 else ""))
    if not baseline_solver.is_adaptive:
        whose = ("the checkpoint's fixed-step solver" if config.baseline_solver is None else "the fixed-step solver")
        notes.append(f"the baseline runs {whose} {baseline_solver.describe()} (not an adaptive one; pass "
                     "--baseline-solver dopri5 for an adaptive baseline)")
    use_gpu = config.gpu and _cuda()
    rows_need_ort = any(k == "onnx" for _, k, _ in entries) or bool(config.sweep_steps and "onnx" in config.sweep_backends)
    cpu_peak = config.peak and (rows_need_ort or onnxruntime_installed())  # the CPU peak is timed with ONNX Runtime
    if config.peak and not cpu_peak:  # a bench of checkpoints alone needs no ONNX Runtime: it loses only this column
        notes.append(f"no CPU peak, so no fraction of it: {ONNXRUNTIME_MISSING}")
    if rows_need_ort or cpu_peak:  # libraries load before the first row, so that row's memory does not include them
        import onnxruntime  # noqa: F401
    if baseline_solver.is_adaptive:
        import torchdiffeq  # noqa: F401

    peak = None

    def write_so_far() -> None:
        """bench.json and bench.md after every row, marked incomplete: a bench killed, timed out or interrupted
        keeps the rows it measured. The figures come with the complete report only."""
        if not config.out or not any(r.group == "baseline" for r in session.rows):
            return
        _finish(session.rows, peak, config.batch_sizes)
        incomplete = (f"incomplete: {plural(len(session.rows), 'row')} measured when this file was written; the "
                      "bench had not finished (a finished bench rewrites this file and adds its figures)")
        machine = {**machine_info(threads, gpu=False), "load_average_1min_at_start": load_at_start}
        write_report(BenchReport(machine, config.to_dict(), config.batch_sizes, flops, list(session.rows), peak,
                                 inputs.data, [*notes, incomplete]), config.out, figures=False)

    session.on_row = write_so_far
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if config.peak:
            from edgenode.bench.peak import measure_cpu_peak, measure_cuda_peak

            c, s = flops.state_shape[0], flops.state_shape[-1]
            peak_config = PeakConfig(batch=max(config.batch_sizes), channels=c, size=s, depth=config.peak_depth,
                                     matmul_size=config.peak_matmul_size, warmup=config.peak_warmup, repeats=config.peak_repeats)
            if cpu_peak or use_gpu:
                session.say(f"measuring the FP32 peak ({plural(threads, 'thread')})…")
            peak = Peak(peak_config, [])
            try:
                peak.measurements += measure_cpu_peak(peak_config, threads) if cpu_peak else []
            except ArtifactError as exc:  # an extra column: the rows are what the bench is for
                notes.append(f"no CPU peak, so no fraction of it: {exc.message}")
                session.say(f"note: {notes[-1]}")
            if use_gpu:
                peak.measurements += measure_cuda_peak(peak_config)
            for line in (f"{m.name} {m.device}/{m.dtype}: {m.gflops:.1f} GFLOP/s" for m in peak.measurements):
                session.say("  " + line)
            peak = peak if peak.measurements else None
        baseline_spec = RowSpec(f"{reference.name} (baseline)", "baseline",
                                _predictor_loader(reference, "cpu", config.baseline_solver))
        specs = [baseline_spec, *artifact_specs(entries, config, threads)]
        require_artifact_rows(entries, session, run_specs(specs, session))
        run_specs(sweep_specs(config, ckpt, threads), session)
        if use_gpu:
            steps = config.gpu_steps or tuple(sorted({r.steps for r in session.rows if r.group == "artifact" and r.steps})) \
                or config.sweep_steps or (4,)
            run_specs(gpu_specs(config, ckpt, baseline_solver, steps), session)
            if any(r.group == "gpu" for r in session.rows) and any(r.group != "gpu" and r.device != "cpu" for r in session.rows):
                notes.append("GPU rows are timed two ways: the torch CUDA rows as device time between CUDA events "
                             "(input already on the GPU, logits copied back after), the ONNX Runtime and TensorRT rows "
                             "as the wall time of the whole call, host-to-device and back included")
        elif config.gpu:
            notes.append("no CUDA device seen by torch: CPU rows only")
    finally:
        torch.set_num_threads(previous_threads)
    _finish(session.rows, peak, config.batch_sizes)
    machine = {**machine_info(threads), "load_average_1min_at_start": load_at_start}
    report = BenchReport(machine, config.to_dict(), config.batch_sizes, flops, session.rows, peak, inputs.data, notes)
    if config.out:
        write_report(report, config.out)
    return report


def _cuda() -> bool:
    from edgenode.bench.gpu import cuda_available

    return cuda_available()
