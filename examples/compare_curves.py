"""Val (solid) and train (dotted) accuracy of several training runs on one figure, from their metrics.csv.

    python examples/compare_curves.py --out docs/figures/aligned_gpu_curves.png \
        "plain crops, RK4×2=runs/gpu/kd-pool-w5" "aligned, RK4×4=runs/gpu-aligned/w5-rk4x4"

Each argument is LABEL=RUN_FOLDER (a folder written by `edgenode train`); the best val epoch is marked.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_metrics(run: Path) -> dict[str, list[float]]:
    path = run / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found — pass a run folder written by `edgenode train`")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in ("epoch", "val_accuracy", "train_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()

    from edgenode.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, item in enumerate(args.runs):
        label, sep, folder = item.rpartition("=")
        if not sep:
            raise SystemExit(f"{item!r}: expected LABEL=RUN_FOLDER")
        m = read_metrics(Path(folder))
        color = f"C{i}"
        best = max(range(len(m["epoch"])), key=lambda j: m["val_accuracy"][j])
        ax.plot(m["epoch"], m["val_accuracy"], color=color,
                label=f"{label}: best val {m['val_accuracy'][best]:.3f} (epoch {m['epoch'][best]:.0f})")
        ax.plot(m["epoch"], m["train_accuracy"], color=color, linestyle=":", linewidth=1)
        ax.plot(m["epoch"][best], m["val_accuracy"][best], "o", color=color)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (label-free argmax)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title="val (solid), train (dotted)", title_fontsize=8)
    if args.title:
        ax.set_title(args.title)
    fig.tight_layout()
    print(f"wrote {save_figure(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
