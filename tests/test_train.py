"""Training: learns, checkpoints are self-describing and atomic, resume reproduces an uninterrupted run."""

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgenode.train as train_module
from edgenode.checkpoint import InputSpec, load_checkpoint
from edgenode.cli import app
from edgenode.data import Manifest, SplitConfig, build_manifest
from edgenode.errors import ArtifactError, EdgenodeError, UsageError
from edgenode.metrics import wilson_interval
from edgenode.resume import check_resume_settings
from edgenode.train import TrainConfig, train

SMALL_SPLIT = SplitConfig(per_class=24, train=16, val=4, test=4)


def small_config(root, out, **overrides):
    values = dict(
        data=str(root), out=str(out), arch="paper", width=8, solver="rk4", steps=2, epochs=3, batch_size=16,
        lr=3e-3, split=SMALL_SPLIT, progress=False, table_every=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_training_gets_well_above_chance(trained_run):
    chance = 1 / 6
    assert trained_run.test["accuracy"] >= 3 * chance
    assert trained_run.best_val_accuracy >= 3 * chance
    assert trained_run.test["n"] == 6 * 4


def test_checkpoint_is_self_describing(trained_run):
    ckpt = load_checkpoint(trained_run.best_checkpoint)
    manifest = Manifest.load(trained_run.run_dir / "manifest.json")
    assert ckpt.classes == manifest.classes
    assert ckpt.manifest_sha256 == manifest.sha256
    assert ckpt.input_spec.image_size == 64 and tuple(ckpt.input_spec.mean) == tuple(manifest.mean) and tuple(ckpt.input_spec.std) == tuple(manifest.std)
    assert ckpt.model_config.solver.method == "dopri5"
    assert ckpt.epoch == trained_run.best_epoch
    assert ckpt.metrics["val_accuracy"] == pytest.approx(trained_run.best_val_accuracy)
    # the shipped file holds no optimizer state; last.pt, which resume reads, does
    assert ckpt.optimizer is None and ckpt.scheduler is None
    assert load_checkpoint(trained_run.run_dir / "last.pt").optimizer is not None
    # plain tensors and JSON-like values only: loadable without unpickling code
    torch.load(trained_run.best_checkpoint, weights_only=True)


def test_run_folder_holds_metrics_and_plots(trained_run):
    run = trained_run.run_dir
    history = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    val = [row["val_accuracy"] for row in history]  # best.pt is the first epoch of the highest val accuracy
    assert trained_run.best_val_accuracy == pytest.approx(max(val)) and trained_run.best_epoch == 1 + val.index(max(val))
    assert {"val_precision", "val_recall", "val_f1", "nfe_val"} <= set(history[0])
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((run / "results.json").read_text())
    test = results["test"]
    assert tuple(test["accuracy_ci"]) == pytest.approx(wilson_interval(round(test["accuracy"] * test["n"]), test["n"]))
    assert not list(run.glob("*.tmp")), "temporary files left behind"


def test_resume_after_interruption_gives_the_same_weights(synthetic_root, tmp_path, monkeypatch):
    """A run killed in epoch 3 resumes from last.pt (epoch 2): only epoch 3 is trained again, and it ends at the
    weights of the uninterrupted run."""
    reference = train(small_config(synthetic_root, tmp_path / "straight"))

    original = train_module.run_epoch

    def crash_in_epoch_3(*args, **kwargs):
        if args[7] == 3:  # the epoch argument
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(small_config(synthetic_root, tmp_path / "interrupted"))
    assert load_checkpoint(tmp_path / "interrupted" / "last.pt").epoch == 2
    trained = []

    def counting(*args, **kwargs):
        trained.append(args[7])
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", counting)
    resumed = train(small_config(synthetic_root, tmp_path / "interrupted", resume=True))
    # seeded training is deterministic: a resume that retrained from epoch 1 would end at the same weights
    assert trained == [3], "the resumed call did not continue after epoch 2"

    expected = load_checkpoint(reference.last_checkpoint).state_dict
    actual = load_checkpoint(resumed.last_checkpoint).state_dict
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert [r["val_accuracy"] for r in resumed.history] == [r["val_accuracy"] for r in reference.history]


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_weights(synthetic_root, tmp_path, capsys):
    """--stop-after ends a call mid-schedule (a time-boxed GPU); --resume continues the same cosine schedule exactly,
    and a paused run reports no test figure."""
    config = dict(schedule="cosine", warmup_epochs=1, epochs=3)
    reference = train(small_config(synthetic_root, tmp_path / "straight", **config))
    paused = train(small_config(synthetic_root, tmp_path / "paused", stop_after=1, **config))
    assert [row["epoch"] for row in paused.history] == [1] and paused.test == {}
    assert not (tmp_path / "paused" / "results.json").exists() and (tmp_path / "paused" / "metrics.csv").exists()
    assert "stopped after epoch 1 of 3" in capsys.readouterr().err
    train(small_config(synthetic_root, tmp_path / "never", resume=True, stop_after=1, **config))
    assert "no " in (said := capsys.readouterr().err) and "(the folder held no run: nothing to resume); starting from epoch 1" in said
    train(small_config(synthetic_root, tmp_path / "paused", resume=True, stop_after=1, **config))
    assert "nothing trained: it had already epoch 1 of 3" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"--epochs 3 → 4: the cosine schedule decays over --epochs"):
        train(small_config(synthetic_root, tmp_path / "paused", resume=True, **{**config, "epochs": 4}))
    resumed = train(small_config(synthetic_root, tmp_path / "paused", resume=True, **config))
    expected, actual = (load_checkpoint(r.last_checkpoint).state_dict for r in (reference, resumed))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in reference.history]
    assert resumed.test["accuracy"] == reference.test["accuracy"]
    capsys.readouterr()
    again = train(small_config(synthetic_root, tmp_path / "paused", resume=True, **config))  # a finished run, resumed
    assert "nothing trained: the run had finished its 3 epochs; its test figure is measured again" in capsys.readouterr().err
    assert again.test["accuracy"] == reference.test["accuracy"]


@pytest.mark.parametrize("stop_after", [0, 4])
def test_stop_after_must_be_an_epoch_of_the_schedule(stop_after):
    with pytest.raises(UsageError, match=f"--stop-after {stop_after}: must be an epoch of the schedule, 1 to --epochs 3"):
        TrainConfig(data="d", epochs=3, stop_after=stop_after)


def test_existing_run_is_not_overwritten_without_resume(synthetic_root, tmp_path):
    config = small_config(synthetic_root, tmp_path / "run", epochs=1)
    train(config)
    with pytest.raises(UsageError, match="--resume"):
        train(config)


def test_a_run_folder_that_lost_a_checkpoint_is_refused_not_overwritten(synthetic_root, tmp_path):
    """Nothing a finished run wrote is replaced by a fresh run, even with last.pt gone (best.pt is the file people
    keep); --resume refuses a run with no last.pt to continue, or with no best.pt to finish, before training."""
    import shutil

    config = small_config(synthetic_root, tmp_path / "run", epochs=2)
    train(config)
    kept = shutil.copytree(tmp_path / "run", tmp_path / "kept")
    (kept / "last.pt").unlink()
    best = (kept / "best.pt").read_bytes()
    with pytest.raises(UsageError, match=r"already holds a training run \(best.pt, metrics.json, metrics.csv, results.json\)"):
        train(replace(config, out=str(kept)))
    with pytest.raises(UsageError, match="holds a run's results .* but no last.pt"):
        train(replace(config, out=str(kept), resume=True))
    assert (kept / "best.pt").read_bytes() == best and len(json.loads((kept / "metrics.json").read_text())) == 2

    paused = tmp_path / "paused"
    train(replace(config, out=str(paused), stop_after=1))
    (paused / "best.pt").unlink()
    with pytest.raises(UsageError, match=r"best.pt is missing; it held the best epoch so far \(1\)"):
        train(replace(config, out=str(paused), resume=True))
    assert load_checkpoint(paused / "last.pt").epoch == 1  # refused before training
    with pytest.raises(UsageError, match=r"--resume --epochs 1: .*last.pt is already after epoch 2"):
        train(replace(config, resume=True, epochs=1))


def test_a_run_folder_in_use_is_refused(synthetic_root, tmp_path):
    """Two runs into one --out would interleave their files: the second is refused while the first holds it."""
    import subprocess
    import sys
    import textwrap

    from edgenode.run_lock import LOCK_NAME, hold_run_folder

    run = tmp_path / "run"
    with hold_run_folder(run):
        with pytest.raises(UsageError, match=rf"--out {run} is in use by another edgenode train \(process {os.getpid()}\)"):
            holder = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
                from pathlib import Path
                from edgenode.run_lock import hold_run_folder
                with hold_run_folder(Path({str(run)!r})):
                    pass
            """)], capture_output=True, text=True)
            assert "UsageError" in holder.stderr, holder.stderr  # another process is refused...
            train(small_config(synthetic_root, run, epochs=1))  # ...and so is a run in this one
    assert not (run / LOCK_NAME).exists()
    train(small_config(synthetic_root, run, epochs=1))  # released: the folder is free again
    assert not (run / LOCK_NAME).exists() and (run / "results.json").is_file()


def test_a_run_killed_between_its_first_two_checkpoints_starts_again(synthetic_root, tmp_path, monkeypatch):
    """best.pt written, last.pt not: the folder holds no epoch to continue, so a rerun (as the demo and
    pins_pipeline.sh make it, without --resume) starts over instead of being refused."""
    config = small_config(synthetic_root, tmp_path / "run", epochs=1)
    real = train_module.save_checkpoint

    def killed_at_last(path, ckpt):
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt
        return real(path, ckpt)

    monkeypatch.setattr(train_module, "save_checkpoint", killed_at_last)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "manifest.json"]
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    assert train(config).test  # and it finishes

    kept = tmp_path / "models"  # a best.pt kept in a folder of its own, not left by this folder's split: never replaced
    kept.mkdir()
    (kept / "best.pt").write_bytes((tmp_path / "run" / "best.pt").read_bytes())
    with pytest.raises(UsageError, match=r"already holds a training run \(best.pt\)"):
        train(replace(config, out=str(kept)))
    with pytest.raises(UsageError, match=r"--init .*best.pt is inside --out .*models, where this run writes its checkpoints"):
        train(replace(config, out=str(kept), init=str(kept / "best.pt")))
    assert (kept / "best.pt").read_bytes() == (tmp_path / "run" / "best.pt").read_bytes()


def test_a_refused_run_creates_no_folder(synthetic_root, tmp_path):
    """The lock is taken after the checks that need no folder: an --out inside the data, or a data folder that is
    not there, leaves nothing behind (an empty runs/ inside images/ would be read as an identity)."""
    with pytest.raises(UsageError, match="is inside the images of"):
        train(small_config(synthetic_root, synthetic_root / "images" / "runs" / "r1"))
    assert not (synthetic_root / "images" / "runs").exists()
    with pytest.raises(EdgenodeError):
        train(small_config(tmp_path / "no-data", tmp_path / "new" / "r1"))
    assert not (tmp_path / "new").exists()


def test_the_lock_is_taken_on_the_file_in_the_folder_not_one_its_last_holder_removed(tmp_path, monkeypatch):
    """A run that ends removes its lock file, then releases it; one that opened the file just before would lock a
    file no longer in the folder, and a third run could then lock a new one. The lock is retaken on the file there."""
    import builtins

    from edgenode import run_lock

    run = tmp_path / "run"
    run.mkdir()
    removed = []

    def opened_then_removed(path, *args, **kwargs):
        handle = builtins.open(path, *args, **kwargs)
        if not removed:  # the last holder unlinks the file right after this process opened it
            os.unlink(path)
            removed.append(path)
        return handle

    monkeypatch.setattr(run_lock, "open", opened_then_removed, raising=False)
    with run_lock.hold_run_folder(run):
        assert removed and (run / run_lock.LOCK_NAME).is_file()  # locked: the file that is in the folder now
        monkeypatch.setattr(run_lock, "open", builtins.open, raising=False)
        with pytest.raises(UsageError, match="is in use by another edgenode train"):
            with run_lock.hold_run_folder(run):
                pass


def test_a_manifest_left_by_a_failed_attempt_is_not_reused(synthetic_root, tmp_path):
    """A run that stopped before its first checkpoint leaves manifest.json; the next fresh run asks for its own."""
    from edgenode.data import build_manifest

    other = SplitConfig(per_class=12, train=8, val=2, test=2)
    run = tmp_path / "run"
    run.mkdir()
    build_manifest(str(synthetic_root), other, progress=False).save(run / "manifest.json")
    result = train(small_config(synthetic_root, run, epochs=1))
    assert Manifest.load(run / "manifest.json").config == SMALL_SPLIT
    assert result.test["n"] == 6 * SMALL_SPLIT.test
    with pytest.raises(UsageError, match=r"--resume: .*last.pt was trained with other settings \(split per_class 24 → 12"):
        train(small_config(synthetic_root, run, epochs=2, resume=True, split=other))


def test_a_run_given_a_manifest_resumes_without_it(synthetic_root, tmp_path):
    """Its split options come from the manifest, not from the command line: nothing there to compare."""
    from edgenode.data import build_manifest

    manifest = build_manifest(str(synthetic_root), SMALL_SPLIT, progress=False).save(tmp_path / "split.json")
    train(small_config(synthetic_root, tmp_path / "run", epochs=1, seed=1, manifest=str(manifest)))
    resumed = train(small_config(synthetic_root, tmp_path / "run", epochs=2, seed=1, resume=True))
    assert len(resumed.history) == 2
    with pytest.raises(UsageError, match=r"--seed 1 → 0"):
        train(small_config(synthetic_root, tmp_path / "run", epochs=3, seed=0, resume=True))


def test_split_options_that_a_manifest_would_ignore_are_refused(synthetic_root, tmp_path):
    """--manifest fixes the split and the input size; an option asking for others would be ignored and recorded."""
    from edgenode.data import build_manifest

    manifest = build_manifest(str(synthetic_root), SMALL_SPLIT, progress=False).save(tmp_path / "split.json")
    asked = SplitConfig(per_class=24, train=16, val=4, test=4, image_size=32)
    with pytest.raises(UsageError, match=r"--manifest .*split.json fixes the split, and --image-size 32 \(the manifest: 64\) "
                                         r"would be ignored \(drop them, or write a manifest with them"):
        train(small_config(synthetic_root, tmp_path / "run", epochs=1, manifest=str(manifest), split=asked))
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_manifest_with_split_options_that_describe_no_split_says_so(synthetic_root, tmp_path):
    """`--manifest M --per-class 24` (the manifest's own value) failed on the paper's unused 60+17+9 > 24."""
    from edgenode.data import build_manifest

    manifest = build_manifest(str(synthetic_root), SMALL_SPLIT, progress=False).save(tmp_path / "split.json")
    result = CliRunner().invoke(app, ["train", str(synthetic_root), "--manifest", str(manifest), "--per-class", "24",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and not (tmp_path / "run").exists(), result.output
    assert f"--manifest {manifest} fixes the split, and the split options given do not describe one" in " ".join(result.stderr.split())
    assert "(drop the split options: the manifest's are used)" in " ".join(result.stderr.split())


def test_a_run_given_a_manifest_records_the_manifests_split(synthetic_root, tmp_path):
    """Without split options (their defaults: the paper's 86 = 60/17/9) it records what it trained on."""
    from edgenode.data import build_manifest

    manifest = build_manifest(str(synthetic_root), SMALL_SPLIT, progress=False).save(tmp_path / "split.json")
    result = train(small_config(synthetic_root, tmp_path / "run", epochs=1, manifest=str(manifest), split=SplitConfig()))
    recorded = load_checkpoint(result.best_checkpoint).train_config["split"]
    assert recorded == SMALL_SPLIT.to_dict() and recorded["per_class"] == 24
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["split"] == SMALL_SPLIT.to_dict()


def test_augmentation_label_smoothing_and_cosine_schedule_take_effect(synthetic_root, tmp_path):
    """Each option changes what is trained: same seed, same batches, only the option differs."""
    def first_loss(name, **options):
        return train(small_config(synthetic_root, tmp_path / name, epochs=1, **options)).history[0]["train_loss"]

    result = train(small_config(synthetic_root, tmp_path / "all", epochs=2, augment=True, schedule="cosine",
                                warmup_epochs=1, label_smoothing=0.1))
    # 96 train images in batches of 16: 6 steps an epoch. The rate rises linearly over the first epoch to 3e-3,
    # then the cosine takes it to 0 at the end of the second
    assert [row["lr"] for row in result.history] == pytest.approx([3e-3, 0.0], abs=1e-12)
    plain = first_loss("plain")
    assert first_loss("augment", augment=True) != plain
    assert first_loss("smooth", label_smoothing=0.1) != plain


@pytest.mark.parametrize("shift, pad", [(0.125, 8), (0.03125, 2), (0.0, 0)])
def test_augmentation_shifts_by_at_most_the_asked_fraction(shift, pad):
    """Every view is the (possibly mirrored) picture moved by at most ``pad`` px: a crop of its reflect-padded self."""
    x = torch.rand(16, 3, 64, 64)
    views = train_module.augment(x, torch.Generator().manual_seed(0), shift)

    def moved(image, dy, dx):
        padded = torch.nn.functional.pad(image[None], (pad,) * 4, mode="reflect")[0] if pad else image
        return padded[:, pad + dy : pad + dy + 64, pad + dx : pad + dx + 64]

    offsets = set()
    for view, original in zip(views, x):
        matches = [(dy, dx) for image in (original, original.flip(2)) for dy in range(-pad, pad + 1)
                   for dx in range(-pad, pad + 1) if torch.equal(view, moved(image, dy, dx))]
        assert matches, "a view that is no shifted copy of its picture"
        offsets.update(matches)
    assert len(offsets) > (1 if pad else 0), "no shift was ever drawn"


def test_a_copy_to_cuda_is_pinned_and_does_not_wait(monkeypatch):
    """The CPU runs ahead of the GPU only if the copy does not block (checked on the calls: no GPU here)."""
    from edgenode.transfer import to_device

    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append((a, k)) or self)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    to_device(torch.zeros(2), cuda)
    assert calls == ["pin", ((cuda,), {"non_blocking": True})]
    calls.clear()
    to_device(torch.zeros(2), cpu)
    assert calls == [((cpu,), {})]


def test_augment_shift_is_checked():
    with pytest.raises(UsageError, match="--augment-shift must be a fraction"):
        small_config("data", "out", augment=True, augment_shift=0.8)
    with pytest.raises(UsageError, match="--augment-shift sets the shift of --augment, which is off"):
        small_config("data", "out", augment_shift=0.03)


def test_colour_jitter_stays_in_range_and_changes_light_not_layout():
    """Views keep pixels in [0, 1] and the picture's layout; each view's light changes, and at strength s about s / 2
    of the views are grayscale."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 8, 8) * 0.6 + 0.2
    views = train_module.jitter_colors(x.clone(), g, 0.4)
    assert views.min() >= 0 and views.max() <= 1 and views.shape == x.shape
    gray = (views[:, 0] == views[:, 1]) & (views[:, 1] == views[:, 2])
    grayscale_fraction = gray.flatten(1).all(1).float().mean().item()
    assert 0.12 < grayscale_fraction < 0.28  # 0.2 expected; the random colour pictures are never gray by chance
    assert (views - x).abs().flatten(1).amax(1).min() > 1e-3  # every view's light changed
    def luma(images):
        return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).flatten(1)

    # brightness and contrast map luma affinely, saturation and grayscale keep it: the same layout, up to clamping
    correlation = [torch.corrcoef(torch.stack([v, o]))[0, 1] for v, o in zip(luma(views), luma(x))]
    assert min(correlation) > 0.95
    with pytest.raises(UsageError, match="--augment-color must be a strength"):
        small_config("data", "out", augment=True, augment_color=1.5)
    with pytest.raises(UsageError, match="--augment-color sets the colour jitter of --augment, which is off"):
        small_config("data", "out", augment_color=0.4)


def test_each_colour_step_scales_by_a_factor_within_the_strength():
    """Recover the three factors from what each step does to a picture (no clamping at these values): brightness
    scales the mean luma, contrast the luma's spread around it, saturation the chroma (pixel minus its luma)."""
    s, n = 0.4, 600
    x = torch.full((n, 3, 4, 4), 0.4)
    x[:, :, :2] += 0.05  # two luma levels
    x[:, 0] += 0.03  # a colour cast: chroma
    x[:, 2] -= 0.03
    views = train_module.jitter_colors(x.clone(), torch.Generator().manual_seed(0), s)

    def luma(images):
        return 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]

    def spread(images):
        return (luma(images) - luma(images).mean(dim=(1, 2), keepdim=True)).abs().mean(dim=(1, 2))

    def chroma(images):
        return (images - luma(images).unsqueeze(1)).abs().mean(dim=(1, 2, 3))

    brightness = luma(views).mean(dim=(1, 2)) / luma(x).mean(dim=(1, 2))
    contrast = spread(views) / spread(x) / brightness
    colour = chroma(views) > 1e-6  # grayscale views have none left
    saturation = chroma(views)[colour] / chroma(x)[colour] / (brightness * contrast)[colour]
    for name, factor in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        assert factor.min() >= 1 - s - 1e-4 and factor.max() <= 1 + s + 1e-4, name
        assert factor.min() < 1 - 0.8 * s and factor.max() > 1 + 0.8 * s, f"{name}: the range is not used"
    assert 0.12 < 1 - colour.float().mean().item() < 0.28  # grayscale with probability s / 2


def test_no_colour_jitter_leaves_batches_and_random_draws_as_they_were():
    """Strength 0 must not call the jitter: it is no exact identity, and its draws would move every later shift,
    so runs trained before the option existed would no longer resume bit for bit."""
    spec = InputSpec(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    split = train_module.DeviceSplit(images, np.zeros(6, dtype=np.int64), spec, torch.device("cpu"), 0.125, 0.0)
    mine, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    index = torch.arange(6)
    x, _ = split.batch(index, mine)
    expected = train_module.augment(split.images[index].float().div_(255), reference, 0.125)
    assert torch.equal(x, (expected - split.mean) / split.std)
    assert torch.equal(mine.get_state(), reference.get_state())
    jittered, _ = train_module.DeviceSplit(images, np.zeros(6, dtype=np.int64), spec, torch.device("cpu"), 0.125, 0.4).batch(
        index, torch.Generator().manual_seed(3))
    assert not torch.equal(jittered, x)


def test_colour_jitter_trains_and_is_fixed_on_resume(synthetic_root, tmp_path):
    train(small_config(synthetic_root, tmp_path / "run", epochs=1, augment=True, augment_color=0.4))
    with pytest.raises(UsageError, match=r"--augment-color 0.4 → 0.2"):
        train(small_config(synthetic_root, tmp_path / "run", epochs=2, augment=True, augment_color=0.2, resume=True))


@pytest.mark.parametrize("changed, message", [
    (dict(lr=1e-4), r"--lr 0.003 → 0.0001"),  # the optimizer's saved state would silently keep the old one
    (dict(weight_decay=0.0), r"--weight-decay 0.05 → 0.0"),
    (dict(solver="dopri5", steps=None), r"--solver 'rk4' → 'dopri5', --steps 2 → \(not given\)"),
    (dict(label_smoothing=0.1), r"--label-smoothing 0.0 → 0.1"),
    (dict(dropout=0.1), r"--dropout 0.0 → 0.1"),
    (dict(amp=True), r"--amp False → True"),
])
def test_resume_refuses_settings_the_checkpoint_would_silently_override(tmp_path, changed, message):
    saved = small_config("data", tmp_path / "run").to_dict()
    with pytest.raises(UsageError, match=message):
        check_resume_settings(small_config("data", tmp_path / "run", **changed), saved, tmp_path / "last.pt")


def test_resume_refuses_another_init_and_takes_the_same_one_or_none(tmp_path):
    """`--resume --init OTHER.pt` was ignored without a word (even a checkpoint of another network)."""
    fresh = small_config("data", tmp_path / "run").to_dict()
    with pytest.raises(UsageError, match=r"--init other.pt is not the checkpoint .* started from \(none\).*\(drop --init\)"):
        check_resume_settings(small_config("data", tmp_path / "run", init="other.pt"), fresh, tmp_path / "run" / "last.pt")
    tuned = small_config("data", tmp_path / "run", init=str(tmp_path / "best.pt")).to_dict()
    with pytest.raises(UsageError, match=r"started from \(--init .*best.pt\)"):
        check_resume_settings(small_config("data", tmp_path / "run", init="other.pt"), tuned, tmp_path / "run" / "last.pt")
    # the same command again (the path as typed from elsewhere too), or without --init: it goes on from last.pt
    for init in (str(tmp_path / "best.pt"), str(tmp_path / "run" / ".." / "best.pt"), None):
        check_resume_settings(small_config("data", tmp_path / "run", init=init), tuned, tmp_path / "run" / "last.pt")


def test_a_checkpoint_older_than_a_setting_resumes_only_with_its_default(tmp_path):
    """A run saved before --augment-color existed trained without it: resuming with it on would change the run."""
    config = small_config("data", tmp_path / "run", augment=True)
    saved = {k: v for k, v in config.to_dict().items() if k not in ("augment_color", "augment_shift")}
    check_resume_settings(config, saved, tmp_path / "last.pt")
    for changed, message in ((dict(augment_color=0.4), r"--augment-color 0.0 → 0.4"), (dict(augment_shift=0.03), r"--augment-shift 0.125 → 0.03")):
        with pytest.raises(UsageError, match=message):
            check_resume_settings(small_config("data", tmp_path / "run", augment=True, **changed), saved, tmp_path / "last.pt")
    # no recorded config at all: nothing to compare (not "every setting at its default")
    check_resume_settings(small_config("data", tmp_path / "run", augment=True, batch_size=8, augment_color=0.4), {}, tmp_path / "last.pt")


def test_garbage_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="model.pt"):
        load_checkpoint(bad)


def test_a_run_folder_inside_the_images_is_refused(synthetic_root):
    with pytest.raises(UsageError, match="inside the images of .*outside the data set"):
        train(small_config(synthetic_root, synthetic_root / "images" / "run", epochs=1))
    assert not (synthetic_root / "images" / "run").exists()


def test_a_truncated_checkpoint_is_named_as_such(trained_run, tmp_path):
    cut = tmp_path / "cut.pt"
    whole = trained_run.best_checkpoint.read_bytes()
    for size in (5000, len(whole) // 2, len(whole) - 10):  # copies that stopped early, half-way, at the very end
        cut.write_bytes(whole[:size])
        with pytest.raises(ArtifactError) as caught:
            load_checkpoint(cut)
        assert str(caught.value).startswith(f"{cut}: not a readable edgenode checkpoint (its zip archive is incomplete or damaged)")
    np.savez(tmp_path / "arrays.npz", x=np.zeros(3))  # a zip too, but no checkpoint
    with pytest.raises(ArtifactError, match=r"arrays.npz: not a readable edgenode checkpoint \(a zip archive, but not one that torch.save wrote"):
        load_checkpoint(tmp_path / "arrays.npz")


def test_a_foreign_or_newer_pytorch_file_is_named_as_such(tmp_path):
    bare = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(ArtifactError, match=r"weights.pt: a PyTorch file but not an edgenode checkpoint .*best.pt"):
        load_checkpoint(bare)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "edgenode-checkpoint/9"}, newer)
    with pytest.raises(ArtifactError, match=r"newer.pt: checkpoint format 'edgenode-checkpoint/9' is newer .*upgrade"):
        load_checkpoint(newer)


@pytest.mark.parametrize(
    "args",
    [["--epochs", "0"], ["--batch-size", "-1"], ["--arch", "resnet"], ["--solver", "rk9"], ["--schedule", "steps"], ["--ema-decay", "1"],
     ["--margin", "0.2"], ["--arch", "faceode", "--margin-scale", "30"]],
)
def test_cli_rejects_bad_arguments_with_exit_code_2(synthetic_root, tmp_path, args):
    result = CliRunner().invoke(app, ["train", str(synthetic_root), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_cli_trains(synthetic_root, tmp_path):
    out = tmp_path / "cli"
    args = ["train", str(synthetic_root), "--out", str(out), "--arch", "paper", "--width", "8", "--solver", "euler", "--steps", "2",
            "--epochs", "1", "--batch-size", "16", "--per-class", "24", "--train-per-class", "16", "--val-per-class", "4",
            "--test-per-class", "4", "--no-progress", "--ema-decay", "0.9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "best.pt").model_config.solver.n_steps == 2
    assert load_checkpoint(out / "best-ema.pt").train_config["ema_decay"] == 0.9


def test_run_comparison_plot_draws_every_run(tmp_path, monkeypatch):
    from PIL import Image

    from edgenode import plots

    histories = {name: [{"epoch": e, "val_accuracy": a * e / 3, "train_accuracy": a} for e in (1, 2, 3)] for name, a in (("a", 0.5), ("b", 0.9))}
    drawn = []
    original = plots.plt.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "plot", spy)
    path = plots.plot_run_comparison(histories, tmp_path / "runs.png")
    assert drawn == ["a (val)", None, "b (val)", None]
    assert Image.open(path).size[0] > 100


def test_init_starts_from_a_checkpoints_weights(trained_run, synthetic_root, tmp_path):
    source = load_checkpoint(trained_run.best_checkpoint)
    assert source.metrics["val_accuracy"] > 0.5, "a trained source, so that matching it cannot be luck"
    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "tuned"), arch="odenet", width=16, epochs=1, batch_size=8,
                         lr=1e-9, manifest=str(trained_run.run_dir / "manifest.json"), progress=False, table_every=0,
                         init=str(trained_run.best_checkpoint))
    tuned = train(config)
    assert tuned.history[0]["val_accuracy"] == source.metrics["val_accuracy"]


def test_a_resume_without_init_keeps_the_record_of_where_the_run_started(trained_run, synthetic_root, tmp_path):
    """README: resume "with the same --init or none". Left out, it erased the record, and the next resume with the
    original --init was refused as another starting point."""
    init = str(trained_run.best_checkpoint)
    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "tuned"), arch="odenet", width=16, epochs=3, batch_size=8,
                         lr=1e-3, manifest=str(trained_run.run_dir / "manifest.json"), progress=False, table_every=0, init=init)
    train(replace(config, stop_after=1))
    train(replace(config, init=None, resume=True, stop_after=2))
    assert load_checkpoint(tmp_path / "tuned" / "last.pt").train_config["init"] == init
    train(replace(config, resume=True))  # the original command, --init and all, continues it
    assert json.loads((tmp_path / "tuned" / "results.json").read_text())["config"]["init"] == init


def test_init_refuses_another_network(trained_run, synthetic_root, tmp_path):
    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "other"), arch="odenet", width=8, epochs=1, batch_size=8,
                         manifest=str(trained_run.run_dir / "manifest.json"), progress=False, init=str(trained_run.best_checkpoint))
    with pytest.raises(UsageError, match="width 16 vs 8"):
        train(config)


def test_init_with_an_export_is_refused_before_any_work_and_leaves_no_folder(shared_exports, synthetic_root, tmp_path, monkeypatch):
    """No --manifest, so the split would be built first: the ONNX file is refused before that, before --out is
    even made."""
    monkeypatch.setattr(train_module, "prepare_manifest", lambda *a, **k: pytest.fail("the split was built first"))
    out = tmp_path / "tuned"
    with pytest.raises(ArtifactError, match=r"model-rk4x\d+-fp32.onnx: is an ONNX model, but --init needs a training checkpoint"):
        train(small_config(synthetic_root, out, init=str(shared_exports["fp32"])))
    assert not out.exists()


def test_a_run_refused_after_creating_its_folder_removes_it_only_if_it_made_it(synthetic_root, tmp_path):
    """Too few images per identity for --per-class fails after --out was made, before anything was written."""
    from edgenode.errors import DataError

    split = SplitConfig(per_class=500, train=400, val=50, test=50)
    new = tmp_path / "new" / "run"
    with pytest.raises(DataError, match="at least 2 are needed"):
        train(small_config(synthetic_root, new, split=split))
    assert not new.exists() and not new.parent.exists()  # nor the parent it made for it
    mine = tmp_path / "mine"
    mine.mkdir()  # the user's own (empty) folder stays
    with pytest.raises(DataError):
        train(small_config(synthetic_root, mine, split=split))
    assert mine.is_dir()


def test_amp_on_cpu_says_it_trains_in_float32(synthetic_root, tmp_path, capsys):
    result = train(small_config(synthetic_root, tmp_path / "amp", epochs=1, amp=True))
    assert "--amp: bfloat16 autocast is used on CUDA only; training in float32 on cpu" in capsys.readouterr().err
    assert len(result.history) == 1


def test_init_refuses_a_checkpoint_of_another_split(trained_run, synthetic_root, tmp_path):
    import dataclasses

    from edgenode.data import Manifest

    manifest = Manifest.load(trained_run.run_dir / "manifest.json")
    reshuffled = dataclasses.replace(manifest, splits={"train": manifest.splits["val"], "val": manifest.splits["train"],
                                                       "test": manifest.splits["test"]})
    reshuffled.save(tmp_path / "other.json")
    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "run"), arch="odenet", width=16, epochs=1, batch_size=8,
                         manifest=str(tmp_path / "other.json"), progress=False, init=str(trained_run.best_checkpoint))
    with pytest.raises(UsageError, match="trained on another split"):
        train(config)


def test_margin_enters_the_training_loss_but_not_its_accuracy(synthetic_root, tmp_path):
    """One step an epoch (the whole train split is one batch): every run scores the same initial weights on the same
    batch (the fixed-scale run's starting scale aside, which argmax does not see), so the labels' accuracy must agree,
    while a margin's cross-entropy is higher and trains other weights."""
    def one_step(name, **options):
        config = small_config(synthetic_root, tmp_path / name, arch="faceode", epochs=1, batch_size=96, **options)
        run = train(config)
        return run.history[0], load_checkpoint(run.last_checkpoint)

    (plain, plain_ckpt), (margin, margin_ckpt) = one_step("plain"), one_step("margin", margin=0.3)
    assert margin["train_accuracy"] == plain["train_accuracy"]
    assert margin["train_loss"] > plain["train_loss"] + 0.5  # scale 16 × 0.3 on the true class: a large step up
    assert margin_ckpt.train_config["margin"] == 0.3
    # AdamW's first step is ±lr per weight, so the runs differ where the margin flips a gradient's sign
    assert any(not torch.equal(margin_ckpt.state_dict[k], v) for k, v in plain_ckpt.state_dict.items())

    # at CosFace's fixed scale the loss is larger still (30 × 0.3). With no teacher, the learned scale starts at the
    # margin's 30 instead of the head's 16, and nothing moves it; AdamW's first step (±lr) moves it in the other two
    fixed, fixed_ckpt = one_step("fixed", margin=0.3, margin_scale=30.0)
    assert fixed["train_accuracy"] == plain["train_accuracy"] and fixed["train_loss"] > margin["train_loss"] + 0.5
    key = next(k for k in plain_ckpt.state_dict if k.endswith("log_scale"))
    assert float(fixed_ckpt.state_dict[key]) == float(torch.tensor(math.log(30.0)))
    for moved in (plain_ckpt, margin_ckpt):
        assert abs(float(moved.state_dict[key]) - math.log(16.0)) == pytest.approx(3e-3, rel=1e-3)


@pytest.mark.parametrize("overrides, fragment", [
    (dict(margin=-0.1), "--margin must be a cosine margin"),
    (dict(margin=float("nan")), "--margin must be a cosine margin"),
    (dict(margin=1.0), "--margin must be a cosine margin"),
    (dict(margin=0.2, arch="paper"), "'paper' preset has no cosine classifier"),
    (dict(margin=0.2, arch="faceode", label_weight=0.0, teacher="t.npz"), "--label-weight 0 switches off"),
    (dict(margin=0.2, arch="faceode", margin_scale=-1.0), "--margin-scale must be a scale in"),
    (dict(margin=0.2, arch="faceode", margin_scale=float("inf")), "--margin-scale must be a scale in"),
    (dict(margin=0.2, arch="faceode", margin_scale=float("nan")), "--margin-scale must be a scale in"),
    (dict(arch="faceode", margin_scale=30.0), "--margin-scale 30.0 fixes the scale .* but --margin is 0"),
])
def test_bad_margins_are_refused_up_front(tmp_path, overrides, fragment):
    with pytest.raises(UsageError, match=fragment):
        small_config("data", tmp_path / "run", **overrides)


def test_resume_refuses_another_margin_and_takes_an_older_checkpoint_as_margin_zero(tmp_path):
    saved = small_config("data", tmp_path / "run", arch="faceode").to_dict()
    with pytest.raises(UsageError, match=r"--margin 0.0 → 0.2"):
        check_resume_settings(small_config("data", tmp_path / "run", arch="faceode", margin=0.2), saved, tmp_path / "last.pt")
    margined = small_config("data", tmp_path / "run", arch="faceode", margin=0.2).to_dict()
    with pytest.raises(UsageError, match=r"--margin-scale 0.0 → 30.0"):
        check_resume_settings(small_config("data", tmp_path / "run", arch="faceode", margin=0.2, margin_scale=30.0),
                              margined, tmp_path / "last.pt")
    del saved["margin"]  # a checkpoint from before --margin existed
    check_resume_settings(small_config("data", tmp_path / "run", arch="faceode"), saved, tmp_path / "last.pt")
    with pytest.raises(UsageError, match=r"--margin 0.0 → 0.2"):
        check_resume_settings(small_config("data", tmp_path / "run", arch="faceode", margin=0.2), saved, tmp_path / "last.pt")


def test_resume_refuses_another_dropout(tmp_path):
    saved = small_config("data", tmp_path / "run").to_dict()
    with pytest.raises(UsageError, match=r"--dropout 0.0 → 0.1"):
        check_resume_settings(small_config("data", tmp_path / "run", dropout=0.1), saved, tmp_path / "last.pt")


def test_warm_up_rises_linearly_to_the_full_rate_and_the_cosine_starts_from_it():
    """Two warm-up epochs of three steps: step k of the warm-up trains at (k + 1) / 6 of --lr, never at 0; the
    cosine then starts at the full rate and reaches 0 at the end of --epochs."""
    factor = train_module.learning_rate_lambda(small_config("data", "out", epochs=4, warmup_epochs=2, schedule="cosine"), 3)
    assert [factor(step) for step in range(6)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert factor(6) == pytest.approx(1.0) and factor(9) == pytest.approx(0.5) and factor(12) == pytest.approx(0.0, abs=1e-12)
    constant = train_module.learning_rate_lambda(small_config("data", "out", epochs=4, warmup_epochs=1), 3)
    assert [constant(step) for step in range(5)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])


def test_the_test_figure_is_that_of_best_pt_not_of_last_pt(trained_run, tmp_path):
    """results.json scores the best-by-val checkpoint: a last.pt of other weights changes nothing in it."""
    from dataclasses import replace

    from edgenode.checkpoint import save_checkpoint
    from edgenode.data import load_split_arrays
    from edgenode.distributed import DistContext
    from edgenode.resume import RunProgress

    best = load_checkpoint(trained_run.best_checkpoint)
    save_checkpoint(tmp_path / "best.pt", best)
    zeroed = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in best.state_dict.items()}
    save_checkpoint(tmp_path / "last.pt", replace(best, state_dict=zeroed, epoch=best.epoch + 7))
    manifest = Manifest.load(trained_run.run_dir / "manifest.json")
    data = best.train_config["data"]
    test_split = train_module.DeviceSplit(*load_split_arrays(manifest, data, "test"), best.input_spec, torch.device("cpu"))
    config = TrainConfig(data=data, out=str(tmp_path), progress=False)
    progress = RunProgress(best_val=best.metrics["val_accuracy"], best_epoch=best.epoch)
    test = train_module.final_test(config, DistContext(), tmp_path, test_split, len(best.classes), torch.device("cpu"),
                                   progress, False, {})
    expected = train_module.evaluate(best.build_model(), test_split, len(best.classes))
    assert test["epoch"] == best.epoch and test["checkpoint"] == str(tmp_path / "best.pt")
    assert test["accuracy"] == expected["accuracy"] and test["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert json.loads((tmp_path / "results.json").read_text())["test"]["epoch"] == best.epoch


def test_unlabelled_images_count_in_neither_the_loss_nor_the_train_accuracy(one_thread):
    """One step over a batch half of which is unlabelled: the recorded loss is the mean cross-entropy of the labelled
    half and the accuracy its share of right answers, as the weights stood before the step."""
    from edgenode.distributed import DistContext
    from edgenode.model import build_model, preset_config

    torch.manual_seed(0)
    model = build_model(preset_config("paper", num_classes=3, width=4))
    spec = InputSpec(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, -1, -1, -1, -1], dtype=np.int64)
    split = train_module.DeviceSplit(images, labels, spec, torch.device("cpu"))
    config = TrainConfig(data="d", batch_size=8, progress=False)
    model.train()
    with torch.no_grad():
        x, y = split.batch(torch.arange(8))
        logits = model(x)[:4]
    expected_loss = torch.nn.functional.cross_entropy(logits, y[:4]).item()
    expected_accuracy = (logits.argmax(1) == y[:4]).double().mean().item()
    assert expected_accuracy > 0, "a zero accuracy would not tell the two counts apart"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stats = train_module.run_epoch(model, model, split, optimizer, scheduler, torch.nn.CrossEntropyLoss(reduction="sum"),
                                   config, 1, 1, DistContext())
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert stats["accuracy"] == pytest.approx(expected_accuracy)


@pytest.mark.parametrize("overrides, fragment", [
    (dict(lr=0.0), r"--lr 0.0: the learning rate must be a finite number > 0"),
    (dict(arch="faceode", margin=0.2, margin_scale=129.0), r"--margin-scale must be a scale in \[0, 128\], got 129.0"),
])
def test_a_learning_rate_of_zero_and_a_margin_scale_above_128_are_refused(overrides, fragment):
    with pytest.raises(UsageError, match=fragment):
        small_config("data", "out", **overrides)
    small_config("data", "out", arch="faceode", margin=0.2, margin_scale=128.0)  # the bounds themselves are fine


def test_a_resume_names_an_option_left_out_not_none(tmp_path):
    """A run started without --solver recorded None (the preset's); the refusal says so in the command line's words."""
    started = small_config("data", "out", solver=None, steps=None).to_dict()
    with pytest.raises(UsageError, match=r"--solver \(not given\) → 'rk4'"):
        check_resume_settings(small_config("data", "out"), started, tmp_path / "last.pt")


def test_cli_train_passes_every_option_to_its_config(synthetic_root, tmp_path, monkeypatch):
    """Each option of `edgenode train` reaches TrainConfig (nothing trains: train() is replaced)."""
    seen = []
    monkeypatch.setattr(train_module, "train", seen.append)
    for name in ("teacher.npz", "pairs.tsv", "init.pt", "kd.npz"):
        (tmp_path / name).write_bytes(b"x")
    args = ["train", str(synthetic_root), "--out", str(tmp_path / "run"), "--arch", "faceode", "--width", "12",
            "--solver", "rk4", "--steps", "3", "--epochs", "7", "--batch-size", "12", "--lr", "0.002", "--weight-decay", "0.01",
            "--schedule", "cosine", "--warmup-epochs", "2", "--label-smoothing", "0.1", "--margin", "0.2", "--margin-scale", "30",
            "--augment", "--augment-shift", "0.0625", "--augment-color", "0.3", "--dropout", "0.1", "--seed", "5",
            "--device", "cpu", "--per-class", "20", "--train-per-class", "12", "--val-per-class", "4", "--test-per-class", "3",
            "--image-size", "32", "--strict", "--resume", "--no-progress", "--teacher", str(tmp_path / "teacher.npz"),
            "--label-weight", "0.5", "--distill-weight", "0.7", "--kd-weight", "0.9", "--kd-targets", str(tmp_path / "kd.npz"),
            "--unlabeled", "--near-duplicates", str(tmp_path / "pairs.tsv"), "--amp", "--init", str(tmp_path / "init.pt"),
            "--stop-after", "4", "--ema-decay", "0.99"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config == TrainConfig(
        data=str(synthetic_root), out=str(tmp_path / "run"), arch="faceode", width=12, solver="rk4", steps=3, epochs=7,
        batch_size=12, lr=0.002, weight_decay=0.01, schedule="cosine", warmup_epochs=2, label_smoothing=0.1, margin=0.2,
        margin_scale=30.0, augment=True, augment_shift=0.0625, augment_color=0.3, dropout=0.1, seed=5, device="cpu",
        split=SplitConfig(per_class=20, train=12, val=4, test=3, image_size=32, seed=5, strict=True), resume=True,
        progress=False, teacher=str(tmp_path / "teacher.npz"), label_weight=0.5, distill_weight=0.7, kd_weight=0.9,
        kd_targets=str(tmp_path / "kd.npz"), unlabeled=True, near_duplicates=str(tmp_path / "pairs.tsv"), amp=True,
        init=str(tmp_path / "init.pt"), stop_after=4, ema_decay=0.99)


@pytest.mark.parametrize("command", ["split", "train"])
def test_strict_refuses_an_identity_with_too_few_images_on_the_command_line(tmp_path, command):
    """`--strict` reaches the split: an identity short of --per-class fails the command (exit 1) instead of being
    left out with a warning, and nothing is written."""
    from PIL import Image

    from edgenode.data import make_synthetic_faces

    root = make_synthetic_faces(tmp_path / "data", n_classes=3, per_class=8, size=16, seed=0)
    short = root / "images" / "Short Person"
    short.mkdir()
    for k in range(3):
        Image.new("RGB", (16, 16), (40 * k, 90, 200 - 40 * k)).save(short / f"s{k}.png")
    out = tmp_path / ("split.json" if command == "split" else "run")
    sizes = ["--per-class", "8"] + (["--train", "6", "--val", "1", "--test", "1", "--image-size", "16"] if command == "split" else
                                    ["--train-per-class", "6", "--val-per-class", "1", "--test-per-class", "1", "--image-size", "16",
                                     "--no-progress", "--epochs", "1", "--batch-size", "6", "--arch", "paper", "--width", "4"])
    result = CliRunner().invoke(app, [command, str(root), "--out", str(out), *sizes, "--strict"])
    assert result.exit_code == 1, result.output
    assert "Short Person" in result.output and "too few images for --per-class 8" in " ".join(result.output.split())
    assert not out.exists() or not any(out.iterdir())


def test_only_rank_0_writes_the_run_folder(synthetic_root, tmp_path, monkeypatch):
    """Under torchrun the other ranks train alike but write nothing: no checkpoint, metrics, plot or results."""
    from edgenode.data import build_manifest
    from edgenode.distributed import DistContext

    manifest = build_manifest(str(synthetic_root), SMALL_SPLIT, progress=False).save(tmp_path / "split.json")
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(train_module, "init_distributed", lambda: DistContext(rank=1, world_size=1))
    result = train(small_config(synthetic_root, tmp_path / "run", epochs=1, manifest=str(manifest)))
    assert len(result.history) == 1 and result.test == {}
    assert list((tmp_path / "run").iterdir()) == []


def test_an_epoch_row_keeps_precision_recall_and_f1_apart():
    val = {"loss": 0.5, "accuracy": 0.75, "macro_precision": 0.6, "macro_recall": 0.7, "macro_f1": 0.65, "nfe": 9}
    row = train_module.epoch_row(3, {"loss": 1.0, "accuracy": 0.8, "distill_loss": 0.2, "nfe": 8}, val, 1e-3, 2.0)
    assert row == {"epoch": 3, "train_loss": 1.0, "train_accuracy": 0.8, "train_distill_loss": 0.2, "val_loss": 0.5,
                   "val_accuracy": 0.75, "val_precision": 0.6, "val_recall": 0.7, "val_f1": 0.65, "nfe_train": 8,
                   "nfe_val": 9, "lr": 1e-3, "seconds": 2.0}


def _spy_on_plot(monkeypatch):
    from edgenode import plots

    drawn = []
    original = plots.plt.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(y)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "plot", spy)
    return plots, drawn


def test_run_comparison_plot_draws_each_runs_val_and_train_accuracy(tmp_path, monkeypatch):
    plots, drawn = _spy_on_plot(monkeypatch)
    history = [{"epoch": e, "val_accuracy": 0.1 * e, "train_accuracy": 0.3 * e} for e in (1, 2, 3)]
    plots.plot_run_comparison({"a": history}, tmp_path / "runs.png")
    assert drawn == [("a (val)", pytest.approx([0.1, 0.2, 0.3])), (None, pytest.approx([0.3, 0.6, 0.9]))]


def test_training_curves_draw_the_weight_average_of_a_run_that_keeps_one(tmp_path, monkeypatch):
    plots, drawn = _spy_on_plot(monkeypatch)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": 0.2 * e, "val_accuracy": 0.1 * e,
                "val_accuracy_ema": 0.15 * e} for e in (1, 2)]
    plots.plot_training_curves(history, tmp_path / "curves.png")
    assert drawn[-1] == ("val, weight average", pytest.approx([0.15, 0.3]))
    drawn.clear()
    plots.plot_training_curves([{k: v for k, v in row.items() if k != "val_accuracy_ema"} for row in history], tmp_path / "plain.png")
    assert [label for label, _ in drawn] == ["train", "val", "train", "val"]


def test_each_epoch_draws_its_own_batch_order_and_a_tie_keeps_the_earlier_best(synthetic_root, tmp_path, monkeypatch):
    """Two things no figure shows: a batch order repeated every epoch trains worse without failing, and a tie on
    val replacing best.pt would ship a later (more overfitted) epoch for no gain. Val accuracy is held level here."""
    import edgenode.train as train_module

    orders = []
    real_randperm, real_evaluate = torch.randperm, train_module.evaluate

    def recording_randperm(n, *args, **kwargs):
        perm = real_randperm(n, *args, **kwargs)
        if n == 6 * 16 and kwargs.get("generator") is not None:  # the train split's order, drawn once an epoch
            orders.append(perm.tolist())
        return perm

    def level_val(model, split, num_classes, *args, **kwargs):
        return {**real_evaluate(model, split, num_classes, *args, **kwargs), "accuracy": 0.5}

    monkeypatch.setattr(torch, "randperm", recording_randperm)
    monkeypatch.setattr(train_module, "evaluate", level_val)
    result = train(small_config(synthetic_root, tmp_path / "run"))
    assert len(orders) == 3 and orders[0] != orders[1] != orders[2] != orders[0]
    assert result.best_epoch == 1 and load_checkpoint(result.best_checkpoint).epoch == 1

    first_run, orders[:] = list(orders), []
    train(small_config(synthetic_root, tmp_path / "again"))
    assert orders == first_run  # and the same seed draws the same orders


def test_a_resumed_run_keeps_the_best_epoch_it_had_before_the_pause(synthetic_root, tmp_path, monkeypatch):
    """Val accuracy is held level: epoch 1 is the best and a tie keeps it, paused or not. A resume that forgot the
    best accuracy so far would take its first epoch as an improvement and replace best.pt with a later epoch."""
    real_evaluate = train_module.evaluate

    def level_val(model, split, num_classes, *args, **kwargs):
        return {**real_evaluate(model, split, num_classes, *args, **kwargs), "accuracy": 0.5}

    monkeypatch.setattr(train_module, "evaluate", level_val)
    straight = train(small_config(synthetic_root, tmp_path / "straight", epochs=2))
    assert straight.best_epoch == 1
    train(small_config(synthetic_root, tmp_path / "paused", epochs=2, stop_after=1))
    resumed = train(small_config(synthetic_root, tmp_path / "paused", epochs=2, resume=True))
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.best_epoch == 1 and resumed.best_val_accuracy == 0.5
    assert load_checkpoint(resumed.best_checkpoint).epoch == 1
    assert load_checkpoint(resumed.last_checkpoint).metrics["best_epoch"] == 1
    assert json.loads((tmp_path / "paused" / "results.json").read_text())["best_epoch"] == 1


def test_resume_refuses_a_manifest_other_than_the_one_the_run_trained_on(synthetic_root, tmp_path):
    """A run started with --manifest records no split options to compare: only the manifest's hash tells that a
    resume given another --manifest (another shuffle of the same pictures) would train on other train images."""
    first = build_manifest(str(synthetic_root), SMALL_SPLIT, progress=False).save(tmp_path / "first.json")
    other_split = SplitConfig(per_class=24, train=16, val=4, test=4, seed=1)
    other = build_manifest(str(synthetic_root), other_split, progress=False).save(tmp_path / "other.json")
    run = tmp_path / "run"
    train(small_config(synthetic_root, run, epochs=2, stop_after=1, manifest=str(first), split=SplitConfig()))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(UsageError, match=r"last.pt was trained on another split \(manifest [0-9a-f]{12}…, this run's "):
        train(small_config(synthetic_root, run, epochs=2, resume=True, manifest=str(other), split=SplitConfig()))
    assert (run / "last.pt").read_bytes() == before  # refused before training


def test_the_seed_is_a_32_bit_unsigned_number():
    """Each epoch seeds torch from --seed; numpy's and torch's seeds stop at 2**32 - 1."""
    assert TrainConfig(data="d", seed=2**32 - 1).seed == 2**32 - 1
    for seed in (2**32, -1):
        with pytest.raises(UsageError, match=r"--seed .*: must be in \[0, 2\*\*32\)"):
            TrainConfig(data="d", seed=seed)


def test_a_kd_temperature_of_100_is_the_largest_accepted():
    teacher = dict(data="d", arch="faceode", teacher="t.npz")
    assert TrainConfig(kd_temperature=100.0, **teacher).kd_temperature == 100.0
    for temperature in (100.5, 0.0, float("inf")):
        with pytest.raises(UsageError, match=r"--kd-temperature must be in \(0, 100\]"):
            TrainConfig(kd_temperature=temperature, **teacher)


def test_an_adaptive_solver_needs_only_one_tolerance_that_float32_resolves():
    """The step-size control accepts an error below max(rtol·|y|, atol): a tiny atol beside a usable rtol (the usual
    way to ask for relative error alone) is fine; only both below float32's resolution are refused."""
    config = TrainConfig(data="d", solver="dopri5", rtol=1e-3, atol=1e-10)
    solver = config.model_config(num_classes=3).solver
    assert (solver.rtol, solver.atol) == (1e-3, 1e-10)
    assert TrainConfig(data="d", solver="dopri5", rtol=1e-10, atol=1e-4).atol == 1e-4
    with pytest.raises(UsageError, match=r"--rtol 1e-09 --atol 1e-10: training runs in float32"):
        TrainConfig(data="d", solver="dopri5", rtol=1e-9, atol=1e-10)


def test_init_may_switch_dropout_on(trained_run, synthetic_root, tmp_path):
    """The source was trained without dropout; fine-tuning it with --dropout 0.3 adds a layer to the head, which
    shifts the names of the head's later weights. The run starts from the source's weights all the same (a learning
    rate of 1e-9 keeps them to within 1e-6: a fresh network or a misplaced layer would be far off)."""
    from edgenode.model import rename_weights

    source = load_checkpoint(trained_run.best_checkpoint)
    assert source.model_config.dropout == 0.0
    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "tuned"), arch="odenet", width=16, epochs=1,
                         batch_size=8, lr=1e-9, dropout=0.3, manifest=str(trained_run.run_dir / "manifest.json"),
                         progress=False, table_every=0, init=str(trained_run.best_checkpoint))
    tuned = load_checkpoint(train(config).last_checkpoint)
    assert tuned.model_config.dropout == 0.3 and set(tuned.state_dict) != set(source.state_dict)
    back = rename_weights(tuned.state_dict, tuned.model_config, source.model_config)
    assert list(back) == list(source.state_dict)
    for (name, weight), (_, tuned_weight) in zip(source.state_dict.items(), back.items()):
        torch.testing.assert_close(tuned_weight, weight, rtol=0, atol=1e-6, msg=name)
