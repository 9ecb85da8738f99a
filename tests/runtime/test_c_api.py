"""The native runtime from C: a C program against bhvit_runtime.h gives the Python runtime's logits bit for
bit (the same library, the same input), bhvit-run classifies PPM/PGM files as its Pillow twin does, every
bad input is one error line, `python -m bhvit.runtime` prints the paths and flags, the library exports the
C API only. The CMake build alone, its install and its consumers: test_cmake_install.py (slow)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_build import (
    BHVIT_RUN_C,
    C_API_CHECK_C,
    CC,
    LABELS,
    RUNTIME,
    compile_c,
    parse_top,
    pillow_input,
    runtime_flags,
    small_model,
    softmax,
    write_pnm,
)

import bhvit.runtime as rt
from bhvit.runtime import paths

needs_cc = pytest.mark.skipif(CC is None, reason="needs a C compiler (cc, gcc or clang) to build the C programs")


def _run(cmd: list[str | Path], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c_api")


@pytest.fixture(scope="module")
def rgb_model(folder: Path) -> Path:
    return small_model(folder / "rgb.bhvp", in_chans=3)


@pytest.fixture(scope="module")
def grey_model(folder: Path) -> Path:
    return small_model(folder / "grey.bhvp", in_chans=1, seed=1)


@pytest.fixture(scope="module")
def bhvit_run(folder: Path) -> Path:
    """bhvit_run.c compiled with cc against the pip-built library (the README's compile line)."""
    if CC is None:
        pytest.skip("needs a C compiler (cc, gcc or clang) to build bhvit-run")
    return compile_c([BHVIT_RUN_C], folder / "bhvit-run", runtime_flags())


@pytest.fixture(scope="module")
def c_api_check(folder: Path) -> Path:
    if CC is None:
        pytest.skip("needs a C compiler (cc, gcc or clang) to build c_api_check")
    return compile_c([C_API_CHECK_C], folder / "c_api_check", runtime_flags())


# ---- python -m bhvit.runtime, the library file ----------------------------------------------------------


def test_module_prints_the_header_folder_library_and_flags() -> None:
    inc = _run([sys.executable, "-m", "bhvit.runtime", "--include-dir"])
    lib = _run([sys.executable, "-m", "bhvit.runtime", "--library"])
    assert inc.returncode == 0 and lib.returncode == 0, inc.stderr + lib.stderr
    header = Path(inc.stdout.strip()) / "bhvit_runtime.h"
    assert header.read_bytes() == (RUNTIME / "include" / "bhvit_runtime.h").read_bytes()  # one source
    assert Path(lib.stdout.strip()) == paths.find_library() and paths.find_library().is_file()
    flags = runtime_flags()
    assert f"-I{header.parent}" in flags and f"-Wl,-rpath,{paths.find_library().parent}" in flags


def test_module_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, paths.LIBRARY_ENV: str(tmp_path / "missing.so")}
    run = _run([sys.executable, "-m", "bhvit.runtime", "--libs"], env=env)
    assert run.returncode == 1 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and paths.LIBRARY_ENV in run.stderr and "unset it" in run.stderr
    run = _run([sys.executable, "-m", "bhvit.runtime"])
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1 and "--cflags" in run.stderr


def _api_names() -> set[str]:
    header = (RUNTIME / "include" / "bhvit_runtime.h").read_text()
    return set(re.findall(r"BHVIT_API\b[^;(]*?\b(bhvit_\w+)\s*\(", header))


@pytest.mark.skipif(shutil.which("nm") is None or not sys.platform.startswith("linux"), reason="needs Linux and nm")
def test_library_exports_the_c_api_only() -> None:
    run = _run(["nm", "-D", "--defined-only", paths.find_library()])
    assert run.returncode == 0, run.stderr
    exported = {line.split()[-1] for line in run.stdout.splitlines() if line.strip()}
    assert {"bhvit_load", "bhvit_run", "bhvit_run_profiled", "bhvit_isas", "bhvit_free"} <= _api_names()  # parsed
    assert {"bhvit_default_limits", "bhvit_load_ex", "bhvit_load_memory_ex", "bhvit_get_cost"} <= _api_names()
    assert exported == _api_names()  # no engine symbol, no std:: template instance (bhvit_runtime.map)


# ---- the C program against the header --------------------------------------------------------------------


@needs_cc
def test_c_program_gives_the_python_runtimes_logits(c_api_check: Path, rgb_model: Path, tmp_path: Path) -> None:
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    images.tofile(tmp_path / "images.f32")
    run = _run([c_api_check, rgb_model, tmp_path / "images.f32", 3, tmp_path / "logits.f32"])
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "input 3 32 32 classes 10" and lines[2] == f"label0 {LABELS[0]}"
    assert lines[1] == "preprocess resize 32 mean 0.5 std 0.2" and re.fullmatch(r"checks: \d+ ok", lines[-1])
    logits = np.fromfile(tmp_path / "logits.f32", dtype=np.float32).reshape(3, 10)
    np.testing.assert_array_equal(logits, rt.load(rgb_model).run(images))


@needs_cc
def test_c_program_reports_a_bad_model(c_api_check: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.bhvp").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    np.zeros(3 * 32 * 32, np.float32).tofile(tmp_path / "x.f32")
    run = _run([c_api_check, tmp_path / "bad.bhvp", tmp_path / "x.f32", 1, tmp_path / "out.f32"])
    assert run.returncode == 1 and "bad.bhvp" in run.stderr and len(run.stderr.splitlines()) == 1


# ---- bhvit-run --------------------------------------------------------------------------------------------


def _expected(model: Path, x: np.ndarray) -> np.ndarray:
    return softmax(rt.load(model).run(x)[0])


def _escaped(label: str) -> str:
    """A label as bhvit-run prints it: control characters as \\xNN."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in label)


def _assert_top(printed: list[tuple[int, str, int, float]], probs: np.ndarray, k: int, atol: float) -> None:
    """The printed ranks 1..k name the k most probable classes (up to atol) with their probabilities."""
    assert [r for r, *_ in printed] == list(range(1, k + 1))
    kth = np.sort(probs)[::-1][k - 1]
    for _, label, index, prob in printed:
        assert label == _escaped(LABELS[index])
        assert abs(prob - probs[index]) <= atol and probs[index] >= kth - atol
    assert [p for *_, p in printed] == sorted((p for *_, p in printed), reverse=True)


IMAGES = {  # name: (model channels, pixels (H, W[, 3]), maxval); 32 x 32: resize and crop are the identity
    "rgb8": (3, (32, 32, 3), 255),
    "grey16-to-rgb": (3, (32, 32), 1000),
    "rgb-to-grey-luma": (1, (32, 32, 3), 255),
    "grey8": (1, (32, 32), 255),
}


@needs_cc
@pytest.mark.parametrize("case", IMAGES)
def test_bhvit_run_reads_and_normalises_exactly(
    case: str, bhvit_run: Path, rgb_model: Path, grey_model: Path, tmp_path: Path
) -> None:
    chans, shape, maxval = IMAGES[case]
    pixels = np.random.default_rng(len(case)).integers(0, maxval + 1, shape)
    image = write_pnm(tmp_path / ("x.ppm" if len(shape) == 3 else "x.pgm"), pixels, maxval)
    model = rgb_model if chans == 3 else grey_model
    run = _run([bhvit_run, model, image])
    assert run.returncode == 0 and run.stderr == "", run.stderr
    probs = _expected(model, pillow_input(pixels, maxval, chans, 32, (32, 32)))  # bit-identical input
    _assert_top(parse_top(run.stdout)[str(image)], probs, 5, atol=1e-6)


@needs_cc
@pytest.mark.parametrize("size", [(37, 45), (20, 27), (33, 97), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bhvit_run_resizes_like_pillow_bilinear(
    size: tuple[int, int], bhvit_run: Path, rgb_model: Path, tmp_path: Path
) -> None:
    pixels = np.random.default_rng(size[0]).integers(0, 256, (*size, 3))
    image = write_pnm(tmp_path / "x.ppm", pixels)
    run = _run([bhvit_run, "--top", "3", rgb_model, image])
    assert run.returncode == 0, run.stderr
    probs = _expected(rgb_model, pillow_input(pixels, 255, 3, 32, (32, 32)))
    _assert_top(parse_top(run.stdout)[str(image)], probs, 3, atol=1e-4)  # float vs Pillow's double sums


@needs_cc
def test_bhvit_run_prints_every_class_escaped_for_each_image(bhvit_run: Path, rgb_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = [write_pnm(tmp_path / f"{i}.ppm", rng.integers(0, 256, (40, 36, 3))) for i in range(2)]
    run = _run([bhvit_run, "--top=20", "--threads", "2", "--isa", "generic", rgb_model, *images])
    assert run.returncode == 0, run.stderr
    tops = parse_top(run.stdout)
    assert list(tops) == [str(p) for p in images]
    for top in tops.values():
        assert sorted(i for *_, i, _ in top) == list(range(10))  # --top beyond the classes: all of them
        assert abs(sum(p for *_, p in top) - 1) < 1e-5
        assert next(label for _, label, i, _ in top if i == 8) == "bag\\x1b[2J"  # no raw escape printed
    default = _run([bhvit_run, "--top=20", rgb_model, *images])
    assert default.stdout == run.stdout  # every ISA and thread count: the same result


def _bad_images(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = write_pnm(tmp_path / "good.ppm", np.zeros((32, 32, 3), np.uint8))
    truncated = tmp_path / "truncated.ppm"
    truncated.write_bytes(good.read_bytes()[:-100])
    files = {
        "truncated": (truncated, "truncated: 2972 of the 3072 bytes"),
        "text": (tmp_path / "notes.txt", "not a binary PPM (P6) or PGM (P5)"),
        "plain": (tmp_path / "plain.ppm", "plain-text (P3)"),
        "huge": (tmp_path / "huge.ppm", "over the limit of 33554432 pixels"),
        "maxval": (tmp_path / "deep.pgm", "maxval in the PPM/PGM header exceeds 65535"),
        "empty": (tmp_path / "empty.pgm", "an empty file"),
        "missing": (tmp_path / "missing.ppm", "cannot open it (No such file"),
        "folder": (tmp_path, "cannot read it"),
    }
    files["text"][0].write_text("hello, not an image\n")
    files["plain"][0].write_text("P3\n1 1\n255\n0 0 0\n")
    files["huge"][0].write_bytes(b"P6\n100000 100000\n255\n" + b"\0" * 64)
    files["maxval"][0].write_bytes(b"P5 1 1 65536\n\0\0")
    files["empty"][0].write_bytes(b"")
    return {"good": (good, ""), **files}


@needs_cc
def test_bhvit_run_reports_each_bad_image_and_goes_on(bhvit_run: Path, rgb_model: Path, tmp_path: Path) -> None:
    files = _bad_images(tmp_path)
    run = _run([bhvit_run, rgb_model, *(p for p, _ in files.values())])
    assert run.returncode == 1
    assert list(parse_top(run.stdout)) == [str(files["good"][0])]  # classified although the others failed
    errors = run.stderr.splitlines()
    assert len(errors) == len(files) - 1
    for line, (path, reason) in zip(errors, list(files.values())[1:]):
        assert line.startswith(f"bhvit-run: error: {path}: ") and reason in line, line


@needs_cc
@pytest.mark.parametrize(
    "args, status, reason",
    [
        ([], 2, "no model file and no image given"),
        (["MODEL"], 2, "no image given"),
        (["--top", "0", "MODEL", "x.ppm"], 2, "--top wants a whole number >= 1, got '0'"),
        (["--threads", "two", "MODEL", "x.ppm"], 2, "--threads wants a whole number"),
        (["--isa", "sse9", "MODEL", "x.ppm"], 2, "--isa: "),
        (["--frobnicate", "MODEL", "x.ppm"], 2, "unknown option '--frobnicate'"),
        (["missing.bhvp", "x.ppm"], 1, "missing.bhvp: "),
        (["x.ppm", "x.ppm"], 1, "x.ppm: "),
    ],
    ids=["nothing", "no-image", "top0", "threads", "isa", "option", "no-model", "not-a-model"],
)
def test_bhvit_run_usage_and_model_errors(
    args: list[str], status: int, reason: str, bhvit_run: Path, rgb_model: Path, tmp_path: Path
) -> None:
    write_pnm(tmp_path / "x.ppm", np.zeros((32, 32, 3), np.uint8))
    run = _run([bhvit_run, *(str(rgb_model) if a == "MODEL" else a for a in args)], cwd=tmp_path)
    assert run.returncode == status and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("bhvit-run: error: ") and reason in run.stderr


@needs_cc
def test_bhvit_run_help_names_the_difference_from_python(bhvit_run: Path) -> None:
    run = _run([bhvit_run, "--help"])
    assert run.returncode == 0 and "bicubic" in run.stdout and "--top K" in run.stdout
