"""``load_predictor(path)``: any artifact behind one interface, pre-processing included.

A :class:`Predictor` pairs a runner (torch, onnxruntime or TensorRT) with the artifact's own metadata, so
``predict(["face.jpg"])`` resizes, normalises and names classes exactly as the artifact was trained, with no
flag for the user to repeat. ``predict_logits`` is the raw path the comparisons (parity, verify, evaluate) go
through; bench times the runner itself (``runner.infer``), so that no check sits inside the timed call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgenode.errors import ArtifactError, UsageError
from edgenode.ode.solvers import SolverConfig
from edgenode.runtime.artifact import ArtifactInfo, checkpoint_info, detect_kind, engine_info, onnx_info
from edgenode.runtime.base import Runner
from edgenode.runtime.preprocess import BatchLoader, preprocess_with_face
from edgenode.runtime.providers import (PROVIDER_NAMES, ProviderUnavailableError, check_provider, provider_options,
                                        onnxruntime_release, require_onnxruntime, select_providers, tensorrt_behind_onnxruntime,
                                        torch_device_for)


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one picture, most likely first; ``path`` is None for in-memory images."""

    path: str | None
    top_k: list[tuple[str, float]]
    index: int  # class index of the top-1 class
    face_found: bool | None = None  # a model of aligned faces: did the aligner find one (else: the whole picture)

    ok = True

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def confidence(self) -> float:
        return self.top_k[0][1]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": True,
            "label": self.label,
            "index": self.index,
            "confidence": self.confidence,
            "top_k": [{"class": name, "probability": p} for name, p in self.top_k],
            **({} if self.face_found is None else {"face_found": self.face_found}),
        }


@dataclass(frozen=True)
class FailedImage:
    """A file that could not be turned into model input, with the reason in a few words."""

    path: str
    reason: str

    ok = False

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": False, "error": self.reason}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits), returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top_k(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    k = max(1, min(k, probabilities.shape[1]))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, order)]


@dataclass
class Predictor:
    """An artifact ready to run: ``metadata`` (what it is), ``runner`` (where it runs)."""

    metadata: ArtifactInfo
    runner: Runner
    notes: list[str] = field(default_factory=list)  # e.g. "reference solver overrides the trained rk4 × 8"

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def provider(self) -> str:
        return self.runner.provider

    @property
    def last_inference_ms(self) -> float:
        return self.runner.last_inference_ms

    def describe(self) -> str:
        return f"{self.metadata.describe()} on {self.runner.describe()}"

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 NCHW input (as training fed the model) to float32 ``(N, C)`` logits."""
        x = np.asarray(x, dtype=np.float32)
        size = self.metadata.input.image_size
        if x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise ValueError(f"{self.metadata.path.name} takes (N, 3, {size}, {size}) input, got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.metadata.num_classes), dtype=np.float32)
        logits = self.runner.infer(x)
        if logits.shape != (x.shape[0], self.metadata.num_classes):
            raise ArtifactError(f"{self.metadata.path}: returned logits {logits.shape}, expected "
                             f"({x.shape[0]}, {self.metadata.num_classes}) for its {self.metadata.num_classes} classes")
        return logits

    def preprocess(self, images: Sequence, pre_aligned: bool = False) -> np.ndarray:
        """Paths or uint8 HxWx3 arrays to the normalised batch this artifact expects (ImageDecodeError on a bad file).

        A model trained on aligned faces gets its inputs aligned here, unless ``pre_aligned``.
        """
        return self._preprocess(images, pre_aligned)[0]

    def _preprocess(self, images: Sequence, pre_aligned: bool) -> tuple[np.ndarray, list[bool | None]]:
        spec = self.metadata.input
        self.check_aligner(pre_aligned)
        batch = np.empty((len(images), 3, spec.image_size, spec.image_size), dtype=np.float32)
        faces = []
        for i, image in enumerate(images):
            batch[i], face_found = preprocess_with_face(image, spec, pre_aligned)
            faces.append(face_found)
        return batch, faces

    def check_aligner(self, pre_aligned: bool) -> None:
        """Fail once, in the caller's thread, when this model needs the aligner and it is not installed, or when
        ``pre_aligned`` is said of a model that aligns nothing (the flag would be ignored without a word)."""
        spec = self.metadata.input
        if pre_aligned and spec.align is None:
            raise UsageError(f"--pre-aligned: {self.metadata.path} was trained on plain face crops, not aligned chips",
                             "drop --pre-aligned: this model resizes each picture as it is")
        if spec.align is not None and not pre_aligned:
            from edgenode.align import thread_aligner

            thread_aligner(spec.image_size, spec.align)

    def _predictions(self, logits: np.ndarray, paths: Sequence[str | None], k: int,
                     faces: Sequence[bool | None]) -> list[Prediction]:
        probs = softmax(logits)
        ranked = top_k(probs, self.metadata.classes, k)
        best = probs.argmax(axis=1)
        return [Prediction(path, rank, int(i), face) for path, rank, i, face in zip(paths, ranked, best, faces)]

    def predict(self, images: Sequence, k: int = 5, pre_aligned: bool = False) -> list[Prediction]:
        """Top-``k`` classes of each picture (paths or uint8 HxWx3 arrays); a bad file raises ImageDecodeError.

        For a model of aligned faces each prediction also says whether the aligner found a face (``face_found``).
        """
        images = list(images)
        x, faces = self._preprocess(images, pre_aligned)
        names = [str(img) if isinstance(img, (str, os.PathLike)) else None for img in images]
        return self._predictions(self.predict_logits(x), names, k, faces)

    def predict_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 32, k: int = 5,
                      workers: int | None = None, pre_aligned: bool = False) -> Iterator[Prediction | FailedImage]:
        """One result per file, in order, decoding the next batches while this one runs; bad files don't stop it."""
        self.check_aligner(pre_aligned)
        loader = BatchLoader(paths, self.metadata.input, batch_size=batch_size, workers=workers, pre_aligned=pre_aligned)
        for batch in loader:
            names = [str(batch.paths[i]) for i in batch.ok]
            faces = [batch.face_found[i] for i in batch.ok]
            predictions = iter(self._predictions(self.predict_logits(batch.x), names, k, faces) if names else [])
            for position, path in enumerate(batch.paths):
                if position in batch.errors:
                    yield FailedImage(str(path), batch.errors[position].reason)
                else:
                    yield next(predictions)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ort_providers(info: ArtifactInfo, provider: str, available: Sequence[str], device: str | None = None) -> list:
    """The ONNX Runtime provider list (with options) that runs ``info``'s file for ``provider`` (auto|tensorrt|cuda|cpu).

    ONNX Runtime's INT8 file (``int8-ort``: uint8 activations with zero points) is for its own kernels; TensorRT
    takes symmetric signed Q/DQ only, so ``auto`` skips TensorRT for it and ``tensorrt`` is refused, naming
    the file that TensorRT runs.
    """
    from edgenode.data.cache import cache_dir

    if info.int8_target == "ort" and PROVIDER_NAMES["tensorrt"] in available:
        if check_provider(provider) == "tensorrt":  # not runnable here, as a missing provider: a folder skips it
            raise ProviderUnavailableError(
                f"{info.path}: this INT8 file is ONNX Runtime's (uint8 activations), which TensorRT cannot run",
                "run the int8-trt file (`edgenode export --int8-target tensorrt`) on TensorRT, or this one with --provider cuda|cpu")
        available = [p for p in available if p != PROVIDER_NAMES["tensorrt"]]
    chosen = select_providers(provider, available)
    device_id = device.split(":", 1)[1] if device and device.startswith("cuda:") else None
    release = onnxruntime_release()
    if PROVIDER_NAMES["tensorrt"] not in chosen:
        return provider_options(chosen, info.precision, device_id=device_id, release=release)
    tensorrt = tensorrt_behind_onnxruntime()
    # Engines in a folder per file (by sha256): ONNX Runtime names them by the graph's shape, not its weights, and
    # per ONNX Runtime and TensorRT release: it reuses a cached engine without checking that they built it.
    root = cache_dir() / "onnxruntime-tensorrt"
    folder = root / f"{info.sha256[:16]}-ort{'.'.join(map(str, release))}-trt{tensorrt}"
    engines = timing = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        engines, timing = str(folder), str(root)
    except OSError:  # a read-only home: TensorRT then builds its engine at every session, which still works
        pass
    return provider_options(chosen, info.precision, engines, timing, device_id, image_size=info.input.image_size,
                            tensorrt_major=int(tensorrt.split(".")[0]), release=release)


def _ort_runner(info: ArtifactInfo, provider: str, device: str | None, model_bytes: bytes | None = None) -> Runner:
    from edgenode.runtime.onnx_runner import OnnxRuntimeRunner, available_providers

    require_onnxruntime()  # a missing runtime, like a missing provider: a folder's other artifacts still run
    providers = ort_providers(info, provider, available_providers(), device)
    return OnnxRuntimeRunner(info.path, providers, explicit=(provider or "auto") != "auto", model_bytes=model_bytes)


def _check_baked_mirror(info: ArtifactInfo, wanted: bool | None) -> None:
    """An export computes what it was exported to compute: asking it for the other thing is a one-line error."""
    if wanted is not None and info.mirror_average != wanted:
        state = "averages each picture with its mirror image" if info.mirror_average else "classifies each picture alone"
        fix = ("run it as it is (do not ask for one view), or re-export the checkpoint without --mirror-average"
               if info.mirror_average else "drop --mirror-average, or re-export the checkpoint with --mirror-average")
        raise UsageError(f"{info.path}: this {info.kind} {state}; that is baked into it", fix)


def _torch_device(path: Path, provider: str, device: str | None, cuda_available: bool) -> str:
    """The device a checkpoint runs on: ``device`` (e.g. ``cuda:1``) where given, which a provider other than
    auto must agree with (``cpu`` with ``cuda:1`` is a contradiction, not a choice)."""
    chosen = torch_device_for(provider, cuda_available)  # also refuses tensorrt, and cuda without a GPU
    if device is None:
        return chosen
    if (provider or "auto").lower() != "auto" and device.split(":", 1)[0] != chosen:
        raise UsageError(f"{path}: device {device!r} contradicts provider {provider!r}",
                         f"drop one of them, or pass a {chosen} device")
    return device


def load_predictor(path: str | os.PathLike, provider: str = "auto", device: str | None = None,
                   reference_solver: SolverConfig | None = None, mirror_average: bool | None = None) -> Predictor:
    """Load a checkpoint (.pt), ONNX file or TensorRT engine behind one :class:`Predictor` interface.

    ``provider`` is auto|tensorrt|cuda|cpu (ONNX Runtime providers; for a checkpoint, the torch device).
    ``reference_solver`` replaces a checkpoint's solver, e.g. ``SolverConfig("dopri5", rtol=1e-6, atol=1e-6)``
    for the reference of a parity check; exports have their steps baked in and refuse it.
    ``mirror_average=True`` makes a checkpoint classify each picture with its mirror image, as an export made
    with ``--mirror-average`` does; an export has its choice baked in and refuses the other one.
    """
    path = Path(path)
    kind = detect_kind(path)
    if reference_solver is not None and kind != "checkpoint":
        raise UsageError(f"{path}: a solver override only applies to a checkpoint; an exported {kind} has its steps baked in")
    if kind == "checkpoint":
        import torch

        from edgenode.checkpoint import load_checkpoint
        from edgenode.runtime.torch_runner import TorchRunner

        ckpt = load_checkpoint(path)
        model = ckpt.build_model()
        notes = []
        if mirror_average:
            model = model.with_mirror_average(True)
        if reference_solver is not None:
            model = model.with_solver(reference_solver)
            trained = ckpt.model_config.solver
            if trained != reference_solver:
                notes.append(f"solver {reference_solver.describe()} replaces the trained {trained.describe()}")
        runner = TorchRunner(model, _torch_device(path, provider, device, torch.cuda.is_available()))
        return Predictor(checkpoint_info(ckpt, reference_solver, bool(mirror_average)), runner, notes)
    if kind == "onnx":
        data = path.read_bytes()  # read once: the bytes whose sha256 is verified are the bytes that run
        info = onnx_info(path, data)
        _check_baked_mirror(info, mirror_average)
        return Predictor(info, _ort_runner(info, provider, device, data))
    if check_provider(provider) not in ("auto", "tensorrt"):
        raise UsageError(f"{path}: a TensorRT engine runs only on TensorRT, not on provider {provider!r}",
                         "use --provider auto, or run the matching .onnx file on that provider")
    if device and not device.startswith("cuda"):
        raise UsageError(f"{path}: a TensorRT engine runs on a CUDA GPU, not on device {device!r}",
                         "pass a cuda device (cuda:N), or run the matching .onnx file on the CPU")
    data = path.read_bytes()  # as for ONNX: the verified bytes are the ones deserialised
    info = engine_info(path, data)
    _check_baked_mirror(info, mirror_average)
    from edgenode.runtime.tensorrt_runner import TensorRTRunner

    return Predictor(info, TensorRTRunner(path, info.extra, engine_bytes=data, device=device))
