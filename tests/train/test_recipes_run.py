"""Every shipped recipe trains: one optimizer step and a full evaluation on small data of its dataset's
format (the real datasets are not on this machine), with the recipe's own model, augmentation, loss
mix and optimizer. Recipes that distil from one of our checkpoints get a one-step fp teacher made with
the same recipe first; a timm teacher is replaced by the stand-in of conftest.py with fine-tuned weights."""

import json
from pathlib import Path

import pytest
import torch

from bhvit.cli.train import cmd_train
from bhvit.train.config import load_recipe
from bhvit.train.logs import read_jsonl

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.toml"))
QUICK = [
    "--max-steps",
    "1",
    "--batch-size",
    "2",
    "--train-subset",
    "4",
    "--threads",
    "1",
    "--workers",
    "0",
    "--no-progress",
    "--no-plots",
    "--log-every",
    "1",
]


def dataset_dir(name: str, fmnist_dir: Path, cifar_dir: Path, folder_dir: Path) -> Path:
    if name == "fashion_mnist":
        return fmnist_dir
    if name == "cifar10":
        return cifar_dir
    return folder_dir  # ImageNet-style folders


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_one_step(path, fmnist_dir, cifar_dir, folder_dir, fake_timm, tmp_path, capsys):
    cfg = load_recipe(path)
    data = str(dataset_dir(cfg.data.name, fmnist_dir, cifar_dir, folder_dir))
    extra = []
    if cfg.loss.teacher and cfg.loss.teacher.startswith("timm:"):
        classes = 2 if data == str(folder_dir) else 10
        torch.save(fake_timm.Net(classes).state_dict(), tmp_path / "tuned.pth")
        extra = ["--teacher", f"timm:fakenet={tmp_path / 'tuned.pth'}"]
    elif cfg.loss.teacher:
        teacher_out = tmp_path / "teacher"
        assert (
            cmd_train(
                [
                    "--recipe",
                    str(path),
                    "--data",
                    data,
                    "--precision",
                    "fp",
                    "--loss",
                    "ce",
                    "--teacher",
                    "",
                    "--init-from",
                    "",
                    "--out",
                    str(teacher_out),
                    *QUICK,
                ]
            )
            == 0
        )
        ckpt = str(teacher_out / "checkpoint.pt")
        extra = ["--teacher", ckpt] + (["--init-from", ckpt] if cfg.model.init_from else [])
    out = tmp_path / "run"
    assert cmd_train(["--recipe", str(path), "--data", data, "--out", str(out), *QUICK, *extra]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == cfg.model.arch and summary["precision"] == cfg.model.precision
    assert summary["steps"] == 1 and summary["loss_mode"] == cfg.loss.mode
    step = next(r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "step")
    assert torch.isfinite(torch.tensor(step["loss"]))
    if cfg.loss.teacher:
        assert step["kd_loss"] > 0
