"""The weight average of --ema-decay: its update rule, and that it watches training without changing it."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from edgenode.checkpoint import load_checkpoint, save_checkpoint
from edgenode.data import Manifest, load_split
from edgenode.ema import WeightAverage
from edgenode.errors import UsageError
from edgenode.model import build_model
from edgenode.train import TrainConfig, train
from test_train import small_config


def test_the_average_follows_its_update_rule_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for updates in range(30):  # the ramp (1 + t) / (10 + t) passes 0.9 at t = 80: every update here is on it
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
        model(torch.randn(8, 3))  # moves the BatchNorm statistics and its integer step counter
        decay = average.decay_at(updates)
        assert decay == pytest.approx(min(0.9, (1 + updates) / (10 + updates)))
        average.update(updates)
        for name, value in model.state_dict().items():
            expected[name] = decay * expected[name] + (1 - decay) * value if value.is_floating_point() else value.clone()
    for name, value in average.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=name)
    assert int(average.state_dict()["1.num_batches_tracked"]) == 30
    assert not torch.allclose(average.state_dict()["0.weight"], model.state_dict()["0.weight"])
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    assert average.decay_at(10_000) == 0.9


@pytest.mark.parametrize("decay", [1.0, -0.1, math.nan])
def test_ema_decay_must_be_a_fraction(decay):
    with pytest.raises(UsageError, match="--ema-decay must be in"):
        TrainConfig(data="d", ema_decay=decay)


def test_the_average_is_scored_beside_the_same_training(synthetic_root, tmp_path):
    """Training with an average ends with the very weights and figures of training without one, bit for bit; the
    average has its own val column, best-ema.pt and test figure."""
    config = dict(schedule="cosine", warmup_epochs=1, epochs=3)
    plain = train(small_config(synthetic_root, tmp_path / "plain", **config))
    watched = train(small_config(synthetic_root, tmp_path / "ema", ema_decay=0.9, **config))
    for row_plain, row_watched in zip(plain.history, watched.history, strict=True):
        assert {k: v for k, v in row_watched.items() if not k.endswith("_ema")} == {**row_plain, "seconds": row_watched["seconds"]}
        assert 0 <= row_watched["val_accuracy_ema"] <= 1 and math.isfinite(row_watched["val_loss_ema"])
    last_plain, last_watched = load_checkpoint(plain.last_checkpoint), load_checkpoint(watched.last_checkpoint)
    for name, value in last_plain.state_dict.items():
        torch.testing.assert_close(last_watched.state_dict[name], value, rtol=0, atol=0, msg=name)
    assert last_plain.ema_state_dict is None and last_watched.ema_state_dict.keys() == last_plain.state_dict.keys()
    assert load_checkpoint(watched.best_checkpoint).ema_state_dict is None  # best.pt stays the size it was

    # the average moved with training: a BatchNorm step counter is copied at each update, the weights averaged
    counters = [name for name in last_plain.state_dict if name.endswith("num_batches_tracked")]
    assert counters and all(int(last_watched.ema_state_dict[n]) == int(last_plain.state_dict[n]) > 0 for n in counters)
    torch.manual_seed(0)  # the run's seed: its initial weights
    initial = build_model(last_plain.model_config).state_dict()
    lagging = [n for n, v in last_watched.state_dict.items() if v.is_floating_point()
               and not torch.equal(v, last_watched.ema_state_dict[n]) and not torch.equal(initial[n], last_watched.ema_state_dict[n])]
    assert lagging, "the average should lie between the initial and the trained weights, equal to neither"

    average = load_checkpoint(tmp_path / "ema" / "best-ema.pt")
    best_epoch = average.metrics["best_epoch"]
    assert average.optimizer is None and average.metrics["weights"].startswith("moving average, decay 0.9 ")
    assert average.metrics["val_accuracy"] == max(r["val_accuracy_ema"] for r in watched.history)
    assert watched.history[best_epoch - 1]["val_accuracy_ema"] == average.metrics["val_accuracy"] and average.epoch == best_epoch
    x, y = load_split(Manifest.load(tmp_path / "ema" / "manifest.json"), synthetic_root, "val")
    with torch.no_grad():  # the file holds the weights that scored it
        assert (average.build_model()(x).argmax(1) == y).double().mean().item() == pytest.approx(average.metrics["val_accuracy"], abs=1e-12)
    results = json.loads((tmp_path / "ema" / "results.json").read_text())
    assert results["best_epoch_ema"] == results["test_ema"]["epoch"] == best_epoch
    x, y = load_split(Manifest.load(tmp_path / "ema" / "manifest.json"), synthetic_root, "test")
    with torch.no_grad():  # test_ema is the average's own test figure
        assert results["test_ema"]["accuracy"] == pytest.approx((average.build_model()(x).argmax(1) == y).double().mean().item(), abs=1e-12)
    assert results["test_ema"]["parameters"] == results["test"]["parameters"]
    assert results["test"]["accuracy"] == plain.test["accuracy"]
    assert "test_ema" not in json.loads((tmp_path / "plain" / "results.json").read_text())
    assert "val_accuracy_ema" in (tmp_path / "ema" / "metrics.csv").read_text().splitlines()[0]
    assert "ema" not in (tmp_path / "plain" / "metrics.csv").read_text()


def test_a_paused_run_resumes_its_average_exactly(synthetic_root, tmp_path):
    config = dict(schedule="cosine", warmup_epochs=1, epochs=3, ema_decay=0.9)
    straight = train(small_config(synthetic_root, tmp_path / "straight", **config))
    train(small_config(synthetic_root, tmp_path / "paused", stop_after=2, **config))
    with pytest.raises(UsageError, match=r"other settings \(--ema-decay 0.9 → 0.99\)"):
        train(small_config(synthetic_root, tmp_path / "paused", resume=True, **{**config, "ema_decay": 0.99}))
    # a resumed run keeps the best average it had: with a record no epoch can beat, best-ema.pt stays as it was
    train(small_config(synthetic_root, tmp_path / "held", stop_after=2, **config))
    held = load_checkpoint(tmp_path / "held" / "last.pt")
    save_checkpoint(tmp_path / "held" / "last.pt", replace(held, metrics={**held.metrics, "best_val_accuracy_ema": 1.01}))
    before = (tmp_path / "held" / "best-ema.pt").read_bytes()
    train(small_config(synthetic_root, tmp_path / "held", resume=True, **config))
    assert (tmp_path / "held" / "best-ema.pt").read_bytes() == before

    resumed = train(small_config(synthetic_root, tmp_path / "paused", resume=True, **config))
    expected, actual = (load_checkpoint(r.last_checkpoint).ema_state_dict for r in (straight, resumed))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert [r["val_accuracy_ema"] for r in resumed.history] == [r["val_accuracy_ema"] for r in straight.history]
    assert json.loads((tmp_path / "paused" / "results.json").read_text())["test_ema"] == \
        json.loads((tmp_path / "straight" / "results.json").read_text())["test_ema"] | {"checkpoint": str(tmp_path / "paused" / "best-ema.pt")}


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_the_average_itself_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(nn.Linear(2, 2), decay)


def test_the_averages_warm_up_counts_the_runs_updates_not_the_epochs(synthetic_root, tmp_path, monkeypatch):
    """The decay ramps up over the first updates ((1 + n) / (10 + n)); a count restarted every epoch would keep the
    average clinging to each epoch's first weights (a resume test cannot see it: both runs would restart alike)."""
    seen, real = [], WeightAverage.update
    monkeypatch.setattr(WeightAverage, "update", lambda self, updates: seen.append(updates) or real(self, updates))
    train(small_config(synthetic_root, tmp_path / "ema", ema_decay=0.9, epochs=2))
    assert len(seen) >= 4 and seen == list(range(len(seen)))
