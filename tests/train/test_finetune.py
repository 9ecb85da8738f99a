"""Fine-tuning: a pretrained BHViT (ours, or the authors' checkpoint layout) on a new image folder with
a new head, through the documented command ``bhvit train --data DIR --init-from CKPT ...``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from support import QUIET

import bhvit
from bhvit.cli.train import cmd_train
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.init_from import InitMismatchError, init_from_checkpoint
from bhvit.train.logs import read_jsonl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_reference_fixtures.py"


def _finetune(data: Path, ckpt: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    """Runs the documented fine-tuning command for 2 steps; returns the fine-tuned state dict."""
    argv = [
        "--data",
        str(data),
        "--init-from",
        str(ckpt),
        "--img-size",
        "64",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *QUIET,
        *extra,
    ]
    assert cmd_train(argv) == 0
    return ckpt_io.load(out / "checkpoint.pt")["model"]


def test_finetune_our_model_to_a_new_folder_and_size(folder_dir: Path, tmp_path: Path) -> None:
    """A 10-class model trained at 32 px becomes a 2-class model at 64 px: every tensor but the head is
    copied, the position embeddings resized, the head fresh; the log records what was copied."""
    torch.manual_seed(0)
    pretrained = bhvit.create_model("bhvit_test", precision="binary", num_classes=10, img_size=32, window_size=1)
    src = bhvit.save_model(pretrained, tmp_path / "pretrained.safetensors")
    student = bhvit.create_model("bhvit_test", precision="binary", num_classes=2, img_size=64, window_size=2)
    report = init_from_checkpoint(student, str(src))
    assert report.head_skipped == ("head.weight", "head.bias") and not report.fresh and not report.unused
    own, theirs = student.state_dict(), pretrained.state_dict()
    for key in report.copied:
        if "pos_embed" in key:
            assert own[key].shape != theirs[key].shape  # resized to the new input size
        else:
            assert torch.equal(own[key], theirs[key]), key
    assert len(report.copied) == len(own) - 2
    state = _finetune(folder_dir, src, tmp_path / "run", "--arch", "bhvit_test", "--precision", "binary")
    assert state["head.weight"].shape == (2, theirs["head.weight"].shape[1])
    init = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "init"]
    assert init and init[0]["copied"] == len(own) - 2 and init[0]["head_skipped"] == ["head.weight", "head.bias"]


def _authors_checkpoint(path: Path) -> Path:
    """The authors' mini model (depths 1,1,1,1, binary with GSB) saved as their training script does."""
    spec = importlib.util.spec_from_file_location("make_reference_fixtures", SCRIPT)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    tensors, _ = fixtures.load_pack("binary", FIXTURES)
    state = {k.removeprefix("state."): v.float() for k, v in tensors.items() if k.startswith("state.")}
    torch.save({"model": state, "epoch": 299}, path)
    return path


def test_finetune_from_the_authors_checkpoint(folder_dir: Path, tmp_path: Path) -> None:
    ckpt = _authors_checkpoint(tmp_path / "BHViT_mini_binary.pth")
    authors = bhvit.load_upstream(str(ckpt), img_size=64, window_size=2).state_dict()
    state = _finetune(
        folder_dir,
        ckpt,
        tmp_path / "run",
        "--arch",
        "bhvit_tiny",
        "--override",
        "depths=[1,1,1,1]",
        "--precision",
        "binary",
        "--attn-quant",
        "gsb",
    )
    assert state["head.weight"].shape == (2, 512)
    # after two steps the copied tensors are near the authors' (lr-sized updates), the head is not theirs
    assert (state["stem.proj.weight"] - authors["stem.proj.weight"]).abs().max() < 0.05
    key = "stages.3.blocks.0.mlp.fc1.weight"  # a binary layer: its signs are the authors' but for a few
    assert (state[key].sign() == authors[key].sign()).float().mean() > 0.99


def test_finetune_refuses_another_architecture(tmp_path: Path) -> None:
    ckpt = _authors_checkpoint(tmp_path / "BHViT_mini_binary.pth")
    student = bhvit.create_model("bhvit_test", precision="binary", num_classes=2, img_size=64, window_size=2)
    with pytest.raises(InitMismatchError, match="another architecture"):
        init_from_checkpoint(student, str(ckpt))
