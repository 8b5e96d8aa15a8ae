"""``--resume``: where a run stands between epochs, and the checks that ``last.pt`` is this run's.

A resumed run continues exactly as an uninterrupted one would (every epoch is seeded from (seed, epoch) alone), so
everything that sets its batches, losses or targets must be what it started with: settings, split, input files
and input. Each check refuses a mismatch in one line that names the setting, both values and the fix.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from rich.markup import escape
from torch import nn

from edgenode.checkpoint import Checkpoint, InputSpec
from edgenode.distributed import DistContext
from edgenode.errors import UsageError
from edgenode.train_config import TrainConfig


@dataclass
class RunProgress:
    """Where a run stands between epochs: what ``--resume`` restores and every epoch updates."""

    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 1
    best_val: float = -1.0
    best_epoch: int = 0
    best_val_ema: float = -1.0
    best_epoch_ema: int = 0


def restore_run(config: TrainConfig, ctx: DistContext, ckpt: Checkpoint, last_path: Path, manifest, spec: InputSpec, inputs: dict[str, str],
                model: nn.Module, optimizer, scheduler) -> RunProgress:
    """``--resume``: ``last.pt``'s weights, optimizer and schedule, after checking that it is this run's (same split,
    settings, input files and input)."""
    if ckpt.manifest_sha256 != manifest.sha256:
        raise UsageError(f"{last_path} was trained on another split (manifest {ckpt.manifest_sha256[:12]}…, this run's "
                         f"{manifest.sha256[:12]}…)", f"resume without --manifest: the run keeps its own, {last_path.parent / 'manifest.json'}")
    check_resume_settings(config, ckpt.train_config or {}, last_path)
    check_resume_inputs(config, (ckpt.train_config or {}).get("input_sha256") or {}, inputs, last_path)
    if ckpt.input_spec != spec:  # e.g. resumed on the aligned copy of a run started on plain crops
        raise UsageError(f"{last_path} was trained on other input ({ckpt.input_spec.describe()}; this run: "
                         f"{spec.describe()})", f"resume with the data folder the run started with ({config.data} is not)")
    if config.epochs < ckpt.epoch:
        raise UsageError(f"--resume --epochs {config.epochs}: {last_path} is already after epoch {ckpt.epoch}",
                         f"pass --epochs {ckpt.epoch} or more (the run's own: {(ckpt.train_config or {}).get('epochs', '?')})")
    best_epoch = int(ckpt.metrics.get("best_epoch", 0))
    best_path = last_path.parent / "best.pt"
    if best_epoch and not best_path.is_file():  # the run could never write its results: refuse before training
        raise UsageError(f"--resume: {best_path} is missing; it held the best epoch so far ({best_epoch}), which "
                         "cannot be rebuilt", "restore it, or train into another --out")
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(ckpt.optimizer)
    scheduler.load_state_dict(ckpt.scheduler)
    ctx.print(f"resuming {escape(str(last_path))} after epoch {ckpt.epoch}")
    return RunProgress(history=list(ckpt.history or []), start_epoch=ckpt.epoch + 1,
                     best_val=float(ckpt.metrics.get("best_val_accuracy", -1.0)), best_epoch=best_epoch)


def weight_average(config: TrainConfig, model: nn.Module, ckpt: Checkpoint | None, last_path: Path, progress: RunProgress):
    """``--ema-decay``: the moving average of the weights, continued from ``last.pt`` on a resume."""
    from edgenode.ema import WeightAverage

    ema = WeightAverage(model, config.ema_decay)
    if ckpt is not None:
        if ckpt.ema_state_dict is None:
            raise UsageError(f"--resume: {last_path} holds no weight average (its run had no --ema-decay)",
                             "resume without --ema-decay, or train into another --out")
        ema.load_state_dict(ckpt.ema_state_dict)
        progress.best_val_ema = float(ckpt.metrics.get("best_val_accuracy_ema", -1.0))
        progress.best_epoch_ema = int(ckpt.metrics.get("best_epoch_ema", 0))
    return ema


# what a resumed run must share with its start: the optimizer's state restores lr and weight decay over the command
# line's, and the network's solver, dropout and autocast set its losses, so a change there would pass silently
RESUME_FIXED = ("batch_size", "seed", "augment", "augment_shift", "augment_color", "teacher", "teacher_views", "label_weight",
                "distill_weight", "kd_weight", "kd_temperature", "kd_targets", "unlabeled", "near_duplicates", "arch", "width", "schedule",
                "warmup_epochs", "ema_decay", "lr", "weight_decay", "label_smoothing", "margin", "margin_scale", "dropout",
                "solver", "steps", "rtol", "atol", "amp")


def check_resume_settings(config: TrainConfig, saved: dict, path: Path) -> None:
    """A resumed run must see the same training set, batches and losses, or its schedule and shuffle diverge.

    Its split too: a run that built its own manifest keeps it, so other split options on the resuming command
    line would be silently ignored. (A run given ``--manifest`` has no split options of its own to compare;
    the checkpoint's manifest hash is checked either way.)
    """
    now = config.to_dict()
    # a setting the checkpoint's recorded config predates was trained with the default that reproduces the old
    # behaviour; a checkpoint that records no config at all has nothing to compare
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    then = {k: saved.get(k, defaults[k]) for k in RESUME_FIXED} if saved else now
    changed = [f"--{k.replace('_', '-')} {_shown(then[k])} → {_shown(now[k])}" for k in RESUME_FIXED if then[k] != now[k]]
    started_from = saved.get("init")
    if now.get("init") is not None and not (started_from and Path(started_from).resolve() == Path(now["init"]).resolve()):
        # a resumed run goes on from last.pt's weights: another --init would be ignored (it was, silently)
        raise UsageError(f"--resume: --init {now['init']} is not the checkpoint {path.parent} started from "
                         f"({'--init ' + started_from if started_from else 'none'}); a resumed run goes on from {path.name}",
                         "drop --init")
    if then["schedule"] == "cosine" and saved.get("epochs", now["epochs"]) != now["epochs"]:  # it sets the decay
        changed.append(f"--epochs {saved['epochs']} → {now['epochs']}: the cosine schedule decays over --epochs")
    if saved.get("manifest") is None and config.manifest is None and isinstance(saved.get("split"), dict):
        ignore = ("strict",)  # --strict changes no split
        changed += [f"split {k} {saved['split'][k]!r} → {now['split'][k]!r}" for k in now["split"]
                    if k not in ignore and k in saved["split"] and saved["split"][k] != now["split"][k]]
    if changed:
        raise UsageError(f"--resume: {path} was trained with other settings ({', '.join(changed)})",
                         "resume with the options it was started with, or train into another --out")


def _shown(value: Any) -> str:
    """A setting as the command line spells it; None is an option left out (the preset's own value)."""
    return "(not given)" if value is None else repr(value)


HASHED_INPUTS = ("teacher", "kd_targets", "teacher_views", "near_duplicates")  # files whose content sets the targets


def check_resume_inputs(config: TrainConfig, saved: dict[str, str], now: dict[str, str], path: Path) -> None:
    """A resumed run must learn from the same teacher files, not ones recomputed under the same name since it started
    (checkpoints that predate this record are not checked)."""
    changed = [f"--{k.replace('_', '-')} {getattr(config, k)} (sha256 {saved[k][:12]}… → {now[k][:12]}…)"
               for k in now if k in saved and saved[k] != now[k]]
    if changed:
        raise UsageError(f"--resume: {path} was trained with other contents of {', '.join(changed)}",
                         "restore the files the run started with, or train into another --out")
