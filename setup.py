"""Build of the training extension ``bhvit._C`` and of the runtime library
``bhvit/runtime/libbhvit_runtime.so`` (the C API of runtime/include/bhvit_runtime.h; runtime/CMakeLists.txt
builds the same library without Python). All metadata lives in pyproject.toml.

Both are optional: without a C++ compiler ``pip install`` still succeeds and ``import bhvit`` works; only
the packed engine and ``bhvit.runtime`` then raise an error that says how to build them. The library is
a plain shared object, not a Python module: its file name is ``libbhvit_runtime.so`` (BuildExt
.get_ext_filename), it exports only the bhvit_* functions (-fvisibility=hidden and, on Linux, the version
script runtime/bhvit_runtime.map) and does not link libpython. The engine files it shares with ``_C`` are
compiled once (same flags, same object files).
The header is copied into the package (bhvit/runtime/include/) at build time; runtime/include/ stays its
only hand-edited copy.

Portability: every translation unit is compiled for the baseline of the target (no -march=native).
The per-ISA kernel files get their own flags (AVX2, AVX-512BW, AVX-512 VPOPCNTDQ) and are chosen at
run time through cpuid, so one binary runs on any x86-64 CPU. On aarch64, NEON is baseline.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("csrc")  # the Python extension bhvit._C (training kernels)
RUNTIME = Path("runtime")
KERNELS = RUNTIME / "kernels"
RUNTIME_EXT = "bhvit.runtime.libbhvit_runtime"
RUNTIME_LIB = "libbhvit_runtime.dylib" if sys.platform == "darwin" else "libbhvit_runtime.so"
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
    """Adds per-file ISA flags and threads; names the runtime library."""

    def get_ext_filename(self, fullname: str) -> str:
        if fullname.split(".")[-1] == RUNTIME_EXT.split(".")[-1]:  # called with the full or the last name
            return os.path.join(*fullname.split(".")[:-1], RUNTIME_LIB)
        return super().get_ext_filename(fullname)

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
        for ext in self.extensions:  # the kernels' own thread pool (runtime/kernels/parallel.cpp)
            ext.extra_compile_args += ["-pthread"]
            ext.extra_link_args += ["-pthread"]
        original = self.compiler._compile

        def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):  # noqa: ANN001
            extra = X86_FLAGS.get(Path(src).name, []) if _is_x86() else []
            return original(obj, src, ext, cc_args, list(extra_postargs) + extra, pp_opts)

        self.compiler._compile = compile_one
        _compile_in_parallel(self.compiler, int(os.environ.get("BHVIT_BUILD_JOBS", os.cpu_count() or 1)))
        super().build_extensions()


def _compile_in_parallel(compiler, jobs: int) -> None:  # noqa: ANN001
    """Compiles an extension's sources ``jobs`` at a time (distutils compiles them one by one: the
    engine's 8 files took 2-3 min on 2 cores). Same steps as ``CCompiler.compile``, per object. An object
    already compiled in this run from the same source with the same arguments is reused: the engine
    files of ``_C`` and of the runtime library (the same object paths under build_temp)."""
    done: dict[str, tuple] = {}

    def compile_all(
        sources,
        output_dir=None,
        macros=None,
        include_dirs=None,
        debug=0,  # noqa: ANN001, ANN202
        extra_preargs=None,
        extra_postargs=None,
        depends=None,
    ):
        macros, objects, extra, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj: str) -> None:
            src, ext = build[obj]
            key = (src, tuple(cc_args), tuple(extra), tuple(pp_opts))
            if done.get(obj) != key or not os.path.exists(obj):
                compiler._compile(obj, src, ext, cc_args, extra, pp_opts)
                done[obj] = key

        with ThreadPoolExecutor(max(1, min(jobs, len(objects)))) as pool:
            list(pool.map(one, objects))  # list(): re-raises the first failure
        return objects

    compiler.compile = compile_all


ENGINE_SOURCES = ["drivers.cpp", "float_drivers.cpp", "parallel.cpp", "isa_generic.cpp", "isa_neon.cpp", *X86_FLAGS]


def _native(name: str, sources: list[str], link_args: list[str]) -> Extension:
    """Both native targets share include dirs and flags, so their common objects are compiled once."""
    return Extension(
        name,
        sources=sources,
        include_dirs=[str(KERNELS), str(RUNTIME / "include"), str(RUNTIME / "src"), _pybind11_include()],
        language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=off", "-fvisibility=hidden"],
        extra_link_args=link_args,
        optional=os.environ.get("BHVIT_REQUIRE_EXT", "0") != "1",
    )


def _extensions() -> list[Extension]:
    """``bhvit._C`` (training kernels) and, when runtime/src has its sources, the runtime library."""
    engine = [str(KERNELS / s) for s in ENGINE_SOURCES]
    # bhvit._C: the training kernel (csrc/training.cpp) on the kernels' thread pool, not the inference library
    exts = [_native("bhvit._C", [str(CSRC / "training.cpp"), str(KERNELS / "parallel.cpp")], [])]
    runtime = sorted(str(p) for p in (RUNTIME / "src").glob("*.cpp"))
    if not runtime:
        print("warning: runtime/src/ has no sources; skipping libbhvit_runtime")
        return exts
    # Linux: the soname, only bhvit_* exported (the version script), no debug info (-S: 13.8 -> 2.2 MB)
    linux = ["-Wl,-soname," + RUNTIME_LIB, f"-Wl,--version-script={RUNTIME / 'bhvit_runtime.map'}", "-Wl,-S"]
    return exts + [_native(RUNTIME_EXT, engine + runtime, linux if sys.platform.startswith("linux") else [])]


def _ship_header() -> None:
    """Copies runtime/include/bhvit_runtime.h into the package (installed as package data), atomically."""
    src, dst = RUNTIME / "include" / "bhvit_runtime.h", Path("bhvit/runtime/include/bhvit_runtime.h")
    if not src.is_file() or (dst.is_file() and dst.read_bytes() == src.read_bytes()):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


_ship_header()
setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt}, package_data={"bhvit.runtime": ["include/*.h"]})
