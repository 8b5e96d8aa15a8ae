"""The one interface every backend implements (Polygraphy's runner shape): ``infer(x) -> logits``.

A runner takes normalised float32 NCHW input and returns float32 ``(N, C)`` logits, whatever the graph's own
input dtype (FP16 graphs) or fixed batch size (a graph exported for batch 1 is fed in chunks, padded at the
end). It times each call (``last_inference_ms``: the backend's compute, not pre-processing), so every
artifact can be compared and benchmarked through the same object.
"""

from __future__ import annotations

import time

import numpy as np


class Runner:
    """Base class: subclasses set ``backend``/``provider`` and implement ``_run`` for one chunk."""

    backend: str = "?"  # torch | onnxruntime | tensorrt
    provider: str = "?"  # cpu | cuda | tensorrt
    fixed_batch: int | None = None  # the graph only accepts this batch size (None: any)
    max_batch: int | None = None  # the graph accepts at most this many (None: no limit)
    input_dtype = np.float32

    def __init__(self) -> None:
        self.last_inference_ms = 0.0
        self.total_inference_ms = 0.0
        self.calls = 0

    def describe(self) -> str:
        return f"{self.backend} ({self.provider})"

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _chunks(self, n: int) -> int | None:
        if self.fixed_batch:
            return self.fixed_batch
        return self.max_batch

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW in, float32 (N, C) logits out; timed as ``last_inference_ms``."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        n = x.shape[0]
        start = time.perf_counter()
        chunk = self._chunks(n)
        if chunk is None or n <= chunk and not self.fixed_batch:
            out = self._run(x)
        else:
            pieces = []
            for lo in range(0, n, chunk):
                part = x[lo : lo + chunk]
                if self.fixed_batch and len(part) < chunk:  # pad the ragged end for fixed-batch graphs
                    pad = np.zeros((chunk - len(part), *x.shape[1:]), dtype=x.dtype)
                    pieces.append(self._run(np.concatenate([part, pad]))[: len(part)])
                else:
                    pieces.append(self._run(part))
            out = np.concatenate(pieces) if pieces else np.zeros((0, 0), dtype=np.float32)
        self.last_inference_ms = (time.perf_counter() - start) * 1000.0
        self.total_inference_ms += self.last_inference_ms
        self.calls += 1
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Release the session/engine; the runner is unusable afterwards."""
