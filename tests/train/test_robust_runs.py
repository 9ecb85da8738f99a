"""Training that never loses work: bad images in train/ or val/, --init-from another architecture,
and a resume after kill -9 (stale temporaries, log records past the checkpoint). Tiny ``bhvit_test``
runs on a 12-image folder: 3 steps per epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import QUIET

import bhvit
from bhvit.cli.train import cmd_train
from bhvit.data import DataConfig, DatasetError, folder
from bhvit.train import TrainConfig, train
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.config import LossConfig, ModelSpec, OptimConfig, RunConfig
from bhvit.train.distributed import DistInfo, TrainSampler
from bhvit.train.init_from import InitMismatchError, init_from_checkpoint, match_init
from bhvit.train.logs import read_jsonl
from bhvit.train.loop import build

BATCH, EPOCHS = 4, 2


def make_folder(root: Path) -> Path:
    """2 classes × 6 training and × 3 validation images, 16–24 px RGB."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                side = 16 + 4 * (i % 3)
                arr = rng.integers(0, 120, (side, side, 3), dtype=np.uint8) + 120 * k
                Image.fromarray(arr.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def run_cfg(data: Path, out: Path, **run) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(name=str(data), img_size=32, batch_size=BATCH, eval_batch_size=4),
        model=ModelSpec(arch="bhvit_test", precision="binary", drop_path_rate=0.1),
        loss=LossConfig(mode="ce", reg_weight=0.0),
        optim=OptimConfig(lr=2e-3, scale_lr=False, warmup_epochs=0.5),
        run=RunConfig(
            **{
                "epochs": EPOCHS,
                "out_dir": str(out),
                "log_every": 1,
                "flip_every": 0,
                "progress": False,
                "plots": False,
                "threads": 1,
                "ema_decay": 0.9,
                **run,
            }
        ),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The clean folder and the weights of an uninterrupted run on it."""
    base = tmp_path_factory.mktemp("robust")
    data = make_folder(base / "data")
    summary = train(run_cfg(data, base / "full"))
    return data, ckpt_io.load(summary["checkpoint"])["model"]


def copy_data(data: Path, dest: Path) -> Path:
    return Path(shutil.copytree(data, dest))


def assert_same_weights(path: Path, expected: dict[str, torch.Tensor]) -> None:
    ck = ckpt_io.load(path)
    assert ck["step"] == EPOCHS * 3
    for key, value in expected.items():
        assert torch.equal(ck["model"][key], value), key


def step_records(out: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(out / "log.jsonl") if r["kind"] == "step"]


def test_corrupt_training_image_stops_named_saved_and_resumes_exactly(reference, tmp_path):
    data, expected = reference
    data = copy_data(data, tmp_path / "data")
    samples = folder.load(data)[0].samples
    sampler = TrainSampler(len(samples), BATCH, DistInfo(), seed=0)
    sampler.set_epoch(0)
    victim = samples[list(sampler)[2 * BATCH]][0]  # read by the 3rd batch: steps 1 and 2 are done before it
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as err:
        train(run_cfg(data, out))
    msg = str(err.value)
    assert str(victim) in msg and "truncated" in msg and "\n" not in msg
    assert f"stopped at step 2, saved in {out / 'checkpoint.pt'}" in msg
    ck = ckpt_io.load(out / "checkpoint.pt")
    assert (ck["step"], ck["epoch"], ck["step_in_epoch"]) == (2, 0, 2)
    victim.write_bytes(good)  # the user restores the file and resumes
    train(run_cfg(data, out, resume=str(out / "checkpoint.pt")))
    assert_same_weights(out / "checkpoint.pt", expected)
    assert step_records(out) == list(range(1, 7))


def test_corrupt_validation_image_loses_no_training(reference, tmp_path, capsys):
    data, expected = reference
    data = copy_data(data, tmp_path / "data")
    victim = data / "val" / "dog" / "2.png"
    good = victim.read_bytes()
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "run"
    argv = [
        "--data",
        str(data),
        "--arch",
        "bhvit_test",
        "--img-size",
        "32",
        "--batch-size",
        str(BATCH),
        "--epochs",
        str(EPOCHS),
        "--out",
        str(out),
        *QUIET,
        "--no-auto-teacher",
    ]  # the binary run alone (test_defaults.py covers the fp stage's resume)
    assert cmd_train(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the run's warnings (3 steps per epoch), then the error
    assert all(line.startswith("bhvit train: warning: ") for line in lines[:-1])
    err = lines[-1]
    assert err.startswith("bhvit train: error: ") and str(victim) in err and "Epoch 1's training is saved" in err
    ck = ckpt_io.load(out / "checkpoint.pt")  # written before the evaluation that failed
    assert (ck["step"], ck["epoch"], json.loads(ck["history"])) == (3, 1, [])
    assert json.loads(ck["pending_eval"])["train_loss"] > 0
    assert [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "epoch"] == []
    victim.write_bytes(good)
    summary = train(run_cfg(data, out, resume=str(out / "checkpoint.pt")))
    assert summary["epochs"] == EPOCHS and summary["test_images"] == 6
    ck = ckpt_io.load(out / "checkpoint.pt")
    assert [h["epoch"] for h in json.loads(ck["history"])] == [1, 2] and json.loads(ck["pending_eval"]) is None
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl") if r["kind"] == "epoch"] == [1, 2]


def test_resume_after_kill_cleans_temporaries_and_log(reference, tmp_path, capsys):
    data, expected = reference
    out = tmp_path / "run"
    assert train(run_cfg(data, out, stop_after_steps=4))["interrupted"]
    # What kill -9 leaves behind: half-written temporaries and records logged after the checkpoint.
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"\x00" * 1000)
    (out / ".summary.json.x7.tmp").write_text("{")
    with open(out / "log.jsonl", "a") as f:
        for step in (5, 6):
            f.write(json.dumps({"kind": "step", "step": step, "epoch": 1, "loss": 1.0}) + "\n")
        f.write(json.dumps({"kind": "epoch", "epoch": 2, "step": 6, "test_acc1": 50.0}) + "\n")
        f.write('{"kind": "step", "st')  # the line being written when the process died
    capsys.readouterr()
    train(run_cfg(data, out, resume=str(out / "checkpoint.pt")))
    notes = capsys.readouterr().err
    assert "removed 2 temporary file(s)" in notes and "dropped 4 log.jsonl record(s)" in notes
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []
    assert step_records(out) == list(range(1, 7))
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl") if r["kind"] == "epoch"] == [1, 2]
    assert_same_weights(out / "checkpoint.pt", expected)


def _save(model: torch.nn.Module, path: Path) -> str:
    ckpt_io.atomic_save({"model": model.state_dict(), "model_config": model.config.to_dict()}, path)
    return str(path)


def test_init_from_another_architecture_is_refused(tmp_path):
    student = bhvit.create_model("bhvit_test")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    deeper = _save(bhvit.create_model("bhvit_test", depths=(1, 1, 2, 1)), tmp_path / "deep.pt")
    with pytest.raises(
        InitMismatchError,
        match=r"another architecture \(depths \[1, 1, 2, 1\] vs \[1, 1, 1, 1\]; "
        r"checkpoint vs model\): 401 of the model's 401 tensors match .*"
        r"104 differ: stages\.2\.blocks\.1\.\S+ only in the checkpoint",
    ):
        init_from_checkpoint(student, deeper)
    tiny = _save(bhvit.create_model("bhvit_tiny", num_classes=10, img_size=32, window_size=1), tmp_path / "tiny.pt")
    with pytest.raises(
        InitMismatchError,
        match=r"widths .*: 39 of the model's 401 tensors match .* "
        r"stem\.pos_embed \(1, 64, 8, 8\) vs \(1, 16, 8, 8\)",
    ):
        init_from_checkpoint(student, tiny)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # untouched


def test_init_from_tensor_rules():
    own = bhvit.create_model("bhvit_test").state_dict()
    other = dict(own) | {"stages.0.blocks.0.mlp.fc1.weight": torch.zeros(3, 3)}
    _, bad = match_init(own, other, "x.pt", quantizers_differ=False)
    assert bad == [f"stages.0.blocks.0.mlp.fc1.weight (3, 3) vs {tuple(own['stages.0.blocks.0.mlp.fc1.weight'].shape)}"]
    renamed = {("extra." + k if k == "stem.proj.bias" else k): v for k, v in own.items()}
    _, bad = match_init(own, renamed, "x.pt", quantizers_differ=False)
    assert bad == ["stem.proj.bias only in the model", "extra.stem.proj.bias only in the checkpoint"]
    report, bad = match_init(own, renamed, "x.pt", quantizers_differ=True)  # a quantizer's tensors may differ
    assert bad == [] and report.fresh == ("stem.proj.bias",) and report.unused == ("extra.stem.proj.bias",)


def test_init_from_fp_teacher_and_other_class_count(tmp_path, capsys):
    fp = bhvit.create_model("bhvit_test", precision="fp")
    report = init_from_checkpoint(bhvit.create_model("bhvit_test"), _save(fp, tmp_path / "fp.pt"))
    assert len(report.copied) == 383 and len(report.fresh) == 18 and report.head_skipped == ()
    assert all(".act." in k or k.endswith(".move") or ".attn_quant." in k for k in report.fresh)
    # Fine-tuning: the 5-class checkpoint's body goes into a 2-class student, whose head stays fresh.
    five = bhvit.create_model("bhvit_test", num_classes=5, in_chans=3)
    path = _save(five, tmp_path / "five.pt")
    data = make_folder(tmp_path / "data")
    cfg = run_cfg(data, tmp_path / "run", epochs=1, max_steps=1).replace(model={"init_from": path})
    c = build(cfg)
    assert c.init.head_skipped == ("head.weight", "head.bias") and len(c.init.copied) == 399
    got, src = c.model.state_dict(), five.state_dict()
    assert all(torch.equal(got[k], src[k]) for k in c.init.copied) and got["head.weight"].shape == (2, 128)
    train(cfg)
    notes = capsys.readouterr().err
    assert "copied 399 of 401 tensors; classifier kept its initialisation (another class count): head.weight" in notes
    init = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "init"]
    assert init == [init[0] | {"copied": 399, "head_skipped": ["head.weight", "head.bias"], "fresh": [], "unused": []}]
