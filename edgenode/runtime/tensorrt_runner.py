"""Runs a serialized TensorRT engine (``.engine``/``.plan``): thin, and only where it can work.

An engine is tied to the TensorRT version that built it and to the GPU model (kernels are chosen per SM), so
before deserialising we compare this machine with what the engine's sidecar recorded and refuse with one
line naming both; otherwise TensorRT fails with "magic tag does not match" or, worse, a crash. ``tensorrt``
is imported lazily: machines without it can still use every other artifact. Device buffers are torch CUDA
tensors, which avoids a dependency on pycuda/cuda-python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgenode.errors import ArtifactError
from edgenode.runtime.base import Runner
from edgenode.runtime.providers import ProviderUnavailableError

TRT_VERSION_KEYS = ("tensorrt_version", "trt_version", "tensorrt")
GPU_NAME_KEYS = ("gpu_name", "gpu", "device_name")
CAPABILITY_KEYS = ("compute_capability",)


def import_tensorrt(path: str | Path | None = None):
    """``import tensorrt`` or a one-line :class:`ProviderUnavailableError` with how to install it."""
    try:
        import tensorrt  # noqa: PLC0415 - optional dependency, imported only for engines
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        where = f"{path}: " if path else ""
        what = "is not installed" if isinstance(exc, ImportError) else f"cannot load its libraries ({str(exc).strip()[:100]})"
        raise ProviderUnavailableError(
            f"{where}running a TensorRT engine needs the tensorrt Python package, which {what}",
            "pip install tensorrt on x86_64; on a Jetson it comes with JetPack "
            "(or run the .onnx file with onnxruntime instead)",
        ) from None
    return tensorrt


OLDEST_TENSORRT = (8, 5)  # the tensor-name API (num_io_tensors, set_input_shape, execute_async_v3): JetPack 5.1+


def require_supported_tensorrt(version: str, path: str | Path | None = None) -> None:
    """Refuse a TensorRT older than 8.5 in one line: its engines run through bindings this runner does not use
    (an AttributeError mid-run), and its ONNX parser stops at opset 13."""
    try:
        found = tuple(int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return  # an unreadable version is left to the calls themselves
    if found < OLDEST_TENSORRT:
        where = f"{path}: " if path else ""
        raise ProviderUnavailableError(
            f"{where}TensorRT {version} is older than {'.'.join(map(str, OLDEST_TENSORRT))}, the oldest edgenode builds "
            "and runs engines with", "update TensorRT (JetPack 5.1 or newer), or run the .onnx file with onnxruntime")


def load_plugins(trt, logger) -> None:
    """Register TensorRT's plugins, which a TensorRT 8.x engine may use (its InstanceNormalization without the
    parser's native flag): the build needs them, and so does a new process before it deserialises that engine."""
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")


def _recorded(extra: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = extra.get(key)
        if value and str(value).lower() != "unknown":
            return str(value)
    return None


def _release(version: str) -> tuple[str, ...]:
    """``10.3.0.26`` -> ``('10', '3', '0')``: engines are portable within one major.minor.patch release."""
    return tuple(version.split(".")[:3])


def engine_mismatches(extra: Mapping[str, Any], trt_version: str, gpu_name: str | None,
                      compute_capability: str | None = None) -> list[str]:
    """What stops an engine built as recorded in ``extra`` from loading here (pure; empty = compatible).

    The TensorRT release must match unless the engine was built version-compatible. The GPU must match
    unless it was built hardware-compatible: by compute capability when both sides know it (kernels are
    chosen per SM), else by name. Unrecorded facts cannot be checked and are not reported.
    """
    problems = []
    built_version = _recorded(extra, TRT_VERSION_KEYS)
    if built_version and not extra.get("version_compatible") and _release(built_version) != _release(trt_version):
        problems.append(f"built with TensorRT {built_version}, this machine has {trt_version}")
    if extra.get("hardware_compatible"):
        return problems
    built_gpu = _recorded(extra, GPU_NAME_KEYS)
    built_cc = _recorded(extra, CAPABILITY_KEYS)
    if built_cc and compute_capability:
        if built_cc != compute_capability:
            problems.append(f"built for GPU {built_gpu or '?'!r} (compute capability {built_cc}), "
                            f"this machine has {gpu_name or '?'!r} ({compute_capability})")
    elif built_gpu and gpu_name and built_gpu.strip() != gpu_name.strip():
        problems.append(f"built for GPU {built_gpu!r}, this machine has {gpu_name!r}")
    return problems


def check_engine_compatibility(path: str | Path, extra: Mapping[str, Any], trt_version: str, gpu_name: str | None,
                               compute_capability: str | None = None) -> None:
    problems = engine_mismatches(extra, trt_version, gpu_name, compute_capability)
    if problems:
        raise ArtifactError(f"{path}: engine cannot run here: {'; '.join(problems)}",
                            "rebuild the engine on this device from its .onnx file (`edgenode engine <file>.onnx`), or run the .onnx")


class TensorRTRunner(Runner):
    backend = "tensorrt"
    provider = "tensorrt"

    def __init__(self, path: str | Path, extra: Mapping[str, Any], engine_bytes: bytes | None = None, device: str | None = None):
        """``engine_bytes``: the file's bytes as read when its sha256 was verified, so those very bytes run.
        ``device``: ``cuda:N`` runs it on GPU N (default: the current one)."""
        super().__init__()
        self.path = Path(path)
        trt = import_tensorrt(self.path)
        require_supported_tensorrt(trt.__version__, self.path)
        import torch

        if not torch.cuda.is_available():
            raise ProviderUnavailableError(f"{self.path}: a TensorRT engine needs a CUDA GPU, and torch sees none here",
                                           "run the .onnx file instead (`--provider cpu`)")
        self._device = torch.device(device) if device and device.startswith("cuda:") else torch.device("cuda", torch.cuda.current_device())
        major, minor = torch.cuda.get_device_capability(self._device)
        check_engine_compatibility(self.path, extra, trt.__version__, torch.cuda.get_device_name(self._device), f"{major}.{minor}")
        self._torch, self._trt = torch, trt
        logger = trt.Logger(trt.Logger.ERROR)
        load_plugins(trt, logger)
        with torch.cuda.device(self._device):  # the engine's memory and its stream live on that GPU
            self._runtime = trt.Runtime(logger)
            self.engine = self._runtime.deserialize_cuda_engine(engine_bytes if engine_bytes is not None else self.path.read_bytes())
            self._stream = torch.cuda.Stream()
        if self.engine is None:
            raise ArtifactError(f"{self.path}: TensorRT could not deserialise the engine",
                                "it is damaged or was built by another TensorRT; rebuild it on this device")
        with torch.cuda.device(self._device):
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{self.path}: expected one input and one output, the engine has {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self._output_dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(self.output_name)))).dtype
        batch = self.engine.get_tensor_shape(self.input_name)[0]
        if batch > 0:
            self.fixed_batch = int(batch)
        else:
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        # A stream of our own: on the legacy default stream enqueueV3 adds synchronisations (TensorRT warns so),
        # which would slow every batch and bias bench's latencies.
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            device_in = torch.from_numpy(x).to(self._device)
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise ArtifactError(f"{self.path}: input {tuple(x.shape)} is outside the engine's optimisation profile",
                                    "pass a smaller --batch-size, or rebuild with a larger --engine-max-batch")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            device_out = torch.empty(out_shape, dtype=self._output_dtype, device=self._device)
            self.context.set_tensor_address(self.input_name, device_in.data_ptr())
            self.context.set_tensor_address(self.output_name, device_out.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise ArtifactError(f"{self.path}: TensorRT execution failed")
            self._stream.synchronize()
        return device_out.float().cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
