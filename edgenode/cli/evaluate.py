"""`edgenode evaluate`: label-free accuracy of any artifact on a split, with its interval and the figures to look at."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import existing_path, output_folder, user_errors


def default_out(artifact: Path) -> Path:
    """``accuracy-report`` beside a checkpoint (one per run folder); ``accuracy-report-<name>`` beside an export,
    whose folder holds several files."""
    from edgenode.artifacts import file_kind

    suffix = "" if file_kind(artifact) == "checkpoint" else f"-{artifact.stem}"
    return artifact.parent / f"accuracy-report{suffix}"


@user_errors
def command(
    artifact: Annotated[Path, typer.Argument(help="A checkpoint (.pt), ONNX file or TensorRT engine, scored as it would be deployed.")],
    data: Annotated[Path, typer.Argument(help="The data set root the model was trained on (its aligned copy for an aligned model).")],
    manifest: Annotated[Optional[Path], typer.Option(help="Split manifest (default: manifest.json beside the artifact).")] = None,
    split: Annotated[str, typer.Option(help="Split to score: test | val | train.")] = "test",
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.json and the figures (default: accuracy-report "
                                                     "beside a checkpoint, accuracy-report-<name> beside an export).")] = None,
    near_duplicates: Annotated[Optional[Path], typer.Option(help="Near-duplicate pairs (.tsv, e.g. the data set's "
        "near_duplicates.tsv): also score the split without its images that have a near-duplicate in train.")] = None,
    exclude: Annotated[Optional[Path], typer.Option(help="Text file of image paths (relative to the images root, one "
                                                         "a line): also score the split without them.")] = None,
    mirror_average: Annotated[bool, typer.Option("--mirror-average", help="For a checkpoint: classify each picture with "
        "its mirror image, as `export --mirror-average` deploys it (an export has it baked in).")] = False,
    provider: Annotated[str, typer.Option(help="auto | tensorrt | cuda | cpu (for a checkpoint: the torch device).")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON document on stdout.")] = False,
) -> None:
    """Score an artifact on a split (label-free argmax, 95 % interval); write report.json and its figures."""
    from edgenode.accuracy_report import accuracy_report
    from edgenode.artifacts import describe_file, file_kind
    from edgenode.errors import UsageError

    existing_path(artifact, "ARTIFACT", folder=False)
    existing_path(data, "DATA", folder=True)
    for option, path in (("--manifest", manifest), ("--near-duplicates", near_duplicates), ("--exclude", exclude)):
        if path is not None:
            existing_path(path, option, folder=False)
    out = output_folder(out or default_out(artifact))
    excluded = None
    if exclude is not None:
        if file_kind(exclude) not in ("text", "empty"):
            raise UsageError(f"--exclude {exclude}: is {describe_file(exclude)}, not a text file",
                             "pass a text file of image paths, one a line")
        excluded = {line.strip() for line in exclude.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()}
    report = accuracy_report(artifact, data, manifest, out, split=split, exclude_files=excluded,
                             near_duplicates=near_duplicates, batch_size=batch_size, provider=provider,
                             mirror_average=mirror_average)
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=1) + "\n")
