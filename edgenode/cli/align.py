"""`edgenode align`: an aligned copy of a data set (5-point face chips at the model's input size)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import manifest_files, output_folder, user_errors
from edgenode.console import console


@user_errors
def command(
    data: Annotated[Path, typer.Argument(help="Folder of identity sub-folders (images/<identity>/… or pins_<identity>/…).")],
    out: Annotated[Path, typer.Option(help="New data folder for the aligned copy (same relative paths).")] = Path("aligned"),
    manifest: Annotated[Optional[Path], typer.Option(help="Only the files this split manifest names (splits + unused).")] = None,
    size: Annotated[int, typer.Option(help="Side of the face chip, pixels: the model's --image-size.")] = 64,
    padding: Annotated[float, typer.Option(help="Margin around the landmarks' box, as a fraction (dlib: 0.25).")] = 0.25,
    cnn_fallback: Annotated[bool, typer.Option("--cnn-fallback", help="Where the HOG detector finds no face, ask dlib's CNN detector before taking the whole picture (method dlib-5pt+cnn; describe the teacher with `edgenode teacher --cnn-fallback` to match).")] = False,
    workers: Annotated[int, typer.Option(help="Processes (dlib holds the GIL); 0: one per core.")] = 0,
) -> None:
    """Write an aligned copy of a data set: 5-point face chips (dlib) at the model's input size; needs the align extra.

    Train on the copy: the checkpoint, its exports and `edgenode infer` then align their inputs the same way.
    """
    from edgenode.align import METHOD, METHOD_CNN_FALLBACK, AlignSpec, align_dataset
    from edgenode.errors import DataError, UsageError

    if workers < 0:
        raise UsageError(f"--workers {workers}: must be 0 or more", "0 uses one process per core")
    output_folder(out)
    files = manifest_files(data, manifest, 0)
    if not files:
        raise DataError(f"no image files to align in {data}", "pass the data set folder (images/<identity>/…)")
    summary = align_dataset(data, out, files, size, AlignSpec(METHOD_CNN_FALLBACK if cnn_fallback else METHOD, padding), workers=workers or None)
    done = summary["aligned_now"]
    found = summary["face_detected_now"]
    rate = f", a face detected in {found} ({100 * found / done:.1f}%)" if done else ""
    console.print(
        f"wrote {out}: {done} chip(s) of {size}x{size} aligned now{rate}, {summary['already_there']} already there, "
        f"{len(summary['skipped'])} skipped; {summary['seconds']:.1f} s. Train on it with: {_train_hint(data, out, manifest, size)}",
        markup=False,
    )
    if done and found < done / 2:
        console.print(f"warning: dlib found a face in only {found} of the {done} pictures aligned now; the others were "
                      "aligned on landmarks guessed over the whole picture. Are they face photos?", markup=False)


def _train_hint(data: Path, out: Path, manifest: Path | None, size: int) -> str:
    """The `edgenode train` line that reads the copy: its chip size must be the split's image size."""
    from shlex import quote  # a line to paste: paths with spaces stay one argument

    from edgenode.data import Manifest, SplitConfig

    if manifest is None:
        return f"edgenode train {quote(str(out))}" + (f" --image-size {size}" if size != SplitConfig().image_size else "")
    if Manifest.load(manifest).config.image_size == size:
        return f"edgenode train {quote(str(out))} --manifest {quote(str(manifest))}"
    return (f"edgenode train {quote(str(out))} --manifest NEW.json, after `edgenode split {quote(str(data))} --image-size {size} "
            f"--out NEW.json` (with the options {manifest} was made with: the same files, measured at {size} px)")
