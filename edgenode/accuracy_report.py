"""Accuracy report for one trained checkpoint: a JSON summary plus the figures a reader looks at first.

A single accuracy number hides which identities fail and how; the report adds the interval that says how
far the number can be trusted, the per-class recall, the worst classes with the identities they are taken
for, a grid of example predictions (the paper's Fig. 4) and — when near-duplicates of training images leak
into the test split — the accuracy without them, so the headline is not inflated by memorised pictures.

Evaluation is label-free: the model sees only the normalised pixels and the prediction is the plain argmax
of its logits; labels are used afterwards, for scoring only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from edgenode.metrics import ClassificationMetrics, confusion_matrix, format_accuracy, wilson_interval
from edgenode.plots import plt, save_figure

WORST_K = 10
RIGHT, WRONG = "#1a7f37", "#cf222e"


def _confusion(true, pred, num_classes: int) -> np.ndarray:
    return confusion_matrix(torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(true)), num_classes).numpy()


def per_class_recall(true, pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, n) per class; recall is NaN for a class absent from the split, so it is never called perfect."""
    cm = _confusion(true, pred, num_classes)
    n = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, cm.diagonal() / n, np.nan), n


def select_examples(true, pred, n: int = 24, seed: int = 0) -> np.ndarray:
    """Seeded indices to show: up to half are errors when there are any, so a good model still shows its
    failures; the rest are correct predictions (or more errors, when there are too few correct ones)."""
    true, pred = np.asarray(true), np.asarray(pred)
    rng = np.random.default_rng(seed)
    wrong, right = np.flatnonzero(true != pred), np.flatnonzero(true == pred)
    n = min(n, len(true))
    n_wrong = min(len(wrong), max(n // 2, n - len(right)))
    picked = np.concatenate([rng.choice(wrong, n_wrong, replace=False), rng.choice(right, n - n_wrong, replace=False)])
    return np.sort(picked.astype(np.int64))


def prediction_grid(images_uint8_nhwc, true, pred, classes: Sequence[str], path: str | os.PathLike, n: int = 24,
                    seed: int = 0, probs=None) -> np.ndarray:
    """Draw the examples of ``select_examples`` titled "predicted (probability) / true name", green when
    right and red when wrong; returns the shown indices so a caller can list them beside the figure."""
    images, true, pred = np.asarray(images_uint8_nhwc), np.asarray(true), np.asarray(pred)
    shown = select_examples(true, pred, n, seed)
    cols = min(6, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ax.imshow(images[i], interpolation="nearest")
        confidence = f" ({float(np.asarray(probs)[i]):.2f})" if probs is not None else ""
        ax.set_title(f"{classes[pred[i]]}{confidence}\ntrue: {classes[true[i]]}", fontsize=7,
                     color=RIGHT if pred[i] == true[i] else WRONG)
    wrong = int((true[shown] != pred[shown]).sum())
    fig.suptitle(f"{len(shown)} examples ({wrong} wrong shown; {int((true != pred).sum())} of {len(true)} wrong in all)")
    save_figure(fig, path)
    return shown


@dataclass(frozen=True)
class WorstClasses:
    """What ``worst_class_confusion`` drew: class indices of the rows (lowest recall first) and columns."""

    rows: list[int]
    columns: list[int]
    recall: list[float]


def worst_class_confusion(true, pred, classes: Sequence[str], path: str | os.PathLike, k: int = WORST_K,
                          max_columns: int = 20) -> WorstClasses:
    """Heat map of the k lowest-recall classes' confusion rows over only the classes their errors go to.

    The full 105 x 105 matrix is unreadable and almost all zero; restricting to the columns that receive
    the errors shows at a glance who each weak identity is mistaken for. Columns are ordered by errors
    received; beyond ``max_columns`` the rest are summed into one "other" column (not in ``columns``).
    """
    true, pred = np.asarray(true), np.asarray(pred)
    recall, n = per_class_recall(true, pred, len(classes))
    present = np.flatnonzero(n > 0)
    rows = present[np.argsort(recall[present], kind="stable")][:k].tolist()
    cm = _confusion(true, pred, len(classes))
    errors = cm[rows].copy()
    errors[np.arange(len(rows)), rows] = 0
    received = errors.sum(0)
    columns = [int(c) for c in np.argsort(-received, kind="stable") if received[c] > 0]
    shown_cols, rest = columns[:max_columns], columns[max_columns:]
    table = errors[:, shown_cols]
    labels = [classes[c] for c in shown_cols]
    if rest:
        table = np.concatenate([table, errors[:, rest].sum(1, keepdims=True)], axis=1)
        labels.append(f"other ({len(rest)})")
    row_labels = [f"{classes[r]}  (recall {recall[r]:.2f}, n={n[r]})" for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(labels) + 3), max(2.0, 0.4 * len(rows) + 1.5)))
    if table.size and table.max() > 0:
        ax.imshow(table, cmap="Reds", aspect="auto", vmin=0)
        for (i, j), count in np.ndenumerate(table):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > table.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), row_labels, fontsize=8)
        ax.set_xlabel("predicted as (errors only)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no errors: every class has recall 1.00", ha="center", va="center")
    ax.set_title(f"the {len(rows)} classes with the lowest recall, and what they are mistaken for")
    save_figure(fig, path)
    return WorstClasses(rows=[int(r) for r in rows], columns=shown_cols, recall=[float(recall[r]) for r in rows])


def recall_bars(true, pred, classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Horizontal bars of per-class recall, sorted, so the spread between identities is visible at once."""
    recall, n = per_class_recall(true, pred, len(classes))
    present = np.flatnonzero(n > 0)
    order = present[np.argsort(recall[present], kind="stable")][::-1]  # barh draws bottom-up: worst on top
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.16 * len(order) + 1)))
    ax.barh(range(len(order)), recall[order], color=[WRONG if recall[c] < 0.5 else RIGHT for c in order])
    ax.set_yticks(range(len(order)), [classes[c] for c in order], fontsize=6 if len(order) > 40 else 8)
    ax.set(xlim=(0, 1), ylim=(-0.6, len(order) - 0.4), xlabel="recall (label-free argmax)")
    mean = float(np.mean(recall[present])) if len(present) else 0.0
    ax.axvline(mean, color="grey", ls="--", lw=1)
    ax.set_title(f"per-class recall, {len(order)} classes (dashed: macro mean {mean:.2f})")
    return save_figure(fig, path)


def predict(predictor, images_uint8_nhwc: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, softmax probability of that class) per image; only pixels enter the artifact."""
    from edgenode.console import progress_bar
    from edgenode.data import normalize
    from edgenode.runtime.predictor import softmax

    spec = predictor.metadata.input
    preds, probs = [], []
    with progress_bar(f"scoring {predictor.metadata.path.name}", len(images_uint8_nhwc)) as advance:
        for start in range(0, len(images_uint8_nhwc), batch_size):
            x = normalize(images_uint8_nhwc[start:start + batch_size], spec.mean, spec.std).numpy()
            p = softmax(predictor.predict_logits(x))
            preds.append(p.argmax(1))
            probs.append(p.max(1))
            advance(len(x))
    return np.concatenate(preds), np.concatenate(probs)


def _subset_accuracy(correct: np.ndarray) -> dict:
    """Accuracy of a subset with its interval; None for both when nothing is left (no figure, rather than 0 %)."""
    k, n = int(correct.sum()), len(correct)
    return {"accuracy": k / n if n else None, "accuracy_ci": list(wilson_interval(k, n)) if n else None, "n": n}


def accuracy_report(artifact_path: str | os.PathLike, data_root: str | os.PathLike,
                    manifest_path: str | os.PathLike | None, out_dir: str | os.PathLike, *, split: str = "test",
                    exclude_files: Iterable[str] | None = None, near_duplicates: str | os.PathLike | None = None,
                    batch_size: int = 256, provider: str = "auto", device: str | None = None,
                    mirror_average: bool = False) -> dict:
    """Evaluate a checkpoint, ONNX file or TensorRT engine on one split of its manifest; write report.json and three PNGs.

    The manifest (default: ``manifest.json`` beside the artifact) must be the one the model was trained on
    (same sha256): another split could put training images into the test set and report memorisation as
    accuracy. An export is scored as deployed, through the runtime ``edgenode infer`` uses (``provider``:
    auto | tensorrt | cuda | cpu; for a checkpoint, the torch device; ``device`` ``cuda:N`` picks a GPU), so
    the report of an INT8 file is the INT8 file's. ``exclude_files`` (paths relative to the images root) and
    ``near_duplicates`` (the pairs' tsv: the split's images with a near-duplicate in train) give a second
    accuracy without those images.
    ``mirror_average`` makes a checkpoint classify each picture with its mirror image, as
    ``export --mirror-average`` deploys it; an export has that choice baked in and is scored as it is.
    """
    from edgenode.artifacts import write_json
    from edgenode.console import console
    from edgenode.data import load_scored_split
    from edgenode.data.manifest import check_split_option, manifest_of_run
    from edgenode.errors import UsageError
    from edgenode.runtime import load_predictor
    from edgenode.runtime.providers import check_provider
    from rich.markup import escape

    check_provider(provider)  # a typo is the command line's, said before the model loads
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    check_split_option(split)
    if near_duplicates is not None and split == "train":
        raise UsageError("--near-duplicates compares the split with train", "use it with --split val or test")
    with load_predictor(artifact_path, provider=provider, device=device,
                        mirror_average=True if mirror_average else None) as predictor:
        info = predictor.metadata
        manifest_path, manifest = manifest_of_run(info.path, info.manifest_sha256, manifest_path)
        why = ["--exclude's files"] if exclude_files is not None else []
        if near_duplicates is not None:
            why.append(f"near-duplicates of a train picture of the same identity, {Path(near_duplicates).name}")
        if near_duplicates is not None:
            from edgenode.data.near_duplicates import leaky_files, read_pairs_of

            leaky = leaky_files(manifest, read_pairs_of(manifest, near_duplicates), split=split)
            exclude_files = set(exclude_files or ()) | set(leaky)
        images, labels = load_scored_split(manifest, manifest_path, data_root, split, info.input)
        pred, prob = predict(predictor, images, batch_size)
        runtime = predictor.runner.describe()
    classes = list(info.classes)
    metrics = ClassificationMetrics.from_predictions(torch.from_numpy(pred), torch.from_numpy(labels), len(classes))
    recall, n_class = per_class_recall(labels, pred, len(classes))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prediction_grid(images, labels, pred, classes, out / "predictions.png", probs=prob)
    worst = worst_class_confusion(labels, pred, classes, out / "worst_classes.png")
    recall_bars(labels, pred, classes, out / "per_class_recall.png")

    cm = _confusion(labels, pred, len(classes))
    worst_rows = []
    for c in worst.rows:
        errs = cm[c].copy()
        errs[c] = 0
        top = int(errs.argmax())
        worst_rows.append({"class": classes[c], "index": c, "n": int(n_class[c]), "recall": float(recall[c]),
                           "most_confused_with": classes[top] if errs[top] else None})
    report = {
        "artifact": info.to_dict(), "runtime": runtime,
        "checkpoint": str(artifact_path) if info.kind == "checkpoint" else None,
        "checkpoint_sha256": info.source_checkpoint_sha256,
        "manifest": str(manifest_path), "manifest_sha256": manifest.sha256, "split": split,
        "evaluation": "label-free argmax of the logits", "mirror_average": info.mirror_average,
        "n": metrics.n, "accuracy": metrics.accuracy, "accuracy_ci": list(metrics.accuracy_ci),
        "macro_f1": metrics.macro_f1, "macro_precision": metrics.macro_precision, "macro_recall": metrics.macro_recall,
        "per_class_recall": {classes[c]: (None if np.isnan(recall[c]) else float(recall[c])) for c in range(len(classes))},
        "worst_classes": worst_rows,
        "misclassified": [{"file": f, "true": classes[t], "predicted": classes[q], "probability": float(pr)}
                          for f, t, q, pr in zip(manifest.files(split), labels, pred, prob) if t != q],
        "excluding_files": None,
        "figures": {"predictions": "predictions.png", "worst_classes": "worst_classes.png",
                    "per_class_recall": "per_class_recall.png"},
    }
    correct = pred == labels
    if exclude_files is not None:
        excluded = {Path(f).as_posix() for f in exclude_files}
        keep = np.array([f not in excluded for f in manifest.files(split)], dtype=bool)
        report["excluding_files"] = {**_subset_accuracy(correct[keep]), "n_excluded": int((~keep).sum()),
                                     "n_listed_not_in_split": len(excluded - set(manifest.files(split))),
                                     "excluded": " and ".join(why)}
    write_json(out / "report.json", report)

    console.print(f"{escape(info.describe())} on {escape(runtime)}")
    console.print(f"[bold]{split}[/] accuracy {format_accuracy(metrics.accuracy, metrics.accuracy_ci)} "
                  f"(n={metrics.n}, macro F1 {metrics.macro_f1:.3f})")
    if report["excluding_files"] is not None:
        sub = report["excluding_files"]
        left = format_accuracy(sub["accuracy"], tuple(sub["accuracy_ci"])) if sub["n"] else "no image left to score"
        console.print(f"without {sub['n_excluded']} file(s) ({escape(sub['excluded'])}): {left} (n={sub['n']})")
    console.print("worst classes: " + ", ".join(f"{r['class']} {r['recall']:.2f}" for r in worst_rows[:5]))
    console.print(f"report and figures in {out}")
    return report
