"""Build of the packed-engine extension ``bhvit.engine._C`` (all metadata lives in pyproject.toml).

The extension is optional: without a C++ compiler ``pip install`` still succeeds and ``import bhvit``
works; only the packed engine then raises an error that says how to build it.

Portability: every translation unit is compiled for the baseline of the target (no -march=native).
The per-ISA kernel files get their own flags (AVX2, AVX-512BW, AVX-512 VPOPCNTDQ) and are chosen at
run time through cpuid, so one binary runs on any x86-64 CPU. On aarch64, NEON is baseline.
"""

from __future__ import annotations

import os
import platform
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("csrc")
X86_FLAGS = {
    "isa_popcnt.cpp": ["-mpopcnt"],
    "isa_avx2.cpp": ["-mavx2", "-mpopcnt"],
    "isa_avx512bw.cpp": ["-mavx512f", "-mavx512bw", "-mpopcnt"],
    "isa_avx512vpopcnt.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vpopcntdq", "-mpopcnt"],
}


def _is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i686", "x86"}


def _pybind11_include() -> str:
    import pybind11

    return pybind11.get_include()


class BuildExt(build_ext):
    """Adds per-file ISA flags and OpenMP when the compiler supports them."""

    def _accepts(self, flags: list[str]) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.cpp"
            src.write_text("int main() { return 0; }\n")
            try:
                self.compiler.compile([str(src)], output_dir=tmp, extra_postargs=flags)
            except Exception:
                return False
        return True

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":  # the kernels use GCC/Clang builtins and attributes
            print("warning: bhvit's packed engine needs gcc or clang; skipping the native extension")
            self.extensions = []
            return
        openmp = ["-fopenmp"] if self._accepts(["-fopenmp"]) else []
        for ext in self.extensions:
            ext.extra_compile_args += openmp
            ext.extra_link_args += openmp
        original = self.compiler._compile

        def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):  # noqa: ANN001
            extra = X86_FLAGS.get(Path(src).name, []) if _is_x86() else []
            return original(obj, src, ext, cc_args, list(extra_postargs) + extra, pp_opts)

        self.compiler._compile = compile_one
        _compile_in_parallel(self.compiler, int(os.environ.get("BHVIT_BUILD_JOBS", os.cpu_count() or 1)))
        super().build_extensions()


def _compile_in_parallel(compiler, jobs: int) -> None:  # noqa: ANN001
    """Compiles an extension's sources ``jobs`` at a time (distutils compiles them one by one: the
    engine's 8 files took 2-3 min on 2 cores). Same steps as ``CCompiler.compile``, per object."""
    if jobs <= 1:
        return

    def compile_all(sources, output_dir=None, macros=None, include_dirs=None, debug=0,  # noqa: ANN001, ANN202
                    extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj: str) -> None:
            src, ext = build[obj]
            compiler._compile(obj, src, ext, cc_args, extra, pp_opts)

        with ThreadPoolExecutor(min(jobs, len(objects))) as pool:
            list(pool.map(one, objects))  # list(): re-raises the first failure
        return objects

    compiler.compile = compile_all


def _extension() -> Extension:
    sources = ["engine.cpp", "bindings.cpp", "isa_generic.cpp", "isa_neon.cpp", *X86_FLAGS]
    return Extension(
        "bhvit.engine._C",
        sources=[str(CSRC / s) for s in sources],
        include_dirs=[str(CSRC), _pybind11_include()],
        language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=off", "-fvisibility=hidden"],
        optional=os.environ.get("BHVIT_REQUIRE_EXT", "0") != "1",
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExt})
