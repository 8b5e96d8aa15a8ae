"""examples/whiten_teacher.py: the within-class whitening behind RESULTS.md's "The teacher in a whitened space"."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgenode.distill import unit

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "whiten_teacher.py"
spec = importlib.util.spec_from_file_location(SCRIPT.stem, SCRIPT)
whiten_teacher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(whiten_teacher)


def clusters(seed: int = 0, classes: int = 12, per_class: int = 40):
    """Identities that differ a little in 4 quiet directions, buried under large within-class noise in 4 others;
    ``seed`` draws the pictures, the identities are always the same."""
    centres = np.concatenate([np.random.default_rng(99).normal(0, 0.5, (classes, 4)), np.zeros((classes, 4))], axis=1)
    labels = np.repeat(np.arange(classes), per_class)
    noise = np.random.default_rng(seed).normal(0, 1, (len(labels), 8)) * np.array([0.15] * 4 + [3.0] * 4)
    return centres[labels] + noise + 5.0, labels  # a common offset, as dlib's descriptors share one


def test_unshrunk_whitening_maps_the_within_class_covariance_to_the_identity():
    x, labels = clusters()
    whiten = whiten_teacher.within_class_whitening(x, labels, 12, shrink=0.0)
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(12)])
    deviation = (x - centroids[labels]) @ whiten
    np.testing.assert_allclose(deviation.T @ deviation / len(x), np.eye(8), atol=1e-9)
    np.testing.assert_allclose(whiten, whiten.T)


def test_shrinkage_moves_the_map_towards_a_multiple_of_the_identity():
    x, labels = clusters()
    strong = whiten_teacher.within_class_whitening(x, labels, 12, shrink=1e6)
    scaled = strong / np.trace(strong) * 8
    np.testing.assert_allclose(scaled, np.eye(8), atol=1e-4)


def test_whitening_finds_identities_that_a_noisy_direction_hides_from_the_nearest_class_mean():
    x, labels = clusters(seed=1)
    test_x, test_labels = clusters(seed=2)  # other pictures of the same identities
    found = np.ones(len(test_x), bool)
    plain = whiten_teacher.ncm_accuracy(x, labels, test_x, found, test_labels, 12)
    centre = x.mean(axis=0)
    whiten = whiten_teacher.within_class_whitening(unit(x - centre), labels, 12, shrink=0.3)
    mapped = whiten_teacher.ncm_accuracy(unit(x - centre) @ whiten, labels, unit(test_x - centre) @ whiten, found,
                                         test_labels, 12)
    assert plain < 0.5 and mapped > plain + 0.2


def test_an_image_without_a_descriptor_counts_as_an_error():
    labels = np.repeat(np.arange(12), 40)
    x = np.eye(12)[labels] + np.random.default_rng(0).normal(0, 0.01, (len(labels), 12))  # well apart: all right
    found = np.ones(len(x), bool)
    assert whiten_teacher.ncm_accuracy(x, labels, x, found, labels, 12) == 1.0
    found[:40] = False
    assert whiten_teacher.ncm_accuracy(x, labels, x, found, labels, 12) == pytest.approx(1 - 40 / len(x))


@pytest.mark.parametrize("score, expected", [([0.1, 0.2, 0.8, 0.9], 1.0), ([0.9, 0.8, 0.2, 0.1], 0.0),
                                             ([0.5, 0.5, 0.5, 0.5], 0.5), ([0.1, 0.8, 0.2, 0.9], 0.75)])
def test_roc_auc_is_the_chance_that_a_positive_outranks_a_negative(score, expected):
    positive = np.array([False, False, True, True])
    assert whiten_teacher.roc_auc(positive, np.array(score)) == pytest.approx(expected)
