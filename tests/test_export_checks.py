"""Export's own checks and what it writes beside its files: the opset and I/O types written, the metadata a viewer
reads, the step sweep's and the ODE check's rules, the TensorRT calibration tables, and the warnings."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from edgenode.export import ExportConfig
from edgenode.export.metadata import ArtifactMetadata


def _copy(path: Path, folder: Path) -> Path:
    target = folder / path.name
    shutil.copy(path, target)
    return target


# --- ONNX export and metadata -----------------------------------------------------------------------------------------


def test_an_exporter_that_writes_another_opset_is_refused(monkeypatch):
    """`torch_to_onnx` checks the opset the exporter really wrote (TensorRT 8.6 reads up to 17)."""
    import onnx
    from onnx import TensorProto, helper

    from edgenode.errors import ArtifactError
    from edgenode.export import onnx_export as ox

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    monkeypatch.setitem(ox.EXPORTERS, "torchscript", lambda model, sample, opset: onnx.ModelProto.FromString(proto.SerializeToString()))
    with pytest.raises(ArtifactError, match="torchscript: produced opset 16, not 17"):
        ox.torch_to_onnx(torch.nn.Identity(), 8, 17)


def test_check_io_refuses_half_precision_inputs_or_outputs():
    """Every runtime feeds float32 `images` and reads float32 `logits`: check_io checks the types too."""
    from onnx import TensorProto, helper

    from edgenode.errors import ArtifactError
    from edgenode.export import onnx_export as ox

    def proto(in_type, out_type):
        graph = helper.make_graph([], "g", [helper.make_tensor_value_info("images", in_type, ["batch", 3, 64, 64])],
                                  [helper.make_tensor_value_info("logits", out_type, ["batch", 6])])
        return helper.make_model(graph)

    ox.check_io(proto(TensorProto.FLOAT, TensorProto.FLOAT), 64, 6, "ok.onnx")
    for types_ in ((TensorProto.FLOAT16, TensorProto.FLOAT), (TensorProto.FLOAT, TensorProto.FLOAT16)):
        with pytest.raises(ArtifactError, match="expected .* float32"):
            ox.check_io(proto(*types_), 64, 6, "half.onnx")


def test_the_readable_metadata_props_say_what_the_full_record_says(shared_exports):
    """The keys any ONNX viewer (or a deployer that reads no JSON) shows: mean/std, size, classes, hashes."""
    from edgenode.export import onnx_export as ox

    for path in shared_exports.values():
        props = ox.read_metadata(path)
        meta = ArtifactMetadata.from_onnx_props(props)
        assert list(meta.input.mean) != list(meta.input.std)
        assert json.loads(props["mean"]) == list(meta.input.mean) and json.loads(props["std"]) == list(meta.input.std)
        assert props["input_size"] == str(meta.input.image_size) and json.loads(props["classes"]) == meta.classes
        assert props["manifest_sha256"] == meta.manifest_sha256 != meta.source_checkpoint_sha256
        assert props["source_checkpoint_sha256"] == meta.source_checkpoint_sha256



# --- the step sweep and the ODE check ---------------------------------------------------------------------------------


def test_a_step_count_that_reaches_the_agreement_exactly_qualifies(monkeypatch):
    """"agreement >= 99.5 %": 199 of 200 qualifies, and min_agreement=1.0 is met by a perfect N."""
    import edgenode.export.steps as steps

    reference = np.tile(np.eye(4), (50, 1))
    labels = reference.argmax(1)
    flipped = reference.copy()
    flipped[0] = np.roll(flipped[0], 1)  # 199 of 200 agree

    monkeypatch.setattr(steps, "solve_logits", lambda model, solver, images, dtype:
                        ((reference if solver.is_adaptive or solver.n_steps > 1 else flipped), 8))
    images = torch.zeros(200, 3, 8, 8)
    sweep = steps.sweep_steps(None, images, labels, "rk4", candidates=(1, 2),
                              criteria=steps.SweepCriteria(min_agreement=0.995, max_accuracy_gap=0.01))
    assert sweep.rows[0].agreement == 0.995 and sweep.chosen == 1
    perfect = steps.sweep_steps(None, images, labels, "rk4", candidates=(1, 2),
                                criteria=steps.SweepCriteria(min_agreement=1.0, max_accuracy_gap=0.0))
    assert perfect.chosen == 2


def _ladder_of(fixed_logits, adaptive_logits, fixed_diffs=None):
    from edgenode.export import steps as steps_module

    def fake_ladder(model, solvers, images, labels, on_rung=None):
        fixed = solvers[0].method != "dopri5"
        logits = fixed_logits if fixed else adaptive_logits
        diffs = (fixed_diffs if fixed and fixed_diffs else [None, None, None])
        rungs = [steps_module.Rung(s.describe(), 1, steps_module.accuracy(x, labels), d) for s, x, d in zip(solvers, logits, diffs)]
        return rungs, logits

    return fake_ladder


def test_validity_compares_the_fixed_steps_accuracy_with_the_adaptive_solves(monkeypatch):
    """N, 2N, 4N all at 95 % and every dopri5 rung at 100 %: accuracy moves by 5 pt across solvers."""
    from edgenode.export import steps as steps_module

    exact = np.tile(np.eye(4), (5, 1))
    coarse = exact.copy()
    coarse[0] = [0.0, 2.0, 0.0, 0.0]
    labels = exact.argmax(1)
    monkeypatch.setattr(steps_module, "_ladder", _ladder_of([coarse] * 3, [exact] * 3))
    validity = steps_module.check_ode_validity(None, None, labels, "rk4", 2, tolerances=(1e-3, 1e-5, 1e-7),
                                               max_accuracy_spread=0.01, min_deployed_agreement=0.9)
    assert not validity.converged and validity.reasons == ("accuracy moves by 5.0 pt across solvers (allowed 1.0 pt)",)


def test_validity_wants_the_logit_differences_to_contract_by_the_factor(monkeypatch):
    """|Δ| 1.0 then 0.9 shrinks, but by less than the contraction 0.75 asks: not converging."""
    from edgenode.export import steps as steps_module

    exact = np.tile(np.eye(4), (5, 1))
    labels = exact.argmax(1)
    monkeypatch.setattr(steps_module, "_ladder", _ladder_of([exact] * 3, [exact] * 3, fixed_diffs=[None, 1.0, 0.9]))
    validity = steps_module.check_ode_validity(None, None, labels, "rk4", 2, tolerances=(1e-3, 1e-5, 1e-7))
    assert not validity.converged and validity.reasons[0].startswith("logits do not converge over rk4×2, ×4, ×8")



# --- export pipeline --------------------------------------------------------------------------------------------------


def _tables_writer(fp32: Path, **config):
    from edgenode.export.pipeline import write_calibration_tables

    writer = types.SimpleNamespace(result=types.SimpleNamespace(artifacts={"fp32": fp32}, files=[]),
                                   config=ExportConfig(checkpoint="best.pt", out="out", precisions="fp32,int8", **config))
    return write_calibration_tables, writer


def test_the_tensorrt_calibration_tables_take_the_cache_version_and_method_asked_for(shared_exports, tmp_path):
    """`--tensorrt-cache-version 8.6.1` names 8601 in the cache header (TensorRT refuses another), and the
    tables hold the ranges of `--calibration-method`, not min-max's."""
    from edgenode.calibration import read_trt_calibration_cache
    from edgenode.calibration.table import compute_tensor_ranges, dynamic_range
    from edgenode.export.pipeline import calibration_table_paths

    fp32 = _copy(shared_exports["fp32"], tmp_path)
    images = np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32)
    write, writer = _tables_writer(fp32, trt_cache_version="8.6.1", calibration_method="percentile")
    calibration = {}
    write(writer, images, calibration)
    header, scales = read_trt_calibration_cache(calibration_table_paths(fp32)[0])
    assert header == "TRT-8601-EntropyCalibration2" and calibration["tensorrt_cache_version"] == "8.6.1"
    percentile = compute_tensor_ranges(fp32, images, "percentile")
    assert percentile["images"] != compute_tensor_ranges(fp32, images, "minmax")["images"]
    assert scales == {name: np.float32(dynamic_range(*r) / 127.0) for name, r in percentile.items()}


def test_low_agreement_with_fp32_is_warned_in_the_report(trained_run, tmp_path, monkeypatch, one_thread):
    """An FP16 or INT8 file that agrees with FP32 on too few val images is named in the report's warnings."""
    from edgenode.export import export_model, pipeline

    monkeypatch.setattr(pipeline, "agreement", lambda a, b: 0.5)
    result = export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(tmp_path / "e"), precisions="fp16,int8",
                                       int8_target="ort", steps=1, check_ode=False, opset=17))
    warnings = result.report["warnings"]
    assert [w for w in warnings if w.startswith("FP16 agrees with FP32 on only 50.0% of val images")], warnings
    assert [w for w in warnings if w.startswith("INT8 (ort) agrees with FP32 on only 50.0% of val images")], warnings


def test_tensor_ranges_are_each_tensors_lowest_and_highest(shared_exports):
    """Min-max ranges: the input's range is the images' own min and max."""
    from edgenode.calibration.table import compute_tensor_ranges

    images = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    ranges = compute_tensor_ranges(shared_exports["fp32"], images, "minmax")
    assert ranges["images"] == pytest.approx((float(images.min()), float(images.max())))
    assert all(lo <= hi for lo, hi in ranges.values()) and any(lo < 0 < hi for lo, hi in ranges.values())
