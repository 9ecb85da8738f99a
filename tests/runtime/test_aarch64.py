"""The runtime on 64-bit ARM (the NEON kernels): CMake cross-builds libbhvit_runtime and bhvit-run with
runtime/cmake/aarch64-linux-gnu.cmake, c_api_check is cross-compiled against it, and both run under
qemu-user; their logits and probabilities match the host's within 1e-5 relative. Needs
`apt-get install g++-aarch64-linux-gnu qemu-user` (and cmake); skipped otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from runtime_build import C_API_CHECK_C, CC, RUNTIME, compile_c, parse_top, runtime_flags, small_model, write_pnm

import bhvit.runtime as rt

SYSROOT = Path("/usr/aarch64-linux-gnu")
TOOLS = ("cmake", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64")
MISSING = [t for t in TOOLS if shutil.which(t) is None]

REASON = f"needs {', '.join(MISSING)} (apt-get install cmake g++-aarch64-linux-gnu qemu-user)"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=REASON)]


def _run(cmd: list[str | Path], timeout: float = 900) -> subprocess.CompletedProcess:
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(map(str, cmd))}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run


def _qemu(*args: str | Path) -> subprocess.CompletedProcess:
    return _run(["qemu-aarch64", "-L", SYSROOT, *args])


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("arm") / "build"
    toolchain = RUNTIME / "cmake" / "aarch64-linux-gnu.cmake"
    _run(["cmake", "-S", RUNTIME, "-B", build, f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"])
    _run(["cmake", "--build", build, "-j", "2"])
    elf = (build / "libbhvit_runtime.so").read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # e_machine EM_AARCH64
    return build


def test_c_api_under_qemu_matches_the_host(arm_build: Path, tmp_path: Path) -> None:
    model = small_model(tmp_path / "m.bhvp")
    exe = compile_c(
        [C_API_CHECK_C],
        tmp_path / "c_api_check",
        [f"-I{RUNTIME / 'include'}", f"-L{arm_build}", f"-Wl,-rpath,{arm_build}", "-lbhvit_runtime"],
        cc="aarch64-linux-gnu-gcc",
    )
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    run = _qemu(exe, model, tmp_path / "x.f32", "2", tmp_path / "y.f32")
    assert "isa neon" in run.stdout and run.stdout.rstrip().splitlines()[-1].endswith(" ok")
    got, want = np.fromfile(tmp_path / "y.f32", np.float32).reshape(2, 10), rt.load(model).run(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.skipif(CC is None, reason="needs a host C compiler for the host's bhvit-run")
def test_bhvit_run_under_qemu_matches_the_host(arm_build: Path, tmp_path: Path) -> None:
    model = small_model(tmp_path / "m.bhvp", resize=36)
    rng = np.random.default_rng(4)
    images = [write_pnm(tmp_path / f"{i}.ppm", rng.integers(0, 256, (45, 38, 3))) for i in range(2)]
    host = compile_c([RUNTIME / "tools" / "bhvit_run.c"], tmp_path / "bhvit-run", runtime_flags())
    want = parse_top(_run([host, "--top", "10", model, *images]).stdout)
    got = parse_top(_qemu(arm_build / "bhvit-run", "--top", "10", model, *images).stdout)
    assert list(got) == list(want)
    for path, top in got.items():
        probs = {i: p for *_, i, p in want[path]}
        for _, _, i, p in top:  # printed to 6 decimals; logits within 1e-5 relative move p by far less than 1e-4 p
            assert abs(p - probs[i]) <= 2e-6 + 1e-4 * probs[i], (path, i)
