"""PNG figures, drawn headless with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgenode.artifacts import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive: one per failed save would pile up in a long run
    return Path(path)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    epochs = [row["epoch"] for row in history]
    # a short run's few epochs as dots (a single epoch is otherwise a line of length zero: an empty plot)
    style = {"marker": "o", "markersize": 4} if len(epochs) <= 20 else {}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train", **style)
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="val", **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], label="train", **style)
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], label="val", **style)
    if history and "val_accuracy_ema" in history[0]:  # a run with --ema-decay: its weight average, same colour
        ax_acc.plot(epochs, [r["val_accuracy_ema"] for r in history], color="C1", linestyle="--", label="val, weight average", **style)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (label-free argmax)", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):  # epochs are whole numbers: ticks never at 0.96 … 1.04
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_run_comparison(histories: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Val accuracy (solid) and train accuracy (dotted) of several runs on one axis: an ablation at a glance."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i % 10}"
        epochs = [row["epoch"] for row in history]
        ax.plot(epochs, [row["val_accuracy"] for row in history], color=color, label=f"{name} (val)")
        ax.plot(epochs, [row["train_accuracy"] for row in history], color=color, linestyle=":", alpha=0.7)
    ax.set(xlabel="epoch", ylabel="accuracy (label-free argmax)", ylim=(0, 1), title=title or "val (solid) and train (dotted) accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
