"""`bhvit predict` against hostile and odd inputs: bombs, extreme aspect ratios, every image mode,
bad preprocessing metadata and labels. Each bad input is one line; the good ones are still classified."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bhvit
from bhvit.checkpoint import save_model
from bhvit.cli import main
from bhvit.predict import MAX_PIXELS, ImageError, Preprocess, class_labels, load_image, predict_images, prepare


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h grey pixels but holds one row of data: decoding it would need w·h bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )
    return path


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    return save_model(
        model,
        tmp_path / "m.safetensors",
        labels=[f"class_{i}" for i in range(10)],
        preprocess={"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36},
    )


def _good(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    png, jpg = tmp_path / "good.png", tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(jpg)
    return png, jpg


def test_bombs_and_bad_images_beside_good_ones(tmp_path, checkpoint, capsys):
    png, jpg = _good(tmp_path)
    pillow_bomb = png_header_only(tmp_path / "bomb20000.png", 20_000, 20_000)  # 400 M px: Pillow refuses
    over_limit = png_header_only(tmp_path / "big.png", 8_000, 6_000)  # 48 M px: over MAX_PIXELS
    wide = tmp_path / "wide.png"  # 1 x 2,000,000, ~2 KB: a plain resize to 36 px would allocate ~7.8 GB
    Image.new("L", (2_000_000, 1), 200).save(wide)
    assert wide.stat().st_size < 4096
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[:80])
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), "F").save(nan)
    bad = [pillow_bomb, over_limit, truncated, nan]
    args = [str(p) for p in (pillow_bomb, png, over_limit, wide, truncated, jpg, nan)]
    assert main(["predict", *args, "--checkpoint", str(checkpoint)]) == 1  # some inputs failed
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == len(bad) and "Traceback" not in err
    for path, line in zip(bad, lines):
        assert line.startswith(f"error: {path}: ")
    assert "decompression bomb" in lines[0] and "decoding limit" in lines[1]
    assert "corrupt or truncated" in lines[2] and "NaN or infinite" in lines[3]
    classified = [line for line in out.splitlines() if not line.startswith(" ")]
    assert classified == [str(png), str(wide), str(jpg)]
    assert out.count("%") == 15


def test_a_1x2000000_png_is_classified_in_bounded_memory(tmp_path):
    """Peak RSS growth of preprocessing the 2 KB 1 x 2,000,000 PNG, in a fresh process: the decoded
    image is 2 MB and the box resample allocates only the crop (measured ~13 MB growth); the old
    resize-then-crop allocated 36 x 72 M x 3 bytes ≈ 7.8 GB."""
    wide = tmp_path / "wide.png"
    Image.new("L", (2_000_000, 1), 200).save(wide)
    script = textwrap.dedent(f"""
        import resource
        from bhvit.predict import Preprocess, prepare
        prep = Preprocess(resize=36, crop=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        x = prepare({str(wide)!r}, prep)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(tuple(x.shape), (after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    shape, grew_mib = out.stdout.split(")")
    assert shape == "(3, 32, 32" and int(grew_mib) < 64, out.stdout


def test_jpeg_larger_than_needed_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(path)
    prep = Preprocess(resize=36, crop=(32, 32), mean=(0.5,), std=(0.25,))
    image = load_image(path, prep.resized_size, max_pixels=10_000)  # 160,000 px on disk
    assert image.size == (50, 50)  # 1/8 scale, still ≥ the 36 px resize
    assert prep(image).shape == (3, 32, 32)
    png = tmp_path / "big.png"
    Image.open(path).save(png)  # no decoder scaling for PNG: over the limit
    with pytest.raises(ImageError, match="decoding limit of 10,000 pixels"):
        load_image(png, prep.resized_size, max_pixels=10_000)
    assert MAX_PIXELS == 2**25


@pytest.mark.parametrize("mode", ["L", "F"])
def test_box_resample_agrees_with_resize_then_crop(mode):
    """The bounded path (region under the crop) against torchvision's resize-then-crop."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (70, 50), dtype=np.uint8)).convert(mode)
    prep = Preprocess(resize=36, crop=(32, 32), mean=(0.5,), std=(0.25,), grayscale=True)
    full = np.asarray(prep.resize_crop(image), dtype=np.float32)
    box = np.asarray(prep.resize_crop(image, max_resized=0), dtype=np.float32)
    assert full.shape == box.shape == (32, 32)
    # float: same sample points, rounding only; 8-bit: Pillow rounds its two passes differently
    assert np.abs(full - box).max() <= (1e-3 if mode == "F" else 16)
    assert np.abs(full - box).mean() <= (1e-4 if mode == "F" else 1.0)


def _gray(tmp_path: Path, name: str, image: Image.Image) -> np.ndarray:
    path = tmp_path / name
    image.save(path)
    prep = Preprocess(resize=32, crop=(32, 32), mean=(0.0,), std=(1.0,), grayscale=True)
    return prepare(path, prep)[0]


def test_high_depth_modes_keep_their_range(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).round().astype(np.uint16)
    want = ramp / 65535.0
    i16 = Image.fromarray(ramp)
    assert i16.mode == "I;16"
    got16 = _gray(tmp_path, "g16.png", i16)
    np.testing.assert_allclose(got16, want, atol=1e-6)  # not clipped to 255/255
    i32 = Image.fromarray(ramp.astype(np.int32), "I")
    np.testing.assert_allclose(_gray(tmp_path, "i32.tif", i32), want, atol=1e-6)  # 16-bit data in 'I'
    wide_range = Image.fromarray(ramp.astype(np.int32) * 1000 - 7, "I")  # beyond 16 bits: min-max
    np.testing.assert_allclose(_gray(tmp_path, "iwide.tif", wide_range), want, atol=1e-6)
    f01 = Image.fromarray(want.astype(np.float32), "F")
    np.testing.assert_allclose(_gray(tmp_path, "f.tif", f01), want, atol=1e-6)
    f_hdr = Image.fromarray((want * 40 - 20).astype(np.float32), "F")
    np.testing.assert_allclose(_gray(tmp_path, "fhdr.tif", f_hdr), want, atol=1e-5)
    eight = Image.fromarray((want * 255).round().astype(np.uint8))
    np.testing.assert_allclose(_gray(tmp_path, "g8.png", eight), want, atol=0.5 / 255 + 1e-6)


def test_alpha_palette_cmyk_and_bilevel_modes(tmp_path):
    rgb = Preprocess(resize=32, crop=(32, 32), mean=(0.0,), std=(1.0,))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (255, 128, 0)
    rgba[:16, :, 3] = 255  # top half opaque, bottom half transparent (hidden orange)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = prepare(tmp_path / "a.png", rgb)
    np.testing.assert_allclose(x[:, 4, 4], [1.0, 128 / 255, 0.0], atol=1e-6)
    assert float(np.abs(x[:, 28:, :]).max()) == 0.0  # composited over black
    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "la.png")
    gray = Preprocess(resize=32, crop=(32, 32), mean=(0.0,), std=(1.0,), grayscale=True)
    la = prepare(tmp_path / "la.png", gray)
    assert la.shape == (1, 32, 32) and float(np.abs(la[0, 28:]).max()) == 0.0 and float(la[0, 4, 4]) > 0.5
    pal = Image.fromarray(np.full((32, 32), 3, np.uint8), "P")
    pal.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 255, 0, 255])
    pal.save(tmp_path / "p.png")
    np.testing.assert_allclose(prepare(tmp_path / "p.png", rgb)[:, 5, 5], [1.0, 0.0, 1.0])
    pal.save(tmp_path / "pt.png", transparency=3)  # the palette entry in use is transparent
    assert float(np.abs(prepare(tmp_path / "pt.png", rgb)).max()) == 0.0
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(tmp_path / "c.tif")
    np.testing.assert_allclose(prepare(tmp_path / "c.tif", rgb)[:, 5, 5], [1.0, 0.0, 1.0])
    Image.new("1", (32, 32), 1).save(tmp_path / "b.png")
    assert float(prepare(tmp_path / "b.png", gray).min()) == 1.0


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"std": [0.0, 0.2, 0.2]}, "std"),
        ({"std": 0}, "std"),
        ({"mean": [float("nan")] * 3}, "mean"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": "0.2"}, "std"),
        ({"resize": 100_000}, "resize"),
        ({"resize": 36.5}, "resize"),
        ({"resize": True}, "resize"),
        ([1, 2], "metadata"),
    ],
)
def test_bad_preprocess_metadata_is_one_clear_error(meta, field):
    with pytest.raises(ValueError, match=field):
        Preprocess.for_model((32, 32), 3, meta)


@pytest.mark.parametrize(
    ("img_size", "in_chans"), [(100_000, 3), ((32, 0), 3), ("64", 3), ((32, 32), 2), ((32, 32), 4), ((32, 32, 3), 3)]
)
def test_absurd_model_input_is_refused(img_size, in_chans):
    with pytest.raises(ValueError, match="img_size|in_chans"):
        Preprocess.for_model(img_size, in_chans, {})


def test_std_zero_in_a_model_file_is_one_line_not_nan(tmp_path, capsys):
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    ckpt = save_model(model, tmp_path / "m.safetensors", preprocess={"std": [0, 0, 0]})
    png = _good(tmp_path)[0]
    assert main(["predict", str(png), "--checkpoint", str(ckpt)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "nan" not in err.lower()
    assert err.count("\n") == 1 and err.startswith("bhvit predict: error: preprocess std=")


def test_labels_short_hostile_and_wrong_types(tmp_path, capsys):
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    png = _good(tmp_path)[0]
    hostile = ["\x1b[2J\x1b]0;pwned\x07cat\r", "\u202eevil"]  # clear screen, set title, bidi override
    ckpt = save_model(model, tmp_path / "m.safetensors", labels=hostile)  # 2 labels for 10 classes
    assert main(["predict", str(png), "--checkpoint", str(ckpt), "--topk", "10"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "\\u202eevil" in out
    assert all(f" {i} " in out for i in range(2, 10))  # classes beyond the list: their index

    def run(images: np.ndarray) -> np.ndarray:  # predict_images takes numpy callables
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()

    results = predict_images(run, [png], Preprocess.for_model((32, 32), 3), topk=10, labels=hostile)
    assert {t["label"] for t in results[0]["top"]} == {*hostile, *map(str, range(2, 10))}
    assert main(["predict", str(png), "--checkpoint", str(ckpt), "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out  # JSON escapes control characters
    with pytest.raises(ValueError, match="entry 1 is int"):
        class_labels(["a", 3])
    with pytest.raises(ValueError, match="list of strings"):
        class_labels("abc")
    bad = save_model(model, tmp_path / "bad.safetensors", labels=["a", 3])
    assert main(["predict", str(png), "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "entry 1 is int" in err


def test_topk_must_be_positive(tmp_path, checkpoint, capsys):
    png = _good(tmp_path)[0]
    with pytest.raises(SystemExit):
        main(["predict", str(png), "--checkpoint", str(checkpoint), "--topk", "0"])
    assert "≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("shape", "meta", "message"),
    [
        ((3, 100_000, 100_000), {}, "img_size=100000"),
        ((3, 32, 32), {"preprocess": {"std": [0, 1, 1]}}, "std="),
        ((3, 32, 32), {"preprocess": {"resize": 100_000}}, "resize=100000"),
        ((3, 32, 32), {"labels": ["ok", 7]}, "entry 1 is int"),
        ((3, 32, 32), {"labels": "abc"}, "list of strings"),
        ((9, 32, 32), {}, "in_chans"),
    ],
)
def test_packed_path_uses_the_same_checks(tmp_path, monkeypatch, capsys, shape, meta, message):
    """Whatever a packed file's reader lets through, --packed goes through Preprocess.for_model and
    class_labels like --checkpoint (the runtime's reader itself refuses these fields too)."""
    import bhvit.runtime

    class FakeRuntimeModel:  # what bhvit.runtime.load returns: input shape, preprocess, labels, run
        input_shape, preprocess, labels = shape, meta.get("preprocess"), meta.get("labels")

        def run(self, x):
            return np.zeros((len(x), 10), np.float32)

    monkeypatch.setattr(bhvit.runtime, "load", lambda path: FakeRuntimeModel())
    png, packed = _good(tmp_path)[0], tmp_path / "m.bhvp"
    packed.write_bytes(b"")  # predict checks that the model path is a regular file before loading it
    assert main(["predict", str(png), "--packed", str(packed)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.fixture()
def packed_model(tmp_path):
    from bhvit.engine.program import write_program_file

    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    preprocess = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36}
    return write_program_file(model, tmp_path / "m.bhvp", preprocess=preprocess)


def _predict(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``bhvit predict ARGS`` in a subprocess whose stdin is an open pipe nobody writes to (reading it, or
    opening a FIFO, would wait forever: the timeout turns that into a failure)."""
    return subprocess.run(
        [sys.executable, "-m", "bhvit", "predict", *args],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("source", ["--packed", "--checkpoint"])
def test_fifo_and_stdin_are_refused_unopened_and_the_rest_classified(tmp_path, packed_model, checkpoint, source):
    png, jpg = _good(tmp_path)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    model = packed_model if source == "--packed" else checkpoint
    run = _predict([str(png), str(fifo), "/dev/stdin", str(jpg), source, str(model), "--json"])
    assert run.returncode == 1, run.stderr
    results = {r["path"]: r for r in json.loads(run.stdout)}
    assert "top" in results[str(png)] and "top" in results[str(jpg)]
    for bad in (str(fifo), "/dev/stdin"):
        assert "not a regular file" in results[bad]["error"], results[bad]
    # the model path itself
    run = _predict([str(png), source, str(fifo)])
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "not a regular file" in run.stderr, run.stderr


def test_nonfinite_logits_are_an_error_per_image(tmp_path, capsys):
    """A packed model whose weights overflow float32 (3e38, tests/runtime/hostile_files.py): one error line
    per image and exit status 1, never 'nan%'; a float model's NaN logits the same."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
    import hostile_files

    packed = tmp_path / "big.bhvp"
    packed.write_bytes(hostile_files.huge_weights().data)  # a 1 x 2 x 2 input: grey images
    png, jpg = _good(tmp_path)
    assert main(["predict", str(png), str(jpg), "--packed", str(packed)]) == 1
    captured = capsys.readouterr()
    assert "%" not in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 2 and all("logits of image 0 are not finite" in line for line in lines), lines
    prep = Preprocess.for_model(32, 3, {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36})
    nan_model = lambda x: np.full((len(x), 10), np.nan, np.float32)  # noqa: E731
    (result,) = predict_images(nan_model, [png], prep)
    assert "not finite" in result["error"] and "top" not in result
