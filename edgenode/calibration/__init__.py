"""Calibration for INT8: a reproducible, stratified image set drawn from the train split, and the tables
(TensorRT calibration cache, ORT TensorRT-EP flatbuffers table) computed from it."""

from edgenode.calibration.reader import ArrayCalibrationReader
from edgenode.calibration.select import CALIBRATION_FORMAT, CalibrationSet, select_calibration_set
from edgenode.calibration.table import (
    CALIBRATION_METHODS,
    compute_tensor_ranges,
    read_trt_calibration_cache,
    write_ort_trt_table,
    write_trt_calibration_cache,
)

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_METHODS",
    "ArrayCalibrationReader",
    "CalibrationSet",
    "compute_tensor_ranges",
    "read_trt_calibration_cache",
    "select_calibration_set",
    "write_ort_trt_table",
    "write_trt_calibration_cache",
]
