"""The checkpoint shipped in examples/pretrained: small, self-describing, loads safely and runs on any picture."""

from pathlib import Path

import numpy as np
import pytest

from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest
from edgenode.runtime.predictor import load_predictor

pytestmark = pytest.mark.usefixtures("one_thread")
PRETRAINED = Path(__file__).resolve().parents[1] / "examples" / "pretrained"
CHECKPOINT = PRETRAINED / "faceode-pins.pt"


def test_shipped_checkpoint_is_small_and_names_its_split():
    assert CHECKPOINT.stat().st_size <= 5 * 2**20
    ckpt = load_checkpoint(CHECKPOINT)
    manifest = Manifest.load(PRETRAINED / "manifest.json")
    assert ckpt.manifest_sha256 == manifest.sha256
    assert ckpt.classes == manifest.classes and len(ckpt.classes) == 105
    assert ckpt.model_config.arch == "faceode" and ckpt.model_config.solver.describe() == "rk4 × 2 steps"
    assert (ckpt.input_spec.image_size, ckpt.input_spec.mean) == (64, tuple(manifest.mean))
    assert ckpt.optimizer is None, "optimizer state is training baggage: it would triple the file"


def test_shipped_checkpoint_classifies_a_picture_into_its_identities():
    picture = np.random.default_rng(0).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)  # any size: resized
    with load_predictor(CHECKPOINT) as predictor:
        (prediction,) = predictor.predict([picture], k=5)
        logits = predictor.predict_logits(predictor.preprocess([picture]))
    assert np.isfinite(logits).all() and logits.shape == (1, 105)
    names = [name for name, _ in prediction.top_k]
    assert len(names) == 5 and set(names) <= set(predictor.metadata.classes)
    assert names[0] == predictor.metadata.classes[int(logits.argmax())] == predictor.metadata.classes[prediction.index]
    probabilities = [p for _, p in prediction.top_k]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
