"""The README's train -> eval -> pack -> predict -> eval, bench, profile of the packed file commands, run as
written (``DIR`` a small folder of two classes, ``img.jpg`` one of its images), each in its own process as a
user types them."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CHAIN = (
    "bhvit train --data DIR --arch",
    "bhvit eval ",
    "bhvit pack ",
    "bhvit predict img.jpg --packed",
    "bhvit eval model.bhvp",
    "bhvit bench model.bhvp",
    "bhvit profile model.bhvp",
)


def readme_chain() -> list[list[str]]:
    """The first README command line that starts with each prefix of :data:`CHAIN`, comment dropped."""
    block = re.search(r"## Command line\n\n```\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no command block under '## Command line'"
    lines = block.group(1).splitlines()
    chain = []
    for prefix in CHAIN:
        line = next((x for x in lines if x.startswith(prefix)), None)
        assert line is not None, f"README's command block lost its '{prefix}…' line"
        chain.append(shlex.split(line.split("  #")[0]))
    return chain


@pytest.mark.slow
def test_readme_train_eval_pack_predict_chain(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "DIR"
    for k, cls in enumerate(("cats", "dogs")):
        (data / cls).mkdir(parents=True)
        for i in range(10):
            arr = rng.integers(0, 110, (28 + i, 36, 3)) + 120 * k
            Image.fromarray(arr.astype(np.uint8)).save(data / cls / f"{i}.jpg")
    (tmp_path / "img.jpg").write_bytes((data / "dogs" / "3.jpg").read_bytes())
    outputs = []
    for argv in readme_chain():
        argv = [str(data) if a == "DIR" else a for a in argv]
        run = subprocess.run(
            [sys.executable, "-m", "bhvit", *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, f"{shlex.join(argv)}: {run.stderr[-2000:]}"
        outputs.append(run.stdout)
    trained = json.loads(outputs[0][outputs[0].index("\n{") :])  # after the per-epoch lines
    scored = json.loads(outputs[1])
    assert scored["n"] == trained["test_images"] == 4 and scored["acc1"] == pytest.approx(trained["test_acc1"])
    assert outputs[3].splitlines()[0] == "img.jpg" and outputs[3].split()[2] in ("cats", "dogs")
    deployed = json.loads(outputs[4])  # the packed file through the runtime, on the run's held-out images
    assert deployed["n"] == 4 and deployed["acc1"] == pytest.approx(scored["acc1"])
    assert deployed["top1_agreement"] == 100.0
    assert outputs[5].startswith("machine: ") and "x fp32" in outputs[5]
    assert "window_attention" in outputs[6] and "BOPs" in outputs[6]
