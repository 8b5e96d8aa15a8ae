"""`edgenode teacher-views`: the teacher's descriptors of K augmented views of each training picture."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.artifacts import npz_members
from edgenode.cli.common import existing_path, output_file, user_errors
from edgenode.console import console


def is_view_bank(path: Path) -> bool:
    """``path`` holds a view bank: the only kind of file this command may write over."""
    return {"meta", "embedding", "flip"} <= (npz_members(path) or set())


@user_errors
def command(
    data: Annotated[Path, typer.Argument(help="An aligned copy of the data set (`edgenode align`): the chips training reads.")],
    manifest: Annotated[Path, typer.Option(help="The split manifest training uses: its train files get views.")],
    out: Annotated[Path, typer.Option(help="Where to write the bank (.npz).")] = Path("teacher-views.npz"),
    views: Annotated[int, typer.Option(help="Augmented views per picture (each costs ~55 ms of one core).")] = 4,
    augment_shift: Annotated[float, typer.Option(help="--augment-shift of the training run: the views' largest shift.")] = 0.125,
    augment_color: Annotated[float, typer.Option(help="--augment-color of the training run (0: none).")] = 0.0,
    unlabeled: Annotated[bool, typer.Option("--unlabeled", help="Also the unlabelled pool, as `edgenode train --unlabeled` selects it.")] = False,
    near_duplicates: Annotated[Optional[Path], typer.Option(help="The --near-duplicates table training uses to clean the pool.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the views' random parameters.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (dlib holds the GIL); 0: one per core.")] = 0,
) -> None:
    """Describe K augmented views of each training chip with the teacher, for `edgenode train --teacher-views`; needs the teacher extra.

    The student then learns each view's own descriptor instead of the unaugmented picture's (RESULTS.md: an 8-px
    shift moves the teacher's descriptor to a cosine of 0.72 from the stored one).
    """
    from edgenode.data import Manifest
    from edgenode.data.pool import load_unlabeled_pool
    from edgenode.errors import UsageError
    from edgenode.process_pool import resolve_workers
    from edgenode.train_config import TrainConfig
    from edgenode.view_bank import aligned_copy_to_describe, compute_view_bank, save_view_bank

    if views < 1:
        raise UsageError(f"--views {views}: a bank needs at least one view per picture", "pass --views 1 or more")
    if workers < 0:
        raise UsageError(f"--workers {workers}: must be 0 or more", "pass --workers 0 for one process per core")
    TrainConfig(data=str(data), augment=True, augment_shift=augment_shift, augment_color=augment_color)  # same checks as train
    if near_duplicates is not None and not unlabeled:
        raise UsageError("--near-duplicates is only used to select the --unlabeled pool", "add --unlabeled or drop it")
    existing_path(data, "DATA", folder=True)
    existing_path(manifest, "--manifest", folder=False)
    output_file(out, kind="a view bank (.npz of `edgenode teacher-views`)", is_kind=is_view_bank)
    split = Manifest.load(manifest)
    aligned_copy_to_describe(data)  # an unaligned folder or a missing teacher, before the pool is decoded
    files = split.files("train")
    if unlabeled:
        files = files + load_unlabeled_pool(split, str(data), str(near_duplicates) if near_duplicates else None)[1]
    processes = resolve_workers(workers or None, len(files))
    start = time.perf_counter()
    bank = compute_view_bank(data, files, views=views, shift=augment_shift, color=augment_color, seed=seed, workers=processes)
    save_view_bank(out, bank)
    seconds = time.perf_counter() - start
    console.print(f"wrote {out}: {bank.describe()}; {seconds:.0f} s with {processes} process(es), "
                  f"{1000 * seconds * processes / (views * len(files)):.0f} ms per view and process", markup=False)
