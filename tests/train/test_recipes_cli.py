"""Every shipped recipe parses into a valid TrainConfig; CLI flags override recipe values."""

from pathlib import Path

import pytest

from bhvit.train.cli import config_from_args, train_parser
from bhvit.train.config import TrainConfig, choose_window_size, load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.toml"))


def test_recipes_exist():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(path):
    cfg = load_recipe(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.img_size % 32 == 0
    window = cfg.model.window_size or choose_window_size(cfg.data.img_size)
    assert (cfg.data.img_size // 32) % window == 0
    assert cfg.loss.mode == "ce" or cfg.loss.teacher


def test_unknown_recipe_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_recipe(bad)


def test_flags_override_recipe():
    recipe = next(p for p in RECIPES if p.name == "fashion_mnist_binary_kd.toml")
    args = train_parser().parse_args(["--recipe", str(recipe), "--epochs", "3", "--lr", "0.01",
                                      "--no-scale-lr", "--override", "depths=[1,1,2,1]", "--out", "x"])
    cfg = config_from_args(args)
    assert cfg.run.epochs == 3 and cfg.optim.lr == 0.01 and not cfg.optim.scale_lr and cfg.run.out_dir == "x"
    assert cfg.model.overrides["depths"] == [1, 1, 2, 1] and cfg.model.overrides["widths"] == [32, 64, 128, 256]
    assert cfg.loss.teacher == "runs/fmnist_fp/checkpoint.pt"  # untouched recipe values stay


def test_teacher_flag_switches_to_paper_loss():
    cfg = config_from_args(train_parser().parse_args(["--teacher", "t.pt", "--precision", "some_fp"]))
    assert cfg.loss.mode == "paper" and cfg.loss.teacher == "t.pt" and cfg.model.precision == "some_fp"
    cfg = config_from_args(train_parser().parse_args([]))
    assert cfg.loss.mode == "ce" and cfg.model.window_size is None


def test_choose_window_size():
    assert [choose_window_size(s) for s in (32, 64, 96, 128, 224, 448)] == [1, 2, 3, 4, 7, 7]
    with pytest.raises(ValueError):
        choose_window_size(100)


def test_cli_train_reports_errors_cleanly(capsys):
    from bhvit.train import cli_train

    assert cli_train(["--data", "/no/such/dir", "--epochs", "1"]) == 2
    assert "neither" in capsys.readouterr().err
