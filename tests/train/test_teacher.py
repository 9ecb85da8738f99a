"""Teachers: our checkpoints and timm models (through the stand-in ``timm`` of conftest.py, since timm
cannot import beside the CPU torch wheel here; the stand-in has timm's ``create_model`` / ``pretrained_cfg``
interface and records what the model is fed)."""

import sys

import pytest
import torch
from support import QUIET
from torch import nn

from bhvit.data import DataConfig
from bhvit.train import train
from bhvit.train.config import LossConfig, ModelSpec, OptimConfig, RunConfig, TrainConfig
from bhvit.train.logs import read_jsonl
from bhvit.train.teacher import FrozenTeacher, load_teacher


def test_teacher_is_frozen_and_missing_timm_error_is_clear(monkeypatch):
    t = FrozenTeacher(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5)))
    t.train()
    assert not t.model.training and not any(p.requires_grad for p in t.parameters())
    x = torch.randn(2, 1, 2, 2)
    assert torch.equal(t(x), t(x))  # dropout off
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(RuntimeError, match="needs timm"):
        load_teacher("timm:deit_small_patch16_224", 10)


def test_teacher_from_any_model_file(tmp_path):
    """A teacher loads through bhvit.load_model, so a bhvit safetensors file works as well as a training
    checkpoint; a head of the wrong size is refused."""
    import bhvit

    model = bhvit.create_model("bhvit_test", precision="fp", num_classes=10, in_chans=1).eval()
    path = bhvit.save_model(model, tmp_path / "teacher.safetensors")
    teacher = load_teacher(str(path), 10)
    x = torch.randn(2, 1, *model.config.img_size)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="predicts 10 classes"):
        load_teacher(str(path), 7)


def test_timm_input_is_renormalised_expanded_and_resized(fake_timm):
    data_mean, data_std = (0.286,), (0.353,)
    teacher = load_teacher("timm:fakenet", 1000, data_stats=(data_mean, data_std))
    assert fake_timm.calls[-1] == {"name": "fakenet", "pretrained": True, "num_classes": 1000}
    u = torch.rand(2, 1, 32, 32)  # pixels in [0, 1], grey
    teacher((u - data_mean[0]) / data_std[0])
    fed = teacher.model.seen[-1]
    assert fed.shape == (2, 3, fake_timm.SIDE, fake_timm.SIDE)
    side = fake_timm.SIDE
    up = torch.nn.functional.interpolate(
        u.expand(-1, 3, -1, -1), size=(side, side), mode="bilinear", align_corners=False
    )
    expect = (up - torch.tensor(fake_timm.MEAN).view(1, 3, 1, 1)) / torch.tensor(fake_timm.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(fed, expect, rtol=1e-5, atol=1e-5)


def test_pretrained_timm_head_must_fit_the_classes(fake_timm):
    with pytest.raises(ValueError, match="predicts 1000 classes but the data has 10.*timm:fakenet=WEIGHTS"):
        load_teacher("timm:fakenet", 10)
    with pytest.raises(RuntimeError, match="could not build the pretrained teacher 'nosuchnet'.*=PATH"):
        load_teacher("timm:nosuchnet", 10)


def test_timm_teacher_from_a_weights_file(fake_timm, tmp_path):
    torch.manual_seed(0)
    tuned = fake_timm.Net(10)
    torch.save({"model": tuned.state_dict(), "epoch": 3}, tmp_path / "tuned.pth")
    teacher = load_teacher(f"timm:fakenet={tmp_path / 'tuned.pth'}", 10)
    assert fake_timm.calls[-1]["pretrained"] is False and fake_timm.calls[-1]["num_classes"] == 10
    assert torch.equal(teacher.model.head.weight, tuned.head.weight)
    torch.save({"head.weight": torch.zeros(5, 3), "head.bias": torch.zeros(5)}, tmp_path / "wrong.pth")
    with pytest.raises((ValueError, RuntimeError), match="head"):
        load_teacher(f"timm:fakenet={tmp_path / 'wrong.pth'}", 10)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_teacher(f"timm:fakenet={tmp_path / 'nothere.pth'}", 10)


def test_training_distils_from_a_timm_teacher(fake_timm, fmnist_dir, tmp_path):
    tuned = fake_timm.Net(10)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    cfg = TrainConfig(
        data=DataConfig(name=str(fmnist_dir), img_size=32, batch_size=16, eval_batch_size=32),
        model=ModelSpec(arch="bhvit_test", precision="binary"),
        loss=LossConfig(mode="kd", teacher=f"timm:fakenet={tmp_path / 'tuned.pth'}"),
        optim=OptimConfig(lr=2e-3, scale_lr=False, warmup_epochs=0.0),
        run=RunConfig(
            epochs=1, max_steps=2, out_dir=str(tmp_path / "run"), log_every=1, progress=False, plots=False, threads=1
        ),
    )
    train(cfg)
    steps = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "step"]
    assert len(steps) == 2 and all(r["kd_loss"] > 0 and r["loss"] == pytest.approx(r["kd_loss"]) for r in steps)


def test_cli_reports_an_unreachable_timm_teacher(fake_timm, fmnist_dir, tmp_path, capsys):
    from bhvit.cli.train import cmd_train

    rc = cmd_train(
        [
            "--data",
            str(fmnist_dir),
            "--teacher",
            "timm:nosuchnet",
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "r"),
            *QUIET,
        ]
    )
    assert rc == 2 and "bhvit train: error: timm could not build" in capsys.readouterr().err
