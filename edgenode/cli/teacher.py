"""`edgenode teacher`: recompute the pretrained dlib face descriptors that distillation learns from."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.artifacts import npz_members
from edgenode.cli.common import manifest_files, output_file, user_errors
from edgenode.console import console


def is_teacher_file(path: Path) -> bool:
    """``path`` holds teacher descriptors (an .npz with files and embedding): the only kind `teacher` may write over.

    A checkpoint is a zip file too, and another .npz (an ensemble's --kd-targets) is not this command's to replace.
    """
    return {"files", "embedding"} <= (npz_members(path) or set())


@user_errors
def command(
    data: Annotated[Path, typer.Argument(help="Folder of identity sub-folders (images/<identity>/… or pins_<identity>/…).")],
    out: Annotated[Path, typer.Option(help="Where to write the descriptors (.npz).")] = Path("teacher.npz"),
    manifest: Annotated[Optional[Path], typer.Option(help="Only the files this split manifest names (splits + unused).")] = None,
    check: Annotated[Optional[Path], typer.Option(help="A reference .npz to compare with (e.g. the data set's teacher_dlib128.npz).")] = None,
    per_identity: Annotated[int, typer.Option(help="Only the first N files (sorted) of each identity; 0: all. For a quick --check.")] = 0,
    cnn_fallback: Annotated[bool, typer.Option("--cnn-fallback", help="Where the HOG detector finds no face, ask dlib's CNN detector before taking the whole picture: the faces of `edgenode align --cnn-fallback`.")] = False,
    workers: Annotated[int, typer.Option(help="Processes (dlib holds the GIL); 0: one per core.")] = 0,
) -> None:
    """Recompute the dlib face descriptors (128-d) of a data set for distillation; needs the teacher extra."""
    from edgenode.errors import DataError, UsageError
    from edgenode.teacher import (cnn_detector_file, compare_teachers, compute_descriptors, installed_provenance, load_teacher,
                                  model_files, save_teacher)

    for option, value, fix in (("--per-identity", per_identity, "pass --per-identity 0 for all"),
                               ("--workers", workers, "pass --workers 0 for one process per core")):
        if value < 0:
            raise UsageError(f"{option} {value}: must be 0 or more", fix)
    output_file(out, kind="teacher descriptors (an .npz of files and embedding)", is_kind=is_teacher_file)
    reference = load_teacher(check) if check is not None else None  # a bad reference fails before the long run
    installed_provenance(), model_files()  # so does a missing extra, before the file walk
    if cnn_fallback:
        cnn_detector_file()
    files = manifest_files(data, manifest, per_identity)
    if not files:
        raise DataError(f"no image files to describe in {data}", "pass the data set folder (images/<identity>/…)")
    start = time.perf_counter()
    result = compute_descriptors(data, files, workers=workers or None, cnn_fallback=cnn_fallback)
    seconds = time.perf_counter() - start
    if len(result.files) == 0:
        raise DataError(f"none of the {len(files)} file(s) in {data} could be decoded", "see the warnings above")
    save_teacher(out, result)
    found = int(result.face_detected.sum())
    console.print(
        f"wrote {out}: {len(result.files)} descriptors ({result.dim}-d), a face detected in {found} "
        f"({100 * found / len(result.files):.1f}%), {len(files) - len(result.files)} skipped; "
        f"{seconds:.1f} s ({1000 * seconds / len(files):.1f} ms/image); dlib {result.provenance['dlib_version']}",
        markup=False,
    )
    if found < len(result.files) / 2:
        console.print(f"warning: dlib found a face in only {found} of the {len(result.files)} pictures; the others were "
                      "described whole, which teaches little. Are they face photos of one person each?", markup=False)
    if reference is not None:
        c = compare_teachers(result, reference)
        console.print(
            f"vs {check}: {c['count']} common files ({c['only_a']} only here); L2 median {c['l2_median']:.2e} "
            f"max {c['l2_max']:.2e}; cosine min {c['cosine_min']:.6f} median {c['cosine_median']:.6f}; "
            f"face_detected agree {100 * c['face_detected_agree']:.2f}% ({c['face_detected_disagree']} differ)",
            markup=False,
        )
