"""Artifact helpers: sizes as reports print them, and which zip archives count as an .npz."""

import zipfile

import numpy as np
import torch

from edgenode.artifacts import describe_file, human_size, npz_members

def test_a_size_of_exactly_one_unit_is_printed_in_that_unit():
    assert [human_size(n) for n in (0, 1023, 1024, 1024**2 - 1, 1024**2, 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "1024.0 KiB", "1.0 MiB", "1.0 GiB"]

def test_only_an_archive_of_arrays_alone_is_an_npz(tmp_path):
    """A zip holding an array beside other files (or torch's checkpoint archive) is not an .npz: naming it one would
    send a user looking for the wrong mistake."""
    np.savez(tmp_path / "arrays.npz", files=np.array(["a"]), embedding=np.zeros((1, 4), np.float32))
    assert npz_members(tmp_path / "arrays.npz") == {"files", "embedding"}
    assert describe_file(tmp_path / "arrays.npz") == "an .npz archive"
    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as archive:
        archive.writestr("embedding.npy", b"\x93NUMPY")
        archive.writestr("notes.txt", b"not an array")
    assert npz_members(tmp_path / "mixed.zip") is None
    torch.save({"weights": torch.zeros(2)}, tmp_path / "model.pt")
    assert npz_members(tmp_path / "model.pt") is None
    assert describe_file(tmp_path / "model.pt") == "a training checkpoint"
    assert npz_members(tmp_path / "missing.npz") is None


def test_canonical_json_is_the_same_bytes_whatever_the_key_order():
    from edgenode.artifacts import canonical_json

    one, other = {"b": 1, "a": {"y": [2, 1], "x": "é"}}, {"a": {"x": "é", "y": [2, 1]}, "b": 1}
    assert canonical_json(one) == canonical_json(other) == '{\n "a": {\n  "x": "é",\n  "y": [\n   2,\n   1\n  ]\n },\n "b": 1\n}\n'


def test_an_artifact_without_its_sidecar_says_to_re_export_it(tmp_path):
    """The artifact is there, its metadata is not: the sidecar is named, not reported as a path the user mistyped."""
    import pytest

    from edgenode.artifacts import read_sidecar, write_sidecar
    from edgenode.errors import ArtifactError, ArtifactPathError

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(ArtifactError, match=r"model.onnx: metadata sidecar model.onnx.json is missing") as exc:
        read_sidecar(tmp_path / "model.onnx")
    assert not isinstance(exc.value, ArtifactPathError) and "re-export" in str(exc.value)
    write_sidecar(tmp_path / "model.onnx", {"kind": "onnx"})
    assert read_sidecar(tmp_path / "model.onnx")["file"] == "model.onnx"


def test_a_json_list_is_named_a_json_file_not_a_damaged_checkpoint(tmp_path):
    """metrics.json is a JSON list: passed where a checkpoint belongs it is named by kind, as a JSON object is."""
    import pytest

    from edgenode.artifacts import content_kind
    from edgenode.checkpoint import load_checkpoint
    from edgenode.errors import ArtifactPathError

    assert [content_kind(head) for head in (b'[{"epoch": 1}]', b'\n  [1, 2]', b'{"a": 1}')] == ["json"] * 3
    (tmp_path / "metrics.json").write_text('[\n {"epoch": 1, "val_accuracy": 0.5}\n]\n')
    with pytest.raises(ArtifactPathError, match=r"metrics.json: is a JSON file, not a training checkpoint"):
        load_checkpoint(tmp_path / "metrics.json")
