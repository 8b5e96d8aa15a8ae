"""Host-to-device copies that do not make the CPU wait for the GPU.

A training step on a small network is a long queue of short kernels; the CPU only keeps the GPU busy if it can
run ahead and queue the next step's kernels while the GPU works through this one's. A plain
``cpu_tensor.to("cuda")`` copies from pageable memory and returns only once the copy is done, and the copy waits
for everything already queued: one such copy per step and the CPU's Python time and the GPU's kernel time add up
instead of overlapping. So the training loop computes what it can on the CPU (shuffles, masks, counts, the
random views of the augmentation) and sends it with :func:`to_device`, which copies from page-locked memory
without blocking.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``; to a CUDA device asynchronously, so the CPU does not wait.

    The copy is ordered on the current stream like any kernel, so later kernels see it complete; PyTorch's pinned
    memory allocator keeps the page-locked staging buffer alive until the copy has run."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
