"""Runs a training checkpoint with torch: the reference side of every parity check.

The solver can be overridden (``dopri5`` at rtol=atol=1e-6 as the reference, ``rk4`` × N as the unrolled
twin of an export); the weights never change. ``nfe`` reports the function evaluations of the last call.
On CUDA it computes in IEEE float32: PyTorch lets cuDNN run float32 convolutions in TF32 (a 10-bit mantissa, about
1e-3 relative error) by default, which would put that error into the reference and into parity's "export" stage.
"""

from __future__ import annotations

import contextlib

import numpy as np

from edgenode.runtime.base import Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model, device: str = "cpu"):
        super().__init__()
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.provider = self.device.type
        self.nfe = 0

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        exact = ieee_float32(torch) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), exact:
            logits = self.model(torch.from_numpy(x).to(self.device))
        self.nfe = int(getattr(self.model, "nfe", 0))
        return logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None


@contextlib.contextmanager
def ieee_float32(torch):
    """No TF32 in CUDA convolutions and matmuls while it lasts (the previous settings restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
