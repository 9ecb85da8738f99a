"""``bhvit train --compile``: the student runs through torch.compile (inductor, static shapes)."""

from __future__ import annotations

import json

import pytest
import torch
from support import QUIET

from bhvit.cli.train import cmd_train


@pytest.mark.slow  # inductor compiles for minutes on 2 cores
def test_train_command_with_compile(folder_dir, tmp_path) -> None:

    out = tmp_path / "run"
    argv = [
        "--data",
        str(folder_dir),
        "--arch",
        "bhvit_test",
        "--precision",
        "binary",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--out",
        str(out),
        *QUIET,
        "--compile",
        "--no-auto-teacher",
    ]
    torch._dynamo.reset()
    assert cmd_train(argv) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
