"""The runtime's Python side and `bhvit predict --packed` run without importing torch (issue 11, item 3),
and give the same answers as the torch-facing engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bhvit
from bhvit import engine, runtime
from bhvit.engine.program import write_program_file

pytestmark = pytest.mark.skipif(not runtime.available(), reason="the native runtime library is not built")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = bhvit.create_model("bhvit_test", precision="binary", num_classes=5).eval()
    return write_program_file(model, tmp_path_factory.mktemp("m") / "m.bhvp", labels=list("abcde"))


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_runtime_runs_without_torch(packed_file):
    code = (
        "import sys, numpy as np, bhvit.runtime as rt\n"
        f"m = rt.load({str(packed_file)!r})\n"
        "x = np.random.default_rng(0).standard_normal((2, *m.input_shape)).astype(np.float32)\n"
        "y = m.run(x)\n"
        "assert y.shape == (2, 5) and np.isfinite(y).all(), y\n"
        "assert m.labels == list('abcde') and m.num_classes == 5 and m.input_shape == (3, 32, 32)\n"
        "bad = [k for k in sys.modules if k == 'torch' or k.startswith('torch.')]\n"
        "print('torch modules:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    run = run_python(code)
    assert run.returncode == 0, run.stdout + run.stderr


def test_predict_packed_runs_without_torch(packed_file, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    code = (
        "import sys\n"
        "from bhvit.cli import main\n"
        f"status = main(['predict', '--packed', {str(packed_file)!r}, {str(image)!r}, '--json'])\n"
        "bad = [k for k in sys.modules if k == 'torch' or k.startswith('torch.')]\n"
        "print('torch modules:', bad, file=sys.stderr)\n"
        "sys.exit(status or (1 if bad else 0))\n"
    )
    run = run_python(code)
    assert run.returncode == 0, run.stdout + run.stderr
    top = json.loads(run.stdout)[0]["top"]
    assert len(top) == 5 and {t["label"] for t in top} == set("abcde")


def test_the_torch_engine_and_the_numpy_runtime_agree(packed_file):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    via_engine = engine.load_packed(packed_file)(x).numpy()
    via_runtime = runtime.load(packed_file).run(x.numpy())
    assert np.array_equal(via_engine, via_runtime)


def test_bad_inputs_are_one_clear_error(packed_file, tmp_path):
    m = runtime.load(packed_file)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\)"):
        m.run(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="real-valued"):
        m.run(np.zeros((1, 3, 32, 32), np.complex64))
    with pytest.raises(FileNotFoundError, match="no such file"):
        runtime.load(tmp_path / "missing.bhvp")
    junk = tmp_path / "junk.bhvp"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(runtime.PackedFormatError):
        runtime.load(junk)
