"""The GPU job's recipes are only run on a lent GPU, minutes at a time: a bad key or value must fail here instead."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from edgenode.train import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "gpu" / "accuracy_runs.py"


def load_script(path=SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUNS = load_script()


@pytest.mark.parametrize("name", sorted(RUNS.RECIPES))
def test_every_recipe_is_a_valid_train_config(name, tmp_path):
    config = TrainConfig(**RUNS.config_for(name, tmp_path / "pack", tmp_path / "runs", epochs=3))
    assert config.epochs == 3 and config.out == str(tmp_path / "runs" / name)
    assert "{pack}" not in repr(config)  # every placeholder filled in
    if config.teacher:
        assert config.teacher == str(tmp_path / "pack" / "teacher.npz")


def test_recipe_names_state_what_differs():
    """A -sN suffix is the seed, -shift2 a 2-px shift, -color4 colour jitter 0.4, -wide width 160, -res the residual
    preset, -m02 a cosine margin of 0.2, -scaleN its fixed scale N: RESULTS reads the names as the recipes."""
    for name, recipe in RUNS.RECIPES.items():
        seed = int(name.rsplit("-s", 1)[1]) if name.rsplit("-s", 1)[-1].isdigit() else 0
        assert recipe["seed"] == seed, name
        assert (recipe.get("augment_shift") == 0.03125) == ("shift2" in name), name
        assert (recipe.get("width") == 160) == ("wide" in name), name
        assert (recipe.get("augment_color") == 0.4) == ("color4" in name), name
        assert (recipe.get("arch") == "faceode-res") == ("-res" in name), name
        assert (recipe.get("margin") == 0.2) == ("-m02" in name) and recipe.get("margin", 0.2) == 0.2, name
        scale = name.rsplit("-scale", 1)[1] if "-scale" in name else "0"
        assert scale.isdigit() and recipe.get("margin_scale", 0.0) == float(scale), name
    assert set(RUNS.ABLATION.split(",")) <= set(RUNS.RECIPES)


def test_set_overrides_win_over_the_recipe(tmp_path):
    """--set width=16 makes a CPU dry run small even for a recipe that sets its own width (160 here)."""
    config = RUNS.config_for("w5-wide-rk4x4-color4", tmp_path, tmp_path / "runs", 1, {"width": 16, "steps": 1})
    assert (config["width"], config["steps"], config["augment_color"]) == (16, 1, 0.4)
    assert RUNS.config_for("w5-wide-rk4x4-color4", tmp_path, tmp_path / "runs", 1)["width"] == 160


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    """A pack as pack_pins.py writes it, of 4 synthetic identities: images, manifest, teacher, near-duplicates."""
    import tarfile

    tmp = tmp_path_factory.mktemp("pack")
    root = load_script(EXAMPLES / "training_fingerprint.py").synthetic_setup(tmp / "tiny", per_class=12)
    with tarfile.open(tmp / "tiny.tgz", "w:gz") as tar:
        tar.add(root, arcname="tiny")
    return tmp / "tiny.tgz"


def _job(pack, out, work, *extra):
    import subprocess
    import sys

    small = ["--set", "width=8", "--set", "steps=1", "--set", "batch_size=8", "--set", "warmup_epochs=1", "--set", "ema_decay=0.998"]
    done = subprocess.run([sys.executable, str(SCRIPT), str(pack), str(out), "--runs", "w5-rk4x4", "--budget", "300",
                           "--work", str(work), *small, *extra], capture_output=True, text=True, cwd=SCRIPT.parents[2],
                          env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_run_paused_by_one_call_finishes_in_the_next_as_if_never_paused(tiny_pack, tmp_path):
    """A fixed --epochs schedule spans two calls on a warm machine: a call that ends early leaves the run in --work,
    and the next call continues it to the same weights and figures as one call."""
    import tarfile

    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("not the job's")  # the job removes only what it put there
    straight = _job(tiny_pack, tmp_path / "straight", work, "--epochs", "3")
    assert not (work / "runs").exists() and not (work / "tiny").exists()  # finished: nothing kept to resume
    first = _job(tiny_pack, tmp_path / "first", work, "--epochs", "3", "--set", "stop_after=1")
    assert "w5-rk4x4: paused; the next call" in first and '"paused": [\n  "w5-rk4x4"\n ]' in first
    second = _job(tiny_pack, tmp_path / "second", work, "--epochs", "3", "--resume")
    assert '"paused": []' in second and '"paused": []' in straight and not (work / "runs").exists()
    assert (work / "mine.txt").read_text() == "not the job's"
    # every epoch's figures, the two resumed ones included (the seconds aside): the val loss of epoch 3 is a
    # function of the weights after it, so equal figures mean the resumed run ended where the straight one did
    history = [[{k: v for k, v in row.items() if k != "seconds"} for row in _metrics(tmp_path / out)] for out in ("straight", "second")]
    assert [row["epoch"] for row in history[1]] == [1, 2, 3] and history[1] == history[0]
    assert "val_accuracy_ema" in history[1][0]  # the weight average of --set ema_decay, resumed exactly too
    with tarfile.open(tmp_path / "second" / "w5-rk4x4.tgz") as tar:  # both calls' log: epoch 1, a pause, epochs 2 and 3
        log = tar.extractfile("w5-rk4x4/train.log").read().decode()
        assert {"w5-rk4x4/best-slim.pt", "w5-rk4x4/best-ema.pt"} <= set(tar.getnames())
    assert [log.count(f"epoch   {k}/3") for k in (1, 2, 3)] == [1, 1, 1]
    assert log.index("stopped after epoch 1 of 3") < log.index("last.pt after epoch 1") < log.index("epoch   2/3")


def _metrics(out):
    import json
    import tarfile

    with tarfile.open(out / "w5-rk4x4.tgz") as tar:
        return json.load(tar.extractfile("w5-rk4x4/metrics.json"))


def test_resume_on_a_machine_that_lost_the_run_says_so():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(SCRIPT), "missing.tgz", "out", "--runs", "w5-rk4x4", "--resume"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--resume continues a fixed schedule: pass the --epochs" in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), "missing.tgz", "out", "--runs", "w5-wide-rk4x4-color4-e180", "--epochs", "99"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is a 180-epoch schedule: pass --epochs 180" in done.stderr


def test_resume_without_the_paused_run_says_the_machine_was_given_back(tiny_pack, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(SCRIPT), str(tiny_pack), str(tmp_path / "out"), "--runs", "w5-rk4x4",
                           "--epochs", "3", "--resume", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])})
    assert done.returncode != 0 and "--resume: no paused w5-rk4x4 in" in done.stderr and "drop --resume" in done.stderr
