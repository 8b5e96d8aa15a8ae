"""TensorRT engines built from the exported ONNX files, which stay the artifacts of record.

Precision lives in the ONNX file, not in builder flags: FP16 files carry half types, INT8 files explicit Q/DQ.
TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrators; networks are always strongly typed
there. TensorRT 9–10 (JetPack 6.1 and 6.2 ship 10.3) build them strongly typed with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, so the engine's precision is exactly the file's. Only a
TensorRT without strong typing (8.x: JetPack 5, and 6.0's 8.6) falls back to weak typing plus the ``FP16`` or
``INT8`` builder flag, which lets TensorRT choose a lower precision per layer where the file does not fix it.
:func:`plan_build` makes that choice as a pure function, testable without TensorRT.

An engine is specific to the TensorRT version and the GPU (compute capability) that built it. Both are
recorded in the engine's JSON sidecar — never glued onto the engine file, which stays a plain serialized
engine that ``trtexec --loadEngine`` and every runtime read. The builder's timing cache is kept in a file
so that rebuilding on the same device is fast.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenode.artifacts import atomic_path, atomic_write_bytes, write_sidecar
from edgenode.errors import ArtifactError, MissingDependencyError, UsageError, first_line, is_whole_number
from edgenode.export.metadata import ArtifactMetadata
from edgenode.export.onnx_export import INPUT_NAME
from edgenode.runtime.tensorrt_runner import load_plugins, require_supported_tensorrt

TENSORRT_HINT = ("install it with `pip install tensorrt` on x86_64 Linux with an NVIDIA GPU; "
                 "on a Jetson use the TensorRT that JetPack ships (python3-libnvinfer)")
ENGINE_SUFFIX = ".engine"
TIMING_CACHE_NAME = "tensorrt-timing.cache"


class TensorRTUnavailable(MissingDependencyError):
    """The ``tensorrt`` Python package cannot be imported here."""


def import_tensorrt(needed_by: str = "--format engine"):
    """``import tensorrt`` or a one-line error that says how to get it, and what asked for it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTUnavailable(f"{needed_by} needs TensorRT, which cannot be imported here ({first_line(exc, 160)})",
                                  TENSORRT_HINT) from None
    return tensorrt


@dataclass(frozen=True)
class EngineConfig:
    """Optimisation profile of the dynamic batch axis (min is always 1) and builder resources."""

    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 1024
    timing_cache: str | None = None  # None: tensorrt-timing.cache beside the engine

    def __post_init__(self):
        for name in ("opt_batch", "max_batch", "workspace_mib"):
            value = getattr(self, name)
            if not is_whole_number(value):
                raise UsageError(f"--engine-{name.replace('_', '-')} {value!r} must be a positive whole number", "pass 1 or more")
        if self.max_batch < self.opt_batch:
            raise UsageError(f"--engine-max-batch {self.max_batch} is below --engine-opt-batch {self.opt_batch}",
                             "the profile needs 1 <= opt <= max")

    def profile(self, image_size: int) -> dict[str, list[int]]:
        shape = [3, image_size, image_size]
        return {"min": [1, *shape], "opt": [self.opt_batch, *shape], "max": [self.max_batch, *shape]}


@dataclass(frozen=True)
class BuildPlan:
    strongly_typed: bool
    explicit_batch_flag: bool  # TensorRT < 10 needs EXPLICIT_BATCH for ONNX networks
    builder_flags: tuple[str, ...]  # names of trt.BuilderFlag members to set

    def describe(self) -> str:
        if self.strongly_typed:
            return "strongly typed (precision from the ONNX types and Q/DQ); TF32 off"
        return f"weakly typed with builder flags {', '.join(self.builder_flags) or 'none'} (TensorRT without strong typing); TF32 off"


# TensorRT lets float32 convolutions and matmuls round their inputs to TF32 (a 10-bit mantissa) unless told not to:
# an "fp32" engine would then not compute what its metadata says, nor what parity measured on ONNX Runtime.
CLEARED_FLAGS = ("TF32",)


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ArtifactError(f"cannot read the TensorRT version {version!r}") from None


def plan_build(version: str, has_strongly_typed: bool, precision: str) -> BuildPlan:
    """How to build: strongly typed wherever TensorRT can, builder flags only as the ≤ 10 fallback."""
    require_supported_tensorrt(version)
    major = trt_major(version)
    if major >= 11:
        return BuildPlan(strongly_typed=True, explicit_batch_flag=False, builder_flags=())
    if has_strongly_typed:
        return BuildPlan(strongly_typed=True, explicit_batch_flag=False, builder_flags=())
    # INT8 alone for a Q/DQ file: with FP16 too, TensorRT may run the layers the file keeps in float (the norms,
    # the RK4 sums) in half precision, which the ONNX Runtime file that parity measured does not.
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    return BuildPlan(strongly_typed=False, explicit_batch_flag=major < 10, builder_flags=flags)


def engine_path_for(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).with_suffix(ENGINE_SUFFIX)


def gpu_description() -> dict[str, Any]:
    """Name and compute capability of GPU 0 (engines run only on the same compute capability)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu_name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - a broken CUDA setup only costs the description
        pass
    return {"gpu_name": "unknown", "compute_capability": "unknown"}


def engine_metadata(source: ArtifactMetadata, onnx_file: str, onnx_sha256: str, tensorrt_version: str,
                    gpu: dict[str, Any], plan: BuildPlan, profile: dict[str, list[int]]) -> ArtifactMetadata:
    """The ONNX file's metadata with kind "engine" and what ties the engine to its TensorRT and GPU."""
    extra = dict(source.extra)
    extra.update(
        tensorrt_version=tensorrt_version, gpu_name=gpu.get("gpu_name"), compute_capability=gpu.get("compute_capability"),
        built_from=onnx_file, built_from_sha256=onnx_sha256, golden_logits_from=onnx_file, build=plan.describe(), optimization_profile=profile,
        portability="runs only with this TensorRT version on GPUs of this compute capability; rebuild from the ONNX file otherwise",
    )
    return dataclasses.replace(source, kind="engine", extra=extra)


# TensorRT 8.6 (JetPack 6.0) reads ONNX up to opset 17; at 18, ReduceMean's axes are an input, which its parser
# was not written for (TensorRT 10 added the check that refuses it where it cannot).
MAX_OPSET_BEFORE_TENSORRT_10 = 17


def refuse_newer_opset(onnx_path: Path, tensorrt_version: str) -> None:
    """A file above the opset this TensorRT reads is refused by name, before a build that could go wrong quietly."""
    if trt_major(tensorrt_version) >= 10:
        return
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = max((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET_BEFORE_TENSORRT_10:
        raise ArtifactError(f"{onnx_path}: ONNX opset {opset}, and TensorRT {tensorrt_version} reads opsets up to "
                            f"{MAX_OPSET_BEFORE_TENSORRT_10}", f"export it again with --opset {MAX_OPSET_BEFORE_TENSORRT_10}")


def build_engine(onnx_path: str | os.PathLike, source: ArtifactMetadata, config: EngineConfig = EngineConfig(),
                 engine_path: str | os.PathLike | None = None, onnx_sha256: str | None = None) -> tuple[Path, ArtifactMetadata]:
    """Parse ``onnx_path``, build a serialized engine with a dynamic-batch profile, write it and its sidecar
    (``onnx_sha256``: the ONNX file's, where the caller has verified it already)."""
    from edgenode.artifacts import sha256_file

    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else engine_path_for(onnx_path)
    timing_path = Path(config.timing_cache) if config.timing_cache else engine_path.parent / TIMING_CACHE_NAME
    flag_enum = trt.NetworkDefinitionCreationFlag
    plan = plan_build(trt.__version__, hasattr(flag_enum, "STRONGLY_TYPED"), source.precision)

    refuse_newer_opset(onnx_path, trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    load_plugins(trt, logger)
    builder = trt.Builder(logger)
    creation = 0
    if plan.strongly_typed and hasattr(flag_enum, "STRONGLY_TYPED") and trt_major(trt.__version__) < 11:
        creation |= 1 << int(flag_enum.STRONGLY_TYPED)
    if plan.explicit_batch_flag:
        creation |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    flags = getattr(trt, "OnnxParserFlag", None)
    if flags is not None and hasattr(flags, "NATIVE_INSTANCENORM"):
        # GroupNorm exports as InstanceNormalization; before TensorRT 10 the parser maps it to a plugin by default,
        # whose engine a process without the plugin library loaded cannot deserialise. Native is 10's default.
        parser.set_flag(flags.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({errors[:300]})",
                            "export with another --opset, or use a newer TensorRT")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    for flag in plan.builder_flags:
        builder_config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in CLEARED_FLAGS:
        builder_config.clear_flag(getattr(trt.BuilderFlag, flag))
    shapes = config.profile(source.input.image_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    builder_config.add_optimization_profile(profile)
    cache = builder_config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    if cache is None or not builder_config.set_timing_cache(cache, False):
        # a cache from another GPU or TensorRT (an export folder copied to a Jetson) is refused: start afresh
        builder_config.set_timing_cache(builder_config.create_timing_cache(b""), False)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine (see its log above)",
                            "lower --engine-max-batch or raise --engine-workspace-mib")
    with atomic_path(engine_path) as tmp, open(tmp, "wb") as handle:
        handle.write(memoryview(serialized))
    meta = engine_metadata(source, onnx_path.name, onnx_sha256 or sha256_file(onnx_path), trt.__version__,
                           gpu_description(), plan, shapes)
    write_sidecar(engine_path, meta.to_dict())  # before the cache: an engine without its sidecar is refused
    timing = builder_config.get_timing_cache()
    if timing is not None:  # only a speed-up for the next build
        atomic_write_bytes(timing_path, bytes(memoryview(timing.serialize())))
    return engine_path, meta


def engines_from_onnx(paths, config: EngineConfig = EngineConfig()) -> list[tuple[Path, ArtifactMetadata]]:
    """Build an engine beside each exported ONNX file in ``paths`` (files, or export folders), on this device.

    This is the step a Jetson runs: engines are tied to the TensorRT and the GPU that build them, so the ONNX
    files (the artifacts of record) are exported elsewhere, copied, and built here. Each file is checked
    against its sidecar first (as ``infer`` checks it), and its metadata travels into the engine's. ONNX
    Runtime's INT8 file (uint8 activations) is skipped in a folder and refused by name: TensorRT takes
    symmetric signed Q/DQ only.
    """
    from edgenode.artifacts import KIND_WORDS
    from edgenode.runtime.artifact import detect_kind, expand_artifacts, read_onnx_metadata

    chosen: list[tuple[Path, ArtifactMetadata, str]] = []
    for path, from_folder in expand_artifacts(paths):
        kind = detect_kind(path)
        if kind != "onnx":
            if from_folder:
                continue
            raise UsageError(f"{path}: is {KIND_WORDS.get(kind, kind)}, not an ONNX file",
                             "pass the .onnx files `edgenode export` wrote, or their folder")
        meta, info = read_onnx_metadata(path)  # against its sidecar (sha256 and metadata), where it has one
        if info.int8_target == "ort":
            if from_folder:
                continue
            raise UsageError(f"{path}: this INT8 file is ONNX Runtime's (uint8 activations), which TensorRT cannot build",
                             "pass the int8-trt file (`edgenode export --int8-target tensorrt`)")
        chosen.append((path, meta, info.sha256))
    if not chosen:
        raise UsageError(f"no ONNX file for TensorRT in {', '.join(map(str, paths))}",
                         "pass the folder `edgenode export` wrote, with its fp32, fp16 or int8-trt files")
    # after the arguments (a checkpoint passed by mistake is the command line's fault, whatever is installed),
    # before any build: without TensorRT there is nothing to build
    import_tensorrt("`edgenode engine`")
    return [build_engine(path, meta, config, onnx_sha256=digest) for path, meta, digest in chosen]
