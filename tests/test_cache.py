"""The decoded-image cache serves only arrays that fit the request, and the scoring loader's checks before it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgenode.checkpoint import InputSpec
from edgenode.data import (
    SplitConfig,
    build_manifest,
    cache_path,
    load_split_arrays,
    make_synthetic_faces,
)
from edgenode.data import cache as cache_module
from edgenode.errors import ArtifactError, UsageError

SMALL = SplitConfig(per_class=10, train=6, val=2, test=2, image_size=32)


@pytest.fixture()
def small(tmp_path, monkeypatch):
    """(root, manifest) of a 2-identity, 32 px data set, with a cache of its own."""
    make_synthetic_faces(tmp_path, n_classes=2, per_class=10, size=16)
    monkeypatch.setenv("EDGENODE_CACHE", str(tmp_path / "cache"))
    return tmp_path, build_manifest(tmp_path, SMALL, progress=False)


def _rewrite(path, **arrays):
    with np.load(path) as archive:
        record = {**dict(archive), **arrays}
    with open(path, "wb") as handle:
        np.savez(handle, **record)


def test_a_cache_file_holding_pictures_of_another_size_is_a_miss(small):
    """A cache file with the right labels and fingerprint but 16 px pictures is not served for a 32 px manifest."""
    root, m = small
    images, _ = load_split_arrays(m, root, "test")
    _rewrite(cache_path(m, root, "test"), images=images[:, :16, :16])
    again, labels = load_split_arrays(m, root, "test")
    assert again.shape == (len(m.files("test")), 32, 32, 3) and np.array_equal(again, images)
    assert labels.tolist() == m.labels("test")


def test_scoring_refuses_a_manifest_of_another_image_size(small):
    root, m = small
    spec = InputSpec(image_size=64, mean=m.mean, std=m.std)
    with pytest.raises(ArtifactError, match="images are 32 px but the model takes 64 px"):
        cache_module.load_scored_split(m, "m.json", root, "test", spec)


def test_scoring_refuses_an_empty_split(small):
    root, m = small
    empty = dataclasses.replace(m, splits={**m.splits, "test": []})
    spec = InputSpec(image_size=32, mean=m.mean, std=m.std)
    with pytest.raises(UsageError, match="the test split of m.json is empty"):
        cache_module.load_scored_split(empty, "m.json", root, "test", spec)
    images, labels = cache_module.load_scored_split(m, "m.json", root, "val", spec)
    assert images.shape == (len(m.files("val")), 32, 32, 3) and labels.tolist() == m.labels("val")
