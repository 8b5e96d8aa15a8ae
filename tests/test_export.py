"""Export of a trained model: ONNX FP32/FP16/INT8 that load and agree, metadata that round-trips, golden
samples, --steps auto, the CLI, and every TensorRT path that can be tested without TensorRT."""

import contextlib
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import FakeTensorRT
from PIL import Image
from typer.testing import CliRunner

from edgenode.artifacts import read_sidecar, sha256_file, sidecar_path
from edgenode.checkpoint import Checkpoint, InputSpec, load_checkpoint, save_checkpoint
from edgenode.cli import app
from edgenode.data import Manifest, load_split
from edgenode.errors import ArtifactError, EdgenodeError, ParityError, UsageError
from edgenode.export import EngineConfig, ExportConfig, export_model
from edgenode.export import onnx_export as ox
from edgenode.export import tensorrt as trt_mod
from edgenode.export.golden import read_golden
from edgenode.export.metadata import ArtifactMetadata
from edgenode.export.steps import SweepCriteria
from edgenode.export.unroll import expected_conv_nodes, unroll
from edgenode.model import ModelConfig, build_model
from edgenode.ode.solvers import SolverConfig

FP16_MIN_AGREEMENT = 0.95  # top-1 agreement with FP32 on the 48 val+test images of the synthetic set
INT8_MIN_AGREEMENT = 0.85


@contextlib.contextmanager
def one_torch_thread():
    """The synthetic model's tensors are tiny: per-op thread start-up costs more than the work, badly so on a
    busy 2-core machine (the solver sweeps run 10-50× slower with 2 threads there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """One full export of the trained dopri5 model: --steps auto, fp32 + fp16 + int8 for both targets."""
    out = tmp_path_factory.mktemp("export")
    with one_torch_thread():
        return export_model(ExportConfig(checkpoint=str(run.best_checkpoint), out=str(out), precisions="fp32,fp16,int8", steps="auto"))


@pytest.fixture(scope="module")
def held_out(run):
    """val + test images of the synthetic set (normalised float32 NCHW) and their labels."""
    from edgenode.data import Manifest

    manifest = Manifest.load(run.run_dir / "manifest.json")
    ckpt = load_checkpoint(run.best_checkpoint)
    parts = [load_split(manifest, ckpt.train_config["data"], split) for split in ("val", "test")]
    return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()


def torch_logits(result, images):
    ckpt = load_checkpoint(result.report["checkpoint"]["path"])
    with torch.no_grad():
        return unroll(ckpt.build_model(), result.method, result.steps)(torch.from_numpy(images)).numpy()


def test_auto_steps_picks_a_small_n_and_writes_the_sweep(exported):
    sweep = exported.report["step_sweep"]
    assert exported.method == "rk4" and exported.steps == sweep["chosen"] <= 8
    assert [row["steps"] for row in sweep["rows"]] == [1, 2, 3, 4, 6, 8, 12, 16]
    chosen = next(row for row in sweep["rows"] if row["steps"] == exported.steps)
    assert chosen["agreement"] >= 0.995
    for name in ("steps_sweep.json", "steps_sweep.md", "steps_sweep.png"):
        assert (exported.out_dir / name).stat().st_size > 0
    assert (exported.out_dir / "export_report.md").read_text().count("model-rk4x") >= 4


def test_fp32_onnx_matches_torch_and_holds_n_explicit_steps(exported, held_out, run):
    path = exported.artifacts["fp32"]
    assert path.name == f"model-rk4x{exported.steps}-fp32.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert ox.onnx_opset(proto) >= 17 and not any(p.data_location for p in proto.graph.initializer)
    assert ox.io_signature(proto) == {"images": ["batch", 3, 64, 64], "logits": ["batch", 6]}
    model = load_checkpoint(run.best_checkpoint).build_model()
    assert ox.op_counts(proto)["Conv"] == expected_conv_nodes(model, "rk4", exported.steps)
    images, _ = held_out
    got = ox.run_onnx(path, images)
    assert np.abs(got - torch_logits(exported, images)).max() <= 1e-4
    assert ox.run_onnx(path, images[:1]).shape == (1, 6), "dynamic batch axis"


@pytest.mark.parametrize("key,threshold", [("fp16", FP16_MIN_AGREEMENT), ("int8-ort", INT8_MIN_AGREEMENT), ("int8-trt", INT8_MIN_AGREEMENT)])
def test_reduced_precision_runs_and_agrees_with_fp32(exported, held_out, key, threshold):
    images, labels = held_out
    fp32 = ox.run_onnx(exported.artifacts["fp32"], images)
    got = ox.run_onnx(exported.artifacts[key], images)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    agree = np.mean(got.argmax(1) == fp32.argmax(1))
    assert agree >= threshold, f"{key}: top-1 agreement with FP32 {agree:.3f} < {threshold}"
    assert exported.report["artifacts"][list(exported.artifacts).index(key)]["checks"]["agreement_with_fp32"] >= threshold


def test_fp16_file_is_half_inside_float32_outside(exported):
    proto = onnx.load(str(exported.artifacts["fp16"]))
    types_ = [i.data_type for i in proto.graph.initializer if i.name.startswith(("stem", "ode", "head"))]
    assert onnx.TensorProto.FLOAT16 in types_
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == float32 for v in (*proto.graph.input, *proto.graph.output))
    norm_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "InstanceNormalization"}
    casts_to_float = {n.output[0] for n in proto.graph.node if n.op_type == "Cast" and n.attribute[0].i == float32}
    assert norm_inputs and norm_inputs <= casts_to_float, "normalisation stays in float32"
    assert exported.artifacts["fp16"].stat().st_size < exported.artifacts["fp32"].stat().st_size


def test_int8_files_hold_the_qdq_each_target_needs(exported):
    ort = exported.report["artifacts"][list(exported.artifacts).index("int8-ort")]["checks"]["qdq"]
    trt = exported.report["artifacts"][list(exported.artifacts).index("int8-trt")]["checks"]["qdq"]
    from edgenode.export.int8 import qdq_summary

    assert qdq_summary(onnx.load(str(exported.artifacts["int8-trt"]))) == trt
    assert ort["quantize_linear"] > 0 and ort["activation_types"] == ["UINT8"] and ort["weight_types"] == ["INT8"]
    assert trt["activation_types"] == ["INT8"] and trt["weight_types"] == ["INT8"]
    assert trt["activation_zero_points_all_zero"] and trt["weight_zero_points_all_zero"], "TensorRT: symmetric"
    # ONNX Runtime: asymmetric uint8 activations, each tensor's zero point where its range puts it (symmetric uint8
    # would fix every one at 128 and spend half the codes on the negative values a GroupNorm/SiLU output lacks)
    from onnx import numpy_helper

    ort_proto = onnx.load(str(exported.artifacts["int8-ort"]))
    inits = {i.name: numpy_helper.to_array(i) for i in ort_proto.graph.initializer}
    zero_points = {int(inits[n.input[2]].item()) for n in ort_proto.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[2] in inits}
    assert zero_points and zero_points != {128}, zero_points
    assert trt["per_channel_weights"] > 0 and ort["per_channel_weights"] > 0
    assert ort["bias_types"] == ["INT32"] and trt["bias_types"] == [], "TensorRT cannot dequantize int32 biases"
    assert set(trt["dequantize_consumers"]) <= {"Conv", "Gemm", "MatMul"}, "no Q/DQ around ops TensorRT cannot fuse"
    int8_meta = exported.metadata["int8-ort"]
    assert int8_meta.precision == "int8" and int8_meta.int8_target == "ort"
    assert exported.metadata["int8-trt"].int8_target == "tensorrt"


def test_an_fp32_file_written_anew_takes_no_calibration_tables_of_the_old_one(run, tmp_path):
    """Re-exporting another checkpoint into a folder without INT8 left the last FP32 file's TensorRT calibration
    tables under the new file's name: nothing (no sidecar) ties a table to its graph."""
    out = tmp_path / "export"
    out.mkdir()
    stale = [out / "model-rk4x1-fp32.calibration.cache", out / "model-rk4x1-fp32.calibration.flatbuffers"]
    for path in stale:
        path.write_text("TRT-100300-EntropyCalibration2\nimages: 3c010a14\n")
    (out / "model-rk4x2-fp32.calibration.cache").write_text("another file's")
    (out / "model-rk4x2-int8-ort.onnx").write_bytes(b"an earlier export's model")
    with one_torch_thread():
        result = export_model(ExportConfig(checkpoint=str(run.best_checkpoint), out=str(out), precisions="fp32", steps=1,
                                           check_ode=False, opset=17))
    assert (out / "model-rk4x1-fp32.onnx").is_file() and not any(path.exists() for path in stale)
    assert (out / "model-rk4x2-fp32.calibration.cache").read_text() == "another file's"
    # a model it did not write is kept, and named: parity, verify and bench of the folder would take it too
    assert (out / "model-rk4x2-int8-ort.onnx").read_bytes() == b"an earlier export's model"
    assert [w for w in result.report["warnings"] if "also holds model-rk4x2-int8-ort.onnx from an earlier export" in w]
    assert not [w for w in result.report["warnings"] if "model-rk4x1-fp32.onnx" in w]


def test_a_calibration_picture_that_no_longer_reads_fails_the_export_before_it_writes(run, synthetic_root, tmp_path):
    """The FP32 files and the calibration record were written, then the export failed, with no report."""
    import shutil

    from edgenode.calibration import select_calibration_set
    from edgenode.data import Manifest

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    config = ExportConfig(checkpoint=str(run.best_checkpoint), out=str(tmp_path / "out"), data=str(data), precisions="fp32,int8",
                          steps=1, check_ode=False, opset=17)
    chosen = select_calibration_set(Manifest.load(run.run_dir / "manifest.json"), config.calibration_per_class, config.calibration_seed)
    (data / "images" / chosen.files[0]).write_bytes(b"")
    with pytest.raises(EdgenodeError, match="empty file"):
        export_model(config)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_metadata_round_trips_through_props_and_sidecar(exported, run, tmp_path):
    source_sha256 = sha256_file(run.best_checkpoint)
    for key, path in exported.artifacts.items():
        props = ox.read_metadata(path)
        # the readable keys any ONNX viewer shows say what the file is, not only the full record
        assert props["precision"] == key.split("-")[0] and props["steps"] == str(exported.steps)
        assert props.get("int8_target") == {"int8-ort": "ort", "int8-trt": "tensorrt"}.get(key)
        assert json.loads(props["solver"]) == {"method": "rk4", "n_steps": exported.steps}  # no tolerance of an unroll
        assert "mirror_average" not in props
        assert props["source_checkpoint_sha256"] == source_sha256 == exported.metadata[key].source_checkpoint_sha256
        from_props = ArtifactMetadata.from_onnx_props(props, str(path))
        record = read_sidecar(path)  # verifies the sha256
        assert record["sha256"] == sha256_file(path) and record["file"] == path.name
        assert ArtifactMetadata.from_dict(record) == from_props == exported.metadata[key]
        assert from_props.steps == exported.steps and from_props.model["solver"]["method"] == "rk4"
        assert from_props.source_solver["method"] == "dopri5"
        assert "classic Runge-Kutta 4" in from_props.extra["method_description"]
        assert from_props.extra["golden"] == path.name + ".golden.npz"
        assert isinstance(from_props.extra["ode_valid"], bool)
    path = exported.artifacts["fp32"]
    tampered = tmp_path / "tampered.onnx"  # not beside the export: the module's tests share its folder
    tampered.write_bytes(path.read_bytes() + b"\0")
    sidecar_path(tampered).write_text(sidecar_path(path).read_text())
    with pytest.raises(ArtifactError, match="sha256"):
        read_sidecar(tampered)


def test_golden_samples_replay(exported):
    for key in ("fp32", "int8-ort"):
        path = exported.artifacts[key]
        golden = read_golden(path.with_name(path.name + ".golden.npz"))
        assert golden["inputs"].shape == (8, 3, 64, 64) and golden["inputs"].dtype == np.float32
        np.testing.assert_allclose(ox.run_onnx(path, golden["inputs"]), golden["logits"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(torch_logits(exported, golden["inputs"]), golden["reference_logits"], atol=1e-5)


def test_calibration_files_are_reproducible_and_name_fp32_tensors(exported, run):
    from edgenode.calibration import CalibrationSet, read_trt_calibration_cache, select_calibration_set
    from edgenode.data import Manifest

    manifest = Manifest.load(run.run_dir / "manifest.json")
    saved = exported.out_dir / "calibration-set.json"
    assert saved.read_text() == select_calibration_set(manifest, per_class=4, seed=0).to_json()
    assert CalibrationSet.load(saved).split == "train"
    stem = exported.artifacts["fp32"].name[: -len(".onnx")]
    header, scales = read_trt_calibration_cache(exported.out_dir / f"{stem}.calibration.cache")
    assert header.endswith("-EntropyCalibration2")
    proto = onnx.load(str(exported.artifacts["fp32"]))
    tensors = {"images"} | {o for n in proto.graph.node for o in n.output}
    assert "images" in scales and set(scales) <= tensors
    assert (exported.out_dir / f"{stem}.calibration.flatbuffers").stat().st_size > 0


def test_the_calibration_caches_tensorrt_version_is_an_option(trained_run, tmp_path, monkeypatch):
    """TensorRT refuses a cache whose header names another version: a JetPack 5 user (TensorRT 8.5) must be able to
    ask for theirs; a malformed one is a one-line error."""
    import edgenode.export as export_package

    seen = []
    monkeypatch.setattr(export_package, "export_model", seen.append)
    args = ["export", str(trained_run.best_checkpoint), "--out", str(tmp_path / "e"), "--precision", "int8"]
    assert CliRunner().invoke(app, [*args, "--tensorrt-cache-version", "8.5.2"]).exit_code == 0
    assert CliRunner().invoke(app, args).exit_code == 0
    assert [c.trt_cache_version for c in seen] == ["8.5.2", "10.3.0"]
    result = CliRunner().invoke(app, [*args, "--tensorrt-cache-version", "ten"])
    assert result.exit_code == 2 and "TensorRT version 'ten' is not like 10.3.0" in result.stderr, result.output


@pytest.mark.parametrize("option", [dict(int8_target="ort"), dict(calibration_method="entropy"), dict(calibration_seed=3),
                                    dict(calibration_per_class=8), dict(trt_cache_version="8.6.1")])
def test_int8_options_without_int8_are_refused_not_ignored(option):
    (name, value), = option.items()
    flag = "--" + name.replace("_", "-").replace("trt-", "tensorrt-")
    with pytest.raises(UsageError, match=f"{flag} {value}: it sets the INT8 files, and --precision fp32,fp16 writes none"):
        ExportConfig(checkpoint="best.pt", out="e", precisions="fp32,fp16", **option)
    ExportConfig(checkpoint="best.pt", out="e", precisions="fp32,int8", **option)  # with INT8 files, taken


def _checkpoint(tmp_path, manifest, arch, solver, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, num_classes=len(manifest.classes), width=8, solver=solver)
    ckpt = Checkpoint(config, list(manifest.classes), InputSpec(manifest.config.image_size, manifest.mean, manifest.std),
                      manifest.sha256, build_model(config).state_dict())
    manifest.save(tmp_path / "manifest.json")
    return save_checkpoint(tmp_path / "best.pt", ckpt)


def test_fixed_euler_checkpoint_unrolls_with_its_own_discretisation(synthetic_manifest, synthetic_root, tmp_path):
    path = _checkpoint(tmp_path, synthetic_manifest, "paper", SolverConfig(method="euler", n_steps=3))
    result = export_model(ExportConfig(checkpoint=str(path), out=str(tmp_path / "out"), data=str(synthetic_root), check_ode=False))
    meta = result.metadata["fp32"]
    assert (result.method, result.steps) == ("euler", 3)
    assert meta.model["solver"] == {**SolverConfig(method="euler", n_steps=3).to_dict()}
    assert result.artifacts["fp32"].name == "model-eulerx3-fp32.onnx"
    assert ox.op_counts(onnx.load(str(result.artifacts["fp32"])))["Conv"] == 3 + 1 * 3 * 2


@pytest.mark.parametrize("arch", ["faceode", "faceode-res"])
def test_faceode_checkpoint_exports_its_cosine_head_to_onnx(arch, synthetic_manifest, synthetic_root, tmp_path):
    import onnxruntime as ort

    path = _checkpoint(tmp_path, synthetic_manifest, arch, SolverConfig(method="rk4", n_steps=2))
    result = export_model(ExportConfig(checkpoint=str(path), out=str(tmp_path / "out"), data=str(synthetic_root), check_ode=False,
                                       precisions=("fp32", "int8")))
    assert (result.method, result.steps) == ("rk4", 2)
    assert {"fp32", "int8-ort", "int8-trt"} <= set(result.artifacts), "the cosine head must survive ORT's INT8 shape inference"
    model = load_checkpoint(path).build_model().eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(result.artifacts["fp32"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_auto_steps_refuses_when_no_n_qualifies(synthetic_manifest, synthetic_root, tmp_path):
    path = _checkpoint(tmp_path, synthetic_manifest, "odenet", SolverConfig(method="dopri5"))
    config = ExportConfig(checkpoint=str(path), out=str(tmp_path / "out"), data=str(synthetic_root), steps="auto",
                          sweep_candidates=(1, 2), sweep_criteria=SweepCriteria(max_logit_diff=1e-12), reference_tol=1e-4)
    with pytest.raises(ParityError, match="no rk4 step count") as info:
        export_model(config)
    assert "--steps N" in info.value.hint
    assert (tmp_path / "out" / "steps_sweep.md").is_file(), "the table that explains the refusal is written"
    assert not list((tmp_path / "out").glob("*.onnx"))


def test_manifest_must_exist_and_be_the_checkpoints_split(synthetic_manifest, synthetic_root, tmp_path):
    import dataclasses

    path = _checkpoint(tmp_path, synthetic_manifest, "odenet", SolverConfig(method="rk4", n_steps=2))
    with pytest.raises(UsageError, match="not found"):
        export_model(ExportConfig(checkpoint=str(path), out=str(tmp_path / "o"), manifest=str(tmp_path / "no-such.json")))
    other = dataclasses.replace(synthetic_manifest, mean=(0.1, 0.2, 0.3)).save(tmp_path / "other.json")
    with pytest.raises(ArtifactError, match="is not the split"):
        export_model(ExportConfig(checkpoint=str(path), out=str(tmp_path / "o"), manifest=str(other), data=str(synthetic_root)))


@pytest.mark.parametrize("overrides,fragment", [
    ({"steps": -3}, "--steps -3 is not a positive whole number"), ({"steps": "many"}, "'many'"), ({"precisions": "fp64"}, "'fp64'"),
    ({"steps": "100000"}, "--steps 100000 is out of range: an unrolled graph holds 1 to 256 steps"),
    ({"sweep_candidates": (4, 1000)}, "--steps 1000 is out of range"),
    ({"format": "tflite"}, "'tflite'"), ({"method": "dopri5"}, "'dopri5'"), ({"opset": 12}, "--opset 12 is not supported"),
    ({"int8_target": "gpu"}, "'gpu'"), ({"calibration_method": "kl"}, "'kl'"),
    ({"calibration_per_class": 0}, "--calibration-per-class 0 must be a positive whole number"),
])
def test_export_config_names_the_bad_value(overrides, fragment):
    with pytest.raises(UsageError) as info:
        ExportConfig(checkpoint="best.pt", out="out", **overrides)
    assert fragment in str(info.value)


def test_engine_needs_the_tensorrt_int8_file():
    with pytest.raises(UsageError, match="int8-target tensorrt or both"):
        ExportConfig(checkpoint="best.pt", out="out", precisions="int8", int8_target="ort", format="engine")


def test_export_config_normalises_cli_strings():
    config = ExportConfig(checkpoint="best.pt", out="out", precisions="int8, fp32,int8", steps="4")
    assert config.precisions == ("fp32", "int8") and config.steps == 4
    assert ExportConfig(checkpoint="best.pt", out="out", steps="AUTO").steps == "auto"


def test_cli_exports_and_rejects_bad_arguments(run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(app, ["export", str(run.best_checkpoint), "--out", str(out), "--steps", "2", "--no-check-ode",
                             "--precision", "int8"])
    assert ok.exit_code == 0, ok.output
    # the banner names every file written: FP32, the reference of the others, always
    assert "evaluations of f: fp32, int8; each file checked against torch" in " ".join(ok.output.split())
    assert (out / "model-rk4x2-fp32.onnx").is_file() and (out / "model-rk4x2-fp32.onnx.json").is_file()
    assert (out / "export_report.json").is_file()
    bad = runner.invoke(app, ["export", str(run.best_checkpoint), "--out", str(out), "--steps", "-3"])
    assert bad.exit_code == 2 and "--steps -3" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["export", str(run.best_checkpoint), "--precision", "fp64"])
    assert bad.exit_code == 2 and "fp64" in bad.output
    # an unrolled graph of 100000 steps would run for many minutes and write nothing: refused at once
    big = tmp_path / "big"
    bad = runner.invoke(app, ["export", str(run.best_checkpoint), "--out", str(big), "--steps", "100000"])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1, bad.output
    assert lines[0].startswith("error: --steps 100000 is out of range: an unrolled graph holds 1 to 256 steps (pass --steps 4")
    assert not big.exists()
    # a checkpoint names the folder it was trained in, perhaps on another machine (the shipped ones: a GPU's /tmp)
    moved = load_checkpoint(run.best_checkpoint)
    moved.train_config = {**moved.train_config, "data": str(tmp_path / "gpu-machine" / "pins64")}
    moved_path = save_checkpoint(tmp_path / "moved" / "best.pt", moved)
    shutil.copy(Path(run.run_dir) / "manifest.json", moved_path.parent / "manifest.json")
    bad = runner.invoke(app, ["export", str(moved_path), "--out", str(tmp_path / "x")])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1, bad.output
    assert f"was trained on {tmp_path / 'gpu-machine' / 'pins64'}, which is not here, and no --data was given" in lines[0]
    assert "pass --data with this machine's copy" in lines[0]
    # export takes a checkpoint, and its hints say so (not infer's "an .onnx file or a TensorRT .engine")
    picture = tmp_path / "face.png"
    Image.new("RGB", (8, 8)).save(picture)
    for given, says in ((tmp_path / "nope.pt", "file not found (pass a .pt checkpoint)"),
                        (tmp_path, "is a folder, not a model file (pass one file: a .pt checkpoint)"),
                        (picture, "is an image, not a model (pass a .pt checkpoint)")):
        bad = runner.invoke(app, ["export", str(given), "--out", str(tmp_path / "x")])
        lines = [line for line in bad.output.splitlines() if line.strip()]
        assert bad.exit_code == 2 and len(lines) == 1 and lines[0].endswith(says), bad.output


def test_cli_without_tensorrt_says_how_to_get_it(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    result = CliRunner().invoke(app, ["export", str(run.best_checkpoint), "--out", str(tmp_path / "e"), "--format", "engine"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT" in lines[0] and "pip install" in lines[0] and "JetPack" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "e").exists(), "nothing is exported before the missing dependency is reported"
    with pytest.raises(trt_mod.TensorRTUnavailable) as info:
        trt_mod.import_tensorrt()
    assert "pip install tensorrt" in str(info.value) and "x86_64" in str(info.value)


# --- TensorRT, around the build that needs a GPU ------------------------------------------------------------


def test_build_plan_uses_strong_typing_and_flags_only_as_fallback():
    assert trt_mod.plan_build("11.0.0", False, "int8") == trt_mod.BuildPlan(True, False, ())
    assert trt_mod.plan_build("10.3.0", True, "fp16").strongly_typed
    old = trt_mod.plan_build("8.6.1", False, "fp16")
    assert not old.strongly_typed and old.builder_flags == ("FP16",) and old.explicit_batch_flag
    assert trt_mod.plan_build("8.6.1", False, "int8").builder_flags == ("INT8",)  # no FP16: float layers stay float
    from edgenode.runtime.providers import ProviderUnavailableError

    with pytest.raises(ProviderUnavailableError, match=r"TensorRT 8.4.3 is older than 8.5, the oldest edgenode builds and runs"):
        trt_mod.plan_build("8.4.3", False, "fp16")  # its engines run through bindings, not the tensor names used here


def test_engine_config_is_validated():
    assert EngineConfig(opt_batch=4, max_batch=16).profile(64) == {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [16, 3, 64, 64]}
    with pytest.raises(UsageError, match="below"):
        EngineConfig(opt_batch=16, max_batch=4)
    with pytest.raises(UsageError, match="--engine-workspace-mib 0 must be a positive whole number"):
        EngineConfig(workspace_mib=0)


def test_build_engine_writes_a_plain_engine_and_a_sidecar(exported, tmp_path, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / exported.artifacts["int8-trt"].name
    onnx_path.write_bytes(exported.artifacts["int8-trt"].read_bytes())
    engine, meta = trt_mod.build_engine(onnx_path, exported.metadata["int8-trt"], EngineConfig(opt_batch=4, max_batch=8))
    assert engine.name == onnx_path.stem + ".engine" and engine.read_bytes() == b"\x00\x01PLAN", "no metadata glued on"
    assert ("network_flags", 1 << 1) in fake.calls and not [c for c in fake.calls if c[0] == "flag"]
    assert ("clear_flag", "tf32") in fake.calls, "TensorRT's default TF32 would round float32 convolutions"
    assert ("parser_flag", "native_instancenorm") in fake.calls, "TensorRT 8.6 would make GroupNorm a plugin"
    assert ("plugins", "") in fake.calls
    assert meta.extra["build"].endswith("TF32 off")
    assert ("profile", "images", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)) in fake.calls
    assert (tmp_path / "tensorrt-timing.cache").read_bytes() == b"timing"
    record = read_sidecar(engine)
    assert ArtifactMetadata.from_dict(record) == meta
    assert meta.kind == "engine" and meta.precision == "int8" and meta.int8_target == "tensorrt"
    assert meta.extra["tensorrt_version"] == "10.3.0" and "compute_capability" in meta.extra
    assert meta.extra["built_from_sha256"] == sha256_file(onnx_path)


def test_tensorrt_8_refuses_a_file_above_opset_17_before_building(exported, tmp_path, monkeypatch):
    """TensorRT 8.6 (JetPack 6.0) reads ONNX up to opset 17: the default opset-18 file is refused by name with the
    export option that makes one it reads, and that file builds (weakly typed, with the INT8 flag)."""
    fake = FakeTensorRT()
    fake.__version__ = "8.6.2"
    del fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # 8.6 has none
    fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / exported.artifacts["int8-trt"].name
    onnx_path.write_bytes(exported.artifacts["int8-trt"].read_bytes())
    with pytest.raises(ArtifactError) as info:  # exit 1: the file is the wrong one for this TensorRT
        trt_mod.build_engine(onnx_path, exported.metadata["int8-trt"])
    assert str(info.value) == (f"{onnx_path}: ONNX opset 18, and TensorRT 8.6.2 reads opsets up to 17 "
                               "(export it again with --opset 17)")
    assert not fake.calls, "refused before TensorRT was asked anything"

    model = onnx.load(str(onnx_path))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 17  # as `export --opset 17` records it (the fake parser reads nothing else)
    onnx.save(model, str(onnx_path))
    engine, meta = trt_mod.build_engine(onnx_path, exported.metadata["int8-trt"])
    assert engine.is_file() and ("flag", "int8") in fake.calls and ("network_flags", 1) in fake.calls
    assert meta.extra["build"].startswith("weakly typed with builder flags INT8")


def test_a_foreign_timing_cache_is_replaced_and_never_costs_the_sidecar(exported, tmp_path, monkeypatch):
    """An export folder copied to a Jetson brings the x86 GPU's timing cache: TensorRT refuses it, the build starts
    from an empty one and the cache file becomes this device's; and the engine gets its sidecar even when
    TensorRT hands back no cache at all (written before the cache)."""
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / exported.artifacts["fp32"].name
    onnx_path.write_bytes(exported.artifacts["fp32"].read_bytes())
    cache = tmp_path / "tensorrt-timing.cache"
    cache.write_bytes(b"another GPU's")
    trt_mod.build_engine(onnx_path, exported.metadata["fp32"])
    assert [c for c in fake.calls if c[0] == "timing_cache"] == [("timing_cache", b"another GPU's"), ("timing_cache", b"")]
    assert cache.read_bytes() == b"timing"  # this device's cache replaced the foreign one

    fake.timing_cache = None  # get_timing_cache() returns None when no cache is set
    cache.write_bytes(b"another GPU's")
    engine, meta = trt_mod.build_engine(onnx_path, exported.metadata["fp32"])
    assert ArtifactMetadata.from_dict(read_sidecar(engine)) == meta
    assert cache.read_bytes() == b"another GPU's"  # nothing to replace it with, and no error


def test_engine_command_builds_from_copied_onnx_files_and_verify_checks_them(exported, run, tmp_path, monkeypatch):
    """On a Jetson: ONNX files exported elsewhere are built into engines there (`edgenode engine FOLDER`), skipping
    ONNX Runtime's INT8 file; `verify` then replays each engine against its source ONNX file's golden file, and
    refuses that golden file once the ONNX file is no longer the one the engine was built from."""
    import shutil

    from edgenode.export.golden import golden_path
    from edgenode.runtime.verify import verify_folder

    folder = tmp_path / "on-device"
    folder.mkdir()
    for key in ("fp32", "fp16", "int8-trt", "int8-ort"):  # what was copied to the device: files, sidecars, golden files
        onnx_file = exported.artifacts[key]
        for path in (onnx_file, sidecar_path(onnx_file), golden_path(onnx_file)):
            shutil.copy(path, folder / path.name)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(app, ["engine", str(folder)])
    assert result.exit_code == 1 and "needs TensorRT" in result.stderr and "JetPack" in result.stderr
    assert not list(folder.glob("*.engine"))
    result = CliRunner().invoke(app, ["engine", str(run.best_checkpoint)])  # the wrong file: said first, exit 2
    assert result.exit_code == 2 and "is a training checkpoint, not an ONNX file" in result.stderr, result.stderr

    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    result = CliRunner().invoke(app, ["engine", str(folder), "--engine-max-batch", "16"])
    assert result.exit_code == 0, result.output
    engines = sorted(p.name for p in folder.glob("*.engine"))
    names = {key: exported.artifacts[key].name for key in ("fp32", "fp16", "int8-trt", "int8-ort")}
    assert engines == sorted(Path(names[k]).stem + ".engine" for k in ("fp32", "fp16", "int8-trt"))
    assert sorted(c[1] for c in fake.calls if c[0] == "parse") == sorted(names[k] for k in ("fp32", "fp16", "int8-trt"))
    int8 = folder / (Path(names["int8-trt"]).stem + ".engine")
    meta = ArtifactMetadata.from_dict(read_sidecar(int8))
    source = exported.metadata["int8-trt"]
    assert meta.kind == "engine" and (meta.classes, meta.input, meta.precision, meta.int8_target, meta.model) == (
        source.classes, source.input, "int8", "tensorrt", source.model)
    assert meta.extra["built_from_sha256"] == sha256_file(folder / names["int8-trt"])
    assert meta.extra["optimization_profile"]["max"][0] == 16

    # metadata that contradicts itself (steps against the solver's) is refused, as infer refuses it
    proto = onnx.load(str(folder / names["fp32"]))
    record = {k: v for k, v in read_sidecar(folder / names["fp32"]).items() if k not in ("sha256", "file")}
    props = ArtifactMetadata.from_dict({**record, "steps": record["steps"] + 1}).to_onnx_props()
    for prop in proto.metadata_props:
        prop.value = props.get(prop.key, prop.value)
    onnx.save(proto, str(tmp_path / "inconsistent.onnx"))  # no sidecar: only the file's own metadata speaks
    result = CliRunner().invoke(app, ["engine", str(tmp_path / "inconsistent.onnx")])
    assert result.exit_code == 1 and f"metadata says {record['steps'] + 1} steps but its solver has" in result.stderr, result.stderr
    assert not (tmp_path / "inconsistent.engine").exists()

    opaque = tmp_path / "other.engine"
    opaque.write_bytes(b"\x00\x01opaque-plan" * 100)
    for bad, fragment in ((folder / names["int8-ort"], "TensorRT cannot build"), (opaque, "is a TensorRT engine, not an ONNX file")):
        result = CliRunner().invoke(app, ["engine", str(bad)])
        assert result.exit_code == 2 and fragment in result.stderr and "\n" not in result.stderr.strip(), result.stderr

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    report = verify_folder(folder)
    by_name = {c.artifact: c for c in report.checks}
    assert by_name[int8.name].status == "skipped" and "TensorRT" in by_name[int8.name].reason, by_name[int8.name]  # no GPU here
    assert not golden_path(int8).exists() and int8.name not in report.without_golden
    on_cpu = {c.artifact: c for c in verify_folder(folder, provider="cpu").checks}
    assert on_cpu[int8.name].status == "skipped" and on_cpu[names["int8-trt"]].status == "passed"

    data = bytearray((folder / names["int8-trt"]).read_bytes())
    data[-1] ^= 1  # the ONNX file changed after the engine was built
    (folder / names["int8-trt"]).write_bytes(bytes(data))
    by_name = {c.artifact: c for c in verify_folder(folder).checks}
    assert by_name[int8.name].status == "failed" and f"built from another {names['int8-trt']}" in by_name[int8.name].reason
    assert f"edgenode engine {folder / names['int8-trt']}" in by_name[int8.name].reason


def test_onnx_runtimes_int8_weights_fit_in_seven_bits(exported):
    """x86 CPUs without VNNI sum u8 × s8 products in pairs in 16 bits (VPMADDUBSW): 2 × 255 × 64 = 32,640 fits,
    2 × 255 × 127 saturates (the shipped Pins model's int8-ort file fell from 98.6 % to 90 % agreement on an
    AVX2-only CPU). TensorRT's file keeps the full int8 range."""
    from onnx import numpy_helper

    for key, largest in (("int8-ort", 64), ("int8-trt", 127)):
        proto = onnx.load(str(exported.artifacts[key]))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        weights = [inits[n.input[0]] for n in proto.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
        assert weights, key
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == largest, key


def test_the_split_travels_with_the_export_and_replaces_only_an_unused_one(synthetic_manifest, tmp_path):
    import dataclasses

    from edgenode.artifacts import write_json
    from edgenode.export.pipeline import copy_manifest

    run, out = tmp_path / "run", tmp_path / "export"
    run.mkdir()
    out.mkdir()
    first = synthetic_manifest.save(run / "first.json")
    second = dataclasses.replace(synthetic_manifest, mean=(0.1, 0.2, 0.3)).save(run / "second.json")
    report: dict = {}
    assert copy_manifest(Manifest.load(first), first, out, report) == [out / "manifest.json"]
    assert (out / "manifest.json").read_bytes() == first.read_bytes() and not report
    assert copy_manifest(Manifest.load(first), first, out, report) == [out / "manifest.json"] and not report  # the same split again
    # an artifact of the first split stays in the folder: its manifest stays too, and the export is warned
    (out / "model-rk4x2-fp32.onnx").write_bytes(b"onnx")
    write_json(out / "model-rk4x2-fp32.onnx.json", {"manifest_sha256": Manifest.load(first).sha256})
    assert copy_manifest(Manifest.load(second), second, out, report) == []
    assert (out / "manifest.json").read_bytes() == first.read_bytes()
    assert report["warnings"] == [f"{out / 'manifest.json'} is the split of model-rk4x2-fp32.onnx and was left as it is: "
                                  f"score this export's files with --manifest {second}"]
    # once no artifact refers to it (re-exported over), the new split replaces it; a damaged sidecar is no reference
    write_json(out / "model-rk4x2-fp32.onnx.json", {"manifest_sha256": Manifest.load(second).sha256})
    (out / "model-rk4x1-fp32.onnx").write_bytes(b"onnx")
    (out / "model-rk4x1-fp32.onnx.json").write_text("{not json")
    assert copy_manifest(Manifest.load(second), second, out, {}) == [out / "manifest.json"]
    assert (out / "manifest.json").read_bytes() == second.read_bytes()


def test_int8_quantises_the_classifier_gemm_for_both_targets(exported):
    for key in ("int8-ort", "int8-trt"):
        qdq = exported.report["artifacts"][list(exported.artifacts).index(key)]["checks"]["qdq"]
        assert qdq["dequantize_consumers"].get("Gemm", 0) > 0, key


def test_fp16_pooling_stays_float32(exported):
    proto = onnx.load(str(exported.artifacts["fp16"]))
    casts_to_float = {n.output[0] for n in proto.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT}
    pooled = {n.input[0] for n in proto.graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool")}
    assert pooled and pooled <= casts_to_float, "pooling stays in float32"


def test_fp16_keeps_global_average_pool_in_float32():
    from onnx import TensorProto, helper

    from edgenode.export.fp16 import convert_to_fp16

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])])
    half = convert_to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    casts_to_float = {n.output[0] for n in half.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT}
    (pool,) = [n for n in half.graph.node if n.op_type == "GlobalAveragePool"]
    assert pool.input[0] in casts_to_float


def _build_engines_with_a_fake(monkeypatch, tmp_path, keys, **config) -> list[str]:
    """The ONNX files ``build_engines`` builds engines from, for an export that wrote ``keys`` (TensorRT faked)."""
    from edgenode.export import pipeline

    built = []

    def fake_build(path, meta, engine_config):
        built.append(path.name)
        engine = path.with_suffix(".engine")
        engine.write_bytes(b"\0")
        return engine, types.SimpleNamespace(precision=meta.precision, int8_target=meta.int8_target,
                                             extra={"tensorrt_version": "10.3.0", "gpu_name": "gpu", "compute_capability": "8.7"})

    monkeypatch.setattr(trt_mod, "build_engine", fake_build)
    artifacts, metadata = {}, {}
    for key in keys:
        artifacts[key] = tmp_path / f"m-{key}.onnx"
        artifacts[key].write_bytes(b"x")
        metadata[key] = types.SimpleNamespace(precision=key.split("-")[0], int8_target=None)
    result = pipeline.ExportResult(tmp_path, "rk4", 2, artifacts=artifacts, metadata=metadata, report={"artifacts": []})
    pipeline.build_engines(ExportConfig(checkpoint="best.pt", out=str(tmp_path), format="engine", **config), result)
    return built


def test_engines_are_built_for_every_file_but_onnx_runtimes_int8(monkeypatch, tmp_path):
    built = _build_engines_with_a_fake(monkeypatch, tmp_path, ("fp32", "int8-ort", "int8-trt"),
                                       precisions="fp32,int8", int8_target="both")
    assert built == ["m-fp32.onnx", "m-int8-trt.onnx"]


def test_engines_are_built_only_for_the_precisions_asked_for(monkeypatch, tmp_path):
    """`--precision int8 --format engine` writes the FP32 file as the reference, but builds no FP32 engine."""
    built = _build_engines_with_a_fake(monkeypatch, tmp_path, ("fp32", "int8-trt"), precisions="int8", int8_target="tensorrt")
    assert built == ["m-int8-trt.onnx"]


def test_opsets_17_to_20_are_accepted_and_others_refused():
    assert [ox.check_opset(opset) for opset in (17, 18, 19, 20)] == [17, 18, 19, 20]
    for bad in (16, 21, True, 18.0):
        with pytest.raises(UsageError, match="use an opset from 17 to 20"):
            ox.check_opset(bad)


def test_golden_samples_are_spread_over_the_whole_validation_split():
    """The validation images are listed identity by identity: the first eight would show one or two identities."""
    from edgenode.export.pipeline import golden_indices

    assert golden_indices(24, 8).tolist() == [0, 3, 7, 10, 13, 16, 20, 23]
    assert golden_indices(5, 8).tolist() == [0, 1, 2, 3, 4]


def test_export_checks_run_on_the_pixels_infer_feeds_the_model(exported, run):
    """The sweep, the agreement checks and the golden files compare the model with itself, so inputs normalised
    wrongly (mean and std swapped, another spread) would pass every one of them: the golden inputs must be the
    validation pictures as `infer` prepares them from their files."""
    from edgenode.runtime import load_predictor

    manifest = Manifest.load(run.run_dir / "manifest.json")
    root = Path(load_checkpoint(run.best_checkpoint).train_config["data"])
    from edgenode.data import images_root

    files = [images_root(root) / f for f in manifest.files("val")]
    prepared = load_predictor(exported.artifacts["fp32"], provider="cpu").preprocess(files)
    golden = read_golden(exported.out_dir / f"{exported.artifacts['fp32'].name}.golden.npz")["inputs"]
    nearest = np.abs(golden[:, None] - prepared[None]).reshape(len(golden), len(prepared), -1).max(-1).min(-1)
    assert len(golden) >= 2 and nearest.max() < 1e-5, nearest


def test_the_calibration_seed_draws_the_calibration_set(run, tmp_path):
    """`--calibration-seed 3` must draw (and record) seed 3's pictures: a seed silently left at 0 would make the
    INT8 file's calibration irreproducible from what its folder says."""
    from edgenode.calibration import select_calibration_set

    manifest = Manifest.load(run.run_dir / "manifest.json")
    with one_torch_thread():
        export_model(ExportConfig(checkpoint=str(run.best_checkpoint), out=str(tmp_path / "out"), precisions="fp32,int8",
                                  int8_target="ort", steps=1, check_ode=False, opset=17, calibration_seed=3))
    saved = (tmp_path / "out" / "calibration-set.json").read_text()
    assert saved == select_calibration_set(manifest, per_class=4, seed=3).to_json()
    assert saved != select_calibration_set(manifest, per_class=4, seed=0).to_json()
