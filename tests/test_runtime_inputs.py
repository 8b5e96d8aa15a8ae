"""What the runtime takes in: which files a folder search yields and in what order, what preprocessing refuses,
kinds from names in any case, and an artifact's metadata (its solvers and flags)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgenode.artifacts import write_sidecar
from edgenode.checkpoint import InputSpec
from edgenode.errors import ArtifactError
from edgenode.export.metadata import ArtifactMetadata
from edgenode.model import preset_config
from edgenode.ode.solvers import SolverConfig
from edgenode.runtime import detect_kind
from edgenode.runtime.artifact import engine_info
from edgenode.runtime.preprocess import BatchLoader, collect_images, preprocess_image

SPEC = InputSpec(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_a_missing_path_keeps_its_place_in_the_list(tmp_path):
    """A path that does not exist is not dropped: it stays where it was given, to be reported as a failure."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.jpg").write_bytes(b"")
    missing = tmp_path / "gone.jpg"
    assert collect_images([missing, tmp_path / "folder"]) == [missing, tmp_path / "folder" / "a.jpg"]


def test_folders_and_files_are_walked_in_sorted_order_whatever_the_file_system_lists(tmp_path, monkeypatch):
    """The order of results is the sorted order of folders and files, not the order the file system happens to
    list them in (simulated here by an ``os.walk`` that lists everything backwards)."""
    for rel in ("a/2.jpg", "a/1.jpg", "b/1.jpg", "c/x/1.jpg", "c/0.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    real_walk = os.walk

    def backwards(top, *args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):
            dirnames.sort(reverse=True)  # in place: the walk descends in the order the caller leaves
            filenames.sort(reverse=True)
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", backwards)
    found = [p.relative_to(tmp_path).as_posix() for p in collect_images([tmp_path])]
    assert found == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "c/0.jpg", "c/x/1.jpg"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_a_picture_in_memory_must_be_uint8(dtype):
    """A float array (e.g. already scaled to [0, 1]) would be normalised as if it held 0..255 values: refused."""
    with pytest.raises(ValueError, match="expected a path or a uint8"):
        preprocess_image(np.zeros((16, 16, 3), dtype=dtype), SPEC)
    assert preprocess_image(np.zeros((16, 16, 3), dtype=np.uint8), SPEC).shape == (3, 16, 16)


def test_a_batch_size_below_one_is_refused_in_words():
    """batch_size 0 is a ValueError naming it, not a ZeroDivisionError from sizing the buffers."""
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchLoader([], SPEC, batch_size=0)


def _engine(tmp_path, **model_changes):
    """A stand-in TensorRT plan (opaque bytes) with the sidecar `edgenode export` writes: RK4 × 4 unrolled from
    a model trained with dopri5."""
    model = {**preset_config("odenet", 3, width=8, solver=SolverConfig("rk4", n_steps=4)).to_dict(), **model_changes}
    meta = ArtifactMetadata(classes=["ann", "bob", "cy"], input=InputSpec(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                            model=model, source_solver=SolverConfig("dopri5").to_dict(), precision="fp16", steps=4,
                            source_checkpoint_sha256="a" * 64, manifest_sha256="b" * 64, kind="engine")
    path = tmp_path / "model.engine"
    path.write_bytes(bytes(range(200, 256)) * 4)
    write_sidecar(path, meta.to_dict())
    return path


def test_extensions_name_kinds_in_any_case(tmp_path):
    """`MODEL.ONNX` is named like an ONNX model and `PLAN.ENGINE` like an engine, as their lower-case twins are."""
    checkpoint_as_onnx = tmp_path / "MODEL.ONNX"
    checkpoint_as_onnx.write_bytes(b"PK\x03\x04" + b"\0" * 60)  # a torch.save zip's first bytes
    with pytest.raises(ArtifactError, match="named like an ONNX model but is a training checkpoint"):
        detect_kind(checkpoint_as_onnx)
    plan = tmp_path / "PLAN.ENGINE"
    plan.write_bytes(bytes(range(200, 256)) * 4)
    assert detect_kind(plan) == "engine"


def test_the_trained_solver_is_the_source_solver_not_the_unrolled_one(tmp_path):
    """An export computes its unrolled fixed-step solver; the solver the model was trained with comes from the
    metadata's source_solver."""
    info = engine_info(_engine(tmp_path))
    assert info.solver == SolverConfig("rk4", n_steps=4) and info.steps == 4
    assert info.source_solver == SolverConfig("dopri5")


def test_mirror_average_in_metadata_must_be_true_or_false(tmp_path):
    """A hand-edited "mirror_average": "yes" would switch mirroring on by truthiness: refused in one line."""
    with pytest.raises(ArtifactError, match="mirror_average = 'yes', not true or false"):
        engine_info(_engine(tmp_path, mirror_average="yes"))
    assert engine_info(_engine(tmp_path, mirror_average=True)).mirror_average is True
