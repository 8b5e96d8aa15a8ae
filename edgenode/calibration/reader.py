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
        self.batch_size = even_batch_size(len(images), batch_size)
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


def even_batch_size(count: int, wanted: int) -> int:
    """A batch size that divides ``count``: the largest up to ``wanted``, or, where that is under half of it (a
    prime count), the smallest above it.

    Every batch must be the same size: ONNX Runtime's histogram calibrators (entropy, percentile) stack the batches'
    outputs and fail on a short last batch; min-max is indifferent to the batching. Every calibrator keeps the
    outputs of all batches until it has seen the last, so a larger batch costs about one batch's activations more,
    while batches of one (what a prime count left) run several times slower.
    """
    wanted = max(1, int(wanted))
    below = max(d for d in range(1, min(wanted, count) + 1) if count % d == 0)
    if 2 * below > wanted or count <= wanted:
        return below
    return min(d for d in range(wanted, count + 1) if count % d == 0)

