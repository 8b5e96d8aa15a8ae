"""What training's augmentation shows the student: a grid of train chips, each as stored and as augmented views.

    python examples/augmentation_views.py runs/pins-aligned64 runs/pins-manifest.json \
        --color 0.4 --out docs/figures/augment_color_views.png

Columns: the chip as stored, four views with ``--augment-color`` and no shift (mirror or not), and one with the
default 8-px shift as well; the same functions as ``edgenode train --augment`` (``edgenode.augment``: ``augment``, ``jitter_colors``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the data folder training reads (an aligned copy for aligned models)")
    parser.add_argument("manifest")
    parser.add_argument("--color", type=float, default=0.4, help="--augment-color strength")
    parser.add_argument("--shift", type=float, default=0.125, help="--augment-shift of the last column")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from edgenode.data import Manifest, images_root
    from edgenode.data.decode import load_rgb
    from edgenode.plots import plt, save_figure
    from edgenode.augment import augment, jitter_colors

    files = Manifest.load(args.manifest).files("train")
    pick = np.random.default_rng(args.seed).choice(len(files), args.images, replace=False)
    root = images_root(args.data)
    x = torch.stack([torch.from_numpy(np.array(load_rgb(root / files[i]), dtype=np.uint8)).permute(2, 0, 1).float() / 255
                     for i in pick])
    g = torch.Generator().manual_seed(0)
    columns = [("as stored", x)]
    columns += [(f"--augment-color {args.color:g}, view {k + 1}", jitter_colors(augment(x, g, 0.0), g, args.color)) for k in range(4)]
    columns += [(f"{args.color:g} + shift {args.shift:g}", jitter_colors(augment(x, g, args.shift), g, args.color))]
    fig, axes = plt.subplots(len(pick), len(columns), figsize=(1.6 * len(columns), 1.6 * len(pick)), squeeze=False)
    for c, (title, views) in enumerate(columns):
        for r in range(len(pick)):
            axes[r, c].imshow(views[r].permute(1, 2, 0).numpy())
            axes[r, c].axis("off")
        axes[0, c].set_title(title, fontsize=7)
    fig.suptitle("training views of train chips (edgenode.augment: augment + jitter_colors)", fontsize=9)
    fig.tight_layout()
    print(f"wrote {save_figure(fig, args.out, dpi=70)}")  # photographs: a low dpi keeps the PNG small


if __name__ == "__main__":
    main()
