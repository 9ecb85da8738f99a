"""``bhvit train`` without a recipe: its own defaults (not the recipes'), no flips on a folder unless
asked, and the automatic fp stage of a binary run (logged, initialising and distilling the student,
resumable in either stage). Tiny ``bhvit_test`` runs on a 12-image folder: 3 steps per epoch."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from support import QUIET

from bhvit.cli.train import cmd_train, config_from_args, train_parser
from bhvit.data import DataConfig, build_datasets, folder
from bhvit.data.transforms import RandomHorizontalFlip, train_transform
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.auto_teacher import AUTO_TEACHER_DIR, auto_teacher_split
from bhvit.train.config import TrainConfig, load_recipe
from bhvit.train.logs import read_jsonl

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.toml"))


@pytest.fixture(scope="module")
def make_folder(image_folder):
    return image_folder


def cli_config(*argv: str) -> TrainConfig:
    return config_from_args(train_parser().parse_args(list(argv)))


# ---------------------------------------------------------------------------------------------
# Defaults: the CLI path gets its own, recipes keep theirs
# ---------------------------------------------------------------------------------------------
def test_no_recipe_defaults_on_a_folder(tmp_path, make_folder):
    data = make_folder(tmp_path / "d")
    binary = cli_config("--data", str(data), "--precision", "binary", "--epochs", "3")
    assert (binary.optim.lr, binary.optim.scale_lr, binary.optim.warmup_epochs) == (4e-3, False, pytest.approx(0.2))
    assert binary.optim.weight_decay == 0.0 and binary.loss.label_smoothing == 0.1
    assert binary.data.hflip is False and binary.loss.auto_teacher and binary.data.batch_size == 32
    fp = cli_config("--data", str(data), "--precision", "fp", "--epochs", "60")
    assert fp.optim.weight_decay == 0.05 and fp.optim.warmup_epochs == pytest.approx(3.0)
    assert binary.data.augment == "none" and fp.data.augment == "auto"  # a long run is augmented
    assert fp.optim.lr == 2e-3 and cli_config("--data", str(data), "--epochs", "10").optim.lr == 2e-3
    assert cli_config("--data", str(data), "--epochs", "300").optim.warmup_epochs == 5.0
    assert cli_config("--data", str(data), "--init-from", "m.pt").optim.lr == 5e-4  # fine-tuning
    student = cli_config("--data", str(data), "--init-from", "t.pt", "--teacher", "t.pt", "--epochs", "2")
    assert student.optim.lr == 4e-3 and student.loss.mode == "paper"  # the two-step distillation of the docs


def test_named_datasets_keep_their_flips_and_given_flags_win(tmp_path, make_folder):
    assert cli_config("--data", "cifar10").data.hflip is None
    data = make_folder(tmp_path / "d")
    cfg = cli_config(
        "--data",
        str(data),
        "--hflip",
        "--lr",
        "1e-3",
        "--scale-lr",
        "--warmup-epochs",
        "0",
        "--weight-decay",
        "0.1",
        "--no-auto-teacher",
        "--batch-size",
        "128",
    )
    assert cfg.data.hflip is True and cfg.optim.lr == 1e-3 and cfg.optim.scale_lr and cfg.data.batch_size == 128
    assert cfg.optim.warmup_epochs == 0 and cfg.optim.weight_decay == 0.1 and not cfg.loss.auto_teacher
    assert TrainConfig().data.batch_size == 128
    assert cli_config("--data", "cifar10", "--no-hflip").data.hflip is False


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_see_only_the_dataclass_defaults(path):
    assert cli_config("--recipe", str(path)) == load_recipe(path)


def test_dataclass_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.optim.lr, cfg.optim.scale_lr, cfg.optim.warmup_epochs, cfg.optim.weight_decay) == (5e-4, True, 0, 0)
    assert cfg.data.hflip is None and not cfg.loss.auto_teacher and cfg.data.augment == "auto"


def test_help_shows_both_defaults():
    text = " ".join(train_parser().format_help().split())
    assert (
        "(optim.lr, default 0.002; 0.004 for binary and some-fp under 10 epochs; 0.0005 with --init-from "
        "and no --teacher without --recipe, 0.0005 with one)"
    ) in text
    assert "--hflip, --no-hflip" in text and "--auto-teacher, --no-auto-teacher" in text


# ---------------------------------------------------------------------------------------------
# Flips
# ---------------------------------------------------------------------------------------------
def _flips(transform) -> bool:
    return any(isinstance(t, RandomHorizontalFlip) for t in transform.transforms)


@pytest.mark.parametrize("kind", ["imagenet", "small", "none"])
def test_hflip_switch(kind):
    assert _flips(train_transform(kind, 32)) == (kind != "none")  # the families as the paper uses them
    assert not _flips(train_transform(kind, 32, hflip=False))
    assert _flips(train_transform(kind, 32, hflip=True))


def test_folder_training_images_are_not_mirrored_by_default(tmp_path, make_folder):
    data = make_folder(tmp_path / "d", side=32)
    image = folder.load(data)[0][0][0]  # (3, 32, 32) uint8, asymmetric noise
    for hflip, expect_mirrors in ((False, False), (True, True)):
        cfg = cli_config("--data", str(data), "--augment", "none", *(["--hflip"] if hflip else []))
        transform = build_datasets(cfg.data).train.transform
        outs = [transform(image, random.Random(s)) for s in range(16)]
        assert any(torch.equal(o, image.flip(-1)) for o in outs) == expect_mirrors
        assert any(torch.equal(o, image) for o in outs)


def test_auto_augmentation_of_a_folder_follows_its_image_size(tmp_path, make_folder):
    small, large = make_folder(tmp_path / "s", side=28), make_folder(tmp_path / "l", side=96)
    assert folder.typical_side(folder.load(small)[0]) == 28
    assert folder.typical_side(folder.load(large)[0]) == 96
    kinds = {}
    for name, root in (("small", small), ("large", large)):
        steps = build_datasets(DataConfig(name=str(root), hflip=False)).train.transform.transforms
        kinds[name] = type(steps[0]).__name__
    assert kinds == {"small": "ResizeCenterCrop", "large": "RandomResizedCrop"}


# ---------------------------------------------------------------------------------------------
# The automatic fp stage
# ---------------------------------------------------------------------------------------------
def test_split_of_the_epochs():
    assert [auto_teacher_split(e, None) for e in (1, 2, 3, 6, 10)] == [(1, 1), (1, 1), (1, 2), (2, 4), (3, 7)]
    assert auto_teacher_split(5, 2) == (2, 3)


def auto_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(data),
        "--arch",
        "bhvit_test",
        "--precision",
        "binary",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "6",
        "--out",
        str(out),
        *QUIET,
        "--log-every",
        "1",
        "--flip-every",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, make_folder) -> tuple[Path, Path, str]:
    """An uninterrupted 3-epoch binary run with its automatic fp stage (1 + 2 epochs, 3 steps each)."""
    base = tmp_path_factory.mktemp("auto")
    data, out = make_folder(base / "data"), base / "full"
    capture = base / "stderr.txt"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cmd_train(auto_argv(data, out)) == 0
    capture.write_text(err.getvalue())
    return data, out, err.getvalue()


def test_auto_teacher_runs_logs_initialises_and_distils(auto_run):
    _, out, stderr = auto_run
    fp_dir = out / AUTO_TEACHER_DIR
    fp_summary = json.loads((fp_dir / "summary.json").read_text())
    assert fp_summary["precision"] == "fp" and fp_summary["epochs"] == 1 and fp_summary["steps"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "binary" and summary["epochs"] == 2 and summary["steps"] == 6
    assert summary["auto_teacher"]["test_acc1"] == fp_summary["test_acc1"]
    assert summary["loss_mode"] == "paper" and summary["teacher"] == str(fp_dir / "checkpoint.pt")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["init_from"] == str(fp_dir / "checkpoint.pt") and not cfg["loss"]["auto_teacher"]
    assert "training an fp bhvit_test first (1 of 3 epochs" in stderr
    assert f"fp stage: {fp_summary['test_acc1']:.2f}% top-1" in stderr
    init = [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "init"]
    assert len(init) == 1 and init[0]["copied"] > 0
    steps = [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "step"]
    assert all(r["kd_loss"] > 0 for r in steps)  # distilled from the fp stage


def test_no_auto_teacher_trains_binary_alone(auto_run, tmp_path):
    data, _, _ = auto_run
    assert cmd_train(auto_argv(data, tmp_path / "plain", "--no-auto-teacher", "--max-steps", "2")) == 0
    assert not (tmp_path / "plain" / AUTO_TEACHER_DIR).exists()
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["loss_mode"] == "ce"


@pytest.mark.parametrize("stop", [2, 4], ids=["killed_in_fp_stage", "killed_in_binary_stage"])
def test_resume_across_stages_is_exact(auto_run, tmp_path, stop):
    data, full, _ = auto_run
    out = tmp_path / "run"
    assert cmd_train(auto_argv(data, out, "--stop-after-steps", str(stop))) == 0
    done_fp = (out / AUTO_TEACHER_DIR / "summary.json").is_file()
    assert done_fp == (stop > 3) and (out / "checkpoint.pt").is_file() == (stop > 3)
    assert cmd_train(auto_argv(data, out, "--resume", str(out / "checkpoint.pt"))) == 0
    for sub in (AUTO_TEACHER_DIR, "."):
        want, got = ckpt_io.load(full / sub / "checkpoint.pt"), ckpt_io.load(out / sub / "checkpoint.pt")
        assert got["step"] == want["step"]
        for key, value in want["model"].items():
            assert torch.equal(got["model"][key], value), (sub, key)


def test_resume_elsewhere_is_one_clear_line(auto_run, tmp_path, capsys):
    data, full, _ = auto_run
    assert cmd_train(auto_argv(data, tmp_path / "other", "--resume", str(full / "checkpoint.pt"))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resumes from its own" in err
