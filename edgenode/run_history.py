"""A run's history, one row an epoch: ``metrics.csv`` and ``metrics.json`` (written atomically), and the paper's
Table I layout printed every few epochs."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edgenode.artifacts import atomic_write_bytes, write_json

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_distill_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "nfe_train", "nfe_val", "lr", "seconds"]
EMA_COLUMNS = ["val_loss_ema", "val_accuracy_ema"]


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    extra = [k for k in EMA_COLUMNS if history and k in history[0]]  # a run with --ema-decay only
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS + extra, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(run_dir / "metrics.csv", buffer.getvalue().encode())
    write_json(run_dir / "metrics.json", history)


def table_one(history: list[dict[str, Any]], every: int):
    """The paper's Table I layout: one row every ``every`` epochs."""
    from rich.table import Table

    table = Table(title="Table I — validation metrics (label-free)")
    for column in ("Epoch", "Train loss", "Train acc", "Val loss", "Val acc", "Precision", "Recall", "F1", "NFE"):
        table.add_column(column, justify="right")
    for row in history:
        if row["epoch"] % every == 0 or row is history[-1]:
            table.add_row(
                str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['train_accuracy']:.4f}", f"{row['val_loss']:.4f}",
                f"{row['val_accuracy']:.4f}", f"{row['val_precision']:.4f}", f"{row['val_recall']:.4f}", f"{row['val_f1']:.4f}",
                str(row["nfe_val"]),
            )
    return table


def epoch_row(epoch: int, train_stats: dict[str, Any], val: dict[str, Any], lr: float, seconds: float) -> dict[str, Any]:
    """One line of ``metrics.csv``: the epoch's train and val figures."""
    return {
        "epoch": epoch,
        "train_loss": train_stats["loss"],
        "train_accuracy": train_stats["accuracy"],
        "train_distill_loss": train_stats["distill_loss"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_precision": val["macro_precision"],
        "val_recall": val["macro_recall"],
        "val_f1": val["macro_f1"],
        "nfe_train": train_stats["nfe"],
        "nfe_val": val["nfe"],
        "lr": lr,
        "seconds": seconds,
    }
