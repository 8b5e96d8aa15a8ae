"""The split manifest's boundaries (which settings are accepted, which manifests load, what the warnings say) and
how identities are found (class order, what counts as a folder of pictures beside images/, root paths)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from edgenode.data import (
    DataWarning,
    Manifest,
    SplitConfig,
    build_manifest,
    discover_images,
    images_root,
    make_synthetic_faces,
)
from edgenode.data.manifest import (
    MAX_SKIP_WARNINGS,
    SPLITS,
    check_split_option,
    warn_skipped,
)
from edgenode.errors import ArtifactError, ArtifactPathError, DataError, UsageError


def test_split_option_takes_exactly_the_three_split_names():
    """`--split` of parity, bench and evaluate: train, val or test, nothing else (no 'all', no other case)."""
    assert [check_split_option(name) for name in SPLITS] == ["train", "val", "test"]
    for wrong in ("all", "Test", "validation", ""):
        with pytest.raises(UsageError, match="choose one of train, val, test"):
            check_split_option(wrong)


def test_split_counts_may_fill_per_class_but_not_one_more():
    """train+val+test equal to --per-class is a split; one image more than --per-class holds is refused."""
    assert SplitConfig(per_class=10, train=6, val=2, test=2).train == 6
    with pytest.raises(UsageError, match=r"train\+val\+test = 7\+2\+2 = 11 is more than --per-class 10"):
        SplitConfig(per_class=10, train=7, val=2, test=2)


def test_image_size_range_is_8_to_1024_inclusive():
    """The two ends of --image-size are valid sizes; one pixel beyond either is refused."""
    for size in (8, 1024):
        assert SplitConfig(image_size=size).image_size == size
    for size in (7, 1025):
        with pytest.raises(UsageError, match=f"--image-size {size} is out of range"):
            SplitConfig(image_size=size)


def test_a_boolean_seed_is_refused():
    """Python counts True as the integer 1; a seed of True is a mistake, not seed 1."""
    with pytest.raises(UsageError, match="seed=True is not an integer"):
        SplitConfig(seed=True)


@pytest.mark.parametrize("label", ["len", -1])
def test_a_manifest_with_a_label_outside_its_classes_is_refused(tmp_path, synthetic_manifest, label):
    """A label one past the last class (or negative) is a damaged manifest, not an index error later in training."""
    record = json.loads(synthetic_manifest.to_json())
    record["splits"]["train"][0][1] = len(record["classes"]) if label == "len" else label
    (tmp_path / "edited.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ArtifactError, match="damaged split manifest .*class index out of range"):
        Manifest.load(tmp_path / "edited.json")


def test_another_edgenode_file_as_a_manifest_is_a_path_error_and_a_foreign_one_is_not(tmp_path):
    """Another edgenode JSON record (format edgenode-...) given as --manifest is a wrong argument (exit 2); JSON
    with a foreign format is an unusable file (exit 1)."""
    (tmp_path / "synthetic.json").write_text('{"format": "edgenode-demo-data/1"}')
    with pytest.raises(ArtifactPathError, match="not an edgenode split manifest") as info:
        Manifest.load(tmp_path / "synthetic.json")
    assert info.value.exit_code == 2
    (tmp_path / "foreign.json").write_text('{"format": "someone-else/3"}')
    with pytest.raises(ArtifactError, match="not an edgenode split manifest") as info:
        Manifest.load(tmp_path / "foreign.json")
    assert not isinstance(info.value, ArtifactPathError) and info.value.exit_code == 1


def test_a_picture_given_as_a_manifest_is_named_as_a_picture(tmp_path):
    """A PNG passed as --manifest is said to be an image (exit 2), not reported as invalid JSON."""
    Image.new("RGB", (4, 4)).save(tmp_path / "face.png")
    with pytest.raises(ArtifactPathError, match=r"face\.png: is an image, not a split manifest") as info:
        Manifest.load(tmp_path / "face.png")
    assert info.value.exit_code == 2


def test_train_images_without_variation_in_a_channel_are_refused(tmp_path):
    """A channel that is constant over the train split would give a std of 0, and every normalised input a
    division by zero: the split is refused instead of written."""
    rng = np.random.default_rng(0)
    for person in ("Ann", "Bob"):
        (tmp_path / person).mkdir()
        for k in range(3):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            pixels[..., 0] = 0  # no red anywhere
            Image.fromarray(pixels, "RGB").save(tmp_path / person / f"{k}.png")
    with pytest.raises(DataError, match="no variation in some channel"):
        build_manifest(tmp_path, SplitConfig(per_class=3, train=1, val=1, test=1, image_size=8), progress=False)


def test_skip_warnings_count_only_the_files_beyond_the_limit():
    """Up to MAX_SKIP_WARNINGS skipped files: one line each and no "0 more" line; one beyond: "1 more"."""
    files = [(f"f{k}.jpg", "empty file") for k in range(MAX_SKIP_WARNINGS + 1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_skipped(files[:MAX_SKIP_WARNINGS], "in the folder")
    assert len(caught) == MAX_SKIP_WARNINGS and not any("more" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_skipped(files, "in the folder")
    assert len(caught) == MAX_SKIP_WARNINGS + 1 and str(caught[-1].message) == "skipped 1 more in the folder"


def test_five_excluded_identities_are_all_named_with_no_count_of_more(tmp_path):
    """The warning names up to five excluded identities; with exactly five it names them all and adds no
    "and 0 more"."""
    make_synthetic_faces(tmp_path, n_classes=2, per_class=3, size=16)
    for k in range(5):
        (tmp_path / "images" / f"Nobody {k}").mkdir()
    with pytest.warns(DataWarning) as record:
        build_manifest(tmp_path, SplitConfig(per_class=3, train=1, val=1, test=1, image_size=16), progress=False)
    (line,) = [str(w.message) for w in record if "excluded" in str(w.message)]
    assert line.startswith("excluded 5 identities") and line.endswith("'Nobody 4': no image files"), line
    assert "more" not in line


def test_classes_are_ordered_by_identity_name_not_folder_name(tmp_path):
    """A Kaggle ``pins_`` folder sorts by the name it gives: ``pins_Ann`` (Ann) comes before ``Bob``, so class
    indices follow the names a manifest and a model list."""
    for folder in ("Bob", "pins_Ann"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.jpg").write_bytes(b"x")
    found = discover_images(tmp_path)
    assert list(found) == ["Ann", "Bob"]
    assert found["Ann"] == ["pins_Ann/1.jpg"]


def test_empty_and_hidden_folders_beside_images_are_not_taken_for_identities(tmp_path):
    """Only a visible folder holding pictures (and nothing else) beside ``images/`` is named in the warning: an
    empty folder or a hidden one (a thumbnail cache) is not an identity left out."""
    (tmp_path / "images" / "Alice").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "a.jpg").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images_root(tmp_path) == tmp_path / "images"


def test_a_file_named_images_is_not_the_images_folder(tmp_path):
    """``root/images`` is the data set only when it is a folder; a file of that name leaves ``root`` the root."""
    (tmp_path / "images").write_text("a list of pictures, not a folder\n")
    (tmp_path / "Ann").mkdir()
    (tmp_path / "Ann" / "a.jpg").write_bytes(b"x")
    assert images_root(tmp_path) == tmp_path
    assert discover_images(tmp_path) == {"Ann": ["Ann/a.jpg"]}


def test_a_root_under_the_home_folder_may_be_written_with_a_tilde(tmp_path, monkeypatch):
    """``~/faces`` (quoted, so no shell expanded it) is the folder in the home directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "faces" / "Ann").mkdir(parents=True)
    (tmp_path / "faces" / "Ann" / "a.jpg").write_bytes(b"x")
    assert images_root("~/faces") == tmp_path / "faces"
    assert discover_images("~/faces") == {"Ann": ["Ann/a.jpg"]}
