"""Serve a checkpoint trained on one kind of aligned chip with another: rewrite the alignment its input spec records.

    python examples/relabel_alignment.py runs/gpu-shift/w5-rk4x4-e99/best-slim.pt runs/cnn/w5-rk4x4-e99.pt --method dlib-5pt+cnn

The runtime prepares a model's inputs exactly as its checkpoint says, and every measuring command refuses data
prepared otherwise; that is what keeps a deployed model from silently seeing other pictures than it was
measured on. ``dlib-5pt+cnn`` changes only the chips of the 2 % of Pins pictures where dlib's HOG detector finds
no face, and improves them for every network trained on HOG-only chips (RESULTS.md: a second face detector), so
those networks are served, and measured, with it. The weights, training record and split are kept; the new file
has its own sha256, which its exports then name. Writing over the input file is refused.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from edgenode.align import METHODS, AlignSpec
from edgenode.checkpoint import load_checkpoint, save_checkpoint
from edgenode.errors import EdgenodeError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint trained on aligned chips")
    parser.add_argument("out", type=Path, help="where to write the relabelled copy")
    parser.add_argument("--method", choices=METHODS, required=True)
    args = parser.parse_args()
    if args.out.resolve() == args.checkpoint.resolve():
        raise SystemExit(f"error: {args.out} is the input checkpoint; write the copy elsewhere")
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except EdgenodeError as exc:  # a user error: one line, as the CLI prints it
        raise SystemExit(f"error: {exc}") from None
    if ckpt.input_spec.align is None:
        raise SystemExit(f"error: {args.checkpoint} was trained on plain crops, not aligned chips; there is nothing to relabel")
    align = AlignSpec(args.method, ckpt.input_spec.align.padding)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, replace(ckpt, input_spec=replace(ckpt.input_spec, align=align)))
    print(f"wrote {args.out}: alignment {ckpt.input_spec.align.method} -> {align.method} (padding {align.padding})")


if __name__ == "__main__":
    main()
