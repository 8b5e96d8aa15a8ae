"""Several trained checkpoints as one: their mean class probabilities.

Averaging seeds removes the part of the error that is seed-to-seed variance (examples/ensemble_accuracy.py
measures how much), and the averaged probabilities make distillation targets that one student of the same
architecture can reach (``edgenode train --kd-targets``, written by examples/ensemble_targets.py). An ensemble
itself is not exported: it costs one network per member at inference.
"""

from __future__ import annotations

import numpy as np

from edgenode.align import check_data_alignment
from edgenode.checkpoint import Checkpoint, load_checkpoint
from edgenode.data import Manifest, load_split_arrays, normalize
from edgenode.errors import ArtifactError, DataError
from edgenode.export.steps import solve_logits
from edgenode.runtime.predictor import softmax
from edgenode.train import load_unlabeled_pool


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


def member_probabilities(members: list[Checkpoint], images: np.ndarray, batch_size: int = 128) -> list[np.ndarray]:
    """Class probabilities (float32, (N, C)) of each member on uint8 NHWC ``images``, each with its trained
    solver and normalisation."""
    probs = []
    for ckpt in members:
        x = normalize(images, ckpt.input_spec.mean, ckpt.input_spec.std)
        logits, _ = solve_logits(ckpt.build_model(), ckpt.model_config.solver, x, batch_size=batch_size)
        probs.append(softmax(logits))
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
