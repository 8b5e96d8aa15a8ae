"""FP16: weights and compute in half precision, float32 at the edges and where half overflows.

Library: ``onnxruntime.transformers.float16.convert_float_to_float16`` — the float16 converter that ships
inside onnxruntime (already a dependency; it is the same code as onnxconverter-common's, maintained by the
ONNX Runtime team and used for their own FP16 model zoo). It converts initializers and every tensor type,
inserts Cast nodes around blocked ops, and with ``keep_io_types=True`` leaves the graph's ``images`` input and
``logits`` output float32, so every runtime feeds the same arrays whatever the precision. NVIDIA ModelOpt's
AutoCast would choose the blocked ops by measurement, but it is a large, CUDA-oriented dependency; for these
small CNNs a fixed block list is enough and predictable.

Kept in float32 (``FP32_OPS``): normalisation (GroupNorm exports as InstanceNormalization, plus
BatchNormalization/LayerNormalization/GroupNormalization) whose variance of 16–64 channel maps can overflow
or lose all precision in half, and reductions (global average pooling, ReduceMean/Sum…) that sum hundreds of
values. Convs, the RK4 combinations and the head run in half. The converter appends its Cast nodes at the end
of the node list, so the graph is topologically re-sorted before it is checked.
"""

from __future__ import annotations

FP32_OPS = (
    "InstanceNormalization",
    "BatchNormalization",
    "GroupNormalization",
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "GlobalAveragePool",
    "Softmax",
    "LogSoftmax",
)


def convert_to_fp16(fp32_proto):
    """A half-precision copy of ``fp32_proto`` (inputs/outputs float32, ``FP32_OPS`` in float32)."""
    import copy

    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = copy.deepcopy(fp32_proto)
    # Stale value_info from the exporter would contradict the new types; the converter re-infers them.
    del proto.graph.value_info[:]
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=block)
    wrapped = OnnxModel(half)
    wrapped.topological_sort()
    return wrapped.model


def half_initializer_count(proto) -> tuple[int, int]:
    """(float16 initializers, float32 initializers): a quick proof that the weights really are half."""
    import onnx

    types = [init.data_type for init in proto.graph.initializer]
    return types.count(onnx.TensorProto.FLOAT16), types.count(onnx.TensorProto.FLOAT)
