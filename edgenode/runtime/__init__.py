"""Run any artifact — checkpoint, ONNX (FP32/FP16/INT8) or TensorRT engine — through one interface.

``load_predictor(path)`` detects the kind from the file, reads its metadata (classes, input size,
normalisation, solver, precision) and picks a runner; every runner has ``infer(x) -> logits`` and
``last_inference_ms`` (Polygraphy's shape), so parity, verify and bench compare any pair.
"""

from edgenode.runtime.artifact import (
    ArtifactInfo,
    detect_kind,
    expect_kind,
    find_artifacts,
    golden_path,
)
from edgenode.runtime.predictor import FailedImage, Prediction, Predictor, load_predictor, softmax
from edgenode.runtime.preprocess import BatchLoader, collect_images, preprocess_image
from edgenode.runtime.providers import ProviderUnavailableError, select_providers

__all__ = [
    "ArtifactInfo",
    "BatchLoader",
    "FailedImage",
    "Prediction",
    "Predictor",
    "ProviderUnavailableError",
    "collect_images",
    "detect_kind",
    "expect_kind",
    "find_artifacts",
    "golden_path",
    "load_predictor",
    "preprocess_image",
    "select_providers",
    "softmax",
]
