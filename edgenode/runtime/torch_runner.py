"""Runs a training checkpoint with torch: the reference side of every parity check.

The solver can be overridden (``dopri5`` at rtol=atol=1e-6 as the reference, ``rk4`` × N as the unrolled
twin of an export); the weights never change. ``nfe`` reports the function evaluations of the last call.
"""

from __future__ import annotations

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
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(x).to(self.device))
        self.nfe = int(getattr(self.model, "nfe", 0))
        return logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None
