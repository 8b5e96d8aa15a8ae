"""INT8: post-training static quantisation with explicit QuantizeLinear/DequantizeLinear (QDQ) nodes.

Two targets, two files, because the fast kernels of each runtime want different encodings:

``ort`` (``*-int8-ort.onnx``) — U8S8: uint8 asymmetric activations, int8 symmetric per-channel weights,
    int32 biases, Q/DQ on the inputs *and* outputs of Conv/Gemm/MatMul. ONNX Runtime's x86 CPU EP fuses
    DQ→Conv→Q into QLinearConv with int8 kernels (VNNI/AVX2 u8×s8); with signed activations (S8S8) it
    leaves the convs in FP32 and runs slower than the FP32 model.
``tensorrt`` (``*-int8-trt.onnx``) — symmetric signed INT8 everywhere (zero points 0: TensorRT supports
    no other), per-channel weights along the output channels, float biases (TensorRT cannot dequantize
    int32), and Q/DQ only on the *inputs* of Conv/Gemm/MatMul: TensorRT fuses DQ into the following conv and
    keeps everything between (GroupNorm, the RK4 additions) in higher precision, which is what its
    explicit-quantisation placement rules recommend.

For both targets only Conv/Gemm/MatMul are quantised: the ODE state and the RK4 combinations
(h + dt/6 (k1 + 2 k2 + 2 k3 + k4)) stay in float, because rounding them would add error at every one of the
N steps. The graph first goes through onnxruntime's ``quant_pre_process`` (symbolic shape inference and
basic graph optimisation), as its documentation asks. Calibration data come from
:mod:`edgenode.calibration` (train split only); the method (MinMax/Entropy/Percentile) is a parameter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenode.calibration.reader import ArrayCalibrationReader
from edgenode.calibration.table import compute_tensor_ranges, ort_calibration_method
from edgenode.errors import UsageError

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
INT8_TARGET_CHOICES = ("ort", "tensorrt", "both")


@dataclass(frozen=True)
class Int8Recipe:
    target: str
    file_tag: str
    activation_type: str  # onnxruntime.quantization.QuantType member name
    weight_type: str
    extra_options: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    reduce_range: bool = False  # 7-bit weights (quantize_static's reduce_range)


RECIPES = {
    "ort": Int8Recipe(
        "ort", "int8-ort", "QUInt8", "QInt8",
        {"ActivationSymmetric": False, "WeightSymmetric": True},
        "U8S8 QDQ: uint8 asymmetric activations, 7-bit symmetric per-channel weights (ONNX Runtime x86 int8 kernels; "
        "7 bits so that CPUs without VNNI cannot saturate)",
        # x86 CPUs without VNNI (AVX2, AVX-512F) multiply u8 × s8 pairs with VPMADDUBSW, which saturates its 16-bit
        # sums: the shipped Pins model's 8-bit file, 98.6 % agreement on an earlier session's CPU, agreed on 90 % on
        # an AVX2-only EPYC (RESULTS.md). Weights in 7 bits keep every pair sum in range, on every x86 CPU.
        reduce_range=True,
    ),
    "tensorrt": Int8Recipe(
        "tensorrt", "int8-trt", "QInt8", "QInt8",
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
         "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)},
        "S8S8 symmetric QDQ on Conv/Gemm inputs, zero points 0, float biases (TensorRT explicit quantisation)",
    ),
}


def int8_targets(choice: str) -> tuple[str, ...]:
    """``ort|tensorrt|both`` to the targets to build."""
    if choice not in INT8_TARGET_CHOICES:
        raise UsageError(f"--int8-target {choice!r} is not known", f"choose one of {', '.join(INT8_TARGET_CHOICES)}")
    return ("ort", "tensorrt") if choice == "both" else (choice,)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantiser prints progress and logs per-tensor notes; keep the console for our lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: str | os.PathLike, target: str, images: np.ndarray, method: str = "minmax",
                  ranges: dict[str, tuple[float, float]] | None = None):
    """The QDQ model (ModelProto) for ``target`` of the FP32 ONNX at ``fp32_path``, calibrated on ``images``.

    ``ranges``: with ``method="entropy"``, the ranges of :func:`entropy_ranges` for this file and these images,
    computed once for both targets (their search is minutes on a Pins graph); None computes them here."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    recipe = RECIPES[target]
    calibrate_method = ort_calibration_method(method)
    extra_options = dict(recipe.extra_options)
    with tempfile.TemporaryDirectory(prefix="edgenode-int8.") as tmp, _quiet():
        prepared, quantized = _prepared(fp32_path, tmp), Path(tmp) / "quantized.onnx"
        if method == "entropy":
            # quantize_static cannot be given the entropy calibrator's bins (create_calibrator's 128 for 128 levels
            # leave one threshold, the whole range): the ranges come from our calibrator, as overrides of min-max's
            if ranges is None:
                ranges = compute_tensor_ranges(prepared, images, "entropy", op_types=QUANTIZED_OPS)
            extra_options["TensorQuantOverrides"] = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                                     for name, (lo, hi) in ranges.items()}
            calibrate_method = ort_calibration_method("minmax")
        quantize_static(
            str(prepared), str(quantized), ArrayCalibrationReader(images),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            activation_type=QuantType[recipe.activation_type], weight_type=QuantType[recipe.weight_type],
            calibrate_method=calibrate_method, extra_options=extra_options, reduce_range=recipe.reduce_range,
        )
        return onnx.load(str(quantized))


def entropy_ranges(fp32_path: str | os.PathLike, images: np.ndarray) -> dict[str, tuple[float, float]]:
    """Entropy-calibrated ranges of the tensors ``quantize_int8`` quantises, on the graph it quantises (the FP32
    file after ``quant_pre_process``, whose tensor names they use): the same for both targets."""
    with tempfile.TemporaryDirectory(prefix="edgenode-int8.") as tmp, _quiet():
        return compute_tensor_ranges(_prepared(fp32_path, tmp), images, "entropy", op_types=QUANTIZED_OPS)


def _prepared(fp32_path: str | os.PathLike, tmp: str) -> Path:
    """``fp32_path`` through onnxruntime's ``quant_pre_process`` (shape inference, basic optimisation), in ``tmp``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(tmp) / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    return prepared


def qdq_summary(proto) -> dict[str, Any]:
    """What the QDQ nodes say: counts, activation/weight types and zero points, per-channel weights, quantised ops."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" and n.attribute}

    def tensor(name):
        t = inits.get(name) if name in inits else constants.get(name)
        return None if t is None else (t.data_type, numpy_helper.to_array(t))

    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    act_types, act_zero, weight_types, weight_zero, bias_types = set(), [], set(), [], set()
    per_channel, quantized_ops = 0, {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = tensor(node.input[2])
        if zp is None:
            continue
        type_name = onnx.TensorProto.DataType.Name(zp[0])
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in inits
        if is_weight and zp[0] == onnx.TensorProto.INT32:
            bias_types.add(type_name)
        elif is_weight:
            weight_types.add(type_name)
            weight_zero.append(bool(np.all(zp[1] == 0)))
            scale = tensor(node.input[1])
            per_channel += int(scale is not None and np.size(scale[1]) > 1)
        elif node.op_type == "QuantizeLinear":
            act_types.add(type_name)
            act_zero.append(bool(np.all(zp[1] == 0)))
        if node.op_type == "DequantizeLinear":
            for op in consumers.get(node.output[0], []):
                quantized_ops[op] = quantized_ops.get(op, 0) + 1
    counts = {op: sum(1 for n in proto.graph.node if n.op_type == op) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "activation_types": sorted(act_types),
        "activation_zero_points_all_zero": all(act_zero) if act_zero else None,
        "weight_types": sorted(weight_types),
        "weight_zero_points_all_zero": all(weight_zero) if weight_zero else None,
        "bias_types": sorted(bias_types),
        "per_channel_weights": per_channel,
        "dequantize_consumers": dict(sorted(quantized_ops.items())),
    }
