"""`edgenode bench`: latency, throughput, size, memory and accuracy of every artifact against the adaptive baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import output_folder, user_errors
from edgenode.console import console


def parse_baseline_solver(spec: str, tol: float | None):
    """``trained`` keeps the checkpoint's own solver; an adaptive one (dopri5, bosh3, …) replaces it. A fixed-step
    method is refused: its rows are ``--sweep-steps``."""
    from edgenode.errors import UsageError
    from edgenode.ode.solvers import FLOAT32_EPS, SolverConfig

    if tol is not None and not tol > 0:
        raise UsageError(f"--baseline-tol must be > 0, got {tol}")
    if tol is not None and tol < FLOAT32_EPS:  # the baseline runs in float32: its step size would underflow
        raise UsageError(f"--baseline-tol {tol:g}: the baseline runs in float32, which resolves no error below "
                         f"{FLOAT32_EPS:.1e}", "pass 1e-6 or more (default 1e-3)")
    if spec == "trained":
        if tol is not None:
            raise UsageError("--baseline-tol applies only with --baseline-solver METHOD",
                             "the 'trained' baseline keeps the checkpoint's own solver and tolerances")
        return None
    solver = SolverConfig(spec, rtol=tol, atol=tol) if tol is not None else SolverConfig(spec)
    if not solver.is_adaptive:  # it would take 20 steps, not the checkpoint's, and no tolerance
        raise UsageError(f"--baseline-solver {spec}: the baseline is an adaptive solve, and {spec} takes fixed steps",
                         "pass an adaptive one (dopri5), 'trained' for the checkpoint's own solver, or --sweep-steps "
                         f"for {spec} × N rows")
    return solver


@user_errors
def command(
    artifacts: Annotated[Optional[list[Path]], typer.Argument(
        help="ONNX files, TensorRT engines, export folders (every artifact inside) or checkpoints.")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        help="Training checkpoint: the baseline row (its training solver) and the source of --sweep-steps; "
        "required unless a checkpoint is among the artifacts.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Data set root: adds accuracy and agreement on --split.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Split manifest (default: manifest.json beside --reference).")] = None,
    split: Annotated[str, typer.Option(help="Split to score on: test | val | train.")] = "test",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes; latency at the smallest, throughput at the largest.")] = "1,64",
    repeats: Annotated[int, typer.Option(help="Timed calls per batch size.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed calls per batch size first.")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads for every runtime (default: $OMP_NUM_THREADS where set, else physical cores).")] = None,
    providers: Annotated[str, typer.Option(help="ONNX Runtime providers: all (those present) or cpu,cuda,tensorrt.")] = "all",
    baseline_solver: Annotated[str, typer.Option(help="Baseline solver: 'trained' or an adaptive method (dopri5, bosh3, …).")] = "trained",
    baseline_tol: Annotated[Optional[float], typer.Option(help="rtol = atol of --baseline-solver (default 1e-3).")] = None,
    sweep_steps: Annotated[Optional[str], typer.Option(help="Steps sweep, e.g. 1,2,4,8: the reference unrolled in memory.")] = None,
    sweep_method: Annotated[Optional[str], typer.Option(
        help="Fixed-step method of the sweep and GPU rows (default: the trained one, else rk4).")] = None,
    sweep_backends: Annotated[str, typer.Option(help="Sweep runtimes: onnx,torch.")] = "onnx,torch",
    opset: Annotated[int, typer.Option(help="ONNX opset of the sweep's in-memory exports (17: TorchScript exporter).")] = 18,
    peak: Annotated[bool, typer.Option(help="Measure the machine's FP32 peak (fraction-of-peak column).")] = True,
    peak_matmul_size: Annotated[int, typer.Option(help="n of the n×n matmul of the peak measurement.")] = 1024,
    gpu: Annotated[bool, typer.Option(help="Add torch CUDA rows (eager, compiled; FP32/FP16/BF16) when a GPU is present.")] = True,
    gpu_steps: Annotated[Optional[str], typer.Option(help="Steps of the GPU rows (default: the artifacts').")] = None,
    compile_gpu: Annotated[bool, typer.Option("--compile/--no-compile", help="Include torch.compile (CUDA graphs) GPU rows.")] = True,
    out: Annotated[Path, typer.Option(help="Folder for bench.json, bench.md and the plots.")] = Path("runs/bench"),
    json_output: Annotated[bool, typer.Option("--json", help="Also print the JSON report on stdout.")] = False,
) -> None:
    """Benchmark artifacts side by side: latency, throughput, size, memory, accuracy, speed-up and % of peak."""
    from edgenode.bench import BenchConfig, rich_tables, run_bench
    from edgenode.bench.report import peak_lines

    output_folder(out)
    config = BenchConfig(
        artifacts=tuple(str(a) for a in artifacts or ()), reference=str(reference) if reference else None,
        data=str(data) if data else None, manifest=str(manifest) if manifest else None, split=split,
        batch_sizes=batch_sizes, warmup=warmup, repeats=repeats, threads=threads, providers=providers,
        baseline_solver=parse_baseline_solver(baseline_solver, baseline_tol), sweep_steps=sweep_steps or (),
        sweep_method=sweep_method, sweep_backends=sweep_backends, sweep_opset=opset, peak=peak, peak_matmul_size=peak_matmul_size,
        gpu=gpu, gpu_steps=gpu_steps or (), gpu_compile=compile_gpu, out=str(out),
    )
    report = run_bench(config)
    for table in rich_tables(report):
        console.print(table)
    for line in peak_lines(report):
        console.print(line, markup=False)
    for note in [*report.notes, *(f"{row.name}: {n}" for row in report.rows for n in row.notes)]:  # as bench.md lists them
        console.print(f"note: {note}", markup=False)
    console.print(f"wrote {', '.join(p.name for p in report.files)} in {out}", markup=False)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=1, sort_keys=True))
