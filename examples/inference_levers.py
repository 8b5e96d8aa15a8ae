"""Inference-side levers on a trained checkpoint: horizontal-flip averaging and a nearest-class-mean head.

    OMP_NUM_THREADS=1 python examples/inference_levers.py examples/pretrained/faceode-pins.pt ../shared/data/pins runs/pins-manifest.json

For a distilled (``faceode``) checkpoint, on val and test, label-free:
  trained head   the checkpoint's own cosine classifier (what export deploys)
  ncm-train      class means of the student's train features instead of the trained class vectors
  blend          the trained class vectors plus alpha times those class means (unit vectors; alpha in 0.1..1 chosen on
                 val): a head of the same shape, so free at inference, if it paid
each on the plain picture and with flip averaging ("tta": the unit features of the picture and its mirror image,
averaged, then classified — twice the network's work). Neither is in the deployed graph; this measures whether
either would be worth building into export.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split_arrays, normalize
from edgenode.distill import class_means, unit
from edgenode.metrics import wilson_interval


def features(model, images: np.ndarray, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(features of the pictures, features of their mirror images)."""
    plain, mirrored = [], []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            x = normalize(images[start : start + 128], mean, std)
            plain.append(model(x, return_features=True)[0].numpy())
            mirrored.append(model(torch.flip(x, dims=[3]), return_features=True)[0].numpy())
    return np.concatenate(plain), np.concatenate(mirrored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("--out", help="JSON of the results")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model().eval()
    manifest = Manifest.load(args.manifest)
    views, labels = {}, {}
    for split in ("train", "val", "test"):
        images, labels[split] = load_split_arrays(manifest, args.data, split)
        plain, mirrored = features(model, images, ckpt.input_spec.mean, ckpt.input_spec.std)
        views[split] = {"plain": unit(plain), "tta": unit(unit(plain) + unit(mirrored))}
    trained = unit(model.head[-1].weight.detach().numpy())
    results = {}
    for view in ("plain", "tta"):
        means = class_means(views["train"][view], labels["train"], len(manifest.classes))
        heads = {"trained head": trained, "ncm-train": means}
        blends = {a: unit(trained + a * means) for a in (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)}
        alpha = max(blends, key=lambda a: ((views["val"][view] @ blends[a].T).argmax(axis=1) == labels["val"]).sum())
        heads[f"blend a={alpha:g}"] = blends[alpha]
        for head, weights in heads.items():
            for split in ("val", "test"):
                correct = int(((views[split][view] @ weights.T).argmax(axis=1) == labels[split]).sum())
                low, high = wilson_interval(correct, len(labels[split]))
                results[f"{view} / {head} / {split}"] = [round(correct / len(labels[split]), 4), round(low, 4), round(high, 4)]
                print(f"{view:5s} {head:12s} {split:4s} {correct / len(labels[split]):.3f} [{low:.3f}, {high:.3f}]")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
