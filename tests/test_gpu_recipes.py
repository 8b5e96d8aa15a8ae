"""The GPU job's recipes are only run on a lent GPU, minutes at a time: a bad key or value must fail here instead."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgenode.train import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "gpu" / "accuracy_runs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("accuracy_runs", SCRIPT)
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
    preset: RESULTS reads the names as the recipes."""
    for name, recipe in RUNS.RECIPES.items():
        seed = int(name.rsplit("-s", 1)[1]) if name.rsplit("-s", 1)[-1].isdigit() else 0
        assert recipe["seed"] == seed, name
        assert (recipe.get("augment_shift") == 0.03125) == ("shift2" in name), name
        assert (recipe.get("width") == 160) == ("wide" in name), name
        assert (recipe.get("augment_color") == 0.4) == ("color4" in name), name
        assert (recipe.get("arch") == "faceode-res") == ("-res" in name), name
    assert set(RUNS.ABLATION.split(",")) <= set(RUNS.RECIPES)


def test_set_overrides_win_over_the_recipe(tmp_path):
    """--set width=16 makes a CPU dry run small even for a recipe that sets its own width (160 here)."""
    config = RUNS.config_for("w5-wide-rk4x4-color4", tmp_path, tmp_path / "runs", 1, {"width": 16, "steps": 1})
    assert (config["width"], config["steps"], config["augment_color"]) == (16, 1, 0.4)
    assert RUNS.config_for("w5-wide-rk4x4-color4", tmp_path, tmp_path / "runs", 1)["width"] == 160
