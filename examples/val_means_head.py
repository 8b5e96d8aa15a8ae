"""Does val's own class means, blended into the trained head, move test accuracy? (label-free at test time)

    OMP_NUM_THREADS=2 python examples/val_means_head.py runs/controls/leader-hog.pt runs/pins-aligned64 runs/pins-manifest.json

The trained cosine head was fitted on train, whose features the network fits almost perfectly (train accuracy 0.997);
val's features look like test's. This blends each class vector with the mean of that class's val features,
``unit(w + alpha * unit(mean_val))``, choosing alpha by leave-one-out on val (each val picture scored with its own
class mean computed without it), and scores test once with the chosen head, on the picture and mirror-averaged.
It uses val's labels to fit part of the head, so a gain would be reported apart from the paper's protocol.
"""

from __future__ import annotations

import argparse

import numpy as np

from inference_levers import features  # a sibling in examples/: the features of each picture and of its mirror image

from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split_arrays
from edgenode.distill import class_means, unit
from edgenode.metrics import wilson_interval

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def leave_one_out_accuracy(trained: np.ndarray, val: np.ndarray, labels: np.ndarray, alpha: float) -> float:
    sums = np.zeros_like(trained, dtype=np.float64)
    np.add.at(sums, labels, val)
    counts = np.bincount(labels, minlength=len(trained))[:, None]
    right = 0
    for feature, label in zip(val, labels):
        means = sums / np.maximum(counts, 1)
        means[label] = (sums[label] - feature) / max(counts[label, 0] - 1, 1)
        right += int((unit(trained + alpha * unit(means)) @ feature).argmax() == label)
    return right / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("manifest")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model().eval()
    manifest = Manifest.load(args.manifest)
    trained = unit(model.head[-1].weight.detach().numpy().astype(np.float64))
    split = {}
    for name in ("val", "test"):
        images, labels = load_split_arrays(manifest, args.data, name)
        plain, mirrored = (unit(f) for f in features(model, images, ckpt.input_spec.mean, ckpt.input_spec.std))
        split[name] = ({"plain": plain, "mirror": unit(plain + mirrored)}, np.asarray(labels))
    (val, val_labels), (test, test_labels) = split["val"], split["test"]
    for view in ("plain", "mirror"):
        loo = {alpha: leave_one_out_accuracy(trained, val[view], val_labels, alpha) for alpha in ALPHAS}
        alpha = max(ALPHAS, key=lambda a: (loo[a], -a))  # ties to the smaller blend
        head = unit(trained + alpha * class_means(val[view], val_labels, len(trained)))
        for name, weights in (("trained head", trained), (f"blend alpha={alpha:g}", head)):
            correct = int(((test[view] @ weights.T).argmax(1) == test_labels).sum())
            low, high = wilson_interval(correct, len(test_labels))
            print(f"{view:6s} {name:18s} val LOO {loo[0.0 if name == 'trained head' else alpha]:.3f}  "
                  f"test {correct / len(test_labels):.3f} [{low:.3f}, {high:.3f}]")
        print(f"{view:6s} val leave-one-out by alpha: " + ", ".join(f"{a:g}: {v:.3f}" for a, v in loo.items()))


if __name__ == "__main__":
    main()
