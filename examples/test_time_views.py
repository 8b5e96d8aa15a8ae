"""More test-time views than the mirror image: do small shifts add to mirror averaging?

    OMP_NUM_THREADS=2 python examples/test_time_views.py examples/pretrained/faceode-pins-aligned.pt runs/pins-aligned64c runs/pins-manifest.json

``export --mirror-average`` classifies each chip with its mirror image (2 passes). This measures what further
views would add before anyone builds them: the chip shifted by ``--shift`` pixels left/right and up/down
(reflect-padded, as training's augmentation pads), each also mirrored. A view set's unit features are summed and
classified by the checkpoint's own cosine head, as the mirror-averaged graph does. Label-free, on val and test,
each set paired image by image with the 2-view (mirror) set. Each view costs one more pass of the network.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from edgenode.align import check_data_alignment
from edgenode.augment import ViewParams, apply_view
from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split_arrays, normalize
from edgenode.distill import unit
from edgenode.metrics import mcnemar_p, wilson_interval
from edgenode.model import CosineClassifier


def view(x: torch.Tensor, dx: int, dy: int, mirrored: bool, pad: int) -> torch.Tensor:
    """``x`` (mirrored first if asked) moved by (dx, dy) pixels, the uncovered border filled by reflection: built
    by training's own :func:`edgenode.augment.apply_view`, whose crop offset into the padded picture is pad − shift.
    (Flip and reflect padding commute with the per-channel normalisation, so it may run on normalised input.)"""
    n = x.shape[0]
    params = ViewParams(torch.full((n,), mirrored), pad, torch.full((n,), pad - dy), torch.full((n,), pad - dx))
    return apply_view(x, params)


def view_features(model, images: np.ndarray, mean, std, offsets, pad: int) -> dict[tuple, np.ndarray]:
    """Unit features of every (dx, dy, mirrored) view of every image."""
    out: dict[tuple, list] = {}
    with torch.no_grad():
        for start in range(0, len(images), 128):
            x = normalize(images[start : start + 128], mean, std)
            for dx, dy in offsets:
                for mirrored in (False, True):
                    features = model(view(x, dx, dy, mirrored, pad), return_features=True)[0]
                    out.setdefault((dx, dy, mirrored), []).append(unit(features.numpy()))
    return {key: np.concatenate(parts) for key, parts in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("--shift", type=int, default=2, help="pixels of each shifted view (default 2)")
    parser.add_argument("--max-views", type=int, default=10, help="only the view sets of at most this many views "
                        "(2: the chip and its mirror image, with no shifted pass)")
    parser.add_argument("--out", help="JSON of the results")
    args = parser.parse_args()
    if args.max_views < 2:
        parser.error("--max-views must be at least 2: every set is paired with the 2-view (mirror) set")
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model().eval()
    if not isinstance(model.head[-1], CosineClassifier):
        parser.error(f"{args.checkpoint}: views are merged as unit features for a cosine head; this is a {ckpt.model_config.arch} model")
    manifest = Manifest.load(args.manifest)
    if manifest.sha256 != ckpt.manifest_sha256:
        parser.error(f"{args.manifest}: not the split {args.checkpoint} was trained on; pass its run's manifest.json")
    check_data_alignment(ckpt.input_spec, args.data)
    s = args.shift
    if not 1 <= s < ckpt.input_spec.image_size // 2:
        parser.error(f"--shift {s} must be from 1 to {ckpt.input_spec.image_size // 2 - 1} pixels")
    offsets = [(0, 0), (s, 0), (-s, 0), (0, s), (0, -s)]
    sets = {
        "1 view (the chip)": [(0, 0, False)],
        "2 views (+ mirror image)": [(0, 0, False), (0, 0, True)],
        f"6 views (± {s} px across, each mirrored)": [(dx, 0, m) for dx in (0, s, -s) for m in (False, True)],
        f"10 views (± {s} px across and down, each mirrored)": [(dx, dy, m) for dx, dy in offsets for m in (False, True)],
    }
    sets = {name: views for name, views in sets.items() if len(views) <= args.max_views}
    offsets = sorted({(dx, dy) for views in sets.values() for dx, dy, _ in views}, key=offsets.index)  # only what is used
    classes = unit(model.head[-1].weight.detach().numpy())
    results, correct = {}, {}
    for split in ("val", "test"):
        images, labels = load_split_arrays(manifest, args.data, split)
        features = view_features(model, images, ckpt.input_spec.mean, ckpt.input_spec.std, offsets, s)
        for name, views in sets.items():
            pred = (sum(features[v] for v in views) @ classes.T).argmax(axis=1)
            correct[(name, split)] = pred == labels
    base = "2 views (+ mirror image)"
    for name in sets:
        row = {}
        for split in ("val", "test"):
            hits = correct[(name, split)]
            low, high = wilson_interval(int(hits.sum()), len(hits))
            row[split] = [round(float(hits.mean()), 4), round(low, 4), round(high, 4)]
        both = np.concatenate([correct[(name, "val")], correct[(name, "test")]])
        ref = np.concatenate([correct[(base, "val")], correct[(base, "test")]])
        only_ref, only_this = int((ref & ~both).sum()), int((both & ~ref).sum())
        row["vs 2 views, val+test"] = [only_ref, only_this, round(mcnemar_p(only_ref, only_this), 4)]
        results[name] = row
        print(f"{name:44s} val {row['val'][0]:.3f} [{row['val'][1]:.3f}, {row['val'][2]:.3f}]  "
              f"test {row['test'][0]:.3f} [{row['test'][1]:.3f}, {row['test'][2]:.3f}]  "
              f"vs 2 views: {only_ref} / {only_this}, p = {mcnemar_p(only_ref, only_this):.2g}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
