"""An exponential moving average of a model's weights, measured beside the trained weights at no cost to them.

The average is a shadow copy of the network, updated after every optimizer step. It draws no random numbers and
never feeds back into training, so a run with ``--ema-decay`` trains exactly the weights it would train without
one, and reports both: the comparison costs one more validation pass an epoch, not another run, and is paired
image by image.

Why it may pay here: the runs choose their checkpoint by val accuracy, which moves by a point from epoch to epoch
while the learning rate is still high; an average over the last few hundred steps is a smoother point of the same
trajectory. Near the end of a cosine schedule, where the steps are already tiny, it should change little.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``shadow ← d·shadow + (1 − d)·weights`` after each step, with ``d = min(decay, (1 + t) / (10 + t))``.

    The ramp (``t`` counts the updates) keeps the first steps' average from clinging to the random initialisation:
    at ``decay = 0.998`` the full decay is reached after about 4,500 steps, and until then the average spans
    roughly the steps trained so far divided by nine. Integer buffers (e.g. a BatchNorm's step counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        # state_dict() tensors share storage with the modules' own, and training updates those in place
        live, shadow = model.state_dict(), self.model.state_dict()
        floats = {name for name, value in shadow.items() if value.is_floating_point()}
        self._live = [live[name] for name in shadow if name in floats]
        self._shadow = [shadow[name] for name in shadow if name in floats]
        self._copied = [(shadow[name], live[name]) for name in shadow if name not in floats]

    def decay_at(self, updates: int) -> float:
        """The decay of update number ``updates`` (counted from 0 over the whole run, resumed or not)."""
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, updates: int) -> None:
        torch._foreach_lerp_(self._shadow, self._live, 1.0 - self.decay_at(updates))
        for shadow, live in self._copied:
            shadow.copy_(live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)  # copies into the shadow's tensors: the cached lists stay valid
