"""torchrun with 2 processes (gloo, CPU) gives the same model as one process for the same global batch.

Weights are compared through what they compute: AdamW turns float noise in near-zero gradients (e.g. conv
biases in front of GroupNorm, whose true gradient is 0) into ±lr steps that change nothing downstream, so a
raw weight-by-weight comparison would test Adam's sign of noise, not the distributed training.
"""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from edgenode import distributed
from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split
from edgenode.distributed import DistContext
from edgenode.model import build_model

ARGS = ["--arch", "odenet", "--width", "8", "--solver", "rk4", "--steps", "2", "--epochs", "1", "--batch-size", "16",
        "--lr", "3e-3", "--per-class", "24", "--train-per-class", "16", "--val-per-class", "4", "--test-per-class", "4",
        "--no-progress", "--ema-decay", "0.9"]


def run(cmd, env):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


# CosFace's margin at a fixed scale leaves the learned scale out of the labels' loss: with no teacher, DDP must still
# find a gradient for it (it raised "Expected to have finished reduction" on the second step)
FIXED_SCALE_MARGIN = ["--arch", "faceode", "--margin", "0.2", "--margin-scale", "30"]


@pytest.mark.parametrize("extra", [[], FIXED_SCALE_MARGIN], ids=["odenet", "faceode-fixed-scale-margin"])
def test_two_process_ddp_matches_single_process(synthetic_root, tmp_path, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*ARGS, *extra]  # the last --arch wins
    single = tmp_path / "single"
    run([sys.executable, "-m", "edgenode", "train", str(synthetic_root), "--out", str(single), *args], env)
    ddp = tmp_path / "ddp"
    done = run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "edgenode", "train", str(synthetic_root), "--out", str(ddp), *args],
        env,
    )
    assert "2 processes" in done.stderr + done.stdout
    output = done.stderr + done.stdout
    assert output.count("test accuracy (best-by-val") == 1 and output.count("of the weight average") == 1  # rank 0 alone

    expected, actual = load_checkpoint(single / "last.pt"), load_checkpoint(ddp / "last.pt")
    for mine, theirs in zip(expected.history, actual.history):  # global train loss, logged by rank 0
        assert theirs["train_loss"] == pytest.approx(mine["train_loss"], abs=1e-4)
    x, _ = load_split(Manifest.load(single / "manifest.json"), synthetic_root, "val")
    with torch.no_grad():
        trained = expected.build_model()(x)
        torch.testing.assert_close(actual.build_model()(x), trained, rtol=0, atol=2e-3)
        averages = [replace(ckpt, state_dict=ckpt.ema_state_dict).build_model()(x) for ckpt in (expected, actual)]
        torch.testing.assert_close(averages[1], averages[0], rtol=0, atol=2e-3)  # the weight average, kept alike
        assert (averages[0] - trained).abs().max() > 1e-3  # and not the trained weights under another name
        torch.manual_seed(0)
        initial = build_model(expected.model_config).eval()(x)
    assert (trained - initial).abs().max() > 0.05  # the comparison is not between two untrained models


def test_a_run_that_rank_0_refuses_stops_every_process(synthetic_root, tmp_path):
    """Only rank 0 checks --out (and holds its lock): the other ranks wait for it at a barrier. When rank 0 refuses
    the run they must not wait there for the collective's timeout (30 min): torchrun stops them, and the error is
    rank 0's one line, said once."""
    out = tmp_path / "finished"
    out.mkdir()
    (out / "results.json").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "edgenode", "train", str(synthetic_root), "--out", str(out), *ARGS],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert output.count("already holds a training run (results.json)") == 1, output
    assert sorted(p.name for p in out.iterdir()) == ["results.json"], output  # no lock, manifest or checkpoint left


def test_only_rank_0_is_main_and_prints(monkeypatch):
    """Rank 0 alone writes files and prints; ranks 1, 2, 3 of a 4-process run print nothing."""
    printed: list[str] = []
    monkeypatch.setattr(distributed, "console", type("Recording", (), {"print": lambda self, m: printed.append(m)})())
    assert [DistContext(rank=r, world_size=4).is_main for r in range(4)] == [True, False, False, False]
    for rank in range(4):
        DistContext(rank=rank, world_size=4).print(f"from rank {rank}")
    assert printed == ["from rank 0"]
