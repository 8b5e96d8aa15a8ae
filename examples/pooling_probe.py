"""Does where a feature sits on the face matter? Linear probes on a trained faceode network's last feature map.

    OMP_NUM_THREADS=2 python examples/pooling_probe.py examples/pretrained/faceode-pins-aligned.pt runs/pins-aligned64c \
        runs/pins-manifest.json runs/teacher-cnn/teacher_dlib128_cnn.npz

(RESULTS.md's figures come from the width-128 model shipped before: ``git show
e65ba70:examples/pretrained/faceode-pins-aligned.pt``; the file there now is the width-160 one.)

The ``faceode`` head averages its (2·width)×8×8 map (256×8×8 at width 128) over all positions before the embedding.
On aligned chips the eyes, nose and mouth sit at fixed places, and face networks for aligned faces often weigh
positions instead (MobileFaceNet's global depthwise convolution). Before building such a head, this asks the trained
network, frozen: ridge regressions from its map, pooled to 1×1 (what the head does), 2×2, 4×4 or not at all (8×8,
16,384 features at width 128), to the teacher's centred unit descriptors, fitted on train, regularisation chosen
by val accuracy. Each probe's output is scored by its cosine to the teacher and by the teacher's nearest class mean
(train class means). If the finer grids fit val much better than 1×1, position carries identity the average throws
away.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split_arrays, normalize
from edgenode.distill import class_means, unit
from edgenode.metrics import wilson_interval
from edgenode.teacher import load_teacher

SPLITS = ("train", "val", "test")


def feature_maps(ckpt, manifest: Manifest, data: str) -> tuple[dict, dict]:
    """The head's map before pooling (after its last GroupNorm and ReLU) for each split, and the labels."""
    model = ckpt.build_model().eval()
    pool = next(i for i, layer in enumerate(model.head) if isinstance(layer, torch.nn.AdaptiveAvgPool2d))
    maps, labels = {}, {}
    for split in SPLITS:
        images, labels[split] = load_split_arrays(manifest, data, split)
        with torch.no_grad():
            maps[split] = np.concatenate([model.head[:pool](model.ode(model.stem(normalize(images[s : s + 128], ckpt.input_spec.mean,
                                                                                               ckpt.input_spec.std)))).numpy()
                                          for s in range(0, len(images), 128)])
    return maps, labels


def grid_pool(x: np.ndarray, grid: int) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, grid, h // grid, grid, w // grid).mean(axis=(3, 5)).reshape(n, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="the aligned copy the checkpoint reads")
    parser.add_argument("manifest")
    parser.add_argument("teacher", help="teacher descriptors of that copy's pictures")
    args = parser.parse_args()
    manifest = Manifest.load(args.manifest)
    maps, labels = feature_maps(load_checkpoint(args.checkpoint), manifest, args.data)
    teacher = load_teacher(args.teacher)
    targets = {split: teacher.lookup(manifest.files(split))[0] for split in SPLITS}
    centre = targets["train"].mean(axis=0)
    targets = {split: unit(t - centre) for split, t in targets.items()}
    means = class_means(targets["train"], labels["train"], len(manifest.classes))
    side = maps["train"].shape[-1]
    for grid in (1, 2, 4, side):
        x = {s: torch.tensor(grid_pool(maps[s], grid), dtype=torch.float64) for s in SPLITS}
        mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-6
        x = {s: (v - mu) / sd for s, v in x.items()}
        gram = x["train"] @ x["train"].T  # dual ridge: as cheap for 16,384 features as for 256
        y = torch.tensor(targets["train"], dtype=torch.float64)
        best = None
        for lam in (1e1, 1e2, 1e3, 1e4, 1e5):
            alpha = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), y)
            scores = {}
            for s in SPLITS:
                pred = unit((x[s] @ x["train"].T @ alpha).numpy())
                right = int(((pred @ means.T).argmax(1) == labels[s]).sum())
                scores[s] = (float((pred * targets[s]).sum(1).mean()), right / len(labels[s]), wilson_interval(right, len(labels[s])))
            if best is None or scores["val"][1] > best[1]["val"][1]:
                best = (lam, scores)
        lam, scores = best
        print(f"{grid}x{grid} ({x['train'].shape[1]:5d} features, ridge {lam:g}): "
              + "  ".join(f"{s} cos {c:.3f} acc {a:.3f} [{lo:.3f}, {hi:.3f}]" for s, (c, a, (lo, hi)) in scores.items()), flush=True)


if __name__ == "__main__":
    main()
