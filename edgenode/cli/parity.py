"""`edgenode parity`: compare deployed artifacts with the adaptive-solver model; exit 1 if any fails."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import output_folder, user_errors
from edgenode.console import console


REFERENCE_TOL = 1e-6  # a reference far tighter than any deployed solve


def parse_reference_solver(spec: str, tol: float | None):
    """``dopri5`` (or any adaptive method) at ``tol`` (default 1e-6); ``trained`` keeps the checkpoint's own solver."""
    from edgenode.errors import UsageError
    from edgenode.ode.solvers import SolverConfig

    if spec == "trained":
        if tol is not None:  # it would be ignored: the trained solver keeps its own tolerances
            raise UsageError(f"--reference-tol {tol} applies only with --reference-solver METHOD",
                             "drop it: the 'trained' reference keeps the checkpoint's own solver and tolerances")
        return None
    tol = REFERENCE_TOL if tol is None else tol
    if not (math.isfinite(tol) and tol > 0):  # named here: SolverConfig's own message speaks of rtol and atol
        raise UsageError(f"--reference-tol {tol}: must be a finite number > 0",
                         f"pass e.g. --reference-tol {REFERENCE_TOL:g}, the default: a reference far tighter than any deployed solve")
    solver = SolverConfig(spec, rtol=tol, atol=tol)
    if not solver.is_adaptive:
        raise UsageError(f"--reference-solver {spec!r} is a fixed-step method",
                         "the reference should be an adaptive solve such as dopri5 or bosh3, or 'trained'")
    return solver


@user_errors
def command(
    artifacts: Annotated[list[Path], typer.Argument(help="ONNX files, TensorRT engines, or an export folder (all artifacts inside).")],
    reference: Annotated[Path, typer.Option(help="The training checkpoint (.pt) the artifacts were exported from.")],
    data: Annotated[Path, typer.Option(help="The data set root the run was trained on.")],
    manifest: Annotated[Optional[Path], typer.Option(help="Split manifest (default: manifest.json beside the checkpoint).")] = None,
    split: Annotated[str, typer.Option(help="Split to compare on: test | val | train.")] = "test",
    out: Annotated[Path, typer.Option(help="Folder for parity.json, parity.md and the plots.")] = Path("runs/parity"),
    max_drop: Annotated[float, typer.Option(help="FP32/FP16: largest accepted accuracy drop, percentage points.")] = 0.5,
    min_agreement: Annotated[float, typer.Option(help="FP32/FP16: smallest accepted top-1 agreement, %.")] = 99.0,
    int8_max_drop: Annotated[float, typer.Option(help="INT8: largest accepted accuracy drop, percentage points.")] = 1.0,
    int8_min_agreement: Annotated[float, typer.Option(help="INT8: smallest accepted top-1 agreement, %.")] = 97.0,
    max_logit_error: Annotated[Optional[float], typer.Option(help="Optional bound on max |Δlogit| vs. the reference (any precision).")] = None,
    reference_solver: Annotated[str, typer.Option(help="Adaptive solver of the reference (dopri5, bosh3, …) or 'trained'.")] = "dopri5",
    reference_tol: Annotated[Optional[float], typer.Option(help="rtol = atol of --reference-solver METHOD [default: 1e-6].")] = None,
    provider: Annotated[str, typer.Option(help="auto | tensorrt | cuda | cpu for the artifacts.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 64,
    attribution: Annotated[bool, typer.Option(help="Split the error into solver/export/precision/runtime stages.")] = True,
    allow_other_reference: Annotated[bool, typer.Option(
        "--allow-other-reference", help="Compare artifacts exported from another checkpoint than --reference "
        "(a warning, not a failure): for comparing two models on purpose.")] = False,
) -> None:
    """Compare artifacts with the reference (adaptive solver) on a split; exit 1 if any artifact fails."""
    from edgenode.errors import ParityError
    from edgenode.parity import ParityConfig, ParityThresholds, run_parity
    from edgenode.parity.report import attribution_table, rich_table

    output_folder(out)
    config = ParityConfig(
        artifacts=tuple(str(a) for a in artifacts), reference=str(reference), data=str(data),
        manifest=str(manifest) if manifest else None, split=split, out=str(out),
        thresholds=ParityThresholds(max_drop, min_agreement, int8_max_drop, int8_min_agreement, max_logit_error),
        reference_solver=parse_reference_solver(reference_solver, reference_tol), provider=provider,
        batch_size=batch_size, attribution=attribution, allow_other_reference=allow_other_reference,
    )
    report = run_parity(config)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    console.print(rich_table(report))
    for result in report.results:
        if result.attribution:
            console.print(attribution_table(result))
    console.print(f"wrote {', '.join(p.name for p in report.files)} in {out}", markup=False)
    console.print(report.summary_line(), markup=False)
    if report.failing:
        raise ParityError(report.failure_line(), failure_hint(report.failing, out))


def failure_hint(failing, out: Path) -> str:
    """How to fix a failed parity run: the right --reference when an artifact comes from another checkpoint
    (no threshold would make that comparison meaningful), else where the details are and which thresholds exist."""
    report = out / "parity.md"
    if any(r.other_checkpoint for r in failing):
        return (f"pass the checkpoint the artifacts were exported from as --reference, or --allow-other-reference to "
                f"compare with another model on purpose; see {report}")
    return f"see {report}; thresholds: --max-drop, --min-agreement, --int8-max-drop, --int8-min-agreement, --max-logit-error"
