"""`edgenode infer`: classify pictures with any artifact (checkpoint, ONNX, TensorRT engine)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgenode.cli.common import user_errors
from edgenode.console import console


@user_errors
def command(
    artifact: Annotated[Path, typer.Argument(help="A checkpoint (.pt), ONNX file or TensorRT engine; it carries its own pre-processing.")],
    paths: Annotated[list[Path], typer.Argument(help="Images and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to report per image.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    provider: Annotated[str, typer.Option(help="auto | tensorrt | cuda | cpu (auto: fastest available).")] = "auto",
    workers: Annotated[int, typer.Option(help="Decoding threads (0: one per core + 2).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout (JSON lines); messages go to stderr.")] = False,
    pre_aligned: Annotated[bool, typer.Option("--pre-aligned", help="For a model trained on aligned faces: the images are already aligned chips (skip dlib).")] = False,
    mirror_average: Annotated[bool, typer.Option("--mirror-average", help="For a checkpoint: classify each picture with its mirror image, as `export --mirror-average` does (an export has it baked in).")] = False,
) -> None:
    """Classify images with an artifact; prints identity and confidence; exit 1 if any file failed."""
    from rich.markup import escape

    from edgenode.artifacts import file_kind
    from edgenode.errors import ArtifactPathError, PathArgumentError, UsageError
    from edgenode.runtime import collect_images, load_predictor

    for flag, value, low in (("--top-k", top_k, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0)):
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}", f"pass {flag} {low} or more"
                             + ("; 0 is one thread per core + 2" if flag == "--workers" else ""))
    missing = [p for p in paths if not os.path.lexists(p)]  # a typo on the command line; a dangling link is a bad file
    if missing:
        raise PathArgumentError(f"{missing[0]}: no such file or folder" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                                "check the path; pass image files or folders of them")
    passed_over: list[Path] = []
    files = collect_images(paths, passed_over)
    if not files:
        raise UsageError(f"no image files found in {', '.join(map(str, paths))}"
                         + (f" (but {len(passed_over)} picture(s) of other formats, e.g. {passed_over[0].name})" if passed_over else ""),
                         "pass image files, or folders of .jpg/.png/.webp pictures")
    if passed_over:  # a folder's .bmp or .tif would otherwise vanish from the count without a word
        console.print(f"note: {len(passed_over)} picture(s) in the folders are not .jpg, .jpeg, .png or .webp and were "
                      f"left out (e.g. {passed_over[0]}); name a file to try it anyway", markup=False, soft_wrap=True)
    try:
        opened = load_predictor(artifact, provider=provider, mirror_average=True if mirror_average else None)
    except ArtifactPathError as exc:
        if artifact.is_file() and file_kind(artifact) == "image":  # the pictures were given first: say where they go
            raise ArtifactPathError(exc.message, f"{exc.hint}; the pictures come after it") from None
        raise
    with opened as predictor:
        predictor.check_aligner(pre_aligned)  # a refused --pre-aligned, or no dlib, before the banner that says it runs
        console.print(f"{predictor.describe()}; provider {predictor.provider}; {len(files)} image(s)", markup=False)
        if top_k > predictor.metadata.num_classes:
            console.print(f"note: --top-k {top_k}: the model knows {predictor.metadata.num_classes} classes; "
                          "each line ranks all of them", markup=False)
        failed = n = faceless = 0
        for item in predictor.predict_files(files, batch_size=batch_size, k=top_k, workers=workers or None, pre_aligned=pre_aligned):
            n += 1
            if not item.ok:
                failed += 1
                console.print(f"[bold red]error:[/] {escape(item.path)}: {escape(item.reason)}", soft_wrap=True)
                if as_json:
                    sys.stdout.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
                continue
            if item.face_found is False:  # aligned around the whole picture, as training did for such pictures
                faceless += 1
                console.print(f"[bold yellow]warning:[/] {escape(item.path)}: no face found; classified the whole picture "
                              "(the model errs most on these)", soft_wrap=True)
            if as_json:
                sys.stdout.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
            else:
                ranked = ", ".join(f"{name} {p:.3f}" for name, p in item.top_k)
                # a name holding a tab or a line break is quoted (JSON style): one line per picture, two fields
                shown = json.dumps(item.path, ensure_ascii=False) if any(c in item.path for c in "\t\n\r") else item.path
                typer.echo(f"{shown}\t{ranked}")
        sys.stdout.flush()
        ok = n - failed
        # the model's time only (no decoding), first call included: a few images mostly time the runtime's warm-up
        rate = (f", {predictor.runner.total_inference_ms / ok:.2f} ms/image inference (warm-up included; "
                "`edgenode bench` measures latency)") if ok else ""
        console.print(f"{ok}/{n} image(s) classified" + (f", [red]{failed} failed[/]" if failed else "")
                      + (f", {faceless} with no face found" if faceless else "") + rate)
    if failed:
        raise typer.Exit(code=1)
