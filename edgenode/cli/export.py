"""`edgenode export`: unroll the ODE block into fixed steps and write ONNX FP32/FP16/INT8 (and TensorRT engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgenode.cli.common import output_folder, user_errors


@user_errors
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `edgenode train` (best.pt).")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: export/ beside the checkpoint).")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8, or several comma-separated (fp32 is always written as the reference).")] = "fp32",
    steps: Annotated[Optional[str], typer.Option(help="Unrolled steps N (1 to 256), or 'auto' (smallest N matching dopri5 on val). Default: the trained steps of a fixed-step checkpoint, else auto.")] = None,
    method: Annotated[Optional[str], typer.Option(help="euler | midpoint | rk4 (classic) | rk4_38 (torchdiffeq's 3/8 'rk4'). Default: the trained fixed-step method, else rk4.")] = None,
    artifact_format: Annotated[str, typer.Option("--format", help="onnx, or engine (ONNX plus TensorRT engines; needs tensorrt).")] = "onnx",
    data: Annotated[Optional[Path], typer.Option(help="Data folder for val/calibration images (default: the one the checkpoint was trained on).")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Split manifest (default: manifest.json beside the checkpoint); its sha256 must match the checkpoint's.")] = None,
    int8_target: Annotated[str, typer.Option(help="ort (U8S8, ONNX Runtime CPU) | tensorrt (symmetric S8S8) | both.")] = "both",
    calibration_per_class: Annotated[int, typer.Option(help="Calibration images per identity, drawn from the train split.")] = 4,
    calibration_seed: Annotated[int, typer.Option(help="Seed of the calibration draw.")] = 0,
    calibration_method: Annotated[str, typer.Option(help="minmax | entropy | percentile.")] = "minmax",
    tensorrt_cache_version: Annotated[Optional[str], typer.Option(help="TensorRT version named in the header of the calibration cache written beside the INT8 files, for `trtexec --calib` (TensorRT refuses a cache of another version). Default 10.3.0, JetPack 6's.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17-20).")] = 18,
    check_ode: Annotated[bool, typer.Option(help="Check that logits/accuracy converge over N, 2N, 4N and dopri5 tolerances.")] = True,
    mirror_average: Annotated[bool, typer.Option("--mirror-average", help="Classify each picture together with its mirror image, inside the graph: twice the work, output invariant to a left-right flip of the model's input (+1.0 pt test on the shipped Pins model).")] = False,
    engine_opt_batch: Annotated[int, typer.Option(help="TensorRT profile: batch size to optimise for.")] = 8,
    engine_max_batch: Annotated[int, typer.Option(help="TensorRT profile: largest batch size.")] = 32,
    engine_workspace_mib: Annotated[int, typer.Option(help="TensorRT builder workspace, MiB.")] = 1024,
) -> None:
    """Unroll the ODE block into fixed steps (RK4 unless --method says otherwise) and export ONNX FP32/FP16/INT8 (and TensorRT engines)."""
    from edgenode.export import EngineConfig, ExportConfig, export_model

    out = output_folder(out if out is not None else checkpoint.parent / "export")
    config = ExportConfig(
        checkpoint=str(checkpoint), out=str(out), precisions=precision,
        steps=steps, method=method, format=artifact_format, data=str(data) if data else None,
        manifest=str(manifest) if manifest else None, int8_target=int8_target,
        calibration_per_class=calibration_per_class, calibration_seed=calibration_seed,
        calibration_method=calibration_method, opset=opset, check_ode=check_ode, mirror_average=mirror_average,
        engine=EngineConfig(opt_batch=engine_opt_batch, max_batch=engine_max_batch, workspace_mib=engine_workspace_mib),
        **({"trt_cache_version": tensorrt_cache_version} if tensorrt_cache_version is not None else {}),
    )
    export_model(config)
