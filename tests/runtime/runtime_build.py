"""Helpers of the native-runtime tests (test_c_api.py, test_images.py, test_aarch64.py, ...): a small packed
model, PPM/PGM files, compiling C programs against bhvit_runtime.h (and bhvit-run with libpng and libjpeg),
reading bhvit-run's output and the Pillow twin of the 8-bit preprocessing. Not a test module itself."""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from support import randomized

from bhvit.engine.program import write_program_file

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime"
BHVIT_RUN_C = RUNTIME / "tools" / "bhvit_run.c"
C_API_CHECK_C = Path(__file__).resolve().parent / "c_api_check.c"
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
C_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]
# a label with a control character: bhvit-run must print it escaped
LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag\x1b[2J", "ankle boot"]
PREPROCESS = {3: {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}, 1: {"mean": [0.45], "std": [0.22]}}
# what bhvit-run and Model.predict say of a progressive 13000 x 13000 4:2:0 JPEG (jpeg_header)
PROGRESSIVE_REFUSAL = (
    "a progressive 13000x13000 JPEG needs 484 MiB of coefficients to decode, over the limit of 256 MiB"
)
TOP_LINE = re.compile(r"^  (\d+) (.*) \((\d+)\) (\d\.\d{6})$")


def small_model(
    path: Path, in_chans: int = 3, resize: int = 32, seed: int = 0, labels: list[str] | None = LABELS, **kw: object
) -> Path:
    """A packed binary bhvit_test (32 x 32 unless ``img_size`` is given, 10 classes, GSB attention) with every
    constant-initialised tensor perturbed, so that all parts of the program matter; ``labels`` (None: none)."""
    model = randomized("binary", "gsb", seed=seed, in_chans=in_chans, **kw)
    return write_program_file(model, path, preprocess={**PREPROCESS[in_chans], "resize": resize}, labels=labels)


def runtime_flags() -> list[str]:
    """`python -m bhvit.runtime --cflags --libs`, the README's compile line."""
    run = subprocess.run(
        [sys.executable, "-m", "bhvit.runtime", "--cflags", "--libs"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def compile_c(sources: list[Path], out: Path, flags: list[str], cc: str | None = None) -> Path:
    """Compiles and links C99 sources (warnings are errors) into the program ``out``."""
    cmd = [cc or CC or "cc", *C_FLAGS, *map(str, sources), "-o", str(out), *flags, "-lm"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stderr}"
    return out


@functools.cache
def codec_flags() -> list[str] | None:
    """What bhvit-run needs to read PNG and JPEG (its BHVIT_WITH_* macros and -lpng -ljpeg), or None when this
    machine cannot build that (no compiler, or no libpng / libjpeg headers: apt-get install libpng-dev
    libjpeg-dev)."""
    flags = ["-DBHVIT_WITH_PNG", "-DBHVIT_WITH_JPEG", "-lpng", "-ljpeg"]
    if CC is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text(
            "#include <stdio.h>\n#include <png.h>\n#include <jpeglib.h>\nint main(void) { return "
            "png_access_version_number() == 0 && jpeg_std_error != 0; }\n"
        )
        run = subprocess.run([CC, str(probe), "-o", str(Path(tmp) / "probe"), "-lpng", "-ljpeg"], capture_output=True)
    return flags if run.returncode == 0 else None


def write_pnm(path: Path, pixels: np.ndarray, maxval: int = 255) -> Path:
    """A binary PGM (P5, (H, W)) or PPM (P6, (H, W, 3)); samples above 255 as 2 big-endian bytes."""
    magic = "P6" if pixels.ndim == 3 else "P5"
    h, w = pixels.shape[:2]
    data = pixels.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(f"{magic}\n# written by a test\n{w} {h}\n{maxval}\n".encode() + data)
    return path


def jpeg_header(width: int, height: int, progressive: bool = False) -> bytes:
    """A JPEG whose frame header announces that size: a real 8 x 8 JPEG (4:2:0) with its SOF0 (SOF2) sides
    rewritten, so that only its header is hostile."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "JPEG", progressive=progressive)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def parse_top(stdout: str) -> dict[str, list[tuple[int, str, int, float]]]:
    """bhvit-run's output -> {image path: [(rank, label, index, probability), ...]}."""
    results: dict[str, list[tuple[int, str, int, float]]] = {}
    current: list[tuple[int, str, int, float]] = []
    for line in stdout.splitlines():
        match = TOP_LINE.match(line)
        if match is None:
            assert not line.startswith(" "), f"unexpected line {line!r}"
            current = results.setdefault(line, [])
        else:
            rank, label, index, prob = match.groups()
            current.append((int(rank), label, int(index), float(prob)))
    return results


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max())
    return z / z.sum()


def pillow_input(image: Image.Image | np.ndarray, in_chans: int, preprocess: dict, crop: tuple[int, int]) -> np.ndarray:
    """The 8-bit preprocessing by Pillow and numpy, as bhvit/predict.py applies it: Pillow's convert("L" or
    "RGB"), Image.resize(BICUBIC) of the shorter side to ``resize`` (sides rounded half to even, at least the
    crop's), the centre crop, then (x / 255 - mean) / std in float32. (C, H, W) float32."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    im = im.convert("L" if in_chans == 1 else "RGB")
    w, h = im.size
    scale = preprocess["resize"] / min(w, h)
    rw, rh = max(crop[1], round(w * scale)), max(crop[0], round(h * scale))
    left, top = (rw - crop[1]) // 2, (rh - crop[0]) // 2
    x = np.asarray(im.resize((rw, rh), Image.BICUBIC).crop((left, top, left + crop[1], top + crop[0])), np.float32)
    x = (x[:, :, None] if x.ndim == 2 else x) / 255.0
    x = (x - np.array(preprocess["mean"], np.float32)) / np.array(preprocess["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
