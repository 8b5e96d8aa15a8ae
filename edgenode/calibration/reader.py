"""Feed calibration images to ONNX Runtime's calibrators.

ONNX Runtime accepts any object with ``get_next()`` as a ``CalibrationDataReader`` (its ABC has a
``__subclasshook__``), so this reader needs no onnxruntime import and the package stays light to import.
"""

from __future__ import annotations

import numpy as np


class ArrayCalibrationReader:
    """Yields ``{input_name: batch}`` dicts over float32 NCHW images, then None; ``rewind`` starts over."""

    def __init__(self, images: np.ndarray, input_name: str = "images", batch_size: int = 8):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"calibration images must be a non-empty N x C x H x W array, got shape {images.shape}")
        self.images = images
        self.input_name = input_name
        # Every batch the same size: ONNX Runtime's histogram calibrators (entropy, percentile) stack the batches'
        # outputs and fail on a short last batch; min-max is indifferent to the batching.
        wanted = max(1, int(batch_size))
        self.batch_size = max(d for d in range(1, wanted + 1) if len(images) % d == 0)
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.images):
            return None
        batch = self.images[self._start : self._start + self.batch_size]
        self._start += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._start = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)
