"""Training's augmentation, drawn and applied in two steps, so that a view can be replayed exactly.

``edgenode train --augment`` draws a random view of each picture every epoch (:func:`augment`,
:func:`jitter_colors`). A bank of teacher descriptors of augmented views (``edgenode.view_bank``) needs the same
views again at training time: it stores the drawn parameters (:class:`ViewParams`) and the training step rebuilds
each view with :func:`apply_view`. Both paths run the same code, and drawing a view uses the random generator
exactly as the one-step functions always have, so seeded runs are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgenode.transfer import to_device


@dataclass
class ViewParams:
    """The random choices of one augmented view per picture (all tensors of length n, on the CPU).

    ``dy``/``dx`` are the crop's offsets into the picture reflect-padded by ``pad`` pixels (``pad`` 0: no shift);
    ``colors`` holds brightness, contrast and saturation factors (n, 3) and ``gray`` whether the view is turned to
    grayscale, or both are None without colour jitter.
    """

    flip: torch.Tensor
    pad: int
    dy: torch.Tensor
    dx: torch.Tensor
    colors: torch.Tensor | None = None
    gray: torch.Tensor | None = None


def shift_pad(side: int, shift: float) -> int:
    """The reflect padding (= the largest shift, in pixels) of ``--augment-shift shift`` on a ``side``-px picture."""
    return 0 if shift == 0 else max(1, int(side * shift))


def draw_view(n: int, side: int, generator: torch.Generator, shift: float = 0.125, color: float = 0.0) -> ViewParams:
    """Random view parameters for n pictures of ``side`` px, drawn in the order :func:`augment` then
    :func:`jitter_colors` always drew them (flip, dy, dx; brightness, contrast, saturation, grayscale)."""
    flip = torch.rand(n, generator=generator) < 0.5
    pad = shift_pad(side, shift)
    if pad:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64)
    colors, gray = _draw_colors(n, generator, color) if color else (None, None)
    return ViewParams(flip, pad, dy, dx, colors, gray)


def _draw_colors(n: int, generator: torch.Generator, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(brightness, contrast, saturation factors (n, 3), grayscale (n,)) of :func:`jitter_colors`."""
    colors = torch.stack([1 + strength * (2 * torch.rand(n, generator=generator) - 1) for _ in range(3)], dim=1)
    return colors, torch.rand(n, generator=generator) < strength / 2


def apply_view(x: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """The views ``params`` describes of the pictures ``x`` (n, 3, h, w), pixels in [0, 1].

    The parameters travel to ``x``'s device without a wait (:func:`edgenode.transfer.to_device`), and each picture's
    crop is one gather for the whole batch: a GPU training step never stops here for the CPU."""
    n, device = x.shape[0], x.device
    x = torch.where(to_device(params.flip, device).view(n, 1, 1, 1), x.flip(3), x)
    if params.pad:
        c, h, w = x.shape[1:]
        padded = F.pad(x, (params.pad,) * 4, mode="reflect")
        dy, dx = to_device(params.dy, device), to_device(params.dx, device)
        rows = (dy.view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=device)).view(n, 1, 1, w)
        x = padded[torch.arange(n, device=device).view(n, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1), rows, cols]
    if params.colors is not None:
        x = _apply_colors(x, to_device(params.colors, device), to_device(params.gray, device))
    return x


def augment(x: torch.Tensor, generator: torch.Generator, shift: float = 0.125) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``shift`` of the side (reflect-padded crop).

    The shift matters for distillation: the teacher's targets are computed on the unshifted picture, and on aligned
    face chips a shift of up to 1/8 moves the teacher's own descriptor to a mean cosine of 0.72 from that target
    (its accuracy on the shifted views falls from 0.98 to 0.82), while 2 px keep it at 0.92 (RESULTS.md,
    examples/teacher_consistency.py). A bank of the teacher's descriptors of the views themselves
    (``edgenode teacher-views``) gives targets that match.
    """
    return apply_view(x, draw_view(x.shape[0], x.shape[-2], generator, shift))


def jitter_colors(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation, each scaled by a factor in [1 - s, 1 + s], then grayscale with
    probability s / 2; ``x`` holds pixels in [0, 1].

    Why: the aligned model's test errors are hard pictures, several of them hard light (shadows, grayscale
    photographs, sunglasses), and once it fits its train labels its augmentation is what regularises it (RESULTS.md:
    2-px shifts, which keep the teacher's targets valid, did no better than 8-px ones). A face embedder barely
    changes its descriptor under such colour changes, so the stored targets stay valid for these views
    (examples/teacher_consistency.py).
    """
    colors, gray = _draw_colors(x.shape[0], generator, strength)
    return _apply_colors(x, to_device(colors, x.device), to_device(gray, x.device))


def _apply_colors(x: torch.Tensor, colors: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]

    def luma(images: torch.Tensor) -> torch.Tensor:  # ITU-R BT.601, as PIL's convert("L")
        return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)

    brightness, contrast, saturation = (colors[:, k].view(n, 1, 1, 1) for k in range(3))
    x = x * brightness
    mean = luma(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grayscale = luma(x)
    x = (x - grayscale) * saturation + grayscale
    x = torch.where(gray.view(n, 1, 1, 1), luma(x).expand_as(x), x)
    return x.clamp_(0, 1)
