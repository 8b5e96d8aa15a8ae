"""Split arrays as normalised tensors, with the one normalisation every stage shares.

Training, export parity checks and on-device inference must feed a model the very same numbers, so the
formula lives here once: ``(x / 255 - mean) / std`` in float32, NCHW.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from edgenode.data.cache import load_split_arrays
from edgenode.data.manifest import Manifest


def normalize_array(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC (or one HWC image) to float32 NCHW ``(x / 255 - mean) / std``, all steps in float32.

    This is the numpy form used by runtimes without torch; ``normalize`` gives bit-identical values.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (N, H, W, 3) or (H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    mean32 = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    out = images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    out /= np.float32(255.0)  # in place: same float32 result as (x / 255 - mean) / std, a third of the memory
    out -= mean32
    out /= std32
    return out


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NHWC images to a normalised float32 NCHW tensor (see ``normalize_array``)."""
    return torch.from_numpy(normalize_array(images, mean, std))


def load_split(manifest: Manifest, root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (float32 N x 3 x H x W normalised with the manifest's mean/std, int64 labels N)."""
    images, labels = load_split_arrays(manifest, root, split)
    return normalize(images, manifest.mean, manifest.std), torch.from_numpy(labels)
