"""The runtime: every artifact kind behind one predictor, metadata-driven pre-processing, providers, refusals."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgenode.artifacts import read_sidecar, sidecar_path, write_json, write_sidecar
from edgenode.checkpoint import Checkpoint, InputSpec, load_checkpoint, save_checkpoint
from edgenode.data import load_resized, normalize_array
from edgenode.errors import ArtifactError, UsageError
from edgenode.export.metadata import ArtifactMetadata
from edgenode.model import preset_config
from edgenode.ode.solvers import SolverConfig
from edgenode.runtime import ProviderUnavailableError, detect_kind, load_predictor, select_providers
from edgenode.runtime.base import Runner
from edgenode.runtime.providers import install_hint
from edgenode.runtime.tensorrt_runner import engine_mismatches, import_tensorrt
from helpers import one_line

# --- artifacts for the tests --------------------------------------------------------------------------------





def handmade_onnx(ckpt_path: Path, out: Path, steps: int = 2, static_batch: int | None = None) -> Path:
    """An ONNX artifact written by hand (torch.onnx + metadata_props + sidecar), for checkpoints that
    ``export_model`` cannot take (no manifest/data) and graphs it never writes (a fixed batch size)."""
    import warnings

    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build_model().with_solver(SolverConfig("rk4", n_steps=steps)).eval()
    size = ckpt.input_spec.image_size
    path = out / f"handmade-rk4x{steps}-fp32.onnx"
    dynamic = None if static_batch else {"images": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(static_batch or 2, 3, size, size),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    meta = ArtifactMetadata(
        classes=ckpt.classes, input=ckpt.input_spec, model=model.config.to_dict(),
        source_solver=ckpt.model_config.solver.to_dict(), precision="fp32", steps=steps,
        source_checkpoint_sha256=ckpt.sha256, manifest_sha256=ckpt.manifest_sha256,
    )
    proto = onnx.load(str(path))
    for key, value in meta.to_onnx_props().items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))
    write_sidecar(path, meta.to_dict())
    return path


def sample_images(root: Path, n: int) -> list[Path]:
    return sorted(root.glob("images/*/*.png"))[:n]


@pytest.fixture(scope="module")
def trained_ckpt(trained_run) -> Path:
    return Path(trained_run.best_checkpoint)


@pytest.fixture(scope="module")
def fixed_step_ckpt(trained_ckpt, tmp_path_factory) -> Path:
    """The trained weights saved as if trained with RK4 × 4 (a fixed-step checkpoint)."""
    ckpt = load_checkpoint(trained_ckpt)
    ckpt.model_config = preset_config("odenet", len(ckpt.classes), width=ckpt.model_config.width,
                                      solver=SolverConfig("rk4", n_steps=4))
    return save_checkpoint(tmp_path_factory.mktemp("fixed") / "rk4.pt", ckpt)


@pytest.fixture(scope="module")
def exports(shared_exports) -> dict[str, Path]:
    return shared_exports


# --- every kind through one predictor -----------------------------------------------------------------------


def test_every_artifact_kind_runs_through_the_same_predictor(trained_ckpt, fixed_step_ckpt, exports, synthetic_root):
    images = sample_images(synthetic_root, 12)
    predictors = {
        "adaptive": load_predictor(trained_ckpt),
        "fixed": load_predictor(fixed_step_ckpt),
        **{p: load_predictor(path) for p, path in exports.items()},
    }
    x = predictors["fp32"].preprocess(images)
    logits = {name: p.predict_logits(x) for name, p in predictors.items()}
    for name, p in predictors.items():
        meta = p.metadata
        assert meta.classes == predictors["adaptive"].metadata.classes
        assert meta.input == predictors["adaptive"].metadata.input
        assert logits[name].shape == (12, 6) and logits[name].dtype == np.float32
        assert p.last_inference_ms > 0
        preds = p.predict(images[:3], k=2)
        assert [len(pr.top_k) for pr in preds] == [2, 2, 2]
        # predict() ranks the classes by the softmax of the logits predict_logits() gives for the same batch (an
        # adaptive solver's steps depend on the batch, so not a slice of the batch of 12)
        same = p.predict_logits(x[:3])
        top2 = np.argsort(-same, axis=1, kind="stable")[:, :2]  # as the predictor ranks: INT8 logits can tie
        assert [pr.label for pr in preds] == [meta.classes[i] for i in top2[:, 0]]
        assert [[c for c, _ in pr.top_k] for pr in preds] == [[meta.classes[i] for i in row] for row in top2]
        probabilities = np.exp(same - same.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        assert [pr.confidence for pr in preds] == pytest.approx(probabilities.max(1), abs=1e-4)
    assert predictors["adaptive"].metadata.kind == "checkpoint" and predictors["adaptive"].metadata.steps is None
    assert predictors["adaptive"].backend == "torch"
    assert predictors["fixed"].metadata.steps == 4 and predictors["fixed"].metadata.solver.method == "rk4"
    assert {predictors[p].metadata.precision for p in ("fp32", "fp16", "int8")} == {"fp32", "fp16", "int8"}
    assert all(predictors[p].backend == "onnxruntime" and predictors[p].provider == "cpu" for p in ("fp32", "fp16", "int8"))
    assert predictors["int8"].metadata.int8_target == "ort"
    # the unrolled export computes what the fixed-step checkpoint computes; precision costs a bounded error
    np.testing.assert_allclose(logits["fp32"], logits["fixed"], atol=1e-4)
    assert np.abs(logits["fp16"] - logits["fp32"]).max() < 0.05
    assert (logits["int8"].argmax(1) == logits["fp32"].argmax(1)).mean() >= 0.75
    assert (logits["adaptive"].argmax(1) == logits["fp32"].argmax(1)).mean() >= 0.9


def test_reference_solver_override_applies_only_to_checkpoints(trained_ckpt, fixed_step_ckpt, exports, synthetic_root):
    """The override is the solver that runs, not only the one the metadata names: the reference computes the
    checkpoint's weights under it, not under the trained RK4 × 4."""
    tight = SolverConfig("dopri5", rtol=1e-6, atol=1e-6)
    reference = load_predictor(fixed_step_ckpt, reference_solver=tight)
    assert reference.metadata.solver == tight and reference.metadata.source_solver.method == "rk4"
    assert any("replaces the trained rk4" in note for note in reference.notes)
    x = reference.preprocess(sample_images(synthetic_root, 8))
    with torch.inference_mode():
        expected = load_checkpoint(fixed_step_ckpt).build_model().with_solver(tight).eval()(torch.from_numpy(x)).numpy()
    fixed = load_predictor(fixed_step_ckpt)
    logits, trained = reference.predict_logits(x), fixed.predict_logits(x)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)
    # RK4 × 4 is within 1e-4 of the tight solution here (7e-5 measured): different, but only just; the evaluation
    # counts tell the solvers apart by far (86 against 4 × 4 measured)
    assert np.abs(logits - trained).max() > 1e-5
    assert fixed.runner.nfe == 16 and reference.runner.nfe > 2 * 16
    with pytest.raises(UsageError, match="baked in"):
        load_predictor(exports["fp32"], reference_solver=tight)


def test_fixed_batch_graph_is_fed_in_chunks(trained_ckpt, tmp_path, synthetic_root):
    path = handmade_onnx(trained_ckpt, tmp_path, steps=2, static_batch=1)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    predictor = load_predictor(path)
    assert predictor.runner.fixed_batch == 1
    x = predictor.preprocess(sample_images(synthetic_root, 5))
    batched = predictor.predict_logits(x)
    one_by_one = np.concatenate([predictor.predict_logits(x[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(batched, one_by_one)


# --- pre-processing comes from the artifact ------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_input_ckpt(tmp_path_factory) -> Path:
    """A random-weight checkpoint with a 32 px input and an unusual mean/std: nothing like the defaults."""
    torch.manual_seed(0)
    config = preset_config("odenet", 3, width=8, solver=SolverConfig("rk4", n_steps=2))
    from edgenode.model import build_model

    ckpt = Checkpoint(config, ["alice", "bob", "carol"], InputSpec(32, (0.1, 0.7, 0.3), (0.5, 0.2, 0.9)), "m" * 64,
                      build_model(config).state_dict())
    return save_checkpoint(tmp_path_factory.mktemp("odd") / "odd.pt", ckpt)


def test_preprocessing_is_read_from_the_artifact(odd_input_ckpt, tmp_path, synthetic_root):
    onnx_path = handmade_onnx(odd_input_ckpt, tmp_path, steps=2)
    image = sample_images(synthetic_root, 1)[0]  # a 64 px picture: both artifacts must resize it to 32 px themselves
    expected = normalize_array(load_resized(image, 32), (0.1, 0.7, 0.3), (0.5, 0.2, 0.9))
    wrong = normalize_array(load_resized(image, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for path in (odd_input_ckpt, onnx_path):
        predictor = load_predictor(path)
        assert predictor.metadata.input == InputSpec(32, (0.1, 0.7, 0.3), (0.5, 0.2, 0.9))
        assert predictor.metadata.classes == ["alice", "bob", "carol"]
        x = predictor.preprocess([image])
        np.testing.assert_array_equal(x, expected)  # bit-identical to the training pipeline
        prediction = predictor.predict([image], k=3)[0]
        probs = np.exp(predictor.predict_logits(expected).astype(np.float64))
        probs /= probs.sum()
        assert prediction.label == ["alice", "bob", "carol"][int(probs.argmax())]
        assert prediction.confidence == pytest.approx(float(probs.max()), abs=1e-6)
        assert not np.allclose(predictor.predict_logits(wrong), predictor.predict_logits(expected), atol=1e-3)
    # in-memory pictures of any size go through the same resize
    pixels = np.asarray(load_resized(image, 64))
    np.testing.assert_array_equal(load_predictor(onnx_path).preprocess([pixels]), expected)


def test_predict_files_keeps_order_and_reports_bad_files(exports, synthetic_root, tmp_path):
    """A bad file leaves a gap in its batch: every good picture must still get its own answer (pictures of
    different identities, so that a prediction moved to another picture's slot shows)."""
    good = [sorted(folder.glob("*.png"))[i] for i in range(2) for folder in sorted((synthetic_root / "images").iterdir())][:7]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    files = [good[0], empty, *good[1:4], text, *good[4:]]
    predictor = load_predictor(exports["fp32"])
    results = list(predictor.predict_files(files, batch_size=3, k=1, workers=2))
    assert [r.path for r in results] == [str(f) for f in files]
    assert [r.ok for r in results] == [f not in (empty, text) for f in files]
    assert "empty" in results[1].reason and "not an image" in results[5].reason
    direct = predictor.predict(good, k=3)
    assert len({p.index for p in direct}) >= 5, "the pictures must be told apart for this test to mean anything"
    batched = [r for r in predictor.predict_files(files, batch_size=3, k=3, workers=2) if r.ok]
    for got, want in zip(batched, direct, strict=True):
        assert [name for name, _ in got.top_k] == [name for name, _ in want.top_k]
        np.testing.assert_allclose([q for _, q in got.top_k], [q for _, q in want.top_k], atol=1e-5)


def test_softmax_is_stable_for_large_logits():
    from edgenode.runtime.predictor import softmax

    p = softmax(np.array([[1000.0, 0.0], [-1000.0, -1001.0]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0) and p[1, 0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_picture_extensions_are_matched_in_any_case(tmp_path):
    """A camera's folder of `IMG_0001.JPG`: upper-case extensions are pictures too."""
    from edgenode.runtime.preprocess import collect_images

    for name in ("A.JPG", "b.Png", "c.jpeg", "notes.TXT"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in collect_images([tmp_path])] == ["A.JPG", "b.Png", "c.jpeg"]


def test_an_explicit_provider_that_fails_is_refused_through_load_predictor(exports, monkeypatch):
    """`infer --provider cuda` must fail when CUDA cannot start, not run on the CPU under the CUDA label: the
    refusal is tested on the runner; this is that load_predictor asks the runner for it."""
    import onnxruntime

    from edgenode.runtime import onnx_runner

    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnx_runner, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])

    def cpu_only(source, sess_options=None, providers=None, **kwargs):
        first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if first != "CPUExecutionProvider":
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(source, sess_options=sess_options, providers=providers, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", cpu_only)
    with pytest.raises(ProviderUnavailableError):
        load_predictor(exports["fp32"], provider="cuda")
    assert load_predictor(exports["fp32"], provider="auto").runner.provider == "cpu"  # auto takes what starts


# --- refusing what cannot be trusted ------------------------------------------------------------------------


def test_folders_are_searched_through_symlinks_each_real_folder_once(tmp_path):
    """A data set whose identity folders are symlinks (as `train` reads them) is found by `infer` too, and a link
    back to a parent folder does not loop."""
    from edgenode.runtime.preprocess import collect_images

    outside = tmp_path / "outside" / "Some One"
    outside.mkdir(parents=True)
    for name in ("b.jpg", "a.png", "notes.txt", ".hidden.jpg"):
        (outside / name).write_bytes(b"")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "Some One").symlink_to(outside, target_is_directory=True)
    (photos / "Some One again").symlink_to(outside, target_is_directory=True)  # the same real folder: listed once
    (outside / "loop").symlink_to(photos, target_is_directory=True)
    assert collect_images([photos]) == [photos / "Some One" / "a.png", photos / "Some One" / "b.jpg"]


def test_kind_is_detected_from_content_and_mismatches_are_one_line(trained_ckpt, exports, tmp_path):
    assert detect_kind(trained_ckpt) == "checkpoint" and detect_kind(exports["fp32"]) == "onnx"
    cases = {
        "ckpt.onnx": (trained_ckpt.read_bytes(), "named like an ONNX model but is a training checkpoint"),
        "graph.pt": (exports["fp32"].read_bytes(), "named like a training checkpoint but is an ONNX model"),
        "graph.engine": (exports["fp32"].read_bytes(), "named like a TensorRT engine but is an ONNX model"),
        "empty.onnx": (b"", "empty file"),
        "notes.onnx": (b"hello, this is text\n", "text file"),
        "model.onnx.json": (b'{"format": "x"}', "JSON file"),
        "noise.onnx": (bytes(range(200, 256)) * 4, "unrecognised file"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ArtifactError, match=re.escape(expected)) as info:
            load_predictor(path)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_tampered_artifact_is_refused(exports, tmp_path):
    for name in (exports["fp32"].name, exports["fp32"].name + ".json"):
        shutil.copy(exports["fp32"].parent / name, tmp_path / name)
    target = tmp_path / exports["fp32"].name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the weights: still parses, no longer what was exported
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sidecar"):
        load_predictor(target)


def test_metadata_props_and_sidecar_must_agree(exports, tmp_path):
    target = tmp_path / exports["fp32"].name
    shutil.copy(exports["fp32"], target)
    record = read_sidecar(exports["fp32"])
    record["classes"] = list(reversed(record["classes"]))
    record["input"] = {**record["input"], "image_size": 48}
    write_json(sidecar_path(target), record)  # sha256 still right: only the content disagrees
    with pytest.raises(ArtifactError, match="disagree on classes, input"):
        load_predictor(target)


@pytest.mark.parametrize("content", ["null", "[]", "1"])
def test_a_sidecar_that_is_json_but_no_object_is_one_line(exports, tmp_path, content):
    """`null` in the sidecar was an AttributeError traceback from every command that loads the file."""
    target = tmp_path / exports["fp32"].name
    shutil.copy(exports["fp32"], target)
    sidecar_path(target).write_text(content)
    with pytest.raises(ArtifactError, match=r"\.onnx\.json: not a metadata sidecar \(JSON \w+, not an object\)"):
        load_predictor(target)


def test_onnx_without_sidecar_loads_from_its_props_unverified(exports, tmp_path):
    target = tmp_path / exports["fp32"].name
    shutil.copy(exports["fp32"], target)
    predictor = load_predictor(target)
    assert not predictor.metadata.verified and load_predictor(exports["fp32"]).metadata.verified


# --- providers ----------------------------------------------------------------------------------------------

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.mark.parametrize("available, expected", [
    ([TRT, CUDA, CPU], [TRT, CUDA, CPU]),
    ([CPU, CUDA], [CUDA, CPU]),
    (["AzureExecutionProvider", CPU], [CPU]),
])
def test_auto_provider_prefers_tensorrt_then_cuda_then_cpu(available, expected):
    assert select_providers("auto", available) == expected


def test_explicit_provider_is_exact_or_a_clear_error():
    assert select_providers("cuda", [TRT, CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("cpu", [TRT, CUDA, CPU]) == [CPU]
    # TensorRT first, with CUDA under it for the nodes TensorRT rejects (ONNX Runtime's advice), then the CPU
    assert select_providers("tensorrt", [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert select_providers("tensorrt", [TRT, CPU]) == [TRT, CPU]
    with pytest.raises(ProviderUnavailableError, match=r"'cuda'.*not available.*available: cpu") as info:
        select_providers("cuda", ["AzureExecutionProvider", CPU], machine="x86_64")
    assert "pip install onnxruntime-gpu" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ProviderUnavailableError, match="Jetson"):
        select_providers("tensorrt", [CUDA, CPU], machine="aarch64")
    with pytest.raises(UsageError, match="unknown provider 'gpu'"):
        select_providers("gpu", [CPU])
    assert "pypi" in install_hint("cuda", "aarch64").lower() or "jetson" in install_hint("cuda", "aarch64").lower()


def test_tensorrt_gets_its_caches_a_batch_profile_and_the_files_precision_flag_only_before_tensorrt_9(exports, tmp_path, monkeypatch):
    """ONNX Runtime builds TensorRT 9+ networks strongly typed (the file's own types) unless a precision flag is
    passed, which would let TensorRT run the FP16 file's float32 norms in half precision: the flag goes to
    TensorRT 8 alone, whose weakly typed networks need it. The profile spares a rebuild per new batch size, and
    the engine cache is one folder per file and per ONNX Runtime and TensorRT release, which reuse a cached
    engine without checking who built it."""
    import edgenode.runtime.predictor as predictor
    from edgenode.export.onnx_export import INPUT_NAME
    from edgenode.runtime.artifact import onnx_info
    from edgenode.runtime.predictor import ort_providers

    monkeypatch.setenv("EDGENODE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "onnxruntime-tensorrt"
    monkeypatch.setattr(predictor, "onnxruntime_release", lambda: (1, 22))

    def caches(info, tensorrt="10.3.0"):
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(root / f"{info.sha256[:16]}-ort1.22-trt{tensorrt}"),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(root),
                "trt_profile_min_shapes": f"{INPUT_NAME}:1x3x64x64", "trt_profile_opt_shapes": f"{INPUT_NAME}:8x3x64x64",
                "trt_profile_max_shapes": f"{INPUT_NAME}:64x3x64x64"}

    monkeypatch.setattr(predictor, "tensorrt_behind_onnxruntime", lambda: "10.3.0")
    fp16 = onnx_info(exports["fp16"])
    assert fp16.input.image_size == 64
    assert ort_providers(fp16, "auto", [TRT, CUDA, CPU], device="cuda:1") == [
        (TRT, {"device_id": "1", **caches(fp16)}), (CUDA, {"device_id": "1", "use_tf32": "0"}), CPU]
    assert (root / f"{fp16.sha256[:16]}-ort1.22-trt10.3.0").is_dir()
    # CUDA computes float32 as float32, not TF32 (ONNX Runtime's default on Ampere and newer)
    assert ort_providers(fp16, "cuda", [TRT, CUDA, CPU]) == [(CUDA, {"use_tf32": "0"}), CPU]
    monkeypatch.setattr(predictor, "onnxruntime_release", lambda: (1, 16))  # JetPack 5's: each option it lacks is left out
    assert ort_providers(fp16, "auto", [TRT, CUDA, CPU]) == [
        (TRT, {**{k: v for k, v in caches(fp16).items() if k != "trt_timing_cache_path"},
               "trt_engine_cache_path": str(root / f"{fp16.sha256[:16]}-ort1.16-trt10.3.0")}), CUDA, CPU]
    monkeypatch.setattr(predictor, "onnxruntime_release", lambda: (1, 14))
    assert not [k for k in ort_providers(fp16, "tensorrt", [TRT, CPU])[0][1] if k.startswith("trt_profile")]
    monkeypatch.setattr(predictor, "onnxruntime_release", lambda: (1, 22))
    trt_int8 = dataclasses.replace(onnx_info(exports["int8"]), int8_target="tensorrt")
    assert ort_providers(trt_int8, "tensorrt", [TRT, CPU]) == [(TRT, caches(trt_int8)), CPU]
    assert caches(trt_int8) != caches(fp16)

    monkeypatch.setattr(predictor, "tensorrt_behind_onnxruntime", lambda: "8.6.2")  # JetPack 5 and 6.0
    assert ort_providers(fp16, "tensorrt", [TRT, CPU]) == [(TRT, {**caches(fp16, "8.6.2"), "trt_fp16_enable": "True"}), CPU]
    assert ort_providers(trt_int8, "tensorrt", [TRT, CPU]) == [
        (TRT, {**caches(trt_int8, "8.6.2"), "trt_int8_enable": "True"}), CPU]
    fp32 = onnx_info(exports["fp32"])
    assert ort_providers(fp32, "tensorrt", [TRT, CPU])[0][1] == caches(fp32, "8.6.2")


def test_the_tensorrt_behind_onnxruntime_is_the_importable_packages_else_onnxruntimes_release(monkeypatch):
    import types

    from edgenode.runtime.providers import tensorrt_behind_onnxruntime

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.2"))
    assert tensorrt_behind_onnxruntime() == "8.6.2"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable
    for release, major in (("1.17.3", "8"), ("1.18.0", "10"), ("1.22.1", "10")):
        monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(__version__=release))
        assert tensorrt_behind_onnxruntime() == major


def test_onnx_runtimes_int8_file_never_goes_to_tensorrt(exports):
    """uint8 activations with zero points: TensorRT takes symmetric signed Q/DQ only."""
    from edgenode.runtime.artifact import onnx_info
    from edgenode.runtime.predictor import ort_providers

    ort_int8 = onnx_info(exports["int8"])
    assert ort_int8.int8_target == "ort"
    assert [p[0] if isinstance(p, tuple) else p for p in ort_providers(ort_int8, "auto", [TRT, CUDA, CPU])] == [CUDA, CPU]
    with pytest.raises(ProviderUnavailableError) as exc:  # not runnable there: a folder's run skips it
        ort_providers(ort_int8, "tensorrt", [TRT, CUDA, CPU])
    one_line(exc, str(exports["int8"]), "TensorRT cannot run", "--int8-target tensorrt", "--provider cuda|cpu")


def test_onnx_runtimes_fallback_banner_stays_off_stdout(exports, monkeypatch, capsys):
    """A GPU provider that fails to start makes onnxruntime print() a banner; `infer --json` owns stdout."""
    import onnxruntime

    real = onnxruntime.InferenceSession

    def noisy(*args, **kwargs):
        print("EP Error: TensorRT failed. Falling back to ['CPUExecutionProvider'] and retrying.")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", noisy)
    load_predictor(exports["fp32"], provider="cpu").close()
    captured = capsys.readouterr()
    assert captured.out == "" and "Falling back" in captured.err


def test_a_provider_that_fails_to_start_is_dropped_and_the_next_keeps_its_options(exports, monkeypatch):
    """onnxruntime's own fallback retried on CUDA+CPU *without their options* (GPU 0, TF32 on), and switched provider
    inside run() with only a print: here fallback is off, a failing provider is dropped and the next tried as asked."""
    import onnxruntime

    from edgenode.runtime.onnx_runner import OnnxRuntimeRunner

    real, tried = onnxruntime.InferenceSession, []

    def starts_on_cpu_only(source, sess_options=None, providers=None, **kwargs):
        tried.append((list(providers), kwargs.get("enable_fallback")))
        first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if first != CPU:
            raise RuntimeError(f"{first}: cannot start here")
        return real(source, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", starts_on_cpu_only)
    cuda = (CUDA, {"device_id": "1", "use_tf32": "0"})
    runner = OnnxRuntimeRunner(exports["fp32"], [TRT, cuda, CPU])
    assert runner.provider == "cpu" and runner.session._enable_fallback is False  # nor inside run()
    assert tried == [([TRT, cuda, CPU], 0), ([cuda, CPU], 0), ([CPU], 0)]  # options kept; no silent fallback anywhere
    with pytest.raises(ProviderUnavailableError, match=r"provider 'cuda' is installed but failed to start "
                                                       r"\(CUDAExecutionProvider: cannot start here\); the session would run on cpu"):
        OnnxRuntimeRunner(exports["fp32"], [cuda, CPU], explicit=True)

    def falls_back_by_itself(source, sess_options=None, providers=None, **kwargs):  # onnxruntime < 1.23
        tried.append((list(providers), kwargs.get("enable_fallback")))
        return real(source, sess_options=sess_options, providers=[CPU])  # the GPU provider's options lost

    monkeypatch.setattr(onnxruntime, "InferenceSession", falls_back_by_itself)
    tried.clear()
    assert OnnxRuntimeRunner(exports["fp32"], [cuda, CPU]).provider == "cpu" and tried == [([cuda, CPU], 0), ([CPU], 0)]
    with pytest.raises(ProviderUnavailableError, match="onnxruntime started CPUExecutionProvider instead"):
        OnnxRuntimeRunner(exports["fp32"], [cuda, CPU], explicit=True)


def test_a_session_on_tensorrt_is_fed_batches_of_at_most_its_profiles_largest(exports, monkeypatch):
    """ONNX Runtime's TensorRT provider builds its engine for batches 1-64: a batch of 150 goes in three calls
    (64, 64, 22) instead of one outside the profile, which would build the engine again."""
    import onnxruntime

    from edgenode.runtime.onnx_runner import OnnxRuntimeRunner

    real = onnxruntime.InferenceSession

    class OnTensorRT(real):  # the CPU session, reporting TensorRT as its provider, and recording each batch
        batches: list[int] = []

        def get_providers(self):
            return [TRT, CPU]

        def run(self, outputs, feeds, *args):
            OnTensorRT.batches.append(len(next(iter(feeds.values()))))
            return super().run(outputs, feeds, *args)

    monkeypatch.setattr(onnxruntime, "InferenceSession", OnTensorRT)
    runner = OnnxRuntimeRunner(exports["fp32"], [CPU])
    assert runner.provider == "tensorrt" and runner.max_batch == 64
    from edgenode.runtime.artifact import onnx_info

    size = onnx_info(exports["fp32"]).input.image_size
    assert runner.infer(np.zeros((150, 3, size, size), np.float32)).shape[0] == 150
    assert OnTensorRT.batches == [64, 64, 22]


def test_unavailable_provider_through_load_predictor(exports):
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderUnavailableError, match="not available"):
        load_predictor(exports["fp32"], provider="cuda")


# --- TensorRT engines ---------------------------------------------------------------------------------------


def test_missing_tensorrt_is_a_one_line_error(exports, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(ProviderUnavailableError, match="needs the tensorrt Python package"):
        import_tensorrt()
    engine = tmp_path / "model-rk4x4-fp16.engine"
    engine.write_bytes(b"\x00\x01opaque-plan" * 100)
    record = read_sidecar(exports["fp32"])
    meta = ArtifactMetadata.from_dict(record)
    meta_dict = {**meta.to_dict(), "kind": "engine", "extra": {"tensorrt_version": "10.3.0", "gpu_name": "Orin"}}
    write_sidecar(engine, meta_dict)
    with pytest.raises(ProviderUnavailableError, match="tensorrt") as info:
        load_predictor(engine)
    assert str(engine) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError, match="runs only on TensorRT"):
        load_predictor(engine, provider="cpu")
    with pytest.raises(ProviderUnavailableError, match="tensorrt"):  # any case, as every other provider name
        load_predictor(engine, provider="TensorRT")
    with pytest.raises(UsageError, match=r"runs on a CUDA GPU, not on device 'cpu' \(pass a cuda device \(cuda:N\)"):
        load_predictor(engine, device="cpu")
    engine.unlink()
    sidecar_path(engine).unlink()
    engine.write_bytes(b"\x00\x01opaque-plan" * 100)
    with pytest.raises(ArtifactError, match="without its metadata sidecar"):
        load_predictor(engine)


def test_engine_version_and_gpu_mismatch_is_a_pure_check():
    built = {"tensorrt_version": "10.3.0.26", "gpu_name": "NVIDIA Jetson Orin Nano"}
    assert engine_mismatches(built, "10.3.0.30", "NVIDIA Jetson Orin Nano") == []
    problems = engine_mismatches(built, "10.7.0", "NVIDIA GeForce RTX 4090")
    assert problems == ["built with TensorRT 10.3.0.26, this machine has 10.7.0",
                        "built for GPU 'NVIDIA Jetson Orin Nano', this machine has 'NVIDIA GeForce RTX 4090'"]
    assert engine_mismatches({**built, "version_compatible": True, "hardware_compatible": True}, "10.7.0", "RTX") == []
    assert engine_mismatches({}, "10.7.0", "RTX") == []  # nothing recorded, nothing to compare


def test_a_checkpoint_device_must_agree_with_an_explicit_provider():
    """``device`` picks the GPU (or the CPU) under provider auto; under cpu or cuda it must be of that kind."""
    from edgenode.runtime.predictor import _torch_device

    path = Path("model.pt")
    assert _torch_device(path, "auto", None, cuda_available=False) == "cpu"
    assert _torch_device(path, "auto", "cuda:1", cuda_available=True) == "cuda:1"
    assert _torch_device(path, "cuda", "cuda:1", cuda_available=True) == "cuda:1"
    assert _torch_device(path, "cpu", "cpu", cuda_available=True) == "cpu"
    with pytest.raises(UsageError, match=r"model.pt: device 'cuda:1' contradicts provider 'cpu'"):
        _torch_device(path, "cpu", "cuda:1", cuda_available=True)
    with pytest.raises(ProviderUnavailableError, match="torch sees no CUDA device"):
        _torch_device(path, "cuda", "cuda:0", cuda_available=False)
    with pytest.raises(UsageError, match="does not apply to a training checkpoint"):
        _torch_device(path, "tensorrt", "cuda:0", cuda_available=True)


def test_the_torch_runner_computes_in_ieee_float32_on_cuda(monkeypatch):
    """cuDNN's default TF32 (about 1e-3 relative error) would sit in parity's reference; the switch is held off
    for the forward pass and given back after (checked on the flags: this machine has no GPU, so the runner is
    told its device is CUDA and the model records the flags it runs under)."""
    import types

    import torch

    from edgenode.runtime.torch_runner import TorchRunner, ieee_float32

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return x.flatten(1)

    runner = TorchRunner(Recorder())
    runner.device = types.SimpleNamespace(type="cuda")
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        runner._run(np.zeros((1, 3, 2, 2), np.float32))
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [(False, False)]

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with ieee_float32(torch):
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("change, fragment", [
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"format": None}, "not edgenode artifact metadata"),
    ({"steps": None}, "incomplete artifact metadata"),
])
def test_damaged_metadata_names_its_file(shared_exports, tmp_path, change, fragment):
    """In a folder of exports, "unknown precision 'fp8' in artifact metadata" did not say which file was damaged."""
    from edgenode.runtime.artifact import onnx_info

    onnx_path = tmp_path / shared_exports["fp32"].name
    shutil.copy(shared_exports["fp32"], onnx_path)
    record = read_sidecar(shared_exports["fp32"], verify=False)
    record = {k: v for k, v in {**record, **change}.items() if v is not None and k not in ("sha256", "file")}
    write_sidecar(onnx_path, record)
    with pytest.raises(ArtifactError) as exc:
        onnx_info(onnx_path)
    assert str(exc.value).startswith(f"{sidecar_path(onnx_path)}: {fragment}") and "re-export" in str(exc.value)


def test_damaged_metadata_inside_an_onnx_file_names_the_file(shared_exports, tmp_path):
    """Without a sidecar the metadata is read from the ONNX file's properties; its errors name that file too."""
    import json

    from edgenode.runtime.artifact import onnx_info

    proto = onnx.load(str(shared_exports["fp32"]))
    for prop in proto.metadata_props:
        if prop.key == "edgenode_metadata":
            prop.value = json.dumps({**json.loads(prop.value), "precision": "fp8"})
    path = tmp_path / "lonely.onnx"  # no sidecar beside it
    onnx.save(proto, str(path))
    with pytest.raises(ArtifactError) as exc:
        onnx_info(path)
    assert str(exc.value).startswith(f"{path}: unknown precision 'fp8'") and "re-export" in str(exc.value)


def test_the_bytes_given_are_the_bytes_hashed(exports):
    from edgenode.artifacts import read_sidecar as _read_sidecar

    data = bytearray(exports["fp32"].read_bytes())
    data[len(data) // 2] ^= 0x01  # the file on disk is intact; the bytes about to run are not
    with pytest.raises(ArtifactError, match="does not match its sidecar"):
        _read_sidecar(exports["fp32"], data=bytes(data))


def test_find_artifacts_skips_hidden_and_temporary_files(tmp_path):
    from edgenode.runtime.artifact import find_artifacts

    for name in ("b.onnx", ".model.onnx", ".b.onnx.x1y2.tmp", "a.engine", "a.onnx.json"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_artifacts(tmp_path)] == ["a.engine", "b.onnx"]


# --- the runner base: chunks, padding, input dtype, timing ------------------------------------------------------


class _FirstPixels(Runner):
    """A runner whose logits are each row's first two pixels, in float64; records every batch it is handed."""

    backend, provider = "fake", "cpu"

    def __init__(self, fixed_batch=None, max_batch=None, input_dtype=np.float32):
        super().__init__()
        self.fixed_batch, self.max_batch, self.input_dtype = fixed_batch, max_batch, input_dtype
        self.batches: list[tuple[int, np.dtype]] = []

    def _run(self, x):
        self.batches.append((len(x), x.dtype))
        return x.reshape(len(x), -1)[:, :2].astype(np.float64)


def _rows(n: int) -> np.ndarray:
    return np.arange(n * 4, dtype=np.float64).reshape(n, 1, 2, 2) + 1.0


def test_a_fixed_batch_graph_gets_full_batches_and_its_padding_is_cut_off():
    """5 rows for a batch-4 graph: two full batches, the second padded with zeros, and exactly 5 rows of logits."""
    runner = _FirstPixels(fixed_batch=4)
    x = _rows(5)
    out = runner.infer(x)
    assert runner.batches == [(4, np.float32), (4, np.float32)]
    np.testing.assert_array_equal(out, x.reshape(5, -1)[:, :2].astype(np.float32))
    assert out.dtype == np.float32


def test_a_graph_with_a_largest_batch_is_fed_in_chunks_of_at_most_that():
    runner = _FirstPixels(max_batch=4)
    out = runner.infer(_rows(10))
    assert [n for n, _ in runner.batches] == [4, 4, 2] and out.shape == (10, 2)
    runner.batches.clear()
    runner.infer(_rows(3))
    assert [n for n, _ in runner.batches] == [3]


def test_the_runner_feeds_the_graphs_input_dtype_and_returns_float32():
    runner = _FirstPixels(input_dtype=np.float16)
    out = runner.infer(_rows(2).astype(np.float32))
    assert runner.batches == [(2, np.float16)] and out.dtype == np.float32


def test_total_inference_time_adds_up_every_call():
    runner = _FirstPixels()
    runner.infer(_rows(2))
    first = runner.last_inference_ms
    runner.infer(_rows(3))
    assert first > 0 and runner.calls == 2
    assert runner.total_inference_ms == pytest.approx(first + runner.last_inference_ms)


@pytest.mark.parametrize("content, words", [
    (b"\x08\x07\x12\x07pytorch", "an ONNX model"), (b'{"format": "x"}', "a JSON file"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "an image"),
])
def test_a_file_of_another_kind_given_as_a_checkpoint_is_a_path_error(tmp_path, content, words):
    """Named by kind before torch.load could misread it: a wrong argument (exit 2), not a damaged checkpoint."""
    from edgenode.errors import ArtifactPathError

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ArtifactPathError, match=re.escape(f"is {words}, not a training checkpoint")) as info:
        load_checkpoint(path)
    assert info.value.exit_code == 2


def test_file_sizes_are_printed_in_binary_units():
    from edgenode.artifacts import human_size

    assert [human_size(n) for n in (None, 512, 889_651, 3 * 2**20, 5 * 2**30)] == [
        "—", "512 B", "868.8 KiB", "3.0 MiB", "5.0 GiB"]


def test_an_engine_is_refused_in_one_line_on_a_tensorrt_older_than_8_5(tmp_path, monkeypatch):
    """TensorRT 8.4 (JetPack 5.0) has no tensor-name API: the run failed with an AttributeError mid-way."""
    import sys
    import types

    from edgenode.runtime.tensorrt_runner import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.4.3.1"))
    with pytest.raises(ProviderUnavailableError, match=r"model.engine: TensorRT 8.4.3.1 is older than 8.5") as exc:
        TensorRTRunner(tmp_path / "model.engine", {})
    assert "JetPack 5.1 or newer" in exc.value.hint
