"""`edgenode train`: train a NeuralODECNN on a folder of identities (paper hyper-parameters by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import existing_path, output_folder, user_errors


@user_errors
def command(
    data: Annotated[Path, typer.Argument(help="Folder of identity sub-folders (images/<identity>/… or pins_<identity>/…).")],
    out: Annotated[Path, typer.Option(help="Run folder: manifest, checkpoints, metrics, plots.")] = Path("runs/train"),
    arch: Annotated[str, typer.Option(help="Model preset: odenet (GroupNorm, dopri5), paper (BatchNorm, Euler 20), faceode (128-d embedding, RK4×2; distillable) or faceode-res (faceode with three residual blocks).")] = "odenet",
    width: Annotated[Optional[int], typer.Option(help="Channels of the ODE state (preset default if unset).")] = None,
    solver: Annotated[Optional[str], typer.Option(help="Adaptive: dopri5 | bosh3 | adaptive_heun | dopri8; fixed-step: euler | midpoint | rk4 | rk4_38 (preset default if unset).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Steps of a fixed-step solver.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance of an adaptive solver.")] = None,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance of an adaptive solver.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    schedule: Annotated[str, typer.Option(help="constant | cosine.")] = "constant",
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.")] = 0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of the cross-entropy.")] = 0.0,
    margin: Annotated[float, typer.Option(help="CosFace's additive margin in the labels' cross-entropy, in cosine (e.g. 0.2): training asks each picture to be that much closer to its own class than to any other; evaluation and export stay plain argmax. Needs a cosine head (--arch faceode or faceode-res). 0: none.")] = 0.0,
    margin_scale: Annotated[float, typer.Option(help="Fixed scale of --margin's cross-entropy, as CosFace fixes it (e.g. 30); 0: the head's learned scale, which a margin pulls down.")] = 0.0,
    augment: Annotated[bool, typer.Option(help="Random flips and shifts.")] = False,
    augment_shift: Annotated[float, typer.Option(help="Largest shift of --augment, a fraction of the side (0.125 = 8 px at 64; 0 = flips only).")] = 0.125,
    augment_color: Annotated[float, typer.Option(help="Colour jitter of --augment: brightness, contrast and saturation within ±this fraction, grayscale with probability half of it (0 = none).")] = 0.0,
    dropout: Annotated[float, typer.Option(help="Dropout before the linear head.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and every epoch.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    manifest: Annotated[Optional[Path], typer.Option(help="Reuse this split manifest instead of building one.")] = None,
    per_class: Annotated[int, typer.Option(help="Images selected per identity.")] = 86,
    train_per_class: Annotated[int, typer.Option("--train-per-class", help="Train images per identity.")] = 60,
    val_per_class: Annotated[int, typer.Option("--val-per-class", help="Validation images per identity.")] = 17,
    test_per_class: Annotated[int, typer.Option("--test-per-class", help="Test images per identity.")] = 9,
    image_size: Annotated[int, typer.Option(help="Side of the square model input, pixels.")] = 64,
    strict: Annotated[bool, typer.Option(help="Fail instead of excluding identities with too few images.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last.pt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher descriptors (.npz from `edgenode teacher`) to distil; needs --arch faceode or faceode-res.")] = None,
    label_weight: Annotated[float, typer.Option(help="Weight of the cross-entropy on the labels; 0 (with --teacher): learn from the teacher alone.")] = 1.0,
    distill_weight: Annotated[float, typer.Option(help="Weight of the 1 - cos(student, teacher descriptor) loss.")] = 1.0,
    kd_weight: Annotated[float, typer.Option(help="Weight of the KL loss to the teacher's class probabilities (or to --kd-targets).")] = 1.0,
    kd_temperature: Annotated[float, typer.Option(help="Temperature T of that KL: teacher and student at logits / T, the loss times T² (Hinton); 1: none.")] = 1.0,
    kd_targets: Annotated[Optional[Path], typer.Option(help="Class log-probabilities per file (.npz, e.g. an ensemble's from examples/ensemble_targets.py) for that KL loss instead of the teacher's.")] = None,
    teacher_views: Annotated[Optional[Path], typer.Option(help="A bank of the teacher's descriptors of augmented views (.npz from `edgenode teacher-views`): each epoch shows one of its views of each picture and distils that view's own descriptor; needs --teacher and --augment with the bank's shift and colour.")] = None,
    unlabeled: Annotated[bool, typer.Option(help="Also train on the unused images (minus near-duplicates of val/test) with teacher targets.")] = False,
    near_duplicates: Annotated[Optional[Path], typer.Option(help="With --unlabeled: TSV of near-duplicate pairs (file_a, file_b, hamming) to clean the pool of; computed with dHash if unset.")] = None,
    amp: Annotated[bool, typer.Option(help="bfloat16 autocast for training passes on CUDA.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from this checkpoint's weights (fine-tune; the solver may differ).")] = None,
    stop_after: Annotated[Optional[int], typer.Option(help="End this call after that epoch of the --epochs schedule (a time-boxed machine); the same command with --resume continues the run exactly.")] = None,
    ema_decay: Annotated[float, typer.Option(help="Also keep a moving average of the weights with this decay per step (e.g. 0.998; ramped up as min(decay, (1+t)/(10+t)) at step t), scored on val every epoch beside the trained weights and saved as best-ema.pt; the trained weights are unchanged, and each epoch costs one more val pass. 0: none.")] = 0.0,
) -> None:
    """Train a NeuralODECNN; writes best.pt, last.pt, metrics and curves into --out."""
    from edgenode.data import SplitConfig
    from edgenode.errors import UsageError
    from edgenode.train import TrainConfig, train

    output_folder(out)
    for path, option in ((teacher, "--teacher"), (near_duplicates, "--near-duplicates"), (init, "--init"), (kd_targets, "--kd-targets"),
                         (teacher_views, "--teacher-views")):
        if path is not None:
            existing_path(path, option, folder=False)
    try:
        split = SplitConfig(per_class=per_class, train=train_per_class, val=val_per_class, test=test_per_class, image_size=image_size, seed=seed, strict=strict)
    except UsageError as exc:
        if manifest is None:
            raise
        # with --manifest the split options are only compared with it (train.refuse_other_split_options): their
        # own consistency is not the error to report
        raise UsageError(f"--manifest {manifest} fixes the split, and the split options given do not describe one "
                         f"({exc.message})", "drop the split options: the manifest's are used") from None
    config = TrainConfig(
        data=str(data), out=str(out), arch=arch, width=width, solver=solver, steps=steps, rtol=rtol, atol=atol,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, margin=margin, margin_scale=margin_scale, augment=augment, augment_shift=augment_shift,
        augment_color=augment_color,
        dropout=dropout, seed=seed,
        device=device, split=split, manifest=str(manifest) if manifest else None, resume=resume, progress=progress,
        teacher=str(teacher) if teacher else None, label_weight=label_weight, distill_weight=distill_weight, kd_weight=kd_weight, kd_temperature=kd_temperature,
        kd_targets=str(kd_targets) if kd_targets else None, teacher_views=str(teacher_views) if teacher_views else None,
        unlabeled=unlabeled, near_duplicates=str(near_duplicates) if near_duplicates else None, amp=amp,
        init=str(init) if init else None, stop_after=stop_after, ema_decay=ema_decay,
    )
    train(config)
