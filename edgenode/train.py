"""Training: ``train(TrainConfig) -> TrainResult``.

Design points:
- Every epoch is seeded from (seed, epoch) alone — the shuffle, augmentation and dropout — so resuming from
  ``last.pt`` at an epoch boundary continues exactly as an uninterrupted run would.
- Checkpoints are written atomically (``last.pt`` every epoch, ``best.pt`` on a new best val accuracy), as
  are the metrics files, so a crash at any point loses at most the epoch in progress.
- Under ``torchrun`` (WORLD_SIZE > 1) each global batch is split across the ranks and gradients are averaged by
  DistributedDataParallel: the same global batch gives the same update as one process. Rank 0 alone logs
  and writes files.

Beside it: what a run is asked to do (:mod:`edgenode.train_config`), what ``--resume`` restores and checks
(:mod:`edgenode.resume`), the metrics files (:mod:`edgenode.run_history`) and the unlabelled pool
(:mod:`edgenode.data.pool`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.markup import escape
from torch import nn

from edgenode import data as edata
from edgenode.artifacts import sha256_file, write_json
from edgenode.augment import apply_view, augment, jitter_colors
from edgenode.checkpoint import Checkpoint, InputSpec, load_checkpoint, save_checkpoint
from edgenode.console import console, progress_bar
from edgenode.data.pool import load_unlabeled_pool
from edgenode.distributed import DistContext, init_distributed
from edgenode.errors import EdgenodeError, NumericError, UsageError
from edgenode.metrics import ClassificationMetrics, format_accuracy
from edgenode.model import ModelConfig, NeuralODECNN, build_model, count_parameters, rename_weights
from edgenode.resume import HASHED_INPUTS, RunProgress, restore_run, weight_average
from edgenode.run_history import epoch_row, table_one, write_history
from edgenode.run_lock import LOCK_NAME, hold_run_folder
from edgenode.train_config import TrainConfig  # re-exported: the training API is train(TrainConfig)
from edgenode.transfer import to_device

UNLABELLED = -1  # label of pool images: they learn from the teacher's targets only


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val_accuracy: float
    test: dict[str, Any]
    history: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for, but CUDA is not available here", "use --device cpu")
    return device


# --- data on the device -----------------------------------------------------------------------------------


class DeviceSplit:
    """One split as uint8 NCHW on the device; batches are normalised (and augmented) on the fly."""

    def __init__(self, images_nhwc, labels, spec: InputSpec, device: torch.device, augment_shift: float = 0.125,
                 augment_color: float = 0.0):
        self.augment_shift, self.augment_color = augment_shift, augment_color
        self.bank, self.bank_rows = None, None  # --teacher-views: augmented views replayed from a view bank
        self.images = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels_cpu = torch.from_numpy(labels).long()  # counts and masks of a batch, without asking the GPU
        self.labels = self.labels_cpu.to(device)
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def draw_bank_views(self, index: torch.Tensor, augment_generator: torch.Generator | None) -> torch.Tensor | None:
        """Which of the bank's views each image of the batch is shown (None: no bank, or no augmentation)."""
        if self.bank is None or augment_generator is None:
            return None
        return torch.randint(self.bank.views, (len(index),), generator=augment_generator)

    def batch(self, index: torch.Tensor, augment_generator: torch.Generator | None = None, view: torch.Tensor | None = None):
        """The pictures ``index`` (a CPU tensor), normalised, augmented when given a generator, and their labels."""
        rows, index = index, to_device(index, self.images.device)
        x = self.images[index].float().div_(255)
        if view is not None:
            x = apply_view(x, self.bank.gather(view, self.bank_rows[rows]))
        elif augment_generator is not None:
            x = augment(x, augment_generator, self.augment_shift)
            if self.augment_color:
                x = jitter_colors(x, augment_generator, self.augment_color)
        return (x - self.mean) / self.std, self.labels[index]


@torch.no_grad()
def evaluate(model: NeuralODECNN, split: DeviceSplit, num_classes: int, batch_size: int = 256) -> dict[str, Any]:
    """Label-free evaluation: plain argmax of the logits, no label enters the forward pass."""
    model.eval()
    losses, preds, nfes = [], [], []
    for start in range(0, len(split), batch_size):
        x, y = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        logits = model(x)
        nfes.append(model.nfe)
        losses.append(F.cross_entropy(logits, y, reduction="sum").item())
        preds.append(logits.argmax(1))
    pred = torch.cat(preds).cpu()
    metrics = ClassificationMetrics.from_predictions(pred, split.labels.cpu(), num_classes)
    return {
        "loss": sum(losses) / len(split),
        **metrics.to_dict(),
        "nfe": max(nfes),
        "predictions": pred,
    }


# --- the loop ---------------------------------------------------------------------------------------------


def learning_rate_lambda(config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def prepare_manifest(config: TrainConfig, run_dir: Path, ctx: DistContext, fresh: bool) -> edata.Manifest:
    """The run's split, saved once as ``run_dir/manifest.json`` beside its checkpoints.

    A ``fresh`` run (no last.pt yet) writes it anew: a manifest left by an attempt that stopped before its first
    checkpoint may come from other split options, another data folder or another ``--manifest``, and reusing it
    would train on a split nobody asked for. A resumed run keeps its own (``check_resume_settings`` refuses a
    resume that asks for another split).
    """
    target = run_dir / "manifest.json"
    if config.manifest:
        manifest = edata.Manifest.load(config.manifest)
        refuse_other_split_options(config, manifest)
        if ctx.is_main and (fresh or not target.exists()):
            manifest.save(target)
        return manifest
    if ctx.is_main and (fresh or not target.exists()):
        edata.build_manifest(config.data, config.split, progress=config.progress).save(target)
    ctx.barrier()
    return edata.Manifest.load(target)


SPLIT_OPTIONS = (("per_class", "--per-class"), ("train", "--train-per-class"), ("val", "--val-per-class"),
                 ("test", "--test-per-class"), ("image_size", "--image-size"), ("strict", "--strict"))


def refuse_other_split_options(config: TrainConfig, manifest: edata.Manifest) -> None:
    """``--manifest`` fixes the split and the input size: a split option that asks for another would be ignored,
    and the run would train at the manifest's size while recording the option's. (An option left at its default
    cannot be told from one not given, so only those off their default are compared; ``--seed`` also seeds the
    weights and is never a conflict.)"""
    default, asked, fixed = edata.SplitConfig(), config.split, manifest.config
    conflicts = [f"{flag} {getattr(asked, name)} (the manifest: {getattr(fixed, name)})" for name, flag in SPLIT_OPTIONS
                 if getattr(asked, name) != getattr(default, name) and getattr(asked, name) != getattr(fixed, name)]
    if conflicts:
        raise UsageError(f"--manifest {config.manifest} fixes the split, and {', '.join(conflicts)} would be ignored",
                         "drop them, or write a manifest with them (`edgenode split DATA … --out NEW.json`) and pass that")


def train(config: TrainConfig) -> TrainResult:
    ctx = init_distributed()
    out = Path(config.out).absolute()
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first: the folders this run would make
    try:
        check_run_arguments(config)  # before the lock creates --out: a refused run creates no folder
        with hold_run_folder(Path(config.out), enabled=ctx.is_main):
            return _train(config, ctx)
    except BaseException:
        # a run refused before it wrote anything leaves no empty --out behind, nor the parents it made for it
        for folder in created if ctx.is_main else ():
            if not folder.is_dir() or any(folder.iterdir()):
                break
            with contextlib.suppress(OSError):  # never in place of the error that ended the run
                folder.rmdir()
        raise
    finally:
        ctx.shutdown()


def _train(config: TrainConfig, ctx: DistContext) -> TrainResult:
    run_dir, resume = open_run_dir(config, ctx)
    last_path, best_path, best_ema_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "best-ema.pt"
    device = ctx.device if ctx.device is not None else resolve_device(config.device)
    manifest = prepare_manifest(config, run_dir, ctx, fresh=not resume)
    if config.manifest:  # the run records the split it trained on, not the split options' defaults
        config = replace(config, split=manifest.config)
    spec = InputSpec(manifest.config.image_size, tuple(manifest.mean), tuple(manifest.std), data_alignment(config.data, manifest.config.image_size))
    arrays = {name: edata.load_split_arrays(manifest, config.data, name) for name in ("train", "val", "test")}
    num_classes = len(manifest.classes)
    model_config = config.model_config(num_classes)
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)

    splits, train_images, pool_files = build_splits(config, manifest, arrays, spec, device, ctx)
    targets, teacher_summary = (attach_teacher(config, model, manifest, spec, arrays, splits, train_images, pool_files, device)
                                if config.teacher else (None, {}))
    if config.margin_scale and not (targets is not None and config.kd_weight):
        # no KL term trains the plain logits' temperature: start it at the margin's scale, where the cosines are
        # trained, so that what infer prints is CosFace's own softmax (argmax is the same at any scale)
        with torch.no_grad():
            model.head[-1].log_scale.fill_(math.log(config.margin_scale))
    # read by now (their loaders name a missing or foreign file); hashed for --resume and the run's record
    inputs = {name: sha256_file(getattr(config, name)) for name in HASHED_INPUTS if getattr(config, name)}
    teacher_summary.update({f"{name}_sha256": inputs[name] for name in ("kd_targets", "teacher_views") if name in inputs})
    if config.init and not resume:
        source = start_from(model, model_config, manifest, config.init)
        ctx.print(f"initialised from {escape(config.init)} (epoch {source.epoch}, sha256 {source.sha256[:12]}…)")
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
    if len(splits["train"]) < config.batch_size:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the train split ({len(splits['train'])} images)",
                         f"pass --batch-size {len(splits['train'])} or less")
    if config.batch_size % ctx.world_size:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly over {ctx.world_size} processes",
                         f"use a multiple of {ctx.world_size}: the global batch is shared by the processes")
    steps_per_epoch = len(splits["train"]) // config.batch_size  # drop the ragged last batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_lambda(config, steps_per_epoch))

    ckpt = load_checkpoint(last_path) if resume else None
    progress = restore_run(config, ctx, ckpt, last_path, manifest, spec, inputs, model, optimizer, scheduler) if ckpt else RunProgress()
    if ckpt is not None and config.init is None and (ckpt.train_config or {}).get("init"):
        # a resume may leave --init out; the run still started from it, and its checkpoints and results say so
        config = replace(config, init=ckpt.train_config["init"])
    ema = weight_average(config, model, ckpt, last_path, progress) if config.ema_decay else None

    if ctx.is_main:
        announce(config, ctx, model, model_config, num_classes, splits, device, teacher_summary)
    train_model = ctx.wrap(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction="sum")  # divided in run_epoch

    def snapshot(epoch: int, metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            model_config=model_config,
            classes=manifest.classes,
            input_spec=spec,
            manifest_sha256=manifest.sha256,
            state_dict=model.state_dict(),
            epoch=epoch,
            metrics=metrics,
            history=progress.history,
            train_config={**config.to_dict(), "input_sha256": inputs},
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            ema_state_dict=ema.state_dict() if ema is not None else None,
        )

    last_epoch = config.epochs if config.stop_after is None else config.stop_after
    for epoch in range(progress.start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        train_stats = run_epoch(train_model, model, splits["train"], optimizer, scheduler, criterion, config, epoch, steps_per_epoch, ctx, targets, ema)
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, splits["val"], num_classes)
        row = epoch_row(epoch, train_stats, val, optimizer.param_groups[0]["lr"], train_seconds)
        improved_ema = False
        if ema is not None:  # keys only with an average: the metrics files of other runs stay as they were
            val_ema = evaluate(ema.model, splits["val"], num_classes)
            row.update(val_loss_ema=val_ema["loss"], val_accuracy_ema=val_ema["accuracy"])
            improved_ema = val_ema["accuracy"] > progress.best_val_ema
            if improved_ema:
                progress.best_val_ema, progress.best_epoch_ema = val_ema["accuracy"], epoch
        progress.history.append(row)
        improved = val["accuracy"] > progress.best_val
        if improved:
            progress.best_val, progress.best_epoch = val["accuracy"], epoch
        if ctx.is_main:
            metrics = {"best_val_accuracy": progress.best_val, "best_epoch": progress.best_epoch, **row}
            if ema is not None:
                metrics.update(best_val_accuracy_ema=progress.best_val_ema, best_epoch_ema=progress.best_epoch_ema)
            ckpt = snapshot(epoch, metrics)
            if improved:
                # the file export and infer ship: resume reads last.pt, so no optimizer state (2× the weights in AdamW)
                save_checkpoint(best_path, replace(ckpt, ema_state_dict=None, optimizer=None, scheduler=None))
            if improved_ema:
                save_checkpoint(best_ema_path, average_checkpoint(ckpt, config.ema_decay))
            save_checkpoint(last_path, ckpt)
            write_history(run_dir, progress.history)
            ctx.print(
                f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
                f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} f1 {row['val_f1']:.3f}  "
                f"NFE {row['nfe_train']}/{row['nfe_val']}  {train_seconds:.1f}s" + ("  *best*" if improved else "")
                + (f"  (average: val acc {row['val_accuracy_ema']:.3f}{'  *best*' if improved_ema else ''})" if ema is not None else "")
            )
            if config.table_every and (epoch % config.table_every == 0 or epoch == config.epochs):
                console.print(table_one(progress.history, config.table_every))
        ctx.barrier()

    test = {}
    history = progress.history
    reached = history[-1]["epoch"] if history else 0
    if ctx.is_main:
        from edgenode.plots import plot_training_curves

        write_history(run_dir, history)  # a run killed between last.pt and the metrics of its final epoch
        plot_training_curves(history, run_dir / "curves.png", title=f"{model_config.arch} — {model_config.solver.describe()}")
    if reached < config.epochs:  # paused (--stop-after): no test figure for a run that has not finished
        done = "nothing trained: it had already" if progress.start_epoch > last_epoch else "stopped after"
        ctx.print(f"{done} epoch {reached} of {config.epochs} (--stop-after {config.stop_after}): "
                  f"the same command with --resume and without --stop-after continues it")
    elif ctx.is_main:
        if progress.start_epoch > config.epochs:  # --resume of a finished run: say why no epoch ran
            ctx.print(f"nothing trained: the run had finished its {config.epochs} epochs; its test figure is measured again")
        test = final_test(config, ctx, run_dir, splits["test"], num_classes, device, progress, ema is not None,
                          {"teacher": teacher_summary, "train_images": {"labelled": len(manifest.files("train")), "unlabelled": len(pool_files)},
                           "model": model_config.to_dict()})
    return TrainResult(run_dir, best_path, last_path, progress.best_epoch, progress.best_val, test, history)


def check_run_arguments(config: TrainConfig) -> None:
    """What can be refused before ``--out`` exists: an ``--out`` inside the data set, a missing data folder, an
    ``--init`` that is no checkpoint, a teacher path that is missing or no archive (not after the split is decoded)."""
    run_dir = Path(config.out)
    images = edata.images_root(config.data).resolve()
    if run_dir.resolve() == images or images in run_dir.resolve().parents:  # its curves.png would join the data set
        raise UsageError(f"--out {run_dir} is inside the images of {config.data}: the run folder would be read as an "
                         "identity next time", "train into a folder outside the data set, e.g. runs/<name>")
    if config.init:
        from edgenode.runtime.artifact import expect_kind

        expect_kind(config.init, ("checkpoint",), "--init")
        if run_dir.resolve() in Path(config.init).resolve().parents:
            raise UsageError(f"--init {config.init} is inside --out {run_dir}, where this run writes its checkpoints",
                             "train into another --out, or move the checkpoint out of it")
    if config.teacher:
        from edgenode.teacher import check_teacher_file

        check_teacher_file(config.teacher)


def open_run_dir(config: TrainConfig, ctx: DistContext) -> tuple[Path, bool]:
    """``--out`` made ready (refused over another run's files without ``--resume``; temporaries of a killed write
    removed), and whether there is a ``last.pt`` to resume."""
    run_dir = Path(config.out)
    last_path = run_dir / "last.pt"
    had_run = run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())  # the lock may have made the folder
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        refuse_foreign_run_folder(run_dir, config.resume)
        for stale in run_dir.glob(".*.tmp"):  # left by a process killed mid-write; never under a final name
            stale.unlink()
    ctx.barrier()
    resume = config.resume and last_path.exists()
    if config.resume and not resume:
        why = "the run stopped during its first epoch" if had_run else "the folder held no run: nothing to resume"
        ctx.print(f"--resume: no {escape(str(last_path))} yet ({why}); starting from epoch 1")
    return run_dir, resume


RUN_FILES = ("last.pt", "best.pt", "best-ema.pt", "metrics.json", "metrics.csv", "results.json")  # what a run leaves
FINISHED_EPOCH_FILES = ("metrics.json", "metrics.csv", "results.json")  # written only once an epoch's last.pt is


def refuse_foreign_run_folder(run_dir: Path, resume: bool) -> None:
    """A fresh run would overwrite another run's files (or an export's), and ``--resume`` cannot continue a run
    whose ``last.pt`` is gone: both are refused rather than starting over in place. A ``best.pt`` (and
    ``best-ema.pt``) of this folder's split alone is what a run killed in its first epoch leaves, between its
    checkpoints: like an attempt stopped before its first checkpoint, that one starts again, with or without
    ``--resume``, and its leftovers are removed (a rerun without ``--ema-decay`` would otherwise keep a stale
    ``best-ema.pt``)."""
    if (run_dir / "export_report.json").is_file():
        raise UsageError(f"--out {run_dir} holds an export (export_report.json): training would replace its manifest.json",
                         "train into another --out")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    first_epoch_only = ("last.pt" not in found and not set(found) & set(FINISHED_EPOCH_FILES)
                        and (not found or _left_by_this_folders_split(run_dir)))
    if found and not resume and not first_epoch_only:
        raise UsageError(f"{run_dir} already holds a training run ({', '.join(found)})",
                         "pass --resume to continue it, or choose another --out")
    if resume and not first_epoch_only and "last.pt" not in found:
        raise UsageError(f"--resume: {run_dir} holds a run's results ({', '.join(found)}) but no last.pt, which a "
                         "resumed run continues from", "restore last.pt, or train into another --out")
    if first_epoch_only:  # the killed attempt's checkpoints: the run starts again, and its own replace them or not
        for name in found:
            (run_dir / name).unlink()


def _left_by_this_folders_split(run_dir: Path) -> bool:
    """Whether the ``best.pt`` in ``run_dir`` is the one an attempt killed in its first epoch left: trained on the
    split whose ``manifest.json`` that attempt wrote first. A ``best.pt`` copied there (a model kept, an ``--init``
    source) is not, and is not overwritten."""
    try:
        return load_checkpoint(run_dir / "best.pt").manifest_sha256 == edata.Manifest.load(run_dir / "manifest.json").sha256
    except (EdgenodeError, OSError, ValueError):
        return False


def build_splits(config: TrainConfig, manifest, arrays: dict, spec: InputSpec, device: torch.device,
                 ctx: DistContext) -> tuple[dict[str, DeviceSplit], np.ndarray, list[str]]:
    """The splits on ``device``; with ``--unlabeled`` the pool's images join train, labelled ``UNLABELLED``.
    Also the train images as trained on (pool included) and the pool's files in that order: the teacher's
    targets and views are looked up by file, and the views checked against those pixels."""
    pool_images, pool_files = unlabeled_pool(config, manifest, ctx) if config.unlabeled else (None, [])
    train_images, train_labels = arrays["train"]
    if pool_images is not None and len(pool_images):
        train_images = np.concatenate([train_images, pool_images])
        train_labels = np.concatenate([train_labels, np.full(len(pool_images), UNLABELLED, dtype=np.int64)])
    splits = {"train": DeviceSplit(train_images, train_labels, spec, device, config.augment_shift, config.augment_color)}
    splits.update({name: DeviceSplit(*arrays[name], spec, device) for name in ("val", "test")})
    return splits, train_images, pool_files


def attach_teacher(config: TrainConfig, model: nn.Module, manifest, spec: InputSpec, arrays: dict, splits: dict[str, DeviceSplit],
                   train_images: np.ndarray, pool_files: list[str], device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The teacher's targets for every train and pool image (and, with ``--teacher-views``, the train split's view
    bank); the student's classifier is initialised from them. Returns (targets, the summary the run records)."""
    from edgenode import distill
    from edgenode.teacher import check_teacher_matches_chips, load_teacher

    num_classes = len(manifest.classes)
    teacher = load_teacher(config.teacher)
    check_teacher_matches_chips(teacher, spec.align, config.data)
    distill.check_student(model, teacher)
    targets, summary = distill.build_targets(teacher, manifest.files("train"), arrays["train"][1], pool_files, num_classes, device)
    if config.kd_targets:
        distill.attach_kd_targets(targets, config.kd_targets, manifest.files("train") + pool_files, manifest.classes)
        summary.update(kd_targets=config.kd_targets)
    if config.teacher_views:
        from edgenode.view_bank import bank_rows_for

        bank = check_view_bank(config, spec)
        rows = bank_rows_for(bank, manifest.files("train") + pool_files, train_images)
        distill.attach_view_bank(targets, bank, rows, len(arrays["train"][1]))
        splits["train"].bank, splits["train"].bank_rows = bank, torch.from_numpy(rows)
        summary.update(teacher_views=config.teacher_views, teacher_views_count=bank.views)
    distill.init_classifier(model, targets)
    return targets, summary


def announce(config: TrainConfig, ctx: DistContext, model: nn.Module, model_config, num_classes: int,
             splits: dict[str, DeviceSplit], device: torch.device, teacher_summary: dict[str, Any]) -> None:
    """The run's first lines: the network, the data, the device, and what the teacher gives."""
    ctx.print(
        f"[bold]edgenode train[/] {model_config.arch}: {count_parameters(model):,} parameters, "
        f"solver {model_config.solver.describe()}, {num_classes} classes, "
        f"train/val/test {_train_count(splits['train'])}/{len(splits['val'])}/{len(splits['test'])}, device {device}"
        + (f", {ctx.world_size} processes" if ctx.world_size > 1 else "")
    )
    if config.amp and device.type != "cuda":
        ctx.print(f"--amp: bfloat16 autocast is used on CUDA only; training in float32 on {device}")
    if teacher_summary:
        ctx.print(
            f"distilling {escape(str(teacher_summary['teacher']))}: targets for {teacher_summary['train_with_target']} of "
            f"{teacher_summary['train_images']} train and {teacher_summary['pool_with_target']} of "
            f"{teacher_summary['pool_images']} unlabelled images; teacher scale {teacher_summary['teacher_scale']}, "
            f"teacher train accuracy {teacher_summary['teacher_train_ncm_accuracy']:.3f} (nearest class mean, in-sample)"
            + (f"; class probabilities from {escape(config.kd_targets)}" if config.kd_targets else "")
            + (f"; descriptors of {teacher_summary['teacher_views_count']} augmented views of each train image from "
               f"{escape(config.teacher_views)}" if config.teacher_views else "")
            + (f"; KL at temperature {config.kd_temperature:g}" if config.kd_temperature != 1.0 else "")
        )


def _train_count(split: DeviceSplit) -> str:
    """The train split's size, its unlabelled pool apart: ``6300 + 7399 unlabelled``."""
    unlabelled = int((split.labels_cpu == UNLABELLED).sum())
    return f"{len(split) - unlabelled} + {unlabelled} unlabelled" if unlabelled else str(len(split))


def final_test(config: TrainConfig, ctx: DistContext, run_dir: Path, test_split: DeviceSplit, num_classes: int,
               device: torch.device, progress: RunProgress, has_average: bool, record: dict[str, Any]) -> dict[str, Any]:
    """The finished run's label-free test figures of ``best.pt`` (and ``best-ema.pt``), into ``results.json``."""
    best_path, best_ema_path = run_dir / "best.pt", run_dir / "best-ema.pt"

    def on_test(path: Path) -> dict[str, Any]:
        """A best-by-val checkpoint's label-free test figures, with where they come from."""
        ckpt = load_checkpoint(path)
        network = ckpt.build_model().to(device)
        scored = {k: v for k, v in evaluate(network, test_split, num_classes).items() if k != "predictions"}
        return {**scored, "epoch": ckpt.epoch, "checkpoint": str(path), "parameters": count_parameters(network),
                "solver": ckpt.model_config.solver.describe()}

    test = on_test(best_path)
    results = {"test": test, "best_epoch": progress.best_epoch, "best_val_accuracy": progress.best_val}
    if has_average and best_ema_path.is_file():  # the weight average's own best-by-val checkpoint, measured alike
        results.update(best_epoch_ema=progress.best_epoch_ema, best_val_accuracy_ema=progress.best_val_ema,
                       test_ema=on_test(best_ema_path))
    elif has_average:
        ctx.print(f"no {escape(str(best_ema_path))}: the weight average has no test figure (was the file removed?)")
    write_json(run_dir / "results.json", {**results, "config": config.to_dict(), **record})
    ctx.print(
        f"[bold]test accuracy[/] (best-by-val checkpoint, epoch {test['epoch']}, label-free): "
        f"{format_accuracy(test['accuracy'], test['accuracy_ci'])} on {test['n']} images; NFE {test['nfe']}"
    )
    if "test_ema" in results:
        scored = results["test_ema"]
        ctx.print(f"[bold]test accuracy of the weight average[/] (decay {config.ema_decay}, best by val at epoch "
                  f"{scored['epoch']}): {format_accuracy(scored['accuracy'], scored['accuracy_ci'])}")
    ctx.print(f"wrote {escape(str(best_path))}, {escape(str(run_dir / 'last.pt'))}{', ' + best_ema_path.name if 'test_ema' in results else ''}, "
              f"metrics.csv, metrics.json, results.json, curves.png in {escape(str(run_dir))}")
    return test


def run_epoch(train_model, model, split: DeviceSplit, optimizer, scheduler, criterion, config: TrainConfig, epoch: int, steps: int,
              ctx: DistContext, targets=None, ema=None):
    """One pass over the train split (and pool); everything random is seeded from (seed, epoch) alone.

    With a fixed-step solver no step waits for the GPU (an adaptive one reads its error estimates back by design):
    the shuffle, the masks of labelled images and of images with a teacher target, their counts and the
    augmentation's random views are all known on the CPU and travel with :func:`edgenode.transfer.to_device`, and
    the running sums stay on the device until the epoch ends. A step that read one number back (``loss.item()``, a
    boolean mask's size) would stop the CPU until the GPU had caught up, and the next step's kernels could not be
    queued while this one's run."""
    from edgenode.distill import distill_loss

    model.train()
    torch.manual_seed(config.seed * 1_000_003 + epoch * 7919 + ctx.rank)
    order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    aug = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 31 + 17 + ctx.rank) if config.augment else None
    perm = torch.randperm(len(split), generator=order)
    local = config.batch_size // ctx.world_size
    device = split.labels.device
    has_target = targets.has_target.cpu() if targets is not None else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    # float64 sums of what loss.item() * len(y) gave, in the same order: the history is the same to the last bit
    total_loss, total_distill = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(2))
    total_correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, labelled_seen, max_nfe = 0, 0, 0
    with progress_bar(f"epoch {epoch}", steps, enabled=config.progress and ctx.is_main) as advance:
        for step in range(steps):
            global_batch = perm[step * config.batch_size : (step + 1) * config.batch_size]
            index = global_batch[ctx.rank * local : (ctx.rank + 1) * local]
            view = split.draw_bank_views(index, aug)
            x, y = split.batch(index, aug, view)
            labelled = split.labels_cpu[index] != UNLABELLED
            labelled_rows = to_device(labelled.nonzero().squeeze(1), device)
            # Means over the *global* batch: DDP averages gradients over the ranks, so each rank divides its sum by
            # the global count and multiplies by the world size; with one process this is the plain mean.
            n_labelled = max(1, int((split.labels_cpu[global_batch] != UNLABELLED).sum()))
            with autocast:
                if targets is None and not config.margin_scale:
                    logits = train_model(x)
                else:
                    features, logits = train_model(x, return_features=True)
                logits = logits.float()
                labelled_logits, labelled_y = logits.index_select(0, labelled_rows), y.index_select(0, labelled_rows)
                # a margin changes the cross-entropy's logits only: accuracy and the teacher's KL keep the plain ones
                if config.margin_scale:
                    labelled_logits = model.head[-1].fixed_scale_margin(features.index_select(0, labelled_rows), labelled_y,
                                                                        config.margin, config.margin_scale)
                elif config.margin:
                    labelled_logits = model.head[-1].with_margin(labelled_logits, labelled_y, config.margin)
                loss = criterion(labelled_logits, labelled_y) * (config.label_weight * ctx.world_size / n_labelled)
                if config.margin_scale:  # the plain logits at weight 0: DistributedDataParallel wants a gradient for
                    loss = loss + logits.sum() * 0.0  # every parameter, and the learned scale has none from the margin
                if targets is not None:
                    n_targets = max(1, int(has_target[global_batch].sum()))
                    target_rows = has_target[index].nonzero().squeeze(1)
                    extra = distill_loss(features, logits, to_device(index, device), targets, config.distill_weight,
                                         config.kd_weight, count=n_targets / ctx.world_size,
                                         view=None if view is None else to_device(view[target_rows], device),
                                         rows=to_device(target_rows, device), temperature=config.kd_temperature)
                    total_distill += extra.detach().double() * len(y)
                    loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update((epoch - 1) * steps + step)
            max_nfe = max(max_nfe, model.nfe)
            total_loss += loss.detach().double() * len(y)
            total_correct += (logits.argmax(1) == y).index_select(0, labelled_rows).sum()
            seen += len(y)
            labelled_seen += int(labelled.sum())
            advance()
    total_loss, total_distill, total_correct = total_loss.item(), total_distill.item(), int(total_correct)  # the epoch's one wait
    total_loss, total_distill, total_correct, seen, labelled_seen = ctx.sum_across_ranks(total_loss, total_distill, total_correct, seen, labelled_seen)
    if not math.isfinite(total_loss):  # summed over the ranks: every rank stops together
        kept = f"last.pt holds epoch {epoch - 1}" if epoch > 1 else "nothing was saved"
        raise NumericError(f"epoch {epoch}: the training loss is {total_loss / max(1, seen)}",
                           f"train again with a lower --lr into another --out (a resumed run keeps its settings), or check "
                           f"the data; this epoch was not saved, {kept}")
    return {"loss": total_loss / max(1, seen), "accuracy": total_correct / max(1, labelled_seen),
            "distill_loss": total_distill / max(1, seen), "nfe": max_nfe}


def average_checkpoint(ckpt: Checkpoint, decay: float) -> Checkpoint:
    """``best-ema.pt``: the weight average as an ordinary checkpoint (export and infer take it like best.pt),
    its val figures in the usual keys; it cannot be resumed, so it carries no optimizer state."""
    m = {k: v for k, v in ckpt.metrics.items() if k not in ("val_precision", "val_recall", "val_f1")}  # the trained weights'
    metrics = {**m, "weights": f"moving average, decay {decay} (ramped: min(decay, (1 + t) / (10 + t)) at step t)",
               "best_val_accuracy": m["best_val_accuracy_ema"], "best_epoch": m["best_epoch_ema"],
               "val_accuracy": m["val_accuracy_ema"], "val_loss": m["val_loss_ema"]}
    return replace(ckpt, state_dict=ckpt.ema_state_dict, ema_state_dict=None, optimizer=None, scheduler=None, metrics=metrics)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every weight but a learned logit scale: decaying log(scale) would pull it towards 1."""
    decay = [p for n, p in model.named_parameters() if not n.endswith("log_scale")]
    keep = [p for n, p in model.named_parameters() if n.endswith("log_scale")]
    return [{"params": decay, "weight_decay": weight_decay}] + ([{"params": keep, "weight_decay": 0.0}] if keep else [])


def start_from(model: NeuralODECNN, model_config: ModelConfig, manifest: edata.Manifest, path: str) -> Checkpoint:
    """Load ``path``'s weights to fine-tune them (e.g. with a finer solver); only the solver and dropout may differ."""
    source = load_checkpoint(path)
    mine, theirs = model_config.to_dict(), source.model_config.to_dict()
    differs = [k for k in mine if k not in ("solver", "dropout") and mine[k] != theirs.get(k)]
    if differs or source.classes != manifest.classes:
        what = ", ".join(f"{k} {theirs.get(k)!r} vs {mine[k]!r}" for k in differs) or "its class list differs"
        raise UsageError(f"--init {path}: not the same network as this run ({what})",
                         "pass the same --arch and --width, and the manifest it was trained with")
    if source.manifest_sha256 != manifest.sha256:  # another split: its train images may be this run's val/test
        raise UsageError(f"--init {path}: trained on another split (manifest {source.manifest_sha256[:12]}…, this run "
                         f"{manifest.sha256[:12]}…)", "pass --manifest with the manifest.json of the run that trained it")
    model.load_state_dict(rename_weights(source.state_dict, source.model_config, model_config))
    return source


def check_view_bank(config: TrainConfig, spec: InputSpec):
    """The bank of ``--teacher-views``, refused unless its views are the ones this run's augmentation would draw
    (shift, colour, chip size) on chips aligned the same way."""
    from edgenode.view_bank import load_view_bank

    bank = load_view_bank(config.teacher_views)
    drawn = (bank.shift, bank.color, bank.side)
    wanted = (config.augment_shift, config.augment_color, spec.image_size)
    if drawn != wanted:
        raise UsageError(f"--teacher-views {bank.path}: its views were drawn with --augment-shift {bank.shift:g} "
                         f"--augment-color {bank.color:g} on {bank.side}-px chips; this run uses --augment-shift "
                         f"{config.augment_shift:g} --augment-color {config.augment_color:g} on {spec.image_size}-px images",
                         "train with the bank's settings, or compute a bank with this run's (edgenode teacher-views)")
    chips = spec.align.method if spec.align is not None else None
    if bank.provenance.get("alignment") != chips:
        raise UsageError(f"--teacher-views {bank.path}: describes chips aligned with {bank.provenance.get('alignment')!r}, "
                         f"but {config.data} holds {'chips aligned with ' + repr(chips) if chips else 'unaligned pictures'}",
                         "train on the aligned copy the bank was computed from")
    return bank


def data_alignment(data: str, image_size: int):
    """The AlignSpec of an aligned data folder (``edgenode align``), checked against the input size; else None.

    The chips must already be the model's input size: the runtime aligns straight to that size, and a chip
    aligned larger then resized would be a slightly different picture from the one deployment produces.
    """
    from edgenode.align import align_command, read_alignment

    found = read_alignment(data)
    if found is None:
        return None
    align, size = found
    if size != image_size:
        raise UsageError(f"{data} holds {size}-px aligned face chips but the split's image size is {image_size}",
                         f"re-align into a new folder: {align_command(align, image_size)} (or split with --image-size {size})")
    return align


def unlabeled_pool(config: TrainConfig, manifest: edata.Manifest, ctx: DistContext) -> tuple[np.ndarray, list[str]]:
    """The unlabelled pool of this run, decoded, with one line saying what was left out."""
    images, kept, skipped, left_out = load_unlabeled_pool(manifest, config.data, config.near_duplicates)
    ctx.print(f"unlabelled pool: {len(kept)} images ({left_out} near-duplicates of val/test images left out, "
              f"{len(skipped)} could not be decoded)")
    return images, kept
