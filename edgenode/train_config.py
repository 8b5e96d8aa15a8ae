"""What a training run is asked to do: ``TrainConfig``, checked whole before any data is read.

Its fields are the command line of ``edgenode train`` (the CLI is a thin layer over it); the run records it in
every checkpoint, and ``--resume`` compares it with the one it started with (:mod:`edgenode.resume`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edgenode import data as edata
from edgenode.errors import UsageError
from edgenode.model import ModelConfig, preset_config
from edgenode.ode.solvers import FIXED_STEP_METHODS, FLOAT32_EPS, SolverConfig

SCHEDULES = ("constant", "cosine")
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer keeps --lr in float32


@dataclass(frozen=True)
class TrainConfig:
    """Paper hyper-parameters by default: batch 32, 60 epochs, AdamW lr 5e-4, weight decay 0.05."""

    data: str
    out: str = "runs/train"
    arch: str = "odenet"
    width: int | None = None
    solver: str | None = None  # None: the preset's solver
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    epochs: int = 60
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    schedule: str = "constant"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    margin: float = 0.0  # CosFace's additive margin in the labels' cross-entropy (cosine heads only); 0: none
    margin_scale: float = 0.0  # that cross-entropy's fixed scale, as CosFace fixes it; 0: the head's learned scale
    augment: bool = False
    augment_shift: float = 0.125  # largest random shift of --augment, as a fraction of the side (0: mirror only)
    augment_color: float = 0.0  # photometric jitter of --augment (see jitter_colors); 0: none, the behaviour so far
    dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    split: edata.SplitConfig = field(default_factory=edata.SplitConfig)
    manifest: str | None = None
    resume: bool = False
    table_every: int = 5
    progress: bool = True
    teacher: str | None = None  # .npz of teacher descriptors: distil them (see edgenode.distill)
    label_weight: float = 1.0  # weight of the cross-entropy on the labels; 0 with --teacher: learn from the teacher alone
    distill_weight: float = 1.0  # weight of 1 - cos(student features, teacher descriptor)
    kd_weight: float = 1.0  # weight of KL(teacher class probabilities || student's)
    kd_temperature: float = 1.0  # that KL between both at logits / T, times T² (Hinton); 1: the teacher's fitted scale
    kd_targets: str | None = None  # .npz of class log-probabilities per file to use in that KL instead of the teacher's
    teacher_views: str | None = None  # .npz of `edgenode teacher-views`: train on its views, towards their own descriptors
    unlabeled: bool = False  # also train on the manifest's unused images, teacher targets only
    near_duplicates: str | None = None  # tsv of near-duplicate pairs; None: computed with dHash
    amp: bool = False  # bfloat16 autocast for training passes on CUDA (evaluation stays float32)
    init: str | None = None  # start from this checkpoint's weights (same preset, width, classes); fresh optimizer
    stop_after: int | None = None  # end this call after that epoch of the --epochs schedule; --resume continues it
    ema_decay: float = 0.0  # also keep a moving average of the weights (edgenode.ema), scored on val beside them; 0: none

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= FLOAT32_MAX):
            raise UsageError(f"--lr {self.lr}: the learning rate must be a finite number > 0", "pass e.g. --lr 5e-4 (the paper's)")
        if not 0 <= self.seed < 2**32:  # each epoch seeds torch with seed × 1,000,003 + …, which must stay in its range
            raise UsageError(f"--seed {self.seed}: must be in [0, 2**32)", "pass e.g. --seed 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay {self.weight_decay}: must be a finite number >= 0",
                             "pass e.g. --weight-decay 0.05 (the paper's), or 0 for none")
        if self.warmup_epochs < 0:
            raise UsageError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}", "pass e.g. 2, or 0 for none")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:  # the learning rate would never reach --lr
            raise UsageError(f"--warmup-epochs {self.warmup_epochs} is not shorter than --epochs {self.epochs}: the "
                             "learning rate would never reach --lr", f"pass --warmup-epochs {self.epochs - 1} or fewer (0: none)")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}", f"choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.augment_shift <= 0.5:  # a NaN fails here too
            raise UsageError(f"--augment-shift must be a fraction of the image side in [0, 0.5], got {self.augment_shift}",
                             "e.g. 0.125 (8 px at 64) or 0.03 (2 px) for aligned face chips")
        if self.augment_shift != 0.125 and not self.augment:
            raise UsageError("--augment-shift sets the shift of --augment, which is off", "add --augment or drop it")
        if not 0 <= self.augment_color <= 1:  # a NaN fails here too
            raise UsageError(f"--augment-color must be a strength in [0, 1], got {self.augment_color}",
                             "e.g. 0.4: brightness, contrast and saturation within ±40 %, one view in five grayscale")
        if self.augment_color and not self.augment:
            raise UsageError("--augment-color sets the colour jitter of --augment, which is off", "add --augment or drop it")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}", "pass e.g. 0.1, or 0 for none")
        if not 0 <= self.margin < 1:  # a NaN fails here too
            raise UsageError(f"--margin must be a cosine margin in [0, 1), got {self.margin}",
                             "pass e.g. 0.2 (CosFace uses 0.35 at scale 64), or 0 for none")
        if self.margin:
            self._require_cosine_head("--margin", "no cosine classifier to put a margin into", ", or drop --margin")
            if not self.label_weight:
                raise UsageError("--margin sets the labels' cross-entropy, which --label-weight 0 switches off",
                                 "drop --margin or keep the labels' weight")
        if not (math.isfinite(self.margin_scale) and 0 <= self.margin_scale <= 128):
            raise UsageError(f"--margin-scale must be a scale in [0, 128], got {self.margin_scale}",
                             "pass e.g. 30 (CosFace uses 30 to 64), or 0 for the head's learned scale")
        if self.margin_scale and not self.margin:
            raise UsageError(f"--margin-scale {self.margin_scale} fixes the scale of --margin's cross-entropy, but --margin is 0",
                             "add --margin (e.g. 0.2) or drop --margin-scale")
        for name in ("label_weight", "distill_weight", "kd_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}",
                                 "pass 0 to switch the term off, or a positive weight")
        if self.teacher:
            self._require_cosine_head("--teacher", "no embedding head to distil into")
        if not self.label_weight and not (self.teacher and (self.distill_weight or self.kd_weight)):
            raise UsageError("--label-weight 0 leaves nothing to learn from: no teacher, or its weights are 0 too",
                             "pass --teacher teacher.npz with --distill-weight or --kd-weight above 0, or keep the labels' weight")
        if self.unlabeled and not self.teacher:
            raise UsageError("--unlabeled needs --teacher: unlabelled images can only learn from the teacher's targets",
                             "pass --teacher teacher.npz (see `edgenode teacher`)")
        if self.kd_targets and not self.teacher:
            raise UsageError("--kd-targets needs --teacher: it replaces the class probabilities of the teacher's "
                             "distillation, whose descriptors still train the features", "add --teacher teacher.npz")
        if not (math.isfinite(self.kd_temperature) and 0 < self.kd_temperature <= 100):
            raise UsageError(f"--kd-temperature must be in (0, 100], got {self.kd_temperature}",
                             "pass e.g. 4 to soften the teacher's probabilities, or 1 for none")
        if self.kd_temperature != 1.0 and not (self.teacher and self.kd_weight):
            raise UsageError(f"--kd-temperature {self.kd_temperature} softens the KL term to the teacher's class "
                             "probabilities, which needs --teacher and a --kd-weight above 0",
                             "add --teacher teacher.npz, or drop --kd-temperature")
        if self.kd_targets and not self.kd_weight:
            raise UsageError("--kd-targets is only used by the KL term, which --kd-weight 0 switches off",
                             "drop --kd-targets or set --kd-weight above 0")
        if self.teacher_views and not (self.teacher and self.augment):
            raise UsageError("--teacher-views replaces the targets of --augment's views with the teacher's descriptors of "
                             "them: it needs --teacher (class means, centre, temperature) and --augment",
                             "add --teacher teacher.npz --augment, with the bank's --augment-shift/--augment-color")
        if self.teacher_views and self.kd_targets:
            raise UsageError("--teacher-views and --kd-targets: stored class probabilities describe the unaugmented "
                             "pictures, not the bank's views", "drop one of them")
        if self.near_duplicates and not self.unlabeled:
            raise UsageError("--near-duplicates is only used to clean the --unlabeled pool", "add --unlabeled or drop it")
        if not 0 <= self.ema_decay < 1:  # a NaN fails here too
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}",
                             "e.g. 0.998: an average over about the last 500 steps once its ramp is done; 0 keeps no average")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.epochs:
            raise UsageError(f"--stop-after {self.stop_after}: must be an epoch of the schedule, 1 to --epochs {self.epochs}",
                             "e.g. --epochs 200 --stop-after 120 now, then the same command with --resume instead of --stop-after")
        self.model_config(num_classes=2)  # fail on a bad preset or solver now, not after reading the data

    def _require_cosine_head(self, option: str, lacks: str, alternative: str = "") -> None:
        """Refuse ``option`` for a preset without the embedding → cosine-classifier head it works on."""
        from edgenode.distill import DISTILLABLE_PRESETS

        if self.arch not in DISTILLABLE_PRESETS:
            raise UsageError(f"{option}: the {self.arch!r} preset has {lacks}",
                             f"use --arch {' or '.join(DISTILLABLE_PRESETS)}{alternative}")

    def model_config(self, num_classes: int) -> ModelConfig:
        base = preset_config(self.arch, num_classes, width=self.width, dropout=self.dropout)
        solver = base.solver
        overrides = {k: v for k, v in dict(method=self.solver, n_steps=self.steps, rtol=self.rtol, atol=self.atol).items() if v is not None}
        if overrides:
            solver = SolverConfig(**{**solver.to_dict(), **overrides})
        # an option the solver does not read would be recorded in every checkpoint as if it had been trained with
        if self.steps is not None and solver.is_adaptive:
            raise UsageError(f"--steps {self.steps}: {solver.method} is adaptive and chooses its own steps",
                             f"drop --steps, or pass a fixed-step --solver: {', '.join(FIXED_STEP_METHODS)}")
        unread = [f"--{name} {value}" for name, value in (("rtol", self.rtol), ("atol", self.atol)) if value is not None]
        if unread and not solver.is_adaptive:
            raise UsageError(f"{' '.join(unread)}: {solver.method} × {solver.n_steps} takes fixed steps, with no tolerance",
                             "drop them, or pass an adaptive --solver such as dopri5")
        if solver.is_adaptive and max(solver.rtol, solver.atol) < FLOAT32_EPS:  # its step size would underflow
            raise UsageError(f"--rtol {solver.rtol:g} --atol {solver.atol:g}: training runs in float32, which resolves "
                             f"no error below {FLOAT32_EPS:.1e}", "pass tolerances of 1e-6 or more (the presets use 1e-3)")
        return ModelConfig(**{**base.__dict__, "solver": solver})

    def to_dict(self) -> dict:
        out = asdict(self)
        out["split"] = self.split.to_dict()
        return out
