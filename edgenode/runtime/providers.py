"""Which ONNX Runtime execution providers to use: a pure function of the request and what is installed.

``auto`` takes the fastest provider present, in the order TensorRT → CUDA → CPU, and always keeps CPU last
so that nodes a GPU provider cannot run still have a home. Naming a provider (``tensorrt``, ``cuda``,
``cpu``) puts exactly that one first (with the providers below it for the nodes it cannot run: CUDA, then
CPU, under TensorRT) or fails with one line saying how to get it: never a silent fall back to something the
user did not ask for.

Kept free of ``import onnxruntime`` so it can be tested with made-up provider lists.
"""

from __future__ import annotations

import platform
from typing import Sequence

from edgenode.errors import MissingDependencyError, UsageError

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES = {full: short for short, full in PROVIDER_NAMES.items()}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
CHOICES = ("auto", *AUTO_ORDER)


class ProviderUnavailableError(MissingDependencyError):
    """The execution provider (or runtime) asked for is not installed on this machine."""


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda``; unknown names pass through unchanged."""
    return SHORT_NAMES.get(provider, provider)


def install_hint(provider: str, machine: str | None = None) -> str:
    """How to get ``provider`` (a short name) on this kind of machine."""
    machine = (machine or platform.machine()).lower()
    jetson = machine in ("aarch64", "arm64")
    if provider == "cpu":
        return "pip install onnxruntime (ONNX Runtime's CPU build)"
    if jetson:
        base = ("on a Jetson install NVIDIA's onnxruntime-gpu wheel for your JetPack (Jetson Zoo / "
                "pypi.jetson-ai-lab.io); PyPI has no aarch64 GPU build")
    else:
        base = ("pip uninstall -y onnxruntime, then pip install onnxruntime-gpu (the two builds "
                "share one package, and the CPU one over the GPU one removes its GPU providers)")
    if provider == "tensorrt":
        extra = ("JetPack ships TensorRT" if jetson else "and TensorRT's libraries where onnxruntime finds them "
                 "(pip install tensorrt, then its tensorrt_libs folder on LD_LIBRARY_PATH)")
        return f"{base}, {extra}; then check `python -c \"import onnxruntime; print(onnxruntime.get_available_providers())\"`"
    return f"{base}, with a CUDA driver and cuDNN that match it"


ONNXRUNTIME_MISSING = ("ONNX Runtime is not installed (pip install onnxruntime, or onnxruntime-gpu on an x86_64 "
                       "NVIDIA machine; on a Jetson NVIDIA's onnxruntime-gpu wheel)")


def onnxruntime_installed() -> bool:
    """Whether ``import onnxruntime`` can work, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):  # a stub left in sys.modules, as when the tests hide it
        return False


def require_onnxruntime() -> None:
    """ONNX Runtime is an extra (its CPU and GPU builds cannot be installed together): say so before any work
    that needs it, in one line, rather than fail at its first import after minutes of work."""
    if not onnxruntime_installed():
        raise ProviderUnavailableError(ONNXRUNTIME_MISSING)


def check_provider(requested: str | None) -> str:
    """``requested`` lower-cased if it is one of auto|tensorrt|cuda|cpu; a UsageError (exit 2) otherwise."""
    requested = (requested or "auto").lower()
    if requested not in CHOICES:
        raise UsageError(f"unknown provider {requested!r}", f"choose one of {', '.join(CHOICES)}")
    return requested


def select_providers(requested: str, available: Sequence[str], machine: str | None = None) -> list[str]:
    """The ordered ONNX Runtime provider list for ``requested`` (auto|tensorrt|cuda|cpu) given ``available``.

    >>> select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    requested = check_provider(requested)
    available = list(available)
    if requested == "auto":
        chosen = [PROVIDER_NAMES[p] for p in AUTO_ORDER if PROVIDER_NAMES[p] in available]
        if not chosen:
            raise ProviderUnavailableError(
                f"ONNX Runtime offers none of {', '.join(PROVIDER_NAMES.values())} (it has {', '.join(available) or 'nothing'})",
                install_hint("cpu", machine),
            )
        return chosen
    full = PROVIDER_NAMES[requested]
    if full not in available:
        have = ", ".join(short_name(p) for p in available if p in SHORT_NAMES) or "none"
        raise ProviderUnavailableError(
            f"provider {requested!r} ({full}) is not available in this onnxruntime (available: {have})",
            install_hint(requested, machine),
        )
    # Under TensorRT, the nodes it rejects go to CUDA where there is one (ONNX Runtime's own advice), else the CPU.
    below = {"tensorrt": ("cuda", "cpu"), "cuda": ("cpu",), "cpu": ()}[requested]
    return [full, *(PROVIDER_NAMES[p] for p in below if PROVIDER_NAMES[p] in available)]


# The batches ONNX Runtime's TensorRT provider builds its engine for (min, opt, max): without a profile it builds
# for the shapes it has seen and builds again for each new one (a ragged last batch), minutes on a Jetson.
# Larger batches are run in chunks of the largest (OnnxRuntimeRunner.max_batch).
TENSORRT_PROFILE_BATCHES = (1, 8, 64)


def tensorrt_behind_onnxruntime() -> str:
    """The TensorRT version ONNX Runtime's TensorRT provider runs on: that of the ``tensorrt`` package where one
    imports (the x86 wheel, or JetPack's system package), else the major version of ONNX Runtime's release
    (1.18 and later are built with TensorRT 10 or later: "10"; earlier ones with 8: "8")."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - absent, or its libraries missing: fall back to ONNX Runtime's release
        pass
    return "10" if onnxruntime_release() >= (1, 18) else "8"


def onnxruntime_release() -> tuple[int, int]:
    """ONNX Runtime's (major, minor); (0, 0) where it cannot be read."""
    try:
        import onnxruntime

        major, minor = (int(part) for part in onnxruntime.__version__.split(".")[:2])
        return major, minor
    except Exception:  # noqa: BLE001
        return 0, 0


def provider_options(providers: Sequence[str], precision: str | None = None, engine_cache: str | None = None,
                     timing_cache: str | None = None, device_id: str | None = None, image_size: int | None = None,
                     input_name: str = "images", tensorrt_major: int = 10, release: tuple[int, int] = (1, 18)) -> list:
    """``providers`` as ONNX Runtime takes them, each GPU one with its options (``(name, {option: value})``).

    TensorRT gets an engine cache (``engine_cache``: one folder per file, since ONNX Runtime names its cached
    engines by the graph's structure, not its weights, and would run a retrained model's file with the old
    engine), a timing cache and, given ``image_size``, an optimisation profile for batches 1–64
    (:data:`TENSORRT_PROFILE_BATCHES`), so that only the first session of a file pays the minutes TensorRT spends
    building (on a Jetson, every ``infer`` would otherwise). On TensorRT 9 and later ONNX Runtime builds the
    network strongly typed, so it runs the file's own types: an FP16 file's half precision where the file has it
    and float32 where it keeps it (the norms, the RK4 sums), an INT8 file's Q/DQ. ``trt_fp16_enable`` or
    ``trt_int8_enable`` would turn that off and let TensorRT choose half precision anywhere, so they are passed
    only to TensorRT 8 (``tensorrt_major``), where the network is weakly typed and the flag is what runs the
    file's precision. ``device_id`` picks the GPU; ``input_name`` is the graph's input, every export's ``images``.
    CUDA gets ``use_tf32=0`` (ONNX Runtime's default rounds float32 convolutions to TF32 on Ampere and newer
    GPUs, Jetson Orin included): an FP32 file then computes in float32, as its metadata says and as parity
    measured it, like the engines edgenode builds. Each option goes only to an ONNX Runtime ``release`` that
    has it (older ones refuse the session): the profile from 1.15, the timing cache's own path from 1.17 (before,
    it lies in the engine folder), ``use_tf32`` from 1.18.
    """
    out: list = []
    for name in providers:
        options: dict[str, str] = {}
        if name in (PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]) and device_id is not None:
            options["device_id"] = str(device_id)
        if name == PROVIDER_NAMES["cuda"] and release >= (1, 18):
            options["use_tf32"] = "0"
        if name == PROVIDER_NAMES["tensorrt"]:
            if engine_cache is not None:
                options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(engine_cache))
            if timing_cache is not None:
                options["trt_timing_cache_enable"] = "True"
                if release >= (1, 17):
                    options["trt_timing_cache_path"] = str(timing_cache)
            if image_size is not None and release >= (1, 15):
                for key, batch in zip(("min", "opt", "max"), TENSORRT_PROFILE_BATCHES):
                    options[f"trt_profile_{key}_shapes"] = f"{input_name}:{batch}x3x{image_size}x{image_size}"
            if tensorrt_major < 9 and precision in ("fp16", "int8"):
                options[f"trt_{precision}_enable"] = "True"
        out.append((name, options) if options else name)
    return out


def torch_device_for(requested: str, cuda_available: bool) -> str:
    """The torch device that plays the role of ``requested`` for a checkpoint (auto|cpu|cuda)."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if not cuda_available:
            raise ProviderUnavailableError("provider 'cuda' asked for a checkpoint, but torch sees no CUDA device here",
                                           "install a CUDA build of torch, or use --provider cpu")
        return "cuda"
    if requested == "tensorrt":
        raise UsageError("provider 'tensorrt' does not apply to a training checkpoint",
                         "export it (`edgenode export`) and run the ONNX file or engine, or use --provider auto|cpu|cuda")
    raise UsageError(f"unknown provider {requested!r}", f"choose one of {', '.join(CHOICES)}")
