"""Export: unroll the ODE block into fixed RK4 steps, write ONNX (FP32/FP16/INT8) and TensorRT engines.

Python API: ``export_model(ExportConfig(...)) -> ExportResult``; the pieces (``unroll``, ``sweep_steps``,
``check_ode_validity``, ``torch_to_onnx``, ``convert_to_fp16``, ``quantize_int8``, ``build_engine``) are usable
on their own. Heavy dependencies (onnx, onnxruntime, tensorrt) are imported inside the functions that use them.
"""

from edgenode.export.config import FORMATS, ExportConfig
from edgenode.export.metadata import ArtifactMetadata
from edgenode.export.pipeline import ExportResult, export_model
from edgenode.export.steps import SWEEP_STEPS, OdeValidity, StepSweep, SweepCriteria, check_ode_validity, sweep_steps
from edgenode.export.tensorrt import EngineConfig, build_engine
from edgenode.export.unroll import expected_conv_nodes, unroll

__all__ = [
    "FORMATS",
    "SWEEP_STEPS",
    "ArtifactMetadata",
    "EngineConfig",
    "ExportConfig",
    "ExportResult",
    "OdeValidity",
    "StepSweep",
    "SweepCriteria",
    "build_engine",
    "check_ode_validity",
    "expected_conv_nodes",
    "export_model",
    "sweep_steps",
    "unroll",
]
