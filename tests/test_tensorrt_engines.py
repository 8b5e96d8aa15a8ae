"""TensorRT engines, built and loaded through fakes (TensorRT cannot be installed here): the builder gets the
workspace, timing cache and precision flags asked for, and the runner refuses an engine of another GPU or release."""

from __future__ import annotations

import contextlib
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
from fake_tensorrt import FakeTensorRT
from typer.testing import CliRunner

from edgenode.artifacts import read_sidecar
from edgenode.cli import app
from edgenode.export import EngineConfig
from edgenode.export import tensorrt as trt_mod
from edgenode.export.metadata import ArtifactMetadata


def _meta(path: Path) -> ArtifactMetadata:
    return ArtifactMetadata.from_dict(read_sidecar(path))


def _copy(path: Path, folder: Path) -> Path:
    target = folder / path.name
    shutil.copy(path, target)
    return target


# --- TensorRT build (fakes) -------------------------------------------------------------------------------------------


def test_engine_build_gets_the_workspace_in_mib_and_the_timing_cache_file_asked_for(shared_exports, tmp_path, monkeypatch):
    """--engine-workspace-mib is MiB (<< 20) and EngineConfig.timing_cache names the cache file read and written."""
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = _copy(shared_exports["fp32"], tmp_path)
    cache = tmp_path / "caches" / "orin.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"mine")
    trt_mod.build_engine(onnx_path, _meta(shared_exports["fp32"]), EngineConfig(workspace_mib=256, timing_cache=str(cache)))
    assert ("workspace", 256 * 2**20) in fake.calls
    assert [c for c in fake.calls if c[0] == "timing_cache"] == [("timing_cache", b"mine")]
    assert cache.read_bytes() == b"timing" and not (tmp_path / trt_mod.TIMING_CACHE_NAME).exists()


def test_a_timing_cache_of_another_device_is_not_forced_on_the_builder(shared_exports, tmp_path, monkeypatch):
    """`set_timing_cache(cache, ignore_mismatch=False)`: with True TensorRT would take another GPU's/version's cache."""
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    config_class = type(fake.Builder(None).create_builder_config())
    original = config_class.set_timing_cache
    seen = []
    monkeypatch.setattr(config_class, "set_timing_cache",
                        lambda self, cache, ignore_mismatch: seen.append(ignore_mismatch) or original(self, cache, ignore_mismatch))
    onnx_path = _copy(shared_exports["fp32"], tmp_path)
    (tmp_path / trt_mod.TIMING_CACHE_NAME).write_bytes(b"another GPU's")
    trt_mod.build_engine(onnx_path, _meta(shared_exports["fp32"]))
    assert seen and not any(seen)


def test_a_weakly_typed_fp32_engine_gets_no_reduced_precision_flag(shared_exports, tmp_path, monkeypatch):
    """TensorRT 8.6 (no strong typing): an FP32 file must not be built with FP16 or INT8 allowed."""
    plan = trt_mod.plan_build("8.6.1", False, "fp32")
    assert not plan.strongly_typed and plan.builder_flags == ()
    fake = FakeTensorRT()
    fake.__version__ = "8.6.2"
    del fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    _, meta = trt_mod.build_engine(_copy(shared_exports["fp32"], tmp_path), _meta(shared_exports["fp32"]))
    assert not [c for c in fake.calls if c[0] == "flag"] and "builder flags none" in meta.extra["build"]


def test_engine_cli_options_reach_the_engine_config(shared_exports, monkeypatch):
    """`edgenode engine --engine-opt-batch/--engine-max-batch/--engine-workspace-mib`."""
    seen = []
    monkeypatch.setattr(trt_mod, "engines_from_onnx", lambda paths, config: seen.append(config) or [])
    result = CliRunner().invoke(app, ["engine", str(shared_exports["fp32"]), "--engine-opt-batch", "4",
                                      "--engine-max-batch", "16", "--engine-workspace-mib", "512"])
    assert result.exit_code == 0, result.output
    assert seen == [EngineConfig(opt_batch=4, max_batch=16, workspace_mib=512)]


def test_export_cli_engine_and_calibration_options_reach_the_export_config(trained_run, tmp_path, monkeypatch):
    """`edgenode export --format engine --engine-*` and `--calibration-method`."""
    import edgenode.export as export_package

    seen = []
    monkeypatch.setattr(export_package, "export_model", seen.append)
    result = CliRunner().invoke(app, ["export", str(trained_run.best_checkpoint), "--out", str(tmp_path / "e"), "--precision", "int8",
                                      "--format", "engine", "--int8-target", "tensorrt", "--engine-opt-batch", "4",
                                      "--engine-max-batch", "16", "--engine-workspace-mib", "512",
                                      "--calibration-method", "percentile"])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.engine == EngineConfig(opt_batch=4, max_batch=16, workspace_mib=512)
    assert config.calibration_method == "percentile"



# --- TensorRT runner (fakes) ------------------------------------------------------------------------------------------


def _fake_trt_runtime(profile_max: int):
    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "logits"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "images" else "out"

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return (-1, 3, 64, 64) if name == "images" else (-1, 6)

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, 64, 64), (8, 3, 64, 64), (profile_max, 3, 64, 64)]

        def create_execution_context(self):
            return object()

    class Logger:
        ERROR = 1

        def __init__(self, level):
            pass

    return types.SimpleNamespace(
        __version__="10.3.0", Logger=Logger, TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
        nptype=lambda dtype: np.float32,
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: Engine()))


def test_a_dynamic_engine_takes_batches_up_to_its_profiles_largest(tmp_path, monkeypatch):
    """`max_batch` is the profile's max (index 2), not its opt (index 1): larger batches are cut into chunks."""
    from edgenode.runtime.tensorrt_runner import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt_runtime(profile_max=32))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 7))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Orin")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda: object())
    runner = TensorRTRunner(tmp_path / "m.engine", {"tensorrt_version": "10.3.0", "compute_capability": "8.7"}, engine_bytes=b"plan")
    assert runner.fixed_batch is None and runner.max_batch == 32


def test_an_engine_of_another_compute_capability_is_refused_even_within_one_major():
    """Kernels are chosen per SM: 8.6 (RTX 30xx) is not 8.7 (Orin)."""
    from edgenode.runtime.tensorrt_runner import engine_mismatches

    built = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}
    assert engine_mismatches(built, "10.3.0", "Orin", "8.7") == [
        "built for GPU 'NVIDIA GeForce RTX 3090' (compute capability 8.6), this machine has 'Orin' (8.7)"]
    assert engine_mismatches({**built, "gpu_name": "Orin"}, "10.3.0", "Orin", "8.7") != []  # same name, other SM
    assert engine_mismatches(built, "10.3.0", "another name", "8.6") == []  # the capability decides, not the name


def test_a_hardware_compatible_engine_still_needs_its_tensorrt_release():
    """Hardware compatibility lifts the GPU check only, never the TensorRT version check."""
    from edgenode.runtime.tensorrt_runner import engine_mismatches

    built = {"tensorrt_version": "10.3.0", "gpu_name": "A", "compute_capability": "8.7", "hardware_compatible": True}
    assert engine_mismatches(built, "10.7.0", "B", "9.0") == ["built with TensorRT 10.3.0, this machine has 10.7.0"]


def test_an_engine_of_another_tensorrt_patch_release_is_refused():
    """Engines are portable within one major.minor.patch (10.3.0.x), not across patch releases."""
    from edgenode.runtime.tensorrt_runner import engine_mismatches

    assert engine_mismatches({"tensorrt_version": "10.3.0.26"}, "10.3.0.30", None) == []
    assert engine_mismatches({"tensorrt_version": "10.3.0.26"}, "10.3.1.5", None) == [
        "built with TensorRT 10.3.0.26, this machine has 10.3.1.5"]
