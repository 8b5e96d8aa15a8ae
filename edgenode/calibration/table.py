"""Per-tensor activation ranges of the FP32 graph, written as calibration tables for TensorRT.

The INT8 ONNX files carry their scales in explicit Q/DQ nodes and need no table. The tables serve the
*implicit* INT8 path of older stacks (TensorRT ≤ 10 with a calibrator, ONNX Runtime's TensorRT EP with
``trt_int8_enable``), which quantise the FP32 graph from per-tensor dynamic ranges:

``*.calibration.cache``
    TensorRT's own text format: a header ``TRT-<version>-EntropyCalibration2`` and one line
    ``tensor_name: <8 hex digits>`` per tensor, the hex digits being the bits of the float32 *scale*
    (dynamic range / 127). TensorRT refuses a cache whose header names another TensorRT version, so the
    version is a parameter (JetPack 6 ships 10.3.0). The algorithm tag is always EntropyCalibration2, the
    one a cache-reading ``IInt8EntropyCalibrator2`` accepts; which method computed the ranges is recorded in
    the export report and metadata.
``*.calibration.flatbuffers``
    ONNX Runtime TensorRT EP's table (``trt_int8_calibration_table_name``): ``TrtTable`` of
    (tensor name, dynamic range as decimal text) in ONNX Runtime's own flatbuffers schema.

Tensor names are those of the FP32 ONNX file, which is what TensorRT's ONNX parser names its tensors.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from edgenode.artifacts import atomic_write_bytes
from edgenode.calibration.reader import ArrayCalibrationReader
from edgenode.errors import ArtifactError, UsageError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
TRT_CACHE_ALGORITHM = "EntropyCalibration2"
DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6


def ort_calibration_method(name: str):
    """``minmax|entropy|percentile`` to onnxruntime's ``CalibrationMethod``."""
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown calibration method {name!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}") from None


# ONNX Runtime's entropy calibrator, as create_calibrator builds it, histograms each tensor in 128 bins and searches
# thresholds for 128 quantised bins: that leaves one candidate, the whole range, so "entropy" was min-max. TensorRT's
# entropy calibration (the method's origin) histograms in 2048 bins and searches 961 thresholds for 128 levels.
CALIBRATOR_OPTIONS = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128}}


def compute_tensor_ranges(model_path: str | os.PathLike, images: np.ndarray, method: str = "minmax",
                          input_name: str = "images", op_types: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    """(lowest, highest) of the float activations of the ONNX graph at ``model_path`` over ``images``: every one,
    or the inputs and outputs of ``op_types`` nodes (those a quantiser calibrates)."""
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrate_method = ort_calibration_method(method)
    with tempfile.TemporaryDirectory(prefix="edgenode-calib.") as tmp:
        inferred = Path(tmp) / "inferred.onnx"
        # The calibrator only sees tensors with a value_info; full shape inference gives every one.
        onnx.save_model(onnx.shape_inference.infer_shapes(onnx.load(str(model_path))), str(inferred))
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            calibrator = create_calibrator(inferred, list(op_types) if op_types else None,
                                           augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=calibrate_method, extra_options=dict(CALIBRATOR_OPTIONS.get(method, {})))
            calibrator.collect_data(ArrayCalibrationReader(images, input_name))
            data = calibrator.compute_data()
    ranges = {}
    for name, tensor in data.items():
        lo, hi = tensor.range_value
        ranges[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return dict(sorted(ranges.items()))


def trt_version_code(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION: 8.6.1 -> 8601, 10.3.0 -> 100300 (the scheme changed at 10)."""
    try:
        parts = [int(p) for p in version.split(".")[:3]]
    except ValueError:
        raise UsageError(f"TensorRT version {version!r} is not like 10.3.0") from None
    major, minor, patch = (parts + [0, 0])[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def dynamic_range(lo: float, hi: float) -> float:
    """Symmetric INT8 dynamic range of a tensor: TensorRT maps [-r, r] onto [-127, 127]."""
    return max(abs(lo), abs(hi))


def _scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def write_trt_calibration_cache(ranges: dict[str, tuple[float, float]], path: str | os.PathLike,
                                trt_version: str = DEFAULT_TRT_VERSION) -> Path:
    """Write TensorRT's text calibration cache (scale = dynamic range / 127 per tensor), atomically."""
    lines = [f"TRT-{trt_version_code(trt_version)}-{TRT_CACHE_ALGORITHM}"]
    for name in sorted(ranges):
        scale = dynamic_range(*ranges[name]) / 127.0
        lines.append(f"{name}: {_scale_hex(scale)}")
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def read_trt_calibration_cache(path: str | os.PathLike) -> tuple[str, dict[str, float]]:
    """(header, {tensor name: scale}) of a TensorRT text calibration cache."""
    redo = "re-export the INT8 model: edgenode export --precision int8 writes it"
    try:
        text = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        text = []
    if not text or not text[0].startswith("TRT-"):
        raise ArtifactError(f"{path}: not a TensorRT calibration cache (no TRT-… header)", redo)
    scales = {}
    for number, line in enumerate(text[1:], start=2):
        name, sep, value = line.rpartition(": ")
        try:
            if not sep:
                raise ValueError("no 'name: scale'")
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        except (ValueError, struct.error):
            raise ArtifactError(f"{path}, line {number}: {line[:60]!r} is not 'tensor: 8-hex-digit scale'", redo) from None
    return text[0], scales


def write_ort_trt_table(ranges: dict[str, tuple[float, float]], path: str | os.PathLike) -> Path:
    """Write ONNX Runtime TensorRT EP's flatbuffers calibration table (name -> dynamic range), atomically.

    Built with the schema classes onnxruntime ships (``quantization.CalTableFlatBuffers``), as its own
    ``write_calibration_table`` does; that helper writes three fixed file names into a folder and
    stores max(lowest, highest) rather than the symmetric range, so it is not used directly.
    """
    import flatbuffers
    from onnxruntime.quantization.CalTableFlatBuffers import KeyValue, TrtTable

    builder = flatbuffers.Builder(1024)
    entries = []
    for name in sorted(ranges):
        key = builder.CreateString(name)
        value = builder.CreateString(repr(dynamic_range(*ranges[name])))
        KeyValue.KeyValueStart(builder)
        KeyValue.KeyValueAddKey(builder, key)
        KeyValue.KeyValueAddValue(builder, value)
        entries.append(KeyValue.KeyValueEnd(builder))
    TrtTable.TrtTableStartDictVector(builder, len(entries))
    for entry in reversed(entries):  # prepending: reverse to keep sorted order in the buffer
        builder.PrependUOffsetTRelative(entry)
    vector = builder.EndVector()
    TrtTable.TrtTableStart(builder)
    TrtTable.TrtTableAddDict(builder, vector)
    builder.Finish(TrtTable.TrtTableEnd(builder))
    return atomic_write_bytes(path, bytes(builder.Output()))


def read_ort_trt_table(path: str | os.PathLike) -> dict[str, float]:
    """{tensor name: dynamic range} of an ONNX Runtime TensorRT EP flatbuffers table."""
    from onnxruntime.quantization.CalTableFlatBuffers import TrtTable

    buf = Path(path).read_bytes()
    table = TrtTable.TrtTable.GetRootAsTrtTable(buf, 0)
    out = {}
    for i in range(table.DictLength()):
        entry = table.Dict(i)
        out[entry.Key().decode("utf-8")] = float(entry.Value().decode("utf-8"))
    return out
