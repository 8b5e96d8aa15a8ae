"""`edgenode demo`: the whole path on a synthetic data set, in a few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgenode.cli.common import output_folder, user_errors


@user_errors
def command(
    out: Annotated[Path, typer.Option(help="Folder for the data set, the run and the artifacts.")] = Path("runs/demo"),
    classes: Annotated[int, typer.Option(help="Synthetic identities.")] = 10,
    per_class: Annotated[int, typer.Option(help="Images per identity (a quarter for test, a fifth for validation).")] = 80,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run train → export → parity → infer on a generated synthetic face data set."""
    output_folder(out)
    from edgenode.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=str(out), n_classes=classes, per_class=per_class, epochs=epochs, progress=progress))
