"""The example in bhvit_runtime.h is a complete program (issue 20, item 4): extracted from the header comment,
compiled with the README's line against the pip-built library (warnings are errors), it classifies a PPM
of any size as Model.predict does, and reports a bad image or model in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from runtime_build import CC, LABELS, RUNTIME, compile_c, runtime_flags, small_model

import bhvit.runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)"),
    pytest.mark.skipif(CC is None, reason="needs a C compiler (cc, gcc or clang)"),
]

BEGIN, END = " * --- example.c ---", " * --- end of example.c ---"


def header_example() -> str:
    """The program between the markers of the header's first comment, its " *   " margin removed."""
    lines = (RUNTIME / "include" / "bhvit_runtime.h").read_text().splitlines()
    body = lines[lines.index(BEGIN) + 1 : lines.index(END)]
    assert all(line == " *" or line.startswith(" *   ") for line in body), "the example must stay indented"
    return "\n".join(line[5:] for line in body) + "\n"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("example")
    source = folder / "example.c"
    source.write_text(header_example())
    return compile_c([source], folder / "example", runtime_flags())


def write_ppm(path: Path, pixels: np.ndarray) -> Path:
    """A binary PPM as the example reads it: no comment in the header."""
    h, w = pixels.shape[:2]
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + pixels.astype(np.uint8).tobytes())
    return path


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, timeout=60)


def test_the_header_example_classifies_a_ppm_as_predict_does(example: Path, tmp_path: Path) -> None:
    model = small_model(tmp_path / "m.bhvp", resize=36)
    rng = np.random.default_rng(0)
    with rt.load(model) as m:
        for i, (h, w) in enumerate([(32, 32), (71, 130), (300, 41)]):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = write_ppm(tmp_path / f"{i}.ppm", pixels)
            run = _run(example, model, image)
            assert run.returncode == 0 and run.stderr == "", run.stderr
            best = int(np.argmax(m.run(m.prepare(pixels))[0]))
            assert run.stdout == f"{image}: class {best} ({LABELS[best]})\n"
            assert m.predict(image, top_k=1)[0][0] == LABELS[best]


def test_the_header_example_reports_errors_in_one_line(example: Path, tmp_path: Path) -> None:
    model = small_model(tmp_path / "m.bhvp")
    good = write_ppm(tmp_path / "good.ppm", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "x.txt").write_text("not an image")
    (tmp_path / "short.ppm").write_bytes(b"P6\n10 10\n255\n\0\0\0")  # 10 x 10 pixels announced, one given
    for args, status, reason in [
        ((), 2, "usage: "),
        ((tmp_path / "missing.bhvp", good), 1, "missing.bhvp"),
        ((model, tmp_path / "x.txt"), 1, "not a binary 8-bit PPM image"),
        ((model, tmp_path / "short.ppm"), 1, "not a binary 8-bit PPM image"),
    ]:
        run = _run(example, *args)
        assert run.returncode == status and run.stdout == "" and len(run.stderr.splitlines()) == 1, run.stderr
        assert reason in run.stderr
