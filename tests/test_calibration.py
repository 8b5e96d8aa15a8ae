"""Calibration set: stratified, train split only, seeded and byte-identically reproducible; TensorRT tables."""

import struct
from collections import Counter

import numpy as np
import pytest

from edgenode.calibration import (
    ArrayCalibrationReader,
    CalibrationSet,
    read_trt_calibration_cache,
    select_calibration_set,
    write_ort_trt_table,
    write_trt_calibration_cache,
)
from edgenode.calibration.table import read_ort_trt_table, trt_version_code
from edgenode.errors import ArtifactError, DataError, UsageError


def test_calibration_set_is_stratified_and_train_only(synthetic_manifest):
    cal = select_calibration_set(synthetic_manifest, per_class=3, seed=0)
    assert len(cal) == 3 * len(synthetic_manifest.classes)
    assert Counter(cal.labels) == {c: 3 for c in range(len(synthetic_manifest.classes))}
    train = dict(synthetic_manifest.splits["train"])
    held_out = {f for split in ("val", "test") for f, _ in synthetic_manifest.splits[split]}
    assert all(train[f] == c for f, c in zip(cal.files, cal.labels)), "every file is a train file with its own label"
    assert not set(cal.files) & held_out
    assert len(set(cal.files)) == len(cal.files)


def test_calibration_set_is_byte_identically_reproducible(synthetic_manifest, tmp_path):
    first = select_calibration_set(synthetic_manifest, per_class=4, seed=7).save(tmp_path / "a.json")
    second = select_calibration_set(synthetic_manifest, per_class=4, seed=7).save(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()
    loaded = CalibrationSet.load(first)
    assert loaded == select_calibration_set(synthetic_manifest, per_class=4, seed=7)
    assert loaded.source_manifest_sha256 == synthetic_manifest.sha256
    other = select_calibration_set(synthetic_manifest, per_class=4, seed=8)
    assert other.files != loaded.files, "the seed matters"


def test_calibration_set_follows_the_documented_per_identity_draw(synthetic_manifest):
    """Per identity, in class order: ``random.Random(f"{seed}:{name}").sample`` of its sorted train files, sorted.
    Seeding by the name keeps one identity's draw unchanged when another is added or removed."""
    import random

    cal = select_calibration_set(synthetic_manifest, per_class=3, seed=5)
    expected = []
    for label, name in enumerate(synthetic_manifest.classes):
        pool = sorted(f for f, c in synthetic_manifest.splits["train"] if c == label)
        expected += sorted(random.Random(f"5:{name}").sample(pool, 3))
    assert list(cal.files) == expected


def test_calibration_labels_that_disagree_with_the_manifest_are_refused(synthetic_manifest, synthetic_root):
    import dataclasses

    cal = select_calibration_set(synthetic_manifest, per_class=2, seed=0)
    tampered = dataclasses.replace(cal, labels=tuple(reversed(cal.labels)))
    assert tampered.labels != cal.labels
    with pytest.raises(ArtifactError, match="calibration labels disagree with the split manifest"):
        tampered.load_images(synthetic_manifest, synthetic_root)


def test_calibration_images_are_the_normalised_train_pixels(synthetic_manifest, synthetic_root):
    from edgenode.data import load_split_arrays, normalize_array

    cal = select_calibration_set(synthetic_manifest, per_class=2, seed=0)
    images = cal.load_images(synthetic_manifest, synthetic_root)
    size = synthetic_manifest.config.image_size
    assert images.shape == (len(cal), 3, size, size) and images.dtype == np.float32
    raw, _ = load_split_arrays(synthetic_manifest, synthetic_root, "train")
    train_files = synthetic_manifest.files("train")
    for i, name in enumerate(cal.files):  # every row, in the order of the calibration set's files
        index = train_files.index(name)
        np.testing.assert_array_equal(images[i], normalize_array(raw[index], synthetic_manifest.mean, synthetic_manifest.std)[0])


def test_calibration_set_refuses_bad_requests(synthetic_manifest, synthetic_root):
    with pytest.raises(DataError, match="fewer than the 17 calibration images"):
        select_calibration_set(synthetic_manifest, per_class=17)
    with pytest.raises(UsageError, match="positive integer"):
        select_calibration_set(synthetic_manifest, per_class=0)
    foreign = CalibrationSet(files=("x.png",), labels=(0,), per_class=1, seed=0, source_manifest_sha256="0" * 64)
    with pytest.raises(ArtifactError, match="drawn from split manifest"):
        foreign.load_images(synthetic_manifest, synthetic_root)


def test_export_refuses_an_impossible_calibration_set_before_writing_anything(trained_run, tmp_path):
    from edgenode.export import ExportConfig, export_model

    out = tmp_path / "e"
    with pytest.raises(DataError, match="fewer than the 1000 calibration images asked for"):
        export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(out), steps=2, method="rk4",
                                  precisions="fp32,int8", calibration_per_class=1000, check_ode=False))
    assert not list(out.glob("*.onnx")), "the FP32 model was written before the refusal"


@pytest.mark.parametrize(("n", "asked", "sizes"), [(6, 4, [3, 3]), (8, 4, [4, 4]), (3, 8, [3]), (22, 8, [11, 11]), (5, 2, [5]), (257, 8, [257])])
def test_reader_batches_evenly_then_stops_and_rewinds(n, asked, sizes):
    """Equal batches (the largest size up to the one asked that divides the count, or the smallest above it where a
    prime count would leave batches of one): ONNX Runtime's histogram calibrators stack the batches and fail on a
    short last one."""
    reader = ArrayCalibrationReader(np.zeros((n, 3, 8, 8), dtype=np.float32), batch_size=asked)
    seen = []
    while (batch := reader.get_next()) is not None:
        seen.append(len(batch["images"]))
    assert seen == sizes and len(reader) == len(sizes)
    reader.rewind()
    assert reader.get_next()["images"].shape == (sizes[0], 3, 8, 8)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrations_run_on_a_count_that_eight_does_not_divide(shared_exports, method, monkeypatch):
    """420 Pins calibration images in batches of 8 ended in a batch of 4, and `--calibration-method percentile`
    died inside ONNX Runtime ("inhomogeneous shape"); 10 images here. Each method gives its own ranges: narrower
    than min-max's where it clips outliers, never wider. (Entropy at ONNX Runtime's own settings, 128 bins searched
    for 128 quantised levels, had one candidate threshold, the whole range: it was min-max under another name.)"""
    from onnx import numpy_helper

    from edgenode.export.int8 import qdq_summary, quantize_int8

    def activation_scales(model):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits}

    import edgenode.calibration.table as table

    # TensorRT's 2048 bins take ONNX Runtime's Python search about 60 s for this graph's 76 tensors; 512 take 4 s
    monkeypatch.setitem(table.CALIBRATOR_OPTIONS, "entropy", {"num_bins": 512, "num_quantized_bins": 128})
    images = np.random.default_rng(0).normal(size=(10, 3, 64, 64)).astype(np.float32)
    proto = quantize_int8(shared_exports["fp32"], "ort", images, method=method)
    summary = qdq_summary(proto)
    assert summary["quantize_linear"] > 0 and summary["activation_types"] == ["UINT8"]
    ours, minmax = activation_scales(proto), activation_scales(quantize_int8(shared_exports["fp32"], "ort", images))
    assert ours.keys() == minmax.keys() and len(ours) > 10
    narrower = [name for name in ours if ours[name] < 0.99 * minmax[name]]
    if method == "percentile":  # 99.999 % of |x|: the input's tail is cut
        assert "images" in narrower
    else:  # a threshold inside each tensor's range: never wider, and often narrower
        assert len(narrower) >= len(ours) // 4, f"{len(narrower)} of {len(ours)} ranges narrower than min-max"
        assert all(ours[name] <= minmax[name] * (1 + 1e-6) for name in ours)


def test_entropy_ranges_are_searched_once_for_both_int8_targets(trained_run, synthetic_root, tmp_path, monkeypatch):
    """Entropy's threshold search takes minutes on a Pins graph (403 s for the TensorRT tables' 525 tensors), and
    `--int8-target both` searched the quantised tensors' ranges once per target, on the same graph: now once, and
    the shared ranges are the ones each target would have found alone."""
    from onnx import numpy_helper

    import edgenode.calibration.table as table
    import edgenode.export.int8 as int8
    from edgenode.export import ExportConfig, export_model

    monkeypatch.setitem(table.CALIBRATOR_OPTIONS, "entropy", {"num_bins": 256, "num_quantized_bins": 128})
    searched = []
    real = int8.compute_tensor_ranges
    monkeypatch.setattr(int8, "compute_tensor_ranges", lambda *a, **k: searched.append(a[2]) or real(*a, **k))
    out = tmp_path / "export"
    export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(out), precisions="int8", steps=2,
                              data=str(synthetic_root), int8_target="both", calibration_method="entropy",
                              check_ode=False, opset=17))
    assert searched == ["entropy"], "one search for both files"

    def activation_scales(model):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits}

    images = np.random.default_rng(1).normal(size=(8, 3, 64, 64)).astype(np.float32)
    fp32 = out / "model-rk4x2-fp32.onnx"
    shared = int8.entropy_ranges(fp32, images)
    alone = activation_scales(int8.quantize_int8(fp32, "tensorrt", images, "entropy"))  # the ranges know no target
    given = activation_scales(int8.quantize_int8(fp32, "tensorrt", images, "entropy", shared))
    assert given == alone and len(given) > 5
    assert all((out / f"model-rk4x2-{tag}.onnx").is_file() for tag in ("int8-ort", "int8-trt"))


def test_tensorrt_calibration_cache_format(tmp_path):
    ranges = {"images": (-2.0, 1.5), "conv_out": (0.0, 127.0), "/odd name:0": (-0.5, 0.25)}
    path = write_trt_calibration_cache(ranges, tmp_path / "model.calibration.cache", trt_version="10.3.0")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert "conv_out: 3f800000" in lines, "scale = 127 / 127 = 1.0 = 0x3f800000"
    header, scales = read_trt_calibration_cache(path)
    assert header == lines[0]
    for name, (lo, hi) in ranges.items():
        want = np.float32(max(abs(lo), abs(hi)) / 127.0)
        assert scales[name] == want
        assert struct.pack(">f", scales[name]).hex() in path.read_text()
    assert trt_version_code("8.6.1") == 8601 and trt_version_code("10.14.1") == 101401


@pytest.mark.parametrize(("body", "message"), [
    ("conv_out: 3f80zz00\n", r"line 2: 'conv_out: 3f80zz00' is not 'tensor: 8-hex-digit scale'"),
    ("images: 3c810204\nconv_out: 3f80\n", r"line 3: 'conv_out: 3f80' is not"),
    ("no separator here\n", r"line 2: 'no separator here' is not"),
])
def test_a_damaged_calibration_cache_is_one_line_naming_the_file_and_line(tmp_path, body, message):
    from edgenode.errors import ArtifactError

    path = tmp_path / "model.calibration.cache"
    path.write_text("TRT-100300-EntropyCalibration2\n" + body)
    with pytest.raises(ArtifactError, match=f"model.calibration.cache, {message}") as caught:
        read_trt_calibration_cache(path)
    assert caught.value.hint.startswith("re-export the INT8 model")
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(ArtifactError, match="not a TensorRT calibration cache"):
        read_trt_calibration_cache(path)


def test_ort_tensorrt_flatbuffers_table_round_trips(tmp_path):
    ranges = {"b": (-3.0, 1.0), "a": (0.0, 0.5)}
    path = write_ort_trt_table(ranges, tmp_path / "model.calibration.flatbuffers")
    assert read_ort_trt_table(path) == {"a": 0.5, "b": 3.0}


def test_qdq_summary_counts_only_per_channel_weight_scales():
    from onnx import TensorProto, helper

    from edgenode.export.int8 import qdq_summary

    inits = [helper.make_tensor("w_q", TensorProto.INT8, [2, 2], [1, 2, 3, 4]),
             helper.make_tensor("s1", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z1", TensorProto.INT8, [], [0]),
             helper.make_tensor("s2", TensorProto.FLOAT, [2], [0.1, 0.2]), helper.make_tensor("z2", TensorProto.INT8, [2], [0, 0])]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s1", "z1"], ["w1"]),
             helper.make_node("DequantizeLinear", ["w_q", "s2", "z2"], ["w2"], axis=1),
             helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    summary = qdq_summary(helper.make_model(graph))
    assert summary["weight_types"] == ["INT8"] and summary["per_channel_weights"] == 1


def test_entropy_histograms_tensorrts_2048_bins_for_128_levels():
    import edgenode.calibration.table as table

    assert table.CALIBRATOR_OPTIONS["entropy"] == {"num_bins": 2048, "num_quantized_bins": 128}
