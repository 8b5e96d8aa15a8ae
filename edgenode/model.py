"""NeuralODECNN: conv stem → ODE block → classifier head, and the registry of presets.

Presets:

``paper``
    The reference paper's network: BatchNorm stem 8→16→32 channels (state 32×16×16), an ODE function of two
    3×3 convs with BatchNorm, fixed Euler with 20 steps, a linear head on globally pooled features. Its
    outputs are plain logits (label-free argmax); the paper's label-conditioned CosFace head is not used.
``odenet`` (default)
    In the spirit of torchdiffeq's ODE-Net: GroupNorm everywhere (no running statistics shared across time
    steps), time as an extra input channel of each conv in f, adaptive dopri5.
``faceode``
    The distillation student: a GroupNorm stem to a 16×16 state, the ODE-Net function, and a head that ends in a
    128-d embedding (dlib's descriptor size) and a cosine classifier; RK4×2. Training may put CosFace's margin
    into its cross-entropy (``--margin``); the outputs stay plain scaled cosines, argmaxed without a label.
``faceode-res``
    ``faceode`` with three residual blocks beside the ODE block, at 64×64, 32×32 and 16×16 (``build_faceode_res``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
import math
from typing import Callable

import torch
from torch import nn

from edgenode.errors import UsageError
from edgenode.ode.solvers import SolverConfig, integrate_fixed


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; travels inside checkpoints and artifacts."""

    arch: str = "odenet"
    num_classes: int = 105
    width: int = 64
    solver: SolverConfig = field(default_factory=SolverConfig)
    dropout: float = 0.0
    # Inference only (export --mirror-average): classify the picture and its mirror image together. Training never
    # sets it; the flip is part of the deployed function, so it travels with the model like the solver does.
    mirror_average: bool = False

    def __post_init__(self):
        if self.arch not in MODEL_REGISTRY:
            raise UsageError(f"unknown model preset {self.arch!r}", f"choose one of {', '.join(MODEL_REGISTRY)}")
        if self.num_classes < 2:
            raise UsageError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.width < 4:
            raise UsageError(f"model width must be at least 4 channels, got {self.width}", "pass --width 4 or more")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}", "pass --dropout 0 up to below 1, e.g. 0.1")
        if not isinstance(self.mirror_average, bool):
            raise UsageError(f"mirror_average must be true or false, got {self.mirror_average!r}",
                             "re-export the artifact (export --mirror-average sets it)")

    def to_dict(self) -> dict:
        """The record stored in checkpoints and artifacts. ``mirror_average`` is written only when on, so that a
        plain model's record is what edgenode versions without the option wrote and can still read."""
        record = asdict(self)
        if not self.mirror_average:
            del record["mirror_average"]
        return record

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["solver"] = SolverConfig.from_dict(data.get("solver", {}))
        return cls(**data)


class ODEBlock(nn.Module):
    """Integrates dh/dt = f(t, h) over [0, 1] with the configured solver; counts function evaluations."""

    def __init__(self, func: nn.Module, solver: SolverConfig):
        super().__init__()
        self.func = func
        self.solver = solver
        self.nfe = 0  # function evaluations of the last forward pass

    def _f(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.func(t, h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.nfe = 0
        solver = self.solver
        if not solver.is_adaptive:
            return integrate_fixed(self._f, h, solver.n_steps, solver.method)
        import torchdiffeq

        odeint = torchdiffeq.odeint_adjoint if solver.adjoint else torchdiffeq.odeint
        t = torch.tensor([0.0, 1.0], dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        kwargs = {"adjoint_params": tuple(self.func.parameters())} if solver.adjoint else {}
        return odeint(self._f, h, t, rtol=solver.rtol, atol=solver.atol, method=solver.method, **kwargs)[-1]


class NeuralODECNN(nn.Module):
    def __init__(self, config: ModelConfig, stem: nn.Module, func: nn.Module, head: nn.Module):
        super().__init__()
        self.config = config
        self.stem = stem
        self.ode = ODEBlock(func, config.solver)
        self.head = head

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits; with ``return_features`` also the input of the final classifier layer (for distillation).

        One ``forward`` for both, so DistributedDataParallel sees every training pass.
        """
        if self.config.mirror_average:
            return self._mirror_averaged(x, return_features)
        if not return_features:
            return self.head(self.ode(self.stem(x)))
        features = self.head[:-1](self.ode(self.stem(x)))
        return features, self.head[-1](features)

    def _mirror_averaged(self, x: torch.Tensor, return_features: bool):
        """The picture and its left-right mirror image through the network as one batch of 2N, their features
        merged before the classifier: the output is exactly invariant to flipping the input, for twice the work.

        Faces are roughly left-right symmetric and training augments with flips, so the two views err differently
        and the merge corrects some errors (RESULTS.md: +1.0 pt test on the shipped model). One batch, not two
        passes, so an exported graph keeps one copy of every weight and its Conv count, and batch-1 inference runs
        as batch 2. A cosine classifier compares directions, so each view's feature is made unit length before the
        sum (the two views weigh the same); a linear classifier gets their mean, which averages the logits.
        """
        features = self.head[:-1](self.ode(self.stem(torch.cat([x, torch.flip(x, dims=[3])]))))
        # (2N, D) -> (2, N, D) with a constant target shape: shape inference (ONNX Runtime's INT8 pre-processing,
        # FLOP counts, TensorRT) follows a Reshape to [2, -1, D], where a Slice at a batch-dependent N is opaque
        views = features.reshape(2, -1, features.shape[1])
        plain, mirrored = views[0], views[1]
        if isinstance(self.head[-1], CosineClassifier):
            merged = unit_rows(plain) + unit_rows(mirrored)
        else:
            merged = (plain + mirrored) * 0.5
        logits = self.head[-1](merged)
        return (merged, logits) if return_features else logits

    @property
    def feature_dim(self) -> int:
        last = self.head[-1]
        return last.in_features

    @property
    def nfe(self) -> int:
        return self.ode.nfe

    def with_solver(self, solver: SolverConfig) -> "NeuralODECNN":
        """A copy sharing nothing mutable with ``self`` whose ODE block uses ``solver``."""
        clone = copy.deepcopy(self)
        clone.ode.solver = solver
        clone.config = replace(self.config, solver=solver)
        return clone

    def with_mirror_average(self, enabled: bool = True) -> "NeuralODECNN":
        """A copy sharing nothing mutable with ``self`` that classifies each picture together with its mirror
        image (``enabled``) or alone; see :meth:`_mirror_averaged`."""
        clone = copy.deepcopy(self)
        clone.config = replace(self.config, mirror_average=bool(enabled))
        return clone


# --- building blocks ------------------------------------------------------------------------------------


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups where the channels allow (one per channel below 32), else the largest divisor below 32."""
    if channels <= 32:
        return nn.GroupNorm(channels, channels)
    return nn.GroupNorm(max(g for g in range(1, 33) if channels % g == 0), channels)


class ConcatConv2d(nn.Module):
    """A 3×3 conv that sees time as one extra constant input channel (torchdiffeq's ODE-Net)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        time_channel = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([time_channel, x], dim=1))


class PaperODEFunc(nn.Module):
    """f(h) = BN(conv(ReLU(BN(conv(h))))): autonomous, BatchNorm statistics shared by every step."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.body(h)


class TimeConvODEFunc(nn.Module):
    """torchdiffeq ODE-Net's f: GN → ReLU → ConcatConv → GN → ReLU → ConcatConv → GN."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = group_norm(width)
        self.conv1 = ConcatConv2d(width, width)
        self.norm2 = group_norm(width)
        self.conv2 = ConcatConv2d(width, width)
        self.norm3 = group_norm(width)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, torch.relu(self.norm1(h)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


class ResidualBlock(nn.Module):
    """Pre-activation basic block, x + conv(ReLU(GN(conv(ReLU(GN(x)))))): depth with its own weights at one
    resolution, where the ODE block's depth is one weight-tied function."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  group_norm(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def pooled_linear_head(width: int, num_classes: int, dropout: float, pre: list[nn.Module]) -> nn.Sequential:
    layers = [*pre, nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class CosineClassifier(nn.Module):
    """logits = scale · cos(feature, class vector): a learnable nearest-class-mean head.

    Face embedders are compared by angle, so classifying by cosine lets the class vectors start at the
    teacher's class means and the student's features be trained to the teacher's directions.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) / math.sqrt(in_features))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cosines(x) * self.log_scale.exp()

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        return unit_rows(x) @ unit_rows(self.weight).t()

    def with_margin(self, logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
        """CosFace's additive margin, for training's cross-entropy only: scale · (cos − margin) for each row's
        true class, the other classes as they are.

        The loss then asks every picture to be ``margin`` closer in angle to its own class than to any other,
        which packs each identity tighter than plain cross-entropy does. Evaluation and every exported graph
        use the plain logits (no label enters them). The scale stays learned, as without a margin, and a margin
        pulls it down (RESULTS.md measured 9.5 against 15.3 in a CPU pilot): :meth:`fixed_scale_margin` fixes it.
        """
        if not margin:
            return logits
        penalty = nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype) * (margin * self.log_scale.exp())
        return logits - penalty

    def fixed_scale_margin(self, features: torch.Tensor, labels: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
        """CosFace as its paper writes it, at a fixed ``scale``: scale · (cos − margin · [true class]).

        Computed from the features, not from the logits, so that the learned scale gets no gradient from this
        loss at all (dividing it out of the logits would leave rounding residue, which Adam's normalised step
        turns into full-size steps). The learned scale then serves only the plain logits: the teacher's KL term,
        and nothing argmax sees.
        """
        cos = self.cosines(features).float()  # under autocast: the margin in float32, as for the plain logits
        return scale * (cos - nn.functional.one_hot(labels, cos.shape[1]).to(cos.dtype) * margin)


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` written with a broadcast multiply: F.normalize exports an ``Expand`` node with a
    data-dependent shape that ONNX Runtime's symbolic shape inference (run before INT8 quantisation) rejects."""
    return x * torch.rsqrt((x * x).sum(dim=1, keepdim=True).clamp_min(eps * eps))


# --- registry -------------------------------------------------------------------------------------------

Builder = Callable[[ModelConfig], NeuralODECNN]
MODEL_REGISTRY: dict[str, Builder] = {}
PRESET_DEFAULTS: dict[str, dict] = {}


def register_model(name: str, **defaults):
    def wrap(builder: Builder) -> Builder:
        MODEL_REGISTRY[name] = builder
        PRESET_DEFAULTS[name] = defaults
        return builder

    return wrap


@register_model("paper", width=32, solver=SolverConfig(method="euler", n_steps=20))
def build_paper(config: ModelConfig) -> NeuralODECNN:
    w = config.width
    stem = nn.Sequential(*conv_bn_relu(3, w // 4, 1), *conv_bn_relu(w // 4, w // 2, 2), *conv_bn_relu(w // 2, w, 2))
    head = pooled_linear_head(w, config.num_classes, config.dropout, pre=[])
    return NeuralODECNN(config, stem, PaperODEFunc(w), head)


@register_model("odenet", width=64, solver=SolverConfig(method="dopri5", rtol=1e-3, atol=1e-3))
def build_odenet(config: ModelConfig) -> NeuralODECNN:
    w = config.width
    stem = nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1),
        group_norm(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, w, 4, stride=2, padding=1),
        group_norm(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, w, 4, stride=2, padding=1),
    )
    head = pooled_linear_head(w, config.num_classes, config.dropout, pre=[group_norm(w), nn.ReLU(inplace=True)])
    return NeuralODECNN(config, stem, TimeConvODEFunc(w), head)


FACE_EMBEDDING_DIM = 128  # dlib's face descriptor


@register_model("faceode", width=128, solver=SolverConfig(method="rk4", n_steps=2))
def build_faceode(config: ModelConfig) -> NeuralODECNN:
    return _faceode(config, residual=False)


@register_model("faceode-res", width=128, solver=SolverConfig(method="rk4", n_steps=2))
def build_faceode_res(config: ModelConfig) -> NeuralODECNN:
    """``faceode`` with a residual block at 64×64, at 32×32 and at 16×16 after the ODE block: 6 convs with their own
    weights beside the 6 of the stem, ODE function and head. At width 128 and RK4×4 that is +18 % multiply-adds
    (1.50 G against 1.28 G; width 160 costs +56 %) and 1.12 M parameters (0.73 M; a block at 8×8 would add 1.2 M
    alone). Why: distilled students fit the teacher's descriptors only to a cosine of ~0.72 on their own train
    images; width 160 moved that by +0.03 (RESULTS.md), so depth is the capacity lever left to measure."""
    return _faceode(config, residual=True)


def _faceode(config: ModelConfig, residual: bool) -> NeuralODECNN:
    w = config.width

    def block(channels: int) -> list[nn.Module]:
        return [ResidualBlock(channels)] if residual else []

    stem = nn.Sequential(
        nn.Conv2d(3, w // 4, 3, padding=1),  # 64×64
        *block(w // 4),
        group_norm(w // 4),
        nn.ReLU(inplace=True),
        nn.Conv2d(w // 4, w // 2, 3, stride=2, padding=1),  # 32×32
        *block(w // 2),
        group_norm(w // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(w // 2, w, 3, stride=2, padding=1),  # 16×16: the ODE state
    )
    head = [*block(w), group_norm(w), nn.ReLU(inplace=True), nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # 8×8
            group_norm(2 * w), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if config.dropout:
        head.append(nn.Dropout(config.dropout))
    head += [nn.Linear(2 * w, FACE_EMBEDDING_DIM), CosineClassifier(FACE_EMBEDDING_DIM, config.num_classes)]
    return NeuralODECNN(config, stem, TimeConvODEFunc(w), nn.Sequential(*head))


def preset_config(arch: str, num_classes: int, **overrides) -> ModelConfig:
    """The preset's defaults (width, solver) with explicit ``overrides`` (None means 'keep the default')."""
    if arch not in MODEL_REGISTRY:
        raise UsageError(f"unknown model preset {arch!r}", f"choose one of {', '.join(MODEL_REGISTRY)}")
    values = dict(PRESET_DEFAULTS[arch])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(arch=arch, num_classes=num_classes, **values)


def build_model(config: ModelConfig) -> NeuralODECNN:
    return MODEL_REGISTRY[config.arch](config)


def rename_weights(state: dict, source: ModelConfig, target: ModelConfig) -> dict:
    """``state``, the weights of a network built from ``source``, under the names its twin built from ``target`` uses.

    Presets add their ``nn.Dropout`` only when dropout is above 0, which shifts the index of every later layer of
    the head (``head.8.weight`` without dropout is ``head.9.weight`` with it). A dropout layer holds no weights, so
    the two networks hold the same tensors in the same order; only the names differ. ``train --init`` and weight
    averaging allow another dropout and use this. Anything else that differs is left for ``load_state_dict`` to
    refuse, so the names are changed only where the two networks list the same shapes in the same order.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # shapes only: no memory, the caller's RNG untouched
        names_from = build_model(source).state_dict()
        names_to = build_model(target).state_dict()
    if list(names_from) == list(names_to) or set(state) != set(names_from):
        return state
    shapes_from = [tuple(t.shape) for t in names_from.values()]
    if len(names_from) != len(names_to) or shapes_from != [tuple(t.shape) for t in names_to.values()]:
        return state
    return {new: state[old] for old, new in zip(names_from, names_to)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
