"""The synthetic face set: pictures of one identity differ, the seed picks the identities, folder names sort in
class order for any count, and a picture too small to draw a face is refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgenode.data import discover_images, make_synthetic_faces, synthetic
from edgenode.errors import UsageError


def test_pictures_of_one_identity_all_differ(tmp_path):
    root = make_synthetic_faces(tmp_path, n_classes=1, per_class=4, size=16)
    files = discover_images(root)["Synthetic Person 00"]
    pixels = [np.asarray(Image.open(root / "images" / f)).tobytes() for f in files]
    assert len(set(pixels)) == 4


def test_the_seed_picks_the_identities_not_only_their_poses(tmp_path, monkeypatch):
    """Each identity's fixed traits (skin, face shape, hair, ...) are drawn from the seed and the class."""
    traits = []
    real = synthetic._draw_face
    monkeypatch.setattr(synthetic, "_draw_face", lambda t, rng, canvas: traits.append(t) or real(t, rng, canvas))
    for seed in (4, 5):
        make_synthetic_faces(tmp_path / str(seed), n_classes=2, per_class=1, size=16, seed=seed)
    assert len(traits) == 4 and traits[0] != traits[1]  # two identities of one seed
    assert traits[0] != traits[2] and traits[1] != traits[3]  # class 0 (and 1) of seed 4 vs seed 5
    make_synthetic_faces(tmp_path / "again", n_classes=2, per_class=1, size=16, seed=4)
    assert traits[4:] == traits[:2]


def test_a_hundred_identities_are_numbered_with_two_digits_in_class_order(tmp_path):
    root = make_synthetic_faces(tmp_path, n_classes=100, per_class=1, size=8)
    names = list(discover_images(root))
    assert names == [f"Synthetic Person {i:02d}" for i in range(100)]


@pytest.mark.parametrize("size", [0, 4, 7])
def test_a_size_below_8_pixels_is_refused(tmp_path, size):
    with pytest.raises(UsageError, match=f"size={size} is not a whole number >= 8"):
        make_synthetic_faces(tmp_path, n_classes=1, per_class=1, size=size)
