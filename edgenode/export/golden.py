"""Golden samples: a few inputs and the logits they gave at export time, for on-device verification.

Beside each exported ONNX file ``X.onnx`` we write ``X.onnx.golden.npz`` (the sidecar convention: the
artifact's full name plus a suffix) holding

``inputs``            float32 N x 3 x H x W, normalised validation images (what the model is fed),
``logits``            float32 N x C, what ONNX Runtime on the CPU gave for *this* artifact at export time,
``reference_logits``  float32 N x C, the torch FP32 unrolled model.

``edgenode verify`` replays ``inputs`` on the device and compares with both: ``logits`` separates a broken
runtime from expected precision loss, ``reference_logits`` bounds the total error. The file name is
recorded in the artifact metadata (``extra["golden"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgenode.artifacts import atomic_path

GOLDEN_COUNT = 8
GOLDEN_SUFFIX = ".golden.npz"


def golden_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + GOLDEN_SUFFIX)


def write_golden(artifact: str | os.PathLike, inputs: np.ndarray, logits: np.ndarray, reference_logits: np.ndarray) -> Path:
    path = golden_path(artifact)
    arrays = {
        "inputs": np.ascontiguousarray(inputs, dtype=np.float32),
        "logits": np.ascontiguousarray(logits, dtype=np.float32),
        "reference_logits": np.ascontiguousarray(reference_logits, dtype=np.float32),
    }
    if not len(arrays["inputs"]) == len(arrays["logits"]) == len(arrays["reference_logits"]):
        raise ValueError("golden inputs and logits must have the same number of rows")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def read_golden(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in ("inputs", "logits", "reference_logits")}
