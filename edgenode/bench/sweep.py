"""The steps sweep: the reference checkpoint unrolled into N fixed steps, for each N, in memory.

For every N the unrolled model is ``model.with_solver(SolverConfig(method, n_steps=N))`` — the same weights,
N explicit steps — run as it would deploy: exported to ONNX FP32 in memory and run with ONNX Runtime on the
CPU, and (optionally) as the torch module itself. The ONNX graph comes from the export stage's own exporter
(:func:`edgenode.export.onnx_export.torch_to_onnx`, so the sweep times the graph ``edgenode export`` would
write); where that module is missing, a plain ``torch.onnx.export`` (TorchScript exporter) stands in.
Nothing is written to disk. Exports happen before any row is measured, so they do not count in a row's memory.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from edgenode.model import NeuralODECNN
from edgenode.ode.solvers import SolverConfig

SWEEP_BACKENDS = ("onnx", "torch")


@dataclass(frozen=True)
class SweepPoint:
    """One N of the sweep: the unrolled torch model and, for the ONNX backend, its serialized graph."""

    steps: int
    solver: SolverConfig
    model: NeuralODECNN
    onnx_bytes: bytes | None
    exporter: str | None


def export_onnx_bytes(model: NeuralODECNN, image_size: int, opset: int) -> tuple[bytes, str]:
    """The unrolled model as a serialized ONNX graph (dynamic batch), and which exporter made it."""
    try:
        from edgenode.export.onnx_export import strip_debug_info, torch_to_onnx
    except ImportError:
        torch_to_onnx = None
    if torch_to_onnx is not None:
        graph = torch_to_onnx(model, image_size, opset)
        strip_debug_info(graph.proto)
        return graph.proto.SerializeToString(), graph.exporter
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float().eval(), (torch.zeros(2, 3, image_size, image_size),), buffer,
                          input_names=["images"], output_names=["logits"], opset_version=min(opset, 17), dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue(), f"torch.onnx torchscript (torch {torch.__version__})"


def sweep_points(model: NeuralODECNN, steps: tuple[int, ...], method: str, image_size: int,
                 backends: tuple[str, ...], opset: int) -> list[SweepPoint]:
    """Unrolled models (and ONNX graphs when the onnx backend is asked for) for each N of ``steps``."""
    points = []
    for n in steps:
        solver = SolverConfig(method, n_steps=n)
        unrolled = model.with_solver(solver).eval()
        data, exporter = export_onnx_bytes(unrolled, image_size, opset) if "onnx" in backends else (None, None)
        points.append(SweepPoint(n, solver, unrolled, data, exporter))
    return points
