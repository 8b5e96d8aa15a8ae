"""`edgenode split`: write the split manifest that every later stage reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgenode.cli.common import output_file, user_errors
from edgenode.console import console


def is_manifest(path: Path) -> bool:
    """``path`` holds a split manifest (of any split): the only kind of file `split` may write over."""
    from edgenode.data import Manifest
    from edgenode.errors import EdgenodeError

    try:
        Manifest.load(path)  # refuses a checkpoint, ONNX file or image by its first bytes, without reading it whole
    except EdgenodeError:
        return False
    return True


@user_errors
def command(
    data: Annotated[Path, typer.Argument(help="Folder of identity sub-folders (images/<identity>/… or pins_<identity>/…).")],
    out: Annotated[Path, typer.Option(help="Where to write the manifest.")] = Path("manifest.json"),
    per_class: Annotated[int, typer.Option(help="Images selected per identity.")] = 86,
    train: Annotated[int, typer.Option("--train-per-class", "--train", help="Train images per identity (`--train` for short).")] = 60,
    val: Annotated[int, typer.Option("--val-per-class", "--val", help="Validation images per identity (`--val` for short).")] = 17,
    test: Annotated[int, typer.Option("--test-per-class", "--test", help="Test images per identity (`--test` for short).")] = 9,
    image_size: Annotated[int, typer.Option(help="Side of the square model input, pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the per-identity selection.")] = 0,
    strict: Annotated[bool, typer.Option(help="Fail instead of excluding identities with too few images.")] = False,
) -> None:
    """Select and split the data set (paper protocol by default) into a manifest file."""
    from edgenode.data import SplitConfig, build_manifest

    output_file(out, kind="a split manifest", is_kind=is_manifest)
    config = SplitConfig(per_class=per_class, train=train, val=val, test=test, image_size=image_size, seed=seed, strict=strict)
    manifest = build_manifest(data, config)
    manifest.save(out)
    counts = ", ".join(f"{name} {len(manifest.splits[name])}" for name in ("train", "val", "test"))
    console.print(
        f"wrote {out}: {len(manifest.classes)} identities, {counts}, {len(manifest.unused)} unused, "
        f"{len(manifest.skipped)} skipped files, {len(manifest.excluded)} excluded identities; sha256 {manifest.sha256[:12]}",
        markup=False,  # a path is no markup: `[/b]` in a name would be a traceback after the file was written
    )
