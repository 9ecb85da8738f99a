"""Every shipped recipe parses into a valid TrainConfig; CLI flags override recipe values."""

from pathlib import Path

import pytest

from bhvit.cli.train import config_from_args, train_parser
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
    args = train_parser().parse_args(
        [
            "--recipe",
            str(recipe),
            "--epochs",
            "3",
            "--lr",
            "0.01",
            "--no-scale-lr",
            "--override",
            "depths=[1,1,2,1]",
            "--out",
            "x",
        ]
    )
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
    from bhvit.cli.train import cmd_train

    assert cmd_train(["--data", "/no/such/dir", "--epochs", "1"]) == 2
    assert "neither" in capsys.readouterr().err


# Every flag bhvit train had before its flags were generated from the config dataclasses, with a value,
# and where that value lands: each must keep its spelling and meaning.
LEGACY_FLAGS = [
    ("--data", "synthetic", "data.name", "synthetic"),
    ("--data-root", "r", "data.root", "r"),
    ("--img-size", "64", "data.img_size", 64),
    ("--augment", "small", "data.augment", "small"),
    ("--batch-size", "16", "data.batch_size", 16),
    ("--workers", "2", "data.num_workers", 2),
    ("--download", None, "data.download", True),
    ("--train-subset", "8", "data.train_subset", 8),
    ("--arch", "bhvit_test", "model.arch", "bhvit_test"),
    ("--precision", "some_fp", "model.precision", "some_fp"),
    ("--attn-quant", "gsb", "model.attn_quant", "gsb"),
    ("--window-size", "2", "model.window_size", 2),
    ("--norm", "ln", "model.norm", "ln"),
    ("--drop-path", "0.1", "model.drop_path_rate", 0.1),
    ("--recu", None, "model.recu", True),
    ("--init-from", "i.pt", "model.init_from", "i.pt"),
    ("--loss", "kd", "loss.mode", "kd"),
    ("--teacher", "t.pt", "loss.teacher", "t.pt"),
    ("--kd-weight", "0.5", "loss.kd_weight", 0.5),
    ("--reg-weight", "0.2", "loss.reg_weight", 0.2),
    ("--reg-form", "authors", "loss.reg_form", "authors"),
    ("--label-smoothing", "0", "loss.label_smoothing", 0.0),
    ("--lr", "0.01", "optim.lr", 0.01),
    ("--no-scale-lr", None, "optim.scale_lr", False),
    ("--weight-decay", "0.05", "optim.weight_decay", 0.05),
    ("--warmup-epochs", "1.5", "optim.warmup_epochs", 1.5),
    ("--clip-grad", "5", "optim.clip_grad", 5.0),
    ("--epochs", "3", "run.epochs", 3),
    ("--out", "o", "run.out_dir", "o"),
    ("--seed", "7", "run.seed", 7),
    ("--device", "cpu", "run.device", "cpu"),
    ("--amp", "bf16", "run.amp", "bf16"),
    ("--ema", "0.99", "run.ema_decay", 0.99),
    ("--resume", "c.pt", "run.resume", "c.pt"),
    ("--max-steps", "4", "run.max_steps", 4),
    ("--ckpt-every", "2", "run.ckpt_every", 2),
    ("--log-every", "3", "run.log_every", 3),
    ("--flip-every", "0", "run.flip_every", 0),
    ("--grad-checkpointing", None, "run.grad_checkpointing", True),
    ("--compile", None, "run.compile", True),
    ("--threads", "1", "run.threads", 1),
    ("--no-progress", None, "run.progress", False),
    ("--no-plots", None, "run.plots", False),
]


def _value(cfg: TrainConfig, dest: str):
    table, key = dest.split(".")
    return getattr(getattr(cfg, table), key)


def test_every_legacy_flag_keeps_its_meaning():
    argv = [a for flag, value, _, _ in LEGACY_FLAGS for a in ([flag] if value is None else [flag, value])]
    cfg = config_from_args(train_parser().parse_args(argv))
    for flag, _, dest, want in LEGACY_FLAGS:
        assert _value(cfg, dest) == want, flag
    default = TrainConfig()
    assert all(_value(default, dest) != want for _, _, dest, want in LEGACY_FLAGS)  # each flag changed something


def test_every_config_field_has_a_flag_typed_from_its_annotation():
    import dataclasses

    from bhvit.data.datasets import AUGMENTATIONS
    from bhvit.models.bhvit import ATTN_QUANTS, NORMS, PRECISIONS
    from bhvit.train.config import AMP_MODES, LOSS_MODES, REG_FORMS

    actions = {a.dest: a for a in train_parser()._actions}
    for table in ("data", "model", "loss", "optim", "run"):
        for f in dataclasses.fields(getattr(TrainConfig(), table)):
            assert f"{table}.{f.name}" in actions or f"{table}.{f.name}" == "model.overrides"
    choices = {
        "model.precision": PRECISIONS,
        "model.attn_quant": ATTN_QUANTS,
        "model.norm": NORMS,
        "data.augment": AUGMENTATIONS,
        "loss.mode": LOSS_MODES,
        "loss.reg_form": REG_FORMS,
        "run.amp": AMP_MODES,
    }
    assert {d: tuple(a.choices) for d, a in actions.items() if a.choices} == choices
    cfg = config_from_args(
        train_parser().parse_args(
            ["--betas", "0.8", "0.9", "--eval-batch-size", "7", "--stop-after-steps", "2", "--min-lr", "0"]
        )
    )
    assert cfg.optim.betas == (0.8, 0.9) and cfg.data.eval_batch_size == 7 and cfg.run.stop_after_steps == 2
    assert cfg.optim.min_lr == 0.0


@pytest.mark.parametrize("argv", [["--precision", "int8"], ["--epochs", "two"], ["--amp", "fp8"], ["--norm"]])
def test_bad_flag_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        train_parser().parse_args(argv)
    assert exc.value.code == 2 and argv[0] in capsys.readouterr().err


def test_help_names_each_field_and_its_docstring():
    text = train_parser().format_help()
    assert "(run.out_dir, default 'runs/default')" in text and "--no-scale-lr" in text
    assert "(loss.mode, default 'ce')" in text  # TrainConfig's default, not LossConfig's
    assert "max global grad norm (None = off)" in text  # from OptimConfig's docstring
