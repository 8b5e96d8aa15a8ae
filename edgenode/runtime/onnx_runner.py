"""Runs an ONNX file (FP32, FP16 or INT8) with ONNX Runtime on the chosen execution providers.

The session is built with the provider list from :func:`edgenode.runtime.providers.select_providers`; when
onnxruntime silently drops a GPU provider at session creation (missing CUDA libraries, unsupported
GPU), an explicitly requested provider is an error rather than a quiet CPU run. FP16 graphs that take FP16
input get their input cast here, so callers always pass float32.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from edgenode.errors import ArtifactError, first_line
from edgenode.runtime.base import Runner
from edgenode.runtime.providers import TENSORRT_PROFILE_BATCHES, ProviderUnavailableError, install_hint, short_name

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _provider_name(entry) -> str:
    """A providers list holds names, or (name, options) pairs."""
    return entry[0] if isinstance(entry, tuple) else entry


def _session_without_silent_fallback(ort, source, options, providers: list):
    """An InferenceSession on the first of ``providers`` that starts, each keeping its options; and why the ones
    before it did not start, as (provider, reason).

    onnxruntime's own fallback (on by default) retries a failed GPU provider on the next ones *without their
    options* (a CUDA session then runs on GPU 0 with TF32, not the FP32 the file was checked in), and does so again
    inside ``run()`` when an execution provider fails there (a TensorRT engine built on the first batch), with only
    a print() to stdout, where ``infer --json`` writes its lines: the session kept running on another provider
    than the one reported. Here it is off: a provider that fails to start is dropped and the rest tried with their
    options (the caller then sees which one runs and refuses an explicit request it did not get), and a failure
    inside ``run()`` is an error. Before onnxruntime 1.23 the constructor ignores ``enable_fallback=0`` and falls
    back by itself, so a session that did not start on the provider asked for counts as a failed start too, and
    ``disable_fallback()`` (in every release) turns the fallback inside ``run()`` off."""
    remaining, failures = list(providers), []
    while True:
        wanted = _provider_name(remaining[0])
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the banner an older onnxruntime prints as it falls back
                session = ort.InferenceSession(source, sess_options=options, providers=remaining, enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - the provider's own error; the CPU's, the last, is the graph's and is raised
            if len(remaining) <= 1:
                raise
            failures.append((wanted, first_line(exc)))
            remaining = remaining[1:]
            continue
        session.disable_fallback()
        active = session.get_providers()
        if len(remaining) > 1 and (not active or active[0] != wanted):  # started elsewhere, without its options
            failures.append((wanted, f"onnxruntime started {', '.join(active) or 'nothing'} instead"))
            remaining = remaining[1:]
            continue
        return session, failures


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path | bytes, providers: list, explicit: bool = False, threads: int | None = None,
                 model_bytes: bytes | None = None):
        """``path`` may also be the serialized model itself (bytes), e.g. a graph rebuilt in memory; or pass the
        file's bytes as ``model_bytes`` (already read and verified) to run exactly those, named by ``path``."""
        super().__init__()
        import onnxruntime as ort

        source = path if isinstance(path, bytes) else model_bytes if model_bytes is not None else str(path)
        self.path = Path("<in-memory ONNX>") if isinstance(path, bytes) else Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are reported by us, once
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session, failures = _session_without_silent_fallback(ort, source, options, providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)})",
                                "re-export it, or update onnxruntime if the opset is newer than it supports") from None
        active = self.session.get_providers()
        first = _provider_name(providers[0])
        if explicit and first not in active:
            wanted = short_name(first)
            why = next((reason for name, reason in failures if name == first), "")
            raise ProviderUnavailableError(
                f"{self.path}: provider {wanted!r} is installed but failed to start"
                + (f" ({why[:300]})" if why else "") + f"; the session would run on {', '.join(map(short_name, active))}",
                install_hint(wanted),
            )
        self.providers = active
        self.provider = short_name(active[0])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ArtifactError(f"{self.path}: expected one image input, the graph has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_dtype = _ORT_DTYPES.get(inputs[0].type, np.float32)
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        if self.provider == "tensorrt":  # its engine is built for batches up to the profile's largest
            self.max_batch = TENSORRT_PROFILE_BATCHES[-1]
        self.input_shape = list(inputs[0].shape)
        self.output_name = self.session.get_outputs()[0].name

    def describe(self) -> str:
        return f"onnxruntime ({self.providers[0]})"

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None
