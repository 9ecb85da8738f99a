"""Two CPU processes (gloo) against one: same global batches, synced BatchNorm, averaged gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bhvit.data import DataConfig
from bhvit.train import TrainConfig, train
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.config import LossConfig, ModelSpec, OptimConfig, RunConfig
from bhvit.train.logs import read_jsonl

WORKER = Path(__file__).with_name("ddp_worker.py")


def _cfg(data_dir, out) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(name=str(data_dir), img_size=32, batch_size=16, eval_batch_size=7),
        model=ModelSpec(arch="bhvit_test", precision="fp"),
        loss=LossConfig(mode="ce", reg_weight=0.0),
        # Many BHViT parameters are biases right before a BatchNorm: their true gradient is 0 and
        # what is left is rounding noise, which Adam (eps 1e-8) would blow up to ±lr steps that differ
        # between runs. A large eps keeps such noise from moving weights; real gradients still do.
        optim=OptimConfig(lr=1e-3, scale_lr=False, eps=1e-3),
        run=RunConfig(epochs=1, out_dir=str(out), log_every=1, flip_every=0, progress=False, plots=False, threads=1),
    )


def test_two_processes_match_one(fmnist_dir, tmp_path):
    single = train(_cfg(fmnist_dir, tmp_path / "one"))
    cfg = _cfg(fmnist_dir, tmp_path / "two")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path / "cfg.json"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert double["world_size"] == 2 and single["world_size"] == 1
    assert double["steps"] == single["steps"] == 4
    assert double["test_images"] == single["test_images"] == 32  # every test image once, over both ranks
    a, b = ckpt_io.load(single["checkpoint"])["model"], ckpt_io.load(double["checkpoint"])["model"]
    # Adam moves a weight by up to lr = 1e-3 per step. Summation order (two ranks' halves, then the
    # all-reduce) changes a few weights by a small share of one step: up to 2.2e-5 measured with torch's
    # AVX2 BLAS (MKL_ENABLE_INSTRUCTIONS=AVX2), 1e-5 with AVX-512. A rank that skipped the gradient
    # average or BatchNorm sync would be off by whole steps.
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=5e-5, msg=key)
    assert abs(double["test_loss"] - single["test_loss"]) < 1e-3
    steps_one = [r["loss"] for r in read_jsonl(tmp_path / "one" / "log.jsonl") if r["kind"] == "step"]
    steps_two = [r["loss"] for r in read_jsonl(tmp_path / "two" / "log.jsonl") if r["kind"] == "step"]
    assert len(steps_two) == 4  # one writer: rank 0 only
    torch.testing.assert_close(torch.tensor(steps_two), torch.tensor(steps_one), rtol=1e-4, atol=1e-5)
