"""The standalone C++ self-test (runtime/tests/selftest.cpp): every ISA's kernels, and the engine's drivers run
on every ISA, against the portable ones bit for bit, compiled with the same flags as setup.py (per-file
ISA flags, -ffp-contract=off, threads); also cross-compiled for aarch64 and run under qemu when those
tools are installed (the NEON path: ``apt-get install g++-aarch64-linux-gnu qemu-user``)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
KERNELS = RUNTIME / "kernels"
X86_FLAGS = {
    "isa_popcnt.cpp": ["-mpopcnt"],
    "isa_avx2.cpp": ["-mavx2", "-mpopcnt"],
    "isa_avx512bw.cpp": ["-mavx512f", "-mavx512bw", "-mpopcnt"],
    "isa_avx512vpopcnt.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vpopcntdq", "-mpopcnt"],
}
SOURCES = ["drivers.cpp", "float_drivers.cpp", "parallel.cpp", "isa_generic.cpp", "isa_neon.cpp", *X86_FLAGS]
COMMON = ["-O2", "-std=c++17", "-ffp-contract=off", "-pthread"]  # as setup.py

pytestmark = pytest.mark.slow


def _build(cxx: str, out: Path, per_file: dict[str, list[str]], extra: list[str]) -> Path:
    objects = []
    for path in [RUNTIME / "tests" / "selftest.cpp", *(KERNELS / s for s in SOURCES)]:
        obj = out / (path.name + ".o")
        cmd = [cxx, *COMMON, f"-I{KERNELS}", *per_file.get(path.name, []), "-c", str(path), "-o", str(obj)]
        subprocess.run(cmd, check=True, capture_output=True)
        objects.append(str(obj))
    exe = out / "selftest"
    subprocess.run([cxx, "-pthread", *extra, *objects, "-o", str(exe)], check=True, capture_output=True)
    return exe


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_native_selftest_host(tmp_path: Path) -> None:
    flags = X86_FLAGS if platform.machine() in ("x86_64", "AMD64") else {}
    exe = _build("g++", tmp_path, flags, [])
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failure(s)" in run.stdout and "checked drivers on" in run.stdout


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
    reason="needs aarch64-linux-gnu-g++ and qemu-aarch64",
)
def test_native_selftest_neon_under_qemu(tmp_path: Path) -> None:
    exe = _build("aarch64-linux-gnu-g++", tmp_path, {}, ["-static"])
    run = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "checked drivers on neon" in run.stdout and "0 failure(s)" in run.stdout
