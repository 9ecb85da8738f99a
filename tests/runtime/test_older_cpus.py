"""(slow) The pip-built library on x86-64 CPUs older than this one, emulated by qemu-user: a Haswell (AVX2, no
AVX-512: what an AVX2-only CPU such as a Zen 3 runs) and a Nehalem (SSE4.2 and POPCNT, no AVX). The library must
load (no code compiled for a newer ISA may run before cpuid chose the kernels), pick the best path that CPU has,
and give the host's logits bit for bit (every ISA gives the same bits)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from runtime_build import C_API_CHECK_C, CC, compile_c, runtime_flags, small_model

import bhvit.runtime as rt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only"),
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user: apt-get install qemu-user"),
    pytest.mark.skipif(CC is None, reason="needs a C compiler"),
]


@pytest.mark.parametrize(("cpu", "isa"), [("Haswell", "avx2"), ("Nehalem", "popcnt")])
def test_runs_on_an_older_cpu_with_the_hosts_bits(cpu: str, isa: str, tmp_path: Path) -> None:
    model = small_model(tmp_path / "m.bhvp")
    exe = compile_c([C_API_CHECK_C], tmp_path / "c_api_check", runtime_flags())
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    run = subprocess.run(
        ["qemu-x86_64", "-cpu", cpu, str(exe), str(model), str(tmp_path / "x.f32"), "2", str(tmp_path / "y.f32")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"isa {isa} " in run.stdout and run.stdout.rstrip().splitlines()[-1].endswith(" ok")
    np.testing.assert_array_equal(np.fromfile(tmp_path / "y.f32", np.float32).reshape(2, 10), rt.load(model).run(x))
