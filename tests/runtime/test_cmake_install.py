"""The runtime as C and C++ users get it (slow): `cmake -S runtime` alone builds and installs the library
(VERSION and SOVERSION from the header), its static twin, the header, bhvit-run, a CMake package and a
pkg-config file; a consumer CMake project (tests/runtime/consumer/) finds it with find_package(bhvit_runtime)
and a C program links it through pkg-config, shared and static. Every program gives the Python runtime's
logits bit for bit, and bhvit-run prints what the one built against the pip-installed library prints (PNG and
JPEG too where libpng and libjpeg are found; a configure without them still builds bhvit-run, which then names
the formats it reads and the rebuild)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_build import (
    BHVIT_RUN_C,
    C_API_CHECK_C,
    CC,
    RUNTIME,
    codec_flags,
    compile_c,
    runtime_flags,
    small_model,
    write_pnm,
)

import bhvit
import bhvit.runtime as rt

CONSUMER = Path(__file__).resolve().parent / "consumer"
MISSING = [tool for tool in ("cmake", "pkg-config", "readelf") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CC is None or bool(MISSING), reason=f"needs a C compiler and {', '.join(MISSING)}"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks ELF sonames"),
]


def _run(cmd: list[str | Path], **kw: object) -> subprocess.CompletedProcess:
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    assert run.returncode == 0, f"{' '.join(map(str, cmd))}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """runtime/ built alone (with the static library): its build folder and what the configure printed."""
    build = tmp_path_factory.mktemp("build")
    configure = _run(["cmake", "-S", RUNTIME, "-B", build, "-DBHVIT_BUILD_STATIC=ON"])
    _run(["cmake", "--build", build, "-j", "2"])
    return build, configure.stdout


@pytest.fixture(scope="module")
def prefix(built: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That build installed into a fresh prefix."""
    prefix = tmp_path_factory.mktemp("prefix")
    _run(["cmake", "--install", built[0], "--prefix", prefix])
    return prefix


@pytest.fixture(scope="module")
def model_and_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A packed model, a batch of 2 inputs in a file, and the Python runtime's logits for it."""
    folder = tmp_path_factory.mktemp("model")
    model = small_model(folder / "m.bhvp")
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    x.tofile(folder / "x.f32")
    return model, folder / "x.f32", rt.load(model).run(x)


def _libdir(prefix: Path) -> Path:
    (folder,) = {p.parent for p in prefix.glob("lib*/libbhvit_runtime.so")}  # lib/ or lib64/ (GNUInstallDirs)
    return folder


def _check_logits(exe: Path, model_and_input: tuple[Path, Path, np.ndarray], out: Path) -> None:
    model, x, want = model_and_input
    run = _run([exe, model, x, 2, out])
    assert re.fullmatch(r"checks: \d+ ok", run.stdout.splitlines()[-1]), run.stdout
    np.testing.assert_array_equal(np.fromfile(out, np.float32).reshape(want.shape), want)


def test_installed_files_soname_and_version(prefix: Path) -> None:
    version = bhvit.__version__  # the header's, through the package metadata
    major, minor, _ = version.split(".")
    soversion = f"0.{minor}" if major == "0" else major
    lib = _libdir(prefix)
    real = lib / f"libbhvit_runtime.so.{version}"
    assert real.is_file() and not real.is_symlink()
    assert (lib / "libbhvit_runtime.so").resolve() == (lib / f"libbhvit_runtime.so.{soversion}").resolve() == real
    dynamic = _run(["readelf", "-d", real]).stdout
    assert f"Library soname: [libbhvit_runtime.so.{soversion}]" in dynamic
    assert (lib / "libbhvit_runtime.a").is_file() and (prefix / "bin" / "bhvit-run").is_file()
    header = "include/bhvit_runtime.h"
    assert (prefix / header).read_bytes() == (RUNTIME / header).read_bytes()
    config = {p.name for p in (lib / "cmake" / "bhvit_runtime").glob("*.cmake")}
    assert config >= {"bhvit_runtime-config.cmake", "bhvit_runtime-config-version.cmake"}
    env = {**os.environ, "PKG_CONFIG_PATH": str(lib / "pkgconfig")}
    assert _run(["pkg-config", "--modversion", "bhvit_runtime"], env=env).stdout.strip() == version


def test_installed_bhvit_run_prints_what_the_pip_builds_prints(
    built: tuple[Path, str], prefix: Path, tmp_path: Path
) -> None:
    model = small_model(tmp_path / "m.bhvp")
    rng = np.random.default_rng(7)
    images = [write_pnm(tmp_path / f"{i}.ppm", rng.integers(0, 256, (50, 41, 3))) for i in range(2)]
    if codec_flags() is not None:  # CMake finds what the compiler finds
        assert "-- bhvit-run reads PPM/PGM, PNG, JPEG\n" in built[1]
        for name in ("x.png", "x.jpg"):
            Image.fromarray(rng.integers(0, 256, (60, 45, 3), dtype=np.uint8)).save(tmp_path / name)
            images.append(tmp_path / name)
    pip_built = compile_c([BHVIT_RUN_C], tmp_path / "bhvit-run", runtime_flags() + (codec_flags() or []))
    installed = _run([prefix / "bin" / "bhvit-run", model, *images])  # finds its library through its rpath
    assert installed.stdout == _run([pip_built, model, *images]).stdout and installed.stdout.count("\n  1 ") == len(
        images
    )


def test_bhvit_run_builds_without_libpng_and_libjpeg(built: tuple[Path, str], prefix: Path, tmp_path: Path) -> None:
    """The build folder configured again as on a machine without the decoders' headers: bhvit-run still builds,
    the configure says what it reads and how to get the rest, and so does the program."""
    build = built[0]
    hide = ["-DCMAKE_DISABLE_FIND_PACKAGE_PNG=ON", "-DCMAKE_DISABLE_FIND_PACKAGE_JPEG=ON"]
    try:
        configure = _run(["cmake", "-S", RUNTIME, "-B", build, *hide])
        assert "-- bhvit-run reads PPM/PGM only (for PNG and JPEG install libpng and libjpeg" in configure.stdout
        _run(["cmake", "--build", build, "--target", "bhvit-run", "-j", "2"])
        assert "Formats of this build: PPM (P6), PGM (P5), told by" in _run([build / "bhvit-run", "--help"]).stdout
        Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
        run = subprocess.run(
            [build / "bhvit-run", small_model(tmp_path / "m.bhvp"), tmp_path / "x.png"], capture_output=True, text=True
        )
        assert run.returncode == 1 and len(run.stderr.splitlines()) == 1
        assert "a PNG image, but this bhvit-run was built without libpng; rebuild it" in run.stderr
    finally:  # the folder as the other tests' fixture built it
        _run(["cmake", "-S", RUNTIME, "-B", build, *(flag.replace("=ON", "=OFF") for flag in hide)])


def test_consumer_cmake_project_finds_the_package(
    prefix: Path, model_and_input: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    build = tmp_path / "build"
    configure = _run(["cmake", "-S", CONSUMER, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"])
    found = f"bhvit_runtime {bhvit.__version__} found in {_libdir(prefix) / 'cmake' / 'bhvit_runtime'}"
    assert found in configure.stdout
    _run(["cmake", "--build", build, "-j", "2"])
    major, minor, patch = map(int, bhvit.__version__.split("."))
    assert _run([build / "version"]).stdout == f"{bhvit.__version__} {major * 10000 + minor * 100 + patch}\n"
    assert str(_libdir(prefix)) in _run(["ldd", build / "check_shared"]).stdout
    assert "libbhvit_runtime" not in _run(["ldd", build / "check_static"]).stdout
    for name in ("check_shared", "check_static"):
        _check_logits(build / name, model_and_input, tmp_path / f"{name}.f32")


def test_c_program_through_pkg_config(
    prefix: Path, model_and_input: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    lib = _libdir(prefix)
    env = {**os.environ, "PKG_CONFIG_PATH": str(lib / "pkgconfig")}
    shared = _run(["pkg-config", "--cflags", "--libs", "bhvit_runtime"], env=env).stdout.split()
    exe = compile_c([C_API_CHECK_C], tmp_path / "shared", [*shared, f"-Wl,-rpath,{lib}"])
    _check_logits(exe, model_and_input, tmp_path / "shared.f32")
    # static: the archive by name (beside the .so, -lbhvit_runtime would pick the .so), Libs.private after it
    static = _run(["pkg-config", "--static", "--cflags", "--libs", "bhvit_runtime"], env=env).stdout.split()
    static = ["-l:libbhvit_runtime.a" if flag == "-lbhvit_runtime" else flag for flag in static]
    exe = compile_c([C_API_CHECK_C], tmp_path / "static", static)
    assert "libbhvit_runtime" not in _run(["ldd", exe]).stdout
    _check_logits(exe, model_and_input, tmp_path / "static.f32")
