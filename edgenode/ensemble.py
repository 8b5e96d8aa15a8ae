"""Several trained checkpoints as one: their mean class probabilities.

Averaging seeds removes the part of the error that is seed-to-seed variance (examples/ensemble_accuracy.py
measures how much), and the averaged probabilities make distillation targets that one student of the same
architecture can reach (``edgenode train --kd-targets``, written by examples/ensemble_targets.py). An ensemble
itself is not exported: it costs one network per member at inference. Averaging the *weights* instead
(``average_weights``) costs nothing at inference but only makes sense for checkpoints fine-tuned from one start,
which share a basin (examples/weight_averaging.py measures it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edgenode.align import check_data_alignment
from edgenode.checkpoint import Checkpoint, load_checkpoint
from edgenode.data import Manifest, load_split_arrays, normalize
from edgenode.errors import ArtifactError, DataError
from edgenode.export.steps import solve_logits
from edgenode.model import rename_weights
from edgenode.runtime.predictor import softmax
from edgenode.data.pool import load_unlabeled_pool


def load_members(paths: list[str], manifest: Manifest, data: str) -> list[Checkpoint]:
    """The checkpoints, each checked to be trained on this split and on pictures prepared like ``data``'s."""
    members = []
    for path in paths:
        ckpt = load_checkpoint(path)
        if ckpt.manifest_sha256 != manifest.sha256:
            raise ArtifactError(f"{path}: trained on another split (manifest {ckpt.manifest_sha256[:12]}…, "
                                f"not {manifest.sha256[:12]}…)", "pass the manifest it was trained on")
        try:
            check_data_alignment(ckpt.input_spec, data)
        except DataError as exc:  # name the member: with several, "the model" alone does not say which
            raise DataError(f"{path}: {exc.message}", exc.hint) from None
        members.append(ckpt)
    return members


def member_probabilities(members: list[Checkpoint], images: np.ndarray, batch_size: int = 128,
                         mirror: bool = False) -> list[np.ndarray]:
    """Class probabilities (float32, (N, C)) of each member on uint8 NHWC ``images``, each with its trained
    solver and normalisation. With ``mirror``, each member's mean over the picture and its left-right mirror image
    (twice the passes; ``export --mirror-average`` sums the two views' unit features instead)."""
    views = [images, np.ascontiguousarray(images[:, :, ::-1])] if mirror else [images]
    probs = []
    for ckpt in members:
        model = ckpt.build_model()
        view_probs = []
        for view in views:
            x = normalize(view, ckpt.input_spec.mean, ckpt.input_spec.std)
            logits, _ = solve_logits(model, ckpt.model_config.solver, x, batch_size=batch_size)
            view_probs.append(softmax(logits))
        probs.append(np.mean(view_probs, axis=0, dtype=np.float32) if mirror else view_probs[0])
    return probs


def training_targets(members: list[Checkpoint], manifest: Manifest, data: str, near_duplicates: str | None,
                     batch_size: int = 128) -> tuple[list[str], np.ndarray, dict]:
    """The members' mean class log-probabilities on every image ``edgenode train --unlabeled`` trains on.

    Those are the train split and the unlabelled pool, cleaned as training cleans it: with the same
    ``near_duplicates`` table, or with dHash when None. No val or test label is read. Returns (files in the
    order training lists them, float32 (N, C) log-probabilities, a summary for the log).
    """
    train_images, train_labels = load_split_arrays(manifest, data, "train")
    pool_images, kept, _, _ = load_unlabeled_pool(manifest, data, near_duplicates)
    mean = np.mean(member_probabilities(members, np.concatenate([train_images, pool_images]), batch_size), axis=0)
    n = len(train_labels)
    folder = dict(manifest.unused)  # the pool's identity folders: never a training label, only a check here
    summary = {
        "train": n, "pool": len(kept),
        "pool_folder_agreement": float(np.mean(mean[n:].argmax(1) == [folder[f] for f in kept])) if len(kept) else 0.0,
        "train_accuracy": float(np.mean(mean[:n].argmax(1) == train_labels)),
        "mean_top1_probability_train": float(mean[:n].max(1).mean()) if n else 0.0,
        "mean_top1_probability_pool": float(mean[n:].max(1).mean()) if len(kept) else 0.0,
    }
    files = manifest.files("train") + kept
    return files, np.log(np.maximum(mean, 1e-12)).astype(np.float32), summary


def average_weights(members: list[Checkpoint]) -> Checkpoint:
    """One checkpoint whose floating-point weights are the members' mean (integer buffers from the first member).

    Meaningful only for members that share an architecture, input and classes — runs fine-tuned from one
    checkpoint (their solver and dropout may differ, as ``train --init`` allows; the first member's are kept);
    the average of independently trained networks is no network at all. The result carries the first
    member's metadata (its training config too, so export finds the data) but not its metrics or history, which
    described another network, and no optimizer state: it can be evaluated and exported, not resumed.
    """
    if not members:
        raise ValueError("average_weights needs at least one checkpoint")
    first = members[0]
    for ckpt in members[1:]:
        network = dataclasses.replace(ckpt.model_config, solver=first.model_config.solver,
                                      dropout=first.model_config.dropout)
        for what, mine, theirs in (("architecture", first.model_config, network),
                                   ("classes", first.classes, ckpt.classes), ("input", first.input_spec, ckpt.input_spec),
                                   ("split", first.manifest_sha256, ckpt.manifest_sha256)):
            if mine != theirs:
                raise ArtifactError(f"{ckpt.path}: its {what} differs from {first.path}'s; weights average only "
                                    "across one architecture", "average checkpoints fine-tuned from one start")
    weights = [rename_weights(m.state_dict, m.model_config, first.model_config) for m in members]
    state = {}
    for key, value in first.state_dict.items():
        if value.is_floating_point():
            state[key] = torch.stack([w[key].double() for w in weights]).mean(0).to(value.dtype)
        else:
            state[key] = value.clone()
    return dataclasses.replace(first, state_dict=state, metrics=None, history=None, optimizer=None, scheduler=None,
                               path=None, sha256=None)
