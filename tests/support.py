"""Helpers shared by the tests of several folders: ``import support`` (tests/conftest.py puts this folder on
``sys.path``; the test folders are not packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import bhvit

ROOT = Path(__file__).resolve().parents[1]


# the flags of a `bhvit train` run in a test: one torch thread, no progress bar, no plots
QUIET = ("--threads", "1", "--no-progress", "--no-plots")


def gcc_runtime_library(name: str) -> str | None:
    """The path g++ gives for a runtime library (``libasan.so``), or None when it has none (it then echoes
    the name)."""
    if shutil.which("g++") is None:
        return None
    path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def sanitized_build(out: Path, build_args: list[str], variable: str) -> tuple[str, dict[str, str]]:
    """``scripts/build_sanitized.sh BUILD_ARGS OUT`` (ASan + UBSan), then the environment that makes a Python
    process load its product: ``variable`` names the built file, the ASan runtime is preloaded, and any
    finding aborts. Returns (the built file, that environment); skips the test without g++'s libasan."""
    import pytest

    asan, stdcxx = gcc_runtime_library("libasan.so"), gcc_runtime_library("libstdc++.so")
    if asan is None or stdcxx is None:
        pytest.skip("needs g++ with libasan (AddressSanitizer runtime) and libstdc++")
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_sanitized.sh"), *build_args, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    built = build.stdout.strip().splitlines()[-1]
    env = {
        **os.environ,
        variable: built,
        "LD_PRELOAD": f"{asan} {stdcxx}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:abort_on_error=1:print_stacktrace=1",
    }
    return built, env


def randomized(
    precision: str = "binary", attn_quant: str = "lsq", norm: str = "bn", seed: int = 0, **kw: object
) -> torch.nn.Module:
    """bhvit_test in eval mode with every constant-initialised tensor perturbed (BN statistics, RPReLU,
    LayerScales, LSQ, position embeddings), so that every part of a packed program matters."""
    torch.manual_seed(seed)
    model = bhvit.create_model("bhvit_test", precision=precision, attn_quant=attn_quant, norm=norm, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() <= 1 or "pos_embed" in name:
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0.0, 0.2)
    return model.eval()
