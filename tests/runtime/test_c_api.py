"""The native runtime from C: a C program against bhvit_runtime.h gives the Python runtime's logits bit for
bit (the same library, the same input), bhvit-run classifies PPM/PGM, PNG and JPEG files as Model.predict
does (libpng and libjpeg against Pillow's decoders, then the same bhvit_run_rgb8), every bad input is one
error line, a build without the decoders says which formats it reads, `python -m bhvit.runtime` prints the
paths and flags, the library exports the C API only. The CMake build alone, its install and its consumers:
test_cmake_install.py (slow)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_build import (
    BHVIT_RUN_C,
    C_API_CHECK_C,
    CC,
    LABELS,
    PROGRESSIVE_REFUSAL,
    RUNTIME,
    codec_flags,
    compile_c,
    jpeg_header,
    parse_top,
    runtime_flags,
    small_model,
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


needs_codecs = pytest.mark.skipif(
    codec_flags() is None, reason="needs libpng and libjpeg headers (apt-get install libpng-dev libjpeg-dev)"
)


@pytest.fixture(scope="module")
def bhvit_run(folder: Path) -> Path:
    """bhvit_run.c compiled with cc against the pip-built library (the README's compile line), with libpng and
    libjpeg where this machine has them."""
    if CC is None:
        pytest.skip("needs a C compiler (cc, gcc or clang) to build bhvit-run")
    return compile_c([BHVIT_RUN_C], folder / "bhvit-run", runtime_flags() + (codec_flags() or []))


@pytest.fixture(scope="module")
def bhvit_run_plain(folder: Path) -> Path:
    """bhvit-run built without libpng and libjpeg: PPM/PGM only."""
    if CC is None:
        pytest.skip("needs a C compiler (cc, gcc or clang) to build bhvit-run")
    return compile_c([BHVIT_RUN_C], folder / "bhvit-run-plain", runtime_flags())


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


def _escaped(label: str) -> str:
    """A label as bhvit-run prints it: control characters as \\xNN."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in label)


def _assert_same_top(
    printed: list[tuple[int, str, int, float]], predicted: list[tuple[str, float]], atol: float
) -> None:
    """bhvit-run's ranks 1..k name Model.predict's classes, in its order, with its probabilities (printed to
    6 decimals)."""
    assert [r for r, *_ in printed] == list(range(1, len(predicted) + 1))
    assert [label for _, label, _, _ in printed] == [_escaped(label) for label, _ in predicted]
    assert all(label == _escaped(LABELS[index]) for _, label, index, _ in printed)
    np.testing.assert_allclose([p for *_, p in printed], [p for _, p in predicted], rtol=0, atol=atol)


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like RGB image (smooth, so that JPEG keeps it close and the classes differ between images)."""
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _netpbm_files(folder: Path, rng: np.random.Generator) -> list[Path]:
    """PPM/PGM files of every sample depth: 8-bit, maxval 100, 12 and 16 bits, grey and RGB, of odd sizes."""
    rgb, grey = _smooth(rng, 71, 130), _smooth(rng, 45, 38)[:, :, 1]
    return [
        write_pnm(folder / "rgb8.ppm", rgb),
        write_pnm(folder / "grey8.pgm", grey),
        write_pnm(folder / "rgb100.ppm", rgb // 3, maxval=100),
        write_pnm(folder / "rgb4095.ppm", rgb.astype(np.uint16) * 16 + 7, maxval=4095),
        write_pnm(folder / "grey1000.pgm", (grey.astype(np.uint16) * 1000) // 255, maxval=1000),
        write_pnm(folder / "grey65535.pgm", grey.astype(np.uint16) * 257 - 3 * (grey > 0), maxval=65535),
        write_pnm(folder / "tiny.ppm", rng.integers(0, 256, (1, 2, 3))),
    ]


def _png_files(folder: Path, rng: np.random.Generator) -> list[Path]:
    """PNG files of each colour type and depth Pillow and libpng read: RGB, RGBA, grey, grey + alpha, palette
    (with transparency), 16-bit grey and RGB, 1-bit, interlaced, colour keys."""
    rgb = _smooth(rng, 100, 150)
    alpha = rng.integers(0, 256, (100, 150, 1), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(64)
    images = {
        "rgb": Image.fromarray(rgb),
        "rgba": Image.fromarray(np.concatenate([rgb, alpha], axis=2)),
        "grey": Image.fromarray(rgb[:, :, 0]),
        "la": Image.fromarray(np.concatenate([rgb[:, :, :1], alpha], axis=2), "LA"),
        "palette": palette,
        "grey16": Image.fromarray(
            rgb[:, :, 0].astype(np.uint16) * 257 - rng.integers(0, 200, (100, 150)).astype(np.uint16)
        ),
        "bilevel": Image.fromarray(rgb).convert("1"),
        "tall": Image.fromarray(_smooth(rng, 400, 40)),
    }
    paths = []
    for name, im in images.items():
        paths.append(folder / f"{name}.png")
        im.save(paths[-1])
    extra = {
        "palette_alpha": (palette, {"transparency": 3}),
        "grey_key": (images["grey"], {"transparency": 17}),
        "rgb_key": (images["rgb"], {"transparency": tuple(int(v) for v in rgb[5, 5])}),
        "interlaced": (images["rgb"], {"interlace": 1}),
    }
    for name, (im, options) in extra.items():
        paths.append(folder / f"{name}.png")
        im.save(paths[-1], **options)
    rgb16 = folder / "rgb16.png"
    _write_png16(rgb16, rgb.astype(np.uint16) * 257 + rng.integers(0, 256, rgb.shape).astype(np.uint16))
    return [*paths, rgb16]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG, written chunk by chunk (Pillow saves RGB at 8 bits only)."""
    h, w = rgb.shape[:2]
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_files(folder: Path, rng: np.random.Generator) -> list[Path]:
    """Baseline, progressive, 4:4:4, grey and CMYK JPEGs, and photos large enough for Pillow's draft mode to
    decode them at 1/2, 1/4 and 1/8 scale (libjpeg's DCT scaling in bhvit-run)."""
    rgb = _smooth(rng, 100, 150)
    files = {
        "baseline.jpg": (Image.fromarray(rgb), {"quality": 90}),
        "progressive.jpg": (Image.fromarray(rgb), {"quality": 80, "progressive": True}),
        "444.jpg": (Image.fromarray(rgb), {"quality": 95, "subsampling": 0}),
        "grey.jpg": (Image.fromarray(rgb[:, :, 1]), {}),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), {}),
        "half.jpg": (Image.fromarray(_smooth(rng, 80, 100)), {}),
        "quarter.jpg": (Image.fromarray(_smooth(rng, 160, 190)), {}),
        "eighth.jpg": (Image.fromarray(_smooth(rng, 700, 1000)), {"quality": 85}),
    }
    for name, (im, options) in files.items():
        im.save(folder / name, **options)
    return [folder / name for name in files]


@needs_cc
@pytest.mark.parametrize("kind", ["netpbm", "png", "jpeg"])
def test_bhvit_run_prints_what_model_predict_gives(
    kind: str, bhvit_run: Path, rgb_model: Path, grey_model: Path, tmp_path: Path
) -> None:
    """Each file through bhvit-run (its decoder, then bhvit_run_rgb8 / grey8) and through Model.predict
    (Pillow, then the same entries): the same top 5, with the same probabilities."""
    rng = np.random.default_rng(len(kind))
    if kind != "netpbm" and codec_flags() is None:
        pytest.skip("needs libpng and libjpeg headers (apt-get install libpng-dev libjpeg-dev)")
    files = {"netpbm": _netpbm_files, "png": _png_files, "jpeg": _jpeg_files}[kind](tmp_path, rng)
    for model in (rgb_model, grey_model):
        run = _run([bhvit_run, "--top", "5", model, *files])
        assert run.returncode == 0 and run.stderr == "", run.stderr
        printed = parse_top(run.stdout)
        assert list(printed) == [str(f) for f in files]
        with rt.load(model) as m:
            for path in files:
                # libjpeg-turbo here and in Pillow's wheel decode to the same pixels (measured: equal to the
                # printed digit); another build of libjpeg may move a probability in its last digits
                _assert_same_top(printed[str(path)], m.predict(path), atol=1e-6 if kind != "jpeg" else 1e-4)


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
        "text": (tmp_path / "notes.txt", "not an image this bhvit-run reads (PPM (P6), PGM (P5),"),
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
    if codec_flags() is not None:
        rgb = _smooth(np.random.default_rng(0), 60, 80)
        Image.fromarray(rgb).save(tmp_path / "ok.png")
        Image.fromarray(rgb).save(tmp_path / "ok.jpg")
        Image.fromarray(rgb).save(tmp_path / "ok_progressive.jpg", progressive=True)
        png, jpeg, progressive = ((tmp_path / n).read_bytes() for n in ("ok.png", "ok.jpg", "ok_progressive.jpg"))
        broken = {
            "png_truncated": ("cut.png", png[: len(png) // 2], "corrupt or truncated PNG (libpng: "),
            "png_crc": ("crc.png", png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], "corrupt or truncated PNG"),
            "png_huge": ("huge.png", _png_header(100000, 100000), "100000x100000 image is over the limit of 33554432"),
            "jpeg_truncated": ("cut.jpg", jpeg[: len(jpeg) // 2], "truncated JPEG"),
            "jpeg_progressive_cut": ("cut_p.jpg", progressive[: len(progressive) // 2], "truncated JPEG"),
            "jpeg_garbage": ("junk.jpg", b"\xff\xd8\xff\xe0" + bytes(200), "corrupt JPEG (libjpeg: "),
            "jpeg_bomb": ("bomb.jpg", jpeg_header(60000, 60000), "over the decoding limit of 178956970 pixels"),
            "jpeg_progressive_huge": ("p.jpg", jpeg_header(13000, 13000, progressive=True), PROGRESSIVE_REFUSAL),
        }
        for key, (name, data, reason) in broken.items():
            (tmp_path / name).write_bytes(data)
            files[key] = (tmp_path / name, reason)
    return {"good": (good, ""), **files}


def _png_header(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG whose IHDR announces that size, with one short IDAT chunk: the size is refused
    before any pixel is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(1 + 3 * 16))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


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
def test_bhvit_run_without_decoders_says_which_formats_it_reads(
    bhvit_run_plain: Path, rgb_model: Path, tmp_path: Path
) -> None:
    help_text = _run([bhvit_run_plain, "--help"]).stdout
    assert "Formats of this build: PPM (P6), PGM (P5), told by" in help_text and "libpng-dev" in help_text
    rgb = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    ppm = write_pnm(tmp_path / "x.ppm", rgb)
    run = _run([bhvit_run_plain, rgb_model, tmp_path / "x.png", tmp_path / "x.jpg", ppm])
    assert run.returncode == 1 and list(parse_top(run.stdout)) == [str(ppm)]
    png_error, jpeg_error = run.stderr.splitlines()
    assert "a PNG image, but this bhvit-run was built without libpng" in png_error
    assert "a JPEG image, but this bhvit-run was built without libjpeg" in jpeg_error


@needs_cc
@needs_codecs
def test_bhvit_run_with_decoders_names_them(bhvit_run: Path) -> None:
    assert "Formats of this build: PPM (P6), PGM (P5), PNG, JPEG, told by" in _run([bhvit_run, "--help"]).stdout


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
def test_bhvit_run_help_says_it_preprocesses_as_python(bhvit_run: Path) -> None:
    run = _run([bhvit_run, "--help"])
    assert run.returncode == 0 and "--top K" in run.stdout
    assert "bicubic" in run.stdout and "bhvit.runtime.Model.predict runs (bhvit_run_rgb8)" in run.stdout
