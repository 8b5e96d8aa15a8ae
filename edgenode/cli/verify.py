"""`edgenode verify`: on-device self-check of an export folder against its golden logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import user_errors
from edgenode.console import console


@user_errors
def command(
    folder: Annotated[Path, typer.Argument(help="Export folder: artifacts with <artifact>.golden.npz beside them.")],
    provider: Annotated[str, typer.Option(help="auto | tensorrt | cuda | cpu (auto: whatever this device has).")] = "auto",
    atol: Annotated[Optional[float], typer.Option(help="Override the absolute logit tolerance of every precision.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Override the tolerance relative to each sample's largest |logit|.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON document on stdout.")] = False,
) -> None:
    """Replay each artifact's golden inputs and compare with the stored logits; exit 1 on any failure."""
    from rich.markup import escape
    from rich.table import Table

    from edgenode.errors import EdgenodeError
    from edgenode.runtime.verify import DEFAULT_TOLERANCES, GoldenTolerance, verify_folder

    tolerances = {p: GoldenTolerance(atol if atol is not None else t.atol, rtol if rtol is not None else t.rtol)
                  for p, t in DEFAULT_TOLERANCES.items()}
    report = verify_folder(folder, provider=provider, tolerances=tolerances)
    table = Table(title=f"Golden replay — {escape(str(folder))}")
    for column in ("Artifact", "Precision", "Runtime", "max|Δlogit|", "Tolerance", "Top-1", "Verdict"):
        table.add_column(column, overflow="fold")  # a file name cut to "…" could be any of them
    for c in report.checks:
        colour = {"passed": "green", "failed": "bold red", "skipped": "yellow"}[c.status]
        table.add_row(
            escape(c.artifact), c.precision or "?", escape(c.runtime or "—"),
            "—" if c.max_abs_error is None else f"{c.max_abs_error:.3g}",
            "—" if c.tolerance is None else f"{c.tolerance.atol:g} + {c.tolerance.rtol:g}·|logit|",
            "—" if c.top1_agreement is None else f"{100 * c.top1_agreement:.1f} %",
            f"[{colour}]{c.status.upper()}[/]",
        )
    console.print(table)
    reasons: dict[str, list[str]] = {}  # one line per reason: a missing provider skips every file for the same one
    for c in report.checks:
        if c.reason:
            reasons.setdefault(c.reason, []).append(c.artifact)
    for reason, artifacts in reasons.items():
        console.print(f"{', '.join(artifacts)}: {reason}", markup=False, soft_wrap=True)
    if Path(folder).is_dir() and not (Path(folder) / "export_report.json").is_file():
        console.print(f"note: {folder} holds no export_report.json: if an export stopped part-way, the files it had not "
                      "written yet are not here to check", markup=False, soft_wrap=True)
    if report.without_golden:
        console.print(f"no golden file (not checked): {', '.join(report.without_golden)}", markup=False)
    console.print(report.summary_line(), markup=False)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False, indent=1) + "\n")
    if not report.passed:
        failed = [c for c in report.checks if c.status == "failed"]
        # a file that could not even be replayed (damaged, altered, its golden file unreadable) is no tolerance matter
        unusable = [c.artifact for c in failed if c.max_abs_error is None]
        differ = [c.artifact for c in failed if c.max_abs_error is not None]
        if failed:
            what = "; ".join(
                ([f"{len(differ)} artifact(s) do not reproduce their golden logits: {', '.join(differ)}"] if differ else [])
                + ([f"{len(unusable)} artifact(s) could not be compared with their golden logits: {', '.join(unusable)}"]
                   if unusable else []))
            hint = "each line above says why; " + ("a damaged or altered file: copy it again, or export it again"
                                                   if unusable else "a file changed or damaged in the copy: copy it again")
            if differ:
                hint += ("; a runtime that rounds differently (another GPU or TensorRT version): loosen --atol/--rtol "
                         "to the figure the line gives, after checking accuracy with parity")
            raise EdgenodeError(what, hint)
        raise EdgenodeError("no artifact could be run on this machine", "install the runtime the artifacts need (see the reasons above)")
