"""Does BatchNorm inside the ODE function explain the paper preset's collapse on validation data?

The paper's f has BatchNorm layers whose running statistics are shared by all 20 Euler steps, although the
state h(t) drifts along the trajectory: statistics averaged over every step fit no single step. This script
evaluates one checkpoint three ways on the validation split (label-free argmax):

1. eval mode — running statistics (what deployment does);
2. batch statistics — BatchNorm normalises each batch with its own statistics (no label involved);
3. recalibrated — running statistics re-estimated on train images with the final weights (momentum=None,
   i.e. an exact average over all steps), then eval mode.

Usage: python examples/diagnose_batchnorm.py runs/pins-paper/best.pt ../shared/data/pins
"""

from __future__ import annotations

import sys
from collections import Counter

import torch

from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split


@torch.no_grad()
def accuracy(model, x, y, batch=256):
    preds = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    top_class, top_count = Counter(preds.tolist()).most_common(1)[0]
    return (preds == y).float().mean().item(), top_count / len(preds)


def main(checkpoint: str, data: str) -> None:
    ckpt = load_checkpoint(checkpoint)
    manifest = Manifest.load(ckpt.path.parent / "manifest.json")
    xv, yv = load_split(manifest, data, "val")
    xt, _ = load_split(manifest, data, "train")

    model = ckpt.build_model()
    print(f"{'mode':<28} {'val acc':>8} {'share of most-predicted class':>30}")
    acc, share = accuracy(model.eval(), xv, yv)
    print(f"{'eval (running statistics)':<28} {acc:8.4f} {share:30.3f}")

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    for bn in bns:
        bn.train()
        bn.track_running_stats = False  # use batch statistics, leave the stored ones alone
    acc, share = accuracy(model, xv, yv, batch=32)
    print(f"{'batch statistics (batch 32)':<28} {acc:8.4f} {share:30.3f}")

    model = ckpt.build_model()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.train()
    with torch.no_grad():
        for i in range(0, len(xt), 256):
            model(xt[i : i + 256])
    acc, share = accuracy(model.eval(), xv, yv)
    print(f"{'recalibrated running stats':<28} {acc:8.4f} {share:30.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
