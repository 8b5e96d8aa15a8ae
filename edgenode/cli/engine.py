"""`edgenode engine`: TensorRT engines from exported ONNX files, built on the device that will run them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from edgenode.cli.common import existing_path, user_errors
from edgenode.console import console


@user_errors
def command(
    onnx: Annotated[list[Path], typer.Argument(help="ONNX files written by `edgenode export`, or their folder.")],
    engine_opt_batch: Annotated[int, typer.Option(help="TensorRT profile: batch size to optimise for.")] = 8,
    engine_max_batch: Annotated[int, typer.Option(help="TensorRT profile: largest batch size.")] = 32,
    engine_workspace_mib: Annotated[int, typer.Option(help="TensorRT builder workspace, MiB.")] = 1024,
) -> None:
    """Build TensorRT engines from exported ONNX files, here (engines run only on this TensorRT and GPU)."""
    from rich.markup import escape

    from edgenode.artifacts import human_size
    from edgenode.export.tensorrt import EngineConfig, engines_from_onnx

    for path in onnx:
        existing_path(path, "ONNX")
    config = EngineConfig(opt_batch=engine_opt_batch, max_batch=engine_max_batch, workspace_mib=engine_workspace_mib)
    started = time.perf_counter()
    built = engines_from_onnx(onnx, config)
    for path, meta in built:
        console.print(f"[green]✓[/] {escape(str(path))} ({human_size(path.stat().st_size)}): {meta.precision}, "
                      f"TensorRT {meta.extra['tensorrt_version']}, {meta.extra['gpu_name']} "
                      f"(sm {meta.extra['compute_capability']}), {escape(meta.extra['build'])}", soft_wrap=True)
    console.print(f"{len(built)} engine(s) in {time.perf_counter() - started:.1f} s; check them with `edgenode verify`")
