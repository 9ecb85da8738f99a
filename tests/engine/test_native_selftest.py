"""The standalone C++ self-test (runtime/tests/selftest.cpp): every ISA's kernels, and the engine's drivers run
on every ISA, against the portable ones bit for bit. Built by runtime/CMakeLists.txt with
-DBHVIT_BUILD_TESTS=ON (the flags of every other build: per-file ISA flags, -ffp-contract=off, threads) and
run by ctest; also cross-built for aarch64 with runtime/cmake/aarch64-linux-gnu.cmake and run under qemu
when those tools are installed (the NEON path: ``apt-get install g++-aarch64-linux-gnu qemu-user``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")]


def _build(build: Path, *options: str) -> Path:
    """Configures runtime/ with the self-test and builds only that program; returns the build folder."""
    for cmd in (
        ["cmake", "-S", str(RUNTIME), "-B", str(build), "-DBHVIT_BUILD_TESTS=ON", *options],
        ["cmake", "--build", str(build), "--target", "bhvit-selftest", "-j", "2"],
    ):
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return build


def _ctest(build: Path) -> str:
    """ctest in the build folder (under a cross toolchain it runs the program through qemu, the toolchain
    file's CMAKE_CROSSCOMPILING_EMULATOR); its output."""
    run = subprocess.run(["ctest", "-V"], cwd=build, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert "0 failure(s)" in run.stdout
    return run.stdout


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="needs a C++ compiler")
def test_native_selftest_host(tmp_path: Path) -> None:
    assert "checked drivers on" in _ctest(_build(tmp_path))


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
    reason="needs aarch64-linux-gnu-g++ and qemu-aarch64",
)
def test_native_selftest_neon_under_qemu(tmp_path: Path) -> None:
    build = _build(tmp_path, f"-DCMAKE_TOOLCHAIN_FILE={RUNTIME / 'cmake' / 'aarch64-linux-gnu.cmake'}")
    assert "checked drivers on neon" in _ctest(build)
