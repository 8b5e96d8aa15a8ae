"""Shared fixtures: an isolated image cache and one small synthetic face data set per test session.

Fixtures built once per session are shared by every test module; treat them as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.data import Manifest, SplitConfig, build_manifest, make_synthetic_faces

SYNTHETIC_SPLIT = SplitConfig(per_class=24, train=16, val=4, test=4, image_size=64, seed=0)


def pytest_configure(config) -> None:
    """Ctrl-C tests interrupt child processes, which inherit an ignored SIGINT: a shell without job control starts
    background jobs with it ignored (a suite run as `.ci/run &`), and Python then installs no KeyboardInterrupt. A
    handled signal is reset to its default action in a child, so the suite handles SIGINT as Python does."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def edgenode_cache(tmp_path_factory) -> Path:
    """Point ``EDGENODE_CACHE`` at a session temp folder so no test writes to the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("edgenode-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("EDGENODE_CACHE", str(folder))
    yield folder
    patcher.undo()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A generated data set: ``<root>/images/Synthetic Person 00..05/*.png``, 6 classes x 24 images, 64 px."""
    return make_synthetic_faces(tmp_path_factory.mktemp("synthetic"), n_classes=6, per_class=24, size=64, seed=0)


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_root, edgenode_cache) -> Manifest:
    """The manifest of ``synthetic_root``: per_class=24 split 16/4/4 (its arrays are already cached)."""
    return build_manifest(synthetic_root, SYNTHETIC_SPLIT, progress=False)


@pytest.fixture(scope="session")
def trained_run(synthetic_root, synthetic_manifest, tmp_path_factory):
    """A small default-preset model (odenet, width 16, dopri5) trained on ``synthetic_root``: a TrainResult.

    Precision and agreement tests need a trained model: random weights make FP16/INT8 agreement meaningless.
    Its run folder holds manifest.json, best.pt and last.pt.
    """
    from edgenode.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "run"
    config = TrainConfig(
        data=str(synthetic_root), out=str(out), arch="odenet", width=16, epochs=10, batch_size=8, lr=5e-3,
        split=SYNTHETIC_SPLIT, progress=False, table_every=5,
    )
    return train(config)


@pytest.fixture(scope="session")
def shared_exports(trained_run, synthetic_root, tmp_path_factory) -> dict[str, Path]:
    """FP32/FP16/INT8 (ort) RK4×4 exports of ``trained_run``, made once per session: {"fp32"|"fp16"|"int8": path}.

    Read-only (copy a file before changing it); all three live in one folder with their sidecars and golden
    files. opset 17 takes the TorchScript exporter, about 4× faster here than the dynamo one.
    """
    from edgenode.export import ExportConfig, export_model

    out = tmp_path_factory.getbasetemp() / "shared-exports-rk4x4"
    export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(out), precisions="fp32,fp16,int8",
                              steps=4, data=str(synthetic_root), int8_target="ort", check_ode=False, opset=17))
    return {"fp32": out / "model-rk4x4-fp32.onnx", "fp16": out / "model-rk4x4-fp16.onnx", "int8": out / "model-rk4x4-int8-ort.onnx"}


@pytest.fixture()
def one_thread():
    """One torch thread for the test: its OpenMP threads spin-wait, and on a shared 2-core machine that makes
    tiny convs orders of magnitude slower; per-op thread start-up also costs more than tiny tensors' work."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
