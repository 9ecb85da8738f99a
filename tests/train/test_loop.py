"""End-to-end loop tests on a fake 64-image Fashion-MNIST with the tiny ``bhvit_test`` variant."""

import json

import pytest
import torch

import bhvit
from bhvit.data import DataConfig
from bhvit.train import NonFiniteLossError, TrainConfig, train
from bhvit.train import checkpoint as ckpt_io
from bhvit.train import loop as loop_mod
from bhvit.train.config import LossConfig, ModelSpec, OptimConfig, RunConfig
from bhvit.train.logs import read_jsonl


def tiny_cfg(data_dir, out, **run) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(name=str(data_dir), img_size=32, batch_size=16, eval_batch_size=32),
        model=ModelSpec(arch="bhvit_test", precision="binary", drop_path_rate=0.1),
        loss=LossConfig(mode="ce", reg_weight=0.1, reg_fraction=0.5),
        optim=OptimConfig(lr=2e-3, scale_lr=False, warmup_epochs=0.5, clip_grad=5.0),
        run=RunConfig(
            **{
                "epochs": 2,
                "out_dir": str(out),
                "log_every": 1,
                "flip_every": 1,
                "progress": False,
                "plots": False,
                "threads": 1,
                "ema_decay": 0.9,
                **run,
            }
        ),
    )


def test_run_writes_summary_logs_and_checkpoint(fmnist_dir, tmp_path):
    summary = train(tiny_cfg(fmnist_dir, tmp_path / "run"))
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("test_acc1", "test_acc5", "epochs", "arch", "precision", "checkpoint"):
        assert on_disk[key] == summary[key]
    assert on_disk["epochs"] == 2 and on_disk["test_images"] == 32 and on_disk["steps"] == 8
    assert 0 <= on_disk["test_acc1"] <= on_disk["test_acc5"] <= 100
    records = read_jsonl(tmp_path / "run" / "log.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all({"loss", "task_loss", "reg_loss", "lr"} <= set(r) for r in steps)
    assert all(0 <= r["flip_ratio"] <= 1 for r in steps) and any(r["flip_ratio"] > 0 for r in steps)
    assert len([r for r in records if r["kind"] == "epoch"]) == 2
    model, _ = bhvit.load_model(on_disk["checkpoint"])  # rebuilds from the stored config
    ck = ckpt_io.load(on_disk["checkpoint"])
    assert ck["step"] == 8 and model.config.precision == "binary" and model.config.in_chans == 1
    # `bhvit eval` on the same checkpoint and data reproduces the final test accuracy
    from bhvit.cli.train import cmd_eval

    assert (
        cmd_eval(
            [on_disk["checkpoint"], "--data", str(fmnist_dir), "--json", str(tmp_path / "e.json"), "--threads", "1"]
        )
        == 0
    )
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["acc1"] == pytest.approx(on_disk["test_acc1"]) and scored["n"] == 32


def test_resume_reproduces_uninterrupted_run(fmnist_dir, tmp_path):
    full = train(tiny_cfg(fmnist_dir, tmp_path / "full"))
    part = tiny_cfg(fmnist_dir, tmp_path / "part", stop_after_steps=3)  # mid-epoch (4 steps/epoch)
    assert train(part)["interrupted"]
    at_step3 = ckpt_io.load(tmp_path / "part" / "checkpoint.pt")["model"]
    resumed = part.replace(run={"stop_after_steps": None, "resume": str(tmp_path / "part" / "checkpoint.pt")})
    train(resumed)
    a, b = ckpt_io.load(full["checkpoint"]), ckpt_io.load(tmp_path / "part" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    # the resumed steps changed the weights, so the equality above is not vacuous
    assert any(not torch.equal(at_step3[k], v) for k, v in a["model"].items() if v.is_floating_point())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fmnist_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_combine = loop_mod.combine

    def poisoned(*args, **kwargs):
        out = real_combine(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(loop_mod, "combine", poisoned)
    cfg = tiny_cfg(fmnist_dir, tmp_path / "nan", ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3") as err:
        train(cfg)
    path = tmp_path / "nan" / "checkpoint.pt"
    assert str(path) in str(err.value)
    ck = ckpt_io.load(path)
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "checkpoint.pt.tmp").exists()


def test_distillation_from_own_fp_checkpoint(fmnist_dir, tmp_path):
    teacher_cfg = tiny_cfg(fmnist_dir, tmp_path / "teacher", epochs=1, ema_decay=None)
    teacher_cfg = teacher_cfg.replace(model={"precision": "fp", "drop_path_rate": 0.0}, loss={"reg_weight": 0.0})
    teacher_ckpt = train(teacher_cfg)["checkpoint"]
    before = {k: v.clone() for k, v in ckpt_io.load(teacher_ckpt)["model"].items()}
    student = tiny_cfg(fmnist_dir, tmp_path / "student", epochs=1, ema_decay=None).replace(
        loss={"mode": "paper", "teacher": teacher_ckpt, "reg_fraction": 0.5},
        model={"init_from": teacher_ckpt},
    )
    summary = train(student)
    assert summary["teacher"] == teacher_ckpt and summary["loss_mode"] == "paper"
    steps = [r for r in read_jsonl(tmp_path / "student" / "log.jsonl") if r["kind"] == "step"]
    assert all("kd_loss" in r for r in steps)
    # paper schedule: λ=0.8 always, β=0.1 from step 2 of 4 (reg_fraction 0.5)
    for r in steps:
        beta = 0.1 if r["step"] > 2 else 0.0
        expect = (0.2 - beta) * r["task_loss"] + 0.8 * r["kd_loss"] + beta * r["reg_loss"]
        assert r["loss"] == pytest.approx(expect, rel=1e-5)
    after = ckpt_io.load(teacher_ckpt)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_grad_checkpointing_gives_the_same_weights(fmnist_dir, tmp_path):
    plain = train(tiny_cfg(fmnist_dir, tmp_path / "plain", epochs=1, max_steps=2, ema_decay=None))
    ckpt = train(tiny_cfg(fmnist_dir, tmp_path / "gc", epochs=1, max_steps=2, ema_decay=None, grad_checkpointing=True))
    a, b = ckpt_io.load(plain["checkpoint"])["model"], ckpt_io.load(ckpt["checkpoint"])["model"]
    for key in a:  # BatchNorm running stats included: recomputation must not update them twice
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
