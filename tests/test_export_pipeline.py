"""Export's configuration and pipeline: values refused before any file is read, the FP32 gate, the golden files
and what the report records."""

from __future__ import annotations

import numpy as np
import pytest

from edgenode.errors import ParityError, UsageError
from edgenode.export import ExportConfig, export_model
from edgenode.export.golden import golden_path, read_golden


@pytest.mark.parametrize("overrides, fragment", [
    ({"sweep_candidates": ()}, "the step sweep needs at least one candidate N"),
    ({"reference_tol": 0.0}, "tolerances must be positive (reference_tol=0.0"),
    ({"reference_tol": -1e-6}, "tolerances must be positive"),
    ({"max_fp32_abs_error": 0.0}, "tolerances must be positive"),
    ({"calibration_seed": True, "precisions": "fp32,int8"}, "--calibration-seed True must be a whole number"),
])
def test_export_config_refuses_values_that_cannot_work(overrides, fragment):
    with pytest.raises(UsageError) as info:
        ExportConfig(checkpoint="best.pt", out="out", **overrides)
    assert fragment in str(info.value)


def test_the_fp32_gate_defaults_to_1e_4_and_is_recorded():
    """The FP32 ONNX file must match the torch unrolled model to 1e-4 in max |Δlogit| unless told otherwise; the
    bound is part of the recorded config (export_report.json)."""
    config = ExportConfig(checkpoint="best.pt", out="out")
    assert config.max_fp32_abs_error == 1e-4 and config.to_dict()["max_fp32_abs_error"] == 1e-4
    assert config.to_dict()["precisions"] == ["fp32"] and isinstance(config.to_dict()["sweep_candidates"], list)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_an_fp32_file_off_by_more_than_1e_4_is_not_written(trained_run, synthetic_root, tmp_path, monkeypatch):
    """The FP32 ONNX file must reproduce the torch unrolled model to 1e-4 (max |Δlogit|) by default: a file 2e-4
    off fails the export with a ParityError and is never renamed into place."""
    from edgenode.export import onnx_export as ox

    real = ox.run_onnx
    monkeypatch.setattr(ox, "run_onnx", lambda path, x, *a, **k: real(path, x, *a, **k) + np.float32(2e-4))
    out = tmp_path / "out"
    with pytest.raises(ParityError, match=r"FP32 ONNX differs from the torch unrolled model by 2\.\d+e-04"):
        export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(out), precisions="fp32",
                                  steps=1, data=str(synthetic_root), check_ode=False, opset=17))
    assert not list(out.glob("*.onnx"))


def test_golden_files_hold_each_files_own_logits_beside_the_torch_reference(shared_exports):
    """A golden file records the artifact's own logits (what `verify` replays it against) and, apart, the torch
    unrolled model's: for FP16 and INT8 the two differ, and the file's are what its runtime gives."""
    from edgenode.runtime import load_predictor

    for key in ("fp32", "fp16", "int8"):
        golden = read_golden(golden_path(shared_exports[key]))
        with load_predictor(shared_exports[key]) as predictor:
            np.testing.assert_allclose(predictor.predict_logits(golden["inputs"]), golden["logits"], atol=1e-5)
        if key != "fp32":
            assert not np.array_equal(golden["logits"], golden["reference_logits"]), key


def test_the_report_records_the_calibration_draw_as_made(synthetic_manifest, tmp_path):
    """export_report.json's calibration entry names the saved set and how it was drawn: its size, images per class,
    seed, split and method, and the sha256 of calibration-set.json."""
    from edgenode.artifacts import sha256_file
    from edgenode.calibration import select_calibration_set
    from edgenode.export.pipeline import (
        CALIBRATION_MANIFEST,
        ExportResult,
        record_calibration,
    )

    cal = select_calibration_set(synthetic_manifest, 2, 7)
    config = ExportConfig(checkpoint="best.pt", out=str(tmp_path), precisions="fp32,int8", calibration_per_class=2,
                          calibration_seed=7, calibration_method="percentile")
    result = ExportResult(tmp_path, "rk4", 4)
    record = record_calibration(config, cal, result)
    assert result.files == [tmp_path / CALIBRATION_MANIFEST]
    assert record == {"manifest": CALIBRATION_MANIFEST, "images": 12, "per_class": 2, "seed": 7, "split": cal.split,
                      "method": "percentile", "sha256": sha256_file(tmp_path / CALIBRATION_MANIFEST)}


def test_an_fp32_file_not_asked_for_is_marked_as_the_reference_of_the_others(trained_run, synthetic_root, shared_exports,
                                                                              tmp_path):
    """FP32 is always written (the other precisions are checked against it); when --precision did not ask for it,
    the report says why it is there. When asked for, it is an artifact like the others, with no such note."""
    import json

    result = export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(tmp_path / "out"),
                                       precisions="fp16", steps=1, data=str(synthetic_root), check_ode=False, opset=17))
    first = result.report["artifacts"][0]
    assert first["key"] == "fp32" and first["note"] == "reference for the other precisions"
    assert [a["key"] for a in result.report["artifacts"]] == ["fp32", "fp16"]
    asked = json.loads((shared_exports["fp32"].parent / "export_report.json").read_text())["artifacts"][0]
    assert asked["key"] == "fp32" and "note" not in asked


def test_the_report_says_the_deployed_model_is_mirror_averaged(trained_run, synthetic_root, tmp_path):
    """export_report.json's "deployed" entry says whether the graph classifies each picture with its mirror image,
    as the file names do."""
    import json

    out = tmp_path / "out"
    result = export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(out), precisions="fp32",
                                       steps=1, data=str(synthetic_root), check_ode=False, opset=17, mirror_average=True))
    assert result.artifacts["fp32"].name == "model-rk4x1-mirror-fp32.onnx"
    deployed = json.loads((out / "export_report.json").read_text())["deployed"]
    assert deployed["mirror_average"] is True and deployed["steps"] == 1 and deployed["method"] == "rk4"


def test_re_exporting_the_same_split_keeps_its_manifest_without_a_warning(synthetic_manifest, tmp_path):
    """A folder whose manifest.json is already this export's split (a re-export over earlier files of the same run)
    keeps it, lists it among the files written, and warns of nothing: only another split's manifest that
    artifacts still use is left alone with a warning."""
    from edgenode.artifacts import write_json
    from edgenode.data import Manifest
    from edgenode.export.pipeline import copy_manifest

    run, out = tmp_path / "run", tmp_path / "export"
    run.mkdir()
    out.mkdir()
    path = synthetic_manifest.save(run / "manifest.json")
    manifest = Manifest.load(path)
    assert copy_manifest(manifest, path, out, {}) == [out / "manifest.json"]
    (out / "model-rk4x2-fp32.onnx").write_bytes(b"onnx")
    write_json(out / "model-rk4x2-fp32.onnx.json", {"manifest_sha256": manifest.sha256})
    report: dict = {}
    assert copy_manifest(manifest, path, out, report) == [out / "manifest.json"]
    assert report == {} and (out / "manifest.json").read_bytes() == path.read_bytes()


def test_the_report_gives_each_int8_files_size_as_a_fraction_of_fp32(shared_exports):
    """export_report.json: an INT8 file's size_ratio_vs_fp32 is its size over the FP32 file's (not the inverse: on
    this tiny model the Q/DQ nodes outweigh the 8-bit weights), and its note starts with that ratio."""
    import json

    folder = shared_exports["fp32"].parent
    entries = {a["key"]: a for a in json.loads((folder / "export_report.json").read_text())["artifacts"]}
    int8 = entries["int8-ort"]
    ratio = shared_exports["int8"].stat().st_size / shared_exports["fp32"].stat().st_size
    assert int8["size_bytes"] == shared_exports["int8"].stat().st_size and int8["file"] == shared_exports["int8"].name
    assert abs(ratio - 1) > 0.05  # so that the ratio and its inverse tell apart
    assert int8["checks"]["size_ratio_vs_fp32"] == pytest.approx(ratio)
    assert int8["note"].startswith(f"{ratio:.2f}× the FP32 file; ")
