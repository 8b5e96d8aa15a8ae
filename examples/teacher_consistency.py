"""How far training's augmentation moves the teacher away from the targets the student is trained to match.

    OMP_NUM_THREADS=1 python examples/teacher_consistency.py runs/pins-aligned64 runs/pins-manifest.json \
        ../shared/data/pins/teacher_dlib128.npz --images 300
    OMP_NUM_THREADS=1 python examples/teacher_consistency.py runs/pins-aligned64 runs/pins-manifest.json \
        ../shared/data/pins/teacher_dlib128.npz --images 300 --shifts "" --colors 0.2,0.4
    OMP_NUM_THREADS=2 python examples/teacher_consistency.py runs/pins-aligned64 runs/pins-manifest.json \
        ../shared/data/pins/teacher_dlib128.npz --images 200 --views 1 --shifts "" --mix 0.9,0.8,0.7,0.5

Distillation targets are computed once, on each picture as it is (``edgenode teacher``), but the student sees
an augmented view (``edgenode train --augment``: a mirror image, a shift and, with ``--augment-color``, a change of
light). On face chips aligned by
``edgenode align`` a shift undoes part of the alignment that the teacher's accuracy rests on, so the stored target
may no longer be what the teacher itself would say about the view. This script asks the teacher (dlib's ResNet,
the ``teacher`` extra) about random train chips, resized to its 150x150 input as examples/teacher_ceiling.py's
"64px-chip" variant does, under each augmentation, and compares with the stored descriptors: mean cosine
(centred, as distillation uses them), nearest-class-mean accuracy and top-1 agreement with the stored target,
and the KL divergence of the view's class probabilities from the stored target's (the KL term's loss).

``--mix`` asks the same of mixup and CutMix, which need no teacher at training time only if the teacher's answer
on two pictures mixed with weight λ is the λ-mix of its answers on each: each row compares the teacher's
descriptor of the mixed chip (each image with a random one of another identity; CutMix pastes a square of area 1 − λ)
with the λ-mixed stored descriptors (renormalised) and the λ-mixed class probabilities a training step would use.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from edgenode.errors import EdgenodeError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aligned", help="an aligned copy of the data set (`edgenode align`)")
    parser.add_argument("manifest")
    parser.add_argument("teacher", help="the teacher .npz the student is distilled from")
    parser.add_argument("--images", type=int, default=300, help="random train images to describe")
    parser.add_argument("--views", type=int, default=2, help="augmented views per image and shift")
    parser.add_argument("--shifts", default="0.03125,0.0625,0.125", help="--augment-shift values to try (\"\": none)")
    parser.add_argument("--colors", default="", help="--augment-color strengths to try, alone and with --color-shift")
    parser.add_argument("--color-shift", type=float, default=0.125, help="the --augment-shift tried with each colour strength")
    parser.add_argument("--mix", default="", help="mixing weights λ to try with mixup and CutMix (\"\": none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    try:
        run(args)
    except EdgenodeError as exc:  # a user error: one line, as the CLI prints it
        raise SystemExit(f"error: {exc}") from None


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def run(args: argparse.Namespace) -> None:
    import dlib
    from PIL import Image

    from edgenode.align import read_alignment
    from edgenode.data import Manifest, images_root
    from edgenode.data.decode import load_rgb
    from edgenode.distill import class_means, fit_scale, unit
    from edgenode.teacher import load_teacher, model_files
    from edgenode.augment import augment, jitter_colors

    if read_alignment(args.aligned) is None:
        raise SystemExit(f"error: {args.aligned} is not an aligned copy (pass the folder `edgenode align` wrote)")
    manifest = Manifest.load(args.manifest)
    recognizer = dlib.face_recognition_model_v1(str(model_files()[1]))
    files, labels = manifest.files("train"), np.asarray(manifest.labels("train"))
    stored, found = load_teacher(args.teacher).lookup(files)
    centre = stored[found].mean(axis=0)
    means = class_means(stored[found] - centre, labels[found], len(manifest.classes))
    scale = fit_scale(stored[found] - centre, labels[found], len(manifest.classes))
    pick = np.random.default_rng(args.seed).choice(np.flatnonzero(found), min(args.images, int(found.sum())), replace=False)
    shifts = [float(s) for s in args.shifts.split(",") if s.strip()]
    colors = [float(c) for c in args.colors.split(",") if c.strip()]
    generator = torch.Generator().manual_seed(args.seed)

    def describe(view: torch.Tensor) -> np.ndarray:
        chip = (view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        big = np.asarray(Image.fromarray(chip).resize((150, 150), Image.Resampling.BILINEAR), dtype=np.uint8)
        return np.asarray(recognizer.compute_face_descriptor(np.ascontiguousarray(big)), np.float32)

    names = ["the chip as stored", "its mirror image"] + [f"--augment-shift {s:g} ({int(64 * s)} px at 64)" for s in shifts]
    # each colour strength alone (mirror, no shift) and with the shift training would use beside it
    color_views = [(f"--augment-color {c:g}, no shift", c, 0.0) for c in colors]
    color_views += [(f"--augment-color {c:g}, shift {args.color_shift:g}", c, args.color_shift) for c in colors]
    names += [name for name, _, _ in color_views]
    rows: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in names}
    root, start = images_root(args.aligned), time.perf_counter()

    def chip(i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(load_rgb(root / files[i]), dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255

    for i in pick:
        x = chip(i)
        views = {names[0]: x, names[1]: x.flip(3)}
        views.update({name: augment(x.repeat(args.views, 1, 1, 1), generator, s) for name, s in zip(names[2:], shifts)})
        views.update({name: jitter_colors(augment(x.repeat(args.views, 1, 1, 1), generator, s), generator, c)
                      for name, c, s in color_views})
        for name, batch in views.items():
            rows[name] += [(i, describe(v)) for v in batch]
    print(f"{len(pick)} train images, {sum(len(r) for r in rows.values())} descriptors in {time.perf_counter() - start:.0f} s")

    print(f"{'view':40s} {'cos to target':>13s} {'teacher acc':>11s} {'top-1 = target':>14s} {'KL(target||view)':>16s}")
    for name, described in rows.items():
        index = np.array([i for i, _ in described])
        view = unit(np.stack([d for _, d in described]) - centre)
        target = unit(stored[index] - centre)
        view_lp, target_lp = log_softmax(scale * view @ means.T), log_softmax(scale * target @ means.T)
        kl = float(np.mean(np.sum(np.exp(target_lp) * (target_lp - view_lp), axis=1)))
        print(f"{name:40s} {np.mean(np.sum(view * target, axis=1)):13.3f} {np.mean(view_lp.argmax(1) == labels[index]):11.3f} "
              f"{np.mean(view_lp.argmax(1) == target_lp.argmax(1)):14.3f} {kl:16.3f}")
    mixes = [float(m) for m in args.mix.split(",") if m.strip()]
    if mixes:
        mix_rows(describe, chip, pick, np.random.default_rng(args.seed + 1), mixes, stored, centre, means, scale, labels)


def mix_rows(describe, chip, pick, rng, mixes, stored, centre, means, scale, labels) -> None:
    """The teacher on mixed chips against the mixed targets a teacher-free mixup/CutMix step would train towards."""
    from edgenode.distill import unit

    # each image's partner: a random train image of another identity (an image mixed with itself or its own
    # person would flatter the mixed target)
    partner = np.array([rng.choice(pick[labels[pick] != labels[i]]) for i in pick])
    target = unit(stored - centre)
    probs = np.exp(log_softmax(scale * target @ means.T))
    print(f"{'mixed view (λ of the first image)':40s} {'cos to mixed target':>19s} {'top-1 = first':>13s} "
          f"{'top-1 = second':>14s} {'p(first) teacher/target':>23s} {'KL(target||view)':>16s}")
    start = time.perf_counter()
    pairs = [(chip(i)[0], chip(j)[0]) for i, j in zip(pick, partner)]
    for kind in ("mixup", "CutMix"):
        for lam in mixes:
            views, weights = [], []
            for a, b in pairs:
                if kind == "mixup":
                    view, weight = lam * a + (1 - lam) * b, lam
                else:  # a square of the second image, area 1 - lam, at a random place
                    side = int(round(a.shape[-1] * np.sqrt(1 - lam)))
                    top, left = (int(v) for v in rng.integers(0, a.shape[-1] - side + 1, size=2))
                    view = a.clone()
                    view[:, top:top + side, left:left + side] = b[:, top:top + side, left:left + side]
                    weight = 1 - side * side / a.shape[-1] ** 2
                views.append(describe(view))
                weights.append(weight)
            w = np.asarray(weights)[:, None]
            mixed_target = unit(w * target[pick] + (1 - w) * target[partner])
            mixed_probs = w * probs[pick] + (1 - w) * probs[partner]
            described = unit(np.stack(views) - centre)
            view_lp = log_softmax(scale * described @ means.T)
            kl = float(np.mean(np.sum(mixed_probs * (np.log(mixed_probs) - view_lp), axis=1)))
            cos = float(np.mean(np.sum(described * mixed_target, axis=1)))
            rows = np.arange(len(pick))
            print(f"{f'{kind}, λ = {lam:g}':40s} {cos:19.3f} {np.mean(view_lp.argmax(1) == labels[pick]):13.3f} "
                  f"{np.mean(view_lp.argmax(1) == labels[partner]):14.3f} "
                  f"{np.exp(view_lp[rows, labels[pick]]).mean():11.3f} / {mixed_probs[rows, labels[pick]].mean():.3f} {kl:16.3f}")
    print(f"mixed views described in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
