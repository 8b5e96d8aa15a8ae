"""Distillation from a pretrained face embedder: targets on the device and the loss.

The student (a ``faceode`` NeuralODECNN, whose features are 128-d like dlib's descriptor) learns two things
from the teacher, on labelled train images and on unlabelled pool images alike:

- the teacher's descriptor direction: ``1 - cos(student features, teacher descriptor - centre)``, where the
  centre is the mean train descriptor (dlib's descriptors share a large common component; without
  centring, every cosine is close to 1 and carries little identity);
- the teacher's class probabilities: KL divergence to the softmax of the teacher's nearest-class-mean
  logits, ``scale · cos(descriptor, class mean)``, whose class means come from the train split only.
  ``--kd-targets`` replaces these with class probabilities stored per file (e.g. an ensemble of trained
  students, ``examples/ensemble_targets.py``): targets the student's own architecture can reach.

No val or test label or image is used: class means and the temperature are fitted on the train split.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgenode.artifacts import atomic_path
from edgenode.errors import ArtifactError, ArtifactPathError, UsageError
from edgenode.teacher import TeacherEmbeddings

SCALE_GRID = tuple(float(s) for s in np.arange(2.0, 64.5, 0.5))


@dataclass
class DistillTargets:
    """Teacher targets for the concatenated training images (train split first, then the pool)."""

    embedding: torch.Tensor  # (N, D) unit vectors; zero rows where the teacher has no descriptor
    has_target: torch.Tensor  # (N,) bool
    class_means: torch.Tensor  # (C, D) unit vectors, from the train split
    scale: float  # temperature of the teacher's class probabilities, fitted on the train split
    log_probs: torch.Tensor | None = None  # (N, C) stored class log-probabilities (--kd-targets) instead of the teacher's
    view_embedding: torch.Tensor | None = None  # (K, N, D) unit targets of K augmented views (--teacher-views)

    def target_embedding(self, index: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        """The descriptors to match: of the pictures, or with ``view`` of those augmented views of them."""
        return self.embedding[index] if view is None else self.view_embedding[view.to(index.device), index]

    def teacher_log_probs(self, index: torch.Tensor, view: torch.Tensor | None = None,
                          temperature: float = 1.0) -> torch.Tensor:
        """Float32 even under autocast: these are targets, and bf16 would cost ~0.1 logit at these scales.

        ``temperature`` > 1 softens them (Hinton's distillation): the teacher's logits divided by it, or stored
        log-probabilities, which are logits up to a constant, likewise."""
        if self.log_probs is not None:
            stored = self.log_probs[index]
            return stored if temperature == 1.0 else F.log_softmax(stored / temperature, dim=1)
        with torch.autocast(self.embedding.device.type, enabled=False):
            return F.log_softmax(self.scale / temperature * self.target_embedding(index, view).float()
                                 @ self.class_means.float().t(), dim=1)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_means(embedding: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Unit-length mean of each class's unit descriptors; a class without any keeps a zero row."""
    means = np.zeros((num_classes, embedding.shape[1]), dtype=np.float64)
    np.add.at(means, labels, unit(embedding))
    return unit(means).astype(np.float32)


def fit_scale(embedding: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The logit scale that minimises the teacher's cross-entropy on the train split (a 1-d grid).

    Each image is scored against its own class mean computed *without* it (leave-one-out): with itself
    included every train image sits too close to its mean and the fitted probabilities come out overconfident.
    """
    vectors = unit(embedding).astype(np.float64)
    sums = np.zeros((num_classes, vectors.shape[1]))
    np.add.at(sums, labels, vectors)
    cos = vectors @ unit(sums).T
    own = sums[labels] - vectors
    cos[np.arange(len(labels)), labels] = np.einsum("ij,ij->i", vectors, unit(own))
    best, best_nll = SCALE_GRID[0], float("inf")
    for scale in SCALE_GRID:
        logits = scale * cos
        logits -= logits.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(labels)), labels]))
        if nll < best_nll:
            best, best_nll = scale, nll
    return best


def build_targets(
    teacher: TeacherEmbeddings,
    train_files: list[str],
    train_labels: np.ndarray,
    pool_files: list[str],
    num_classes: int,
    device: torch.device,
) -> tuple[DistillTargets, dict]:
    """Look the teacher up for every training image; fit class means and scale on the labelled ones."""
    train_emb, train_found = teacher.lookup(train_files)
    pool_emb, pool_found = teacher.lookup(pool_files)
    if train_found.sum() < max(1, len(train_files) // 2):
        raise UsageError(
            f"{teacher.path}: holds descriptors for only {int(train_found.sum())} of {len(train_files)} train images",
            "compute them for this data set: `edgenode teacher DATA --out teacher.npz`, DATA its original pictures "
            "(an aligned copy's chips share their names)",
        )
    missing = sorted(set(range(num_classes)) - set(train_labels[train_found].tolist()))
    if missing:  # its class mean would be a zero row: no KL target would ever point to that class
        raise UsageError(f"{teacher.path}: no descriptor for any train image of {len(missing)} class(es) "
                         f"(class index {', '.join(map(str, missing[:5]))}{'…' if len(missing) > 5 else ''})",
                         "compute the teacher for this data set: `edgenode teacher DATA --out teacher.npz`, DATA its "
                         "original pictures (an aligned copy's chips share their names)")
    centre = train_emb[train_found].mean(axis=0)
    train_emb, pool_emb = train_emb - centre, pool_emb - centre
    means = class_means(train_emb[train_found], train_labels[train_found], num_classes)
    scale = fit_scale(train_emb[train_found], train_labels[train_found], num_classes)
    embedding = unit(np.concatenate([train_emb, pool_emb]).astype(np.float32))
    found = np.concatenate([train_found, pool_found])
    embedding[~found] = 0.0
    targets = DistillTargets(
        embedding=torch.from_numpy(embedding).to(device),
        has_target=torch.from_numpy(found).to(device),
        class_means=torch.from_numpy(means).to(device),
        scale=scale,
    )
    pseudo = (unit(pool_emb[pool_found]) @ means.T).argmax(1) if pool_found.any() else np.zeros(0, int)
    summary = {
        "teacher": teacher.path,
        "train_with_target": int(train_found.sum()),
        "train_images": len(train_files),
        "pool_with_target": int(pool_found.sum()),
        "pool_images": len(pool_files),
        "teacher_scale": scale,
        "teacher_train_ncm_accuracy": float(((unit(train_emb[train_found]) @ means.T).argmax(1) == train_labels[train_found]).mean()),
        "pool_classes_seen": int(len(np.unique(pseudo))),
    }
    return targets, summary


def save_kd_targets(path: str | os.PathLike, files: list[str], classes: list[str], log_probs: np.ndarray,
                    sources: list[str]) -> Path:
    """Write the ``.npz`` that ``load_kd_targets`` reads, atomically; ``sources`` says where the probabilities came from.

    Written through a file handle: given a name, ``np.savez`` would append ``.npz`` to the temporary file.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, files=np.array(files, dtype=str), classes=np.array(classes, dtype=str),
                            log_probs=np.asarray(log_probs, dtype=np.float32), sources=np.array(sources, dtype=str))
    return Path(path)


def load_kd_targets(path: str | os.PathLike, files: list[str], classes: list[str]) -> np.ndarray:
    """Stored class log-probabilities ((len(files), C) float32) for these training files, in this class order.

    The file is an ``.npz`` with ``files`` (paths relative to the images folder, as in the manifest),
    ``classes`` and ``log_probs`` (each row a log-softmax). Every training image must have a row: one without
    would silently fall back to no class target at all.
    """
    fix = ("write it with examples/ensemble_targets.py for this split, data folder and the run's --near-duplicates "
           "table (or none)")
    if not Path(path).is_file():
        raise ArtifactPathError(f"--kd-targets {path}: not found", fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored_files = [str(f) for f in archive["files"]]
            stored_classes = [str(c) for c in archive["classes"]]
            log_probs = archive["log_probs"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"--kd-targets {path}: not a class-probability .npz (files, classes, log_probs): {exc}", fix) from None
    if stored_classes != list(classes):
        raise UsageError(f"--kd-targets {path}: its {len(stored_classes)} classes are not this split's {len(classes)} "
                         "(or not in the same order)", fix)
    if log_probs.shape != (len(stored_files), len(classes)):
        raise ArtifactError(f"--kd-targets {path}: log_probs has shape {log_probs.shape}, not ({len(stored_files)} files, "
                            f"{len(classes)} classes)", fix)
    with np.errstate(invalid="ignore"):  # a NaN row is reported below, by name
        total = np.logaddexp.reduce(log_probs.astype(np.float64), axis=1) if len(log_probs) else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(total) | (np.abs(total) > 1e-3))
    if len(bad):
        raise ArtifactError(f"--kd-targets {path}: row {bad[0]} ({stored_files[bad[0]]}) is not a log-probability "
                            f"vector (its probabilities sum to {np.exp(total[bad[0]]):.4g}; {len(bad)} such rows)",
                            "store log_softmax of the logits, not logits or probabilities")
    row = {f: i for i, f in enumerate(stored_files)}
    missing = [f for f in files if f not in row]
    if missing:
        raise UsageError(f"--kd-targets {path}: no row for {len(missing)} of the {len(files)} training images "
                         f"(e.g. {missing[0]!r})", fix)
    return log_probs[[row[f] for f in files]]


def attach_kd_targets(targets: DistillTargets, path: str | os.PathLike, files: list[str], classes: list[str]) -> None:
    """Use the stored class probabilities of ``path`` in the KL term of ``targets`` (rows in ``files`` order).

    The loss counts only images with a teacher descriptor, so every training image must have one here: an image
    without would lose its stored target without a word.
    """
    uncovered = int((~targets.has_target).sum())
    if uncovered:
        raise UsageError(f"--kd-targets {path}: the teacher has no descriptor for {uncovered} of the {len(files)} "
                         "training images, which would then get no stored class target either",
                         "compute descriptors for every training image (`edgenode teacher`) or drop --kd-targets")
    stored = load_kd_targets(path, files, classes)
    targets.log_probs = torch.from_numpy(stored).to(targets.embedding.device)


def attach_view_bank(targets: DistillTargets, bank, rows: np.ndarray, n_train: int) -> None:
    """Give ``targets`` the teacher's descriptors of the bank's views of the training images (``rows``: each one's
    row in the bank; the first ``n_train`` are the labelled train split).

    The views are centred on their own mean over the train split, as the stored descriptors are on theirs: the
    teacher describes a view from the 64-px chip, the stored descriptor from the original picture, and a shift
    common to all views (blur) is no identity.
    """
    views = bank.embedding[:, rows].astype(np.float32)  # (K, N, D)
    centre = views[:, :n_train].reshape(-1, views.shape[-1]).mean(axis=0)
    views = unit((views - centre).reshape(-1, views.shape[-1])).reshape(views.shape)
    targets.view_embedding = torch.from_numpy(views).to(targets.embedding.device)


DISTILLABLE_PRESETS = ("faceode", "faceode-res")  # their head is embedding → cosine classifier


def check_student(model, teacher: TeacherEmbeddings) -> None:
    if model.config.arch not in DISTILLABLE_PRESETS:
        raise UsageError(f"--teacher: the {model.config.arch!r} preset has no embedding head to distil into",
                         f"use --arch {' or '.join(DISTILLABLE_PRESETS)}")
    if model.feature_dim != teacher.dim:
        raise UsageError(f"--teacher: the student's embedding is {model.feature_dim}-d but the teacher's descriptors "
                         f"({teacher.path}) are {teacher.dim}-d", "use 128-d descriptors (dlib's, `edgenode teacher`)")


def init_classifier(model, targets: DistillTargets) -> None:
    """Start a cosine classifier at the teacher's class means and temperature (a head the teacher validated)."""
    head = model.head[-1]
    if hasattr(head, "log_scale"):
        with torch.no_grad():
            head.weight.copy_(targets.class_means.to(head.weight.dtype))
            head.log_scale.fill_(float(np.log(targets.scale)))


def distill_loss(
    features: torch.Tensor,
    logits: torch.Tensor,
    index: torch.Tensor,
    targets: DistillTargets,
    embedding_weight: float,
    kd_weight: float,
    count: float | None = None,
    view: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``embedding_weight·(1-cos) + kd_weight·KL`` summed over the images with a teacher descriptor and divided by
    ``count`` (default: their number, i.e. the mean; training under DDP passes the global count per rank).

    ``temperature`` T: the KL between teacher and student probabilities both at logits / T, times T² so that its
    gradients keep their size as T changes (Hinton et al., 2015). At 1 it is the plain KL to the last bit
    (x / 1 and x · 1 are exact).

    ``view`` (one per image, with ``--teacher-views``): the images are those augmented views, and the targets the
    teacher's descriptors of them. ``rows``: the positions in the batch of the images with a descriptor, when the
    caller knows them (training does, on the CPU); then ``view`` holds those rows' views only, and nothing here
    waits for the GPU to say which images have a target."""
    if rows is None:
        mask = targets.has_target[index]
        if not bool(mask.any()):
            return features.sum() * 0.0
        rows = mask.nonzero().squeeze(1)
        view = None if view is None else view[mask.cpu()]
    features, logits, index = features.index_select(0, rows).float(), logits.index_select(0, rows).float(), index.index_select(0, rows)
    count = float(len(rows)) if count is None else count
    loss = features.new_zeros(())
    if embedding_weight:
        cos = F.cosine_similarity(features, targets.target_embedding(index, view), dim=1)
        loss = loss + embedding_weight * (1.0 - cos).sum() / count
    if kd_weight:
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), targets.teacher_log_probs(index, view, temperature),
                      log_target=True, reduction="sum") * temperature**2
        loss = loss + kd_weight * kl / count
    return loss
